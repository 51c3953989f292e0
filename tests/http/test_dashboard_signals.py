"""The dashboard's "Send signal" in a real browser (Debian's Chromium, headless, through
chromedriver; the driver and the server as tests/e2e/test_dashboard.py starts them): an order
saga v4 above the review amount waits at `fraud_review`; the list finds it by the signal it
waits for, its page says since when and until when, a payload its model refuses is refused
in the dialog with the API's reason, and the fraud desk's approval is taken: the saga goes on
to its charge and completes, the history naming who approved it.

The app runs on a real PostgreSQL database with the engine of tests/http/conftest.py (the
test plays the participants), served by uvicorn in the test's loop; the browser runs in a
worker thread (`asyncio.to_thread`) so that the loop keeps serving while it waits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from orchestrator.state import StepStatus
from sagas import order
from tests.e2e.test_dashboard import Page, browser, serving
from tests.http.conftest import Api
from tests.http.test_api_signals import at_review, charges

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the e2e tests

APPROVAL = {"approved": True, "reviewer": "ann", "note": "checked by phone"}


async def test_an_approval_sent_from_the_dashboard_lets_the_order_go_on(
    browser: WebDriver, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api(sagas=(order.saga,))
    saga_id = await at_review(api, "fraud-1")
    async with serving(api.app) as base:
        page = Page(browser, base)
        await asyncio.to_thread(find_it_waiting, page, saga_id)
        await asyncio.to_thread(send_the_approval, page, saga_id)
        state = await api.store.get(saga_id)
        assert state is not None
        review = state.step("fraud_review")
        assert review is not None and review.status == StepStatus.SUCCEEDED
        assert review.result == APPROVAL
        assert len(charges(api, saga_id)) == 1  # the saga goes on: the card is charged
        await api.reply(saga_id, "charge_payment", result={"charge_id": 9, "charged": "2500.00"})
        await api.reply(saga_id, "notify_customer")
        await asyncio.to_thread(see_it_completed, page)


def find_it_waiting(page: Page, saga_id: UUID) -> None:
    page.open("/?waiting_for=fraud_review")
    page.until(lambda: [r["id"] for r in page.rows()] == [str(saga_id)], "the waiting order")
    steps = page.js("return document.querySelector('#sagas tbody tr').cells[4].textContent")
    assert "fraud_review (waits for signal)" in steps
    page.shot("20-list-waiting-for-fraud-review")

    page.open(f"/sagas/{saga_id}")
    page.until(lambda: page.saga_status() == "running", "the waiting saga to load")
    summary = page.driver.find_element(By.ID, "summary").text
    assert "Waiting for signal" in summary and "fraud_review" in summary and "until" in summary
    cell = page.js(
        "return document.querySelector('#steps tr[data-step=fraud_review] .wait-cell').textContent"
    )
    assert cell.startswith("waiting for fraud_review since "), cell
    lanes = page.lanes()
    assert [(b["kind"], b["outcome"]) for b in lanes["fraud_review"]] == [("wait", "open")]


def send_the_approval(page: Page, saga_id: UUID) -> None:
    button = page.driver.find_element(By.ID, "action-signal")
    assert button.is_enabled()
    page.click("#action-signal")
    page.until(page.dialog_open, "the signal dialog to open")
    assert not page.driver.find_element(By.ID, "reason-field").is_displayed()
    # A skeleton of the wait's result model to fill in.
    skeleton = page.driver.find_element(By.ID, "signal-payload").get_attribute("value") or ""
    assert json.loads(skeleton) == {"approved": False, "reviewer": "", "note": ""}
    signal_id = page.driver.find_element(By.ID, "signal-id").get_attribute("value")
    assert signal_id  # made up in the page, so that a resend is the same signal

    page.type_into("#signal-payload", json.dumps({"approved": True}))
    page.click("#confirm-ok")
    error = page.until(
        lambda: page.driver.find_element(By.ID, "confirm-error").text or None,
        "the refusal to be shown",
    )
    assert error.startswith("Refused (invalid_payload): the payload does not match FraudReview")
    assert "reviewer: Field required" in error
    assert page.dialog_open()
    page.shot("21-signal-refused-invalid-payload")

    page.type_into("#signal-payload", json.dumps(APPROVAL))
    page.type_into("#confirm-who", "ann")
    page.shot("22-signal-approval")
    page.click("#confirm-ok")
    page.until(lambda: not page.dialog_open(), "the dialog to close once the signal is taken")
    notice = page.driver.find_element(By.ID, "notice").text
    assert notice.startswith(f"Signal fraud_review (id {signal_id}) taken: the saga goes on"), (
        notice
    )
    page.until(
        lambda: any(r[2] == "wait_finished" and r[4] == "api:ann" for r in page.history()),
        "the approval in the history, with who sent it",
    )
    refused = [r for r in page.history() if r[2] == "signal_refused"]
    assert len(refused) == 1 and "invalid_payload" in refused[0][5]
    page.shot("23-signal-taken")


def see_it_completed(page: Page) -> None:
    page.until(lambda: page.saga_status() == "completed", "the page to refresh to completed")
    assert not page.driver.find_element(By.ID, "action-signal").is_enabled()
    lanes = page.lanes()
    assert [(b["kind"], b["outcome"]) for b in lanes["fraud_review"]] == [("wait", "succeeded")]
    page.shot("24-order-completed-after-review")
