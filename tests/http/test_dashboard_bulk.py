"""The list page's bulk actions in a real browser (Debian's Chromium, headless, through
chromedriver, as tests/e2e/test_dashboard.py starts them): with no filter they are not
offered; for the filter `saga=order` "Retry all…" asks for a dry run and its confirmation
states the count (three parked orders would be retried, a running one refused, and why);
confirmed, the three are retried, each with who and why in its history, and the page shows
the counts and the refusal.

The app runs on a real PostgreSQL database with the engine of tests/http/conftest.py (the
test plays the participants), served by uvicorn in the test's loop; the browser runs in a
worker thread (`asyncio.to_thread`) so that the loop keeps serving while it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.test_dashboard import Page, browser, serving
from tests.http.conftest import Api

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the e2e tests


async def test_retry_all_of_a_filter_with_a_confirmation_that_states_the_count(
    browser: WebDriver, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api()
    parked = [await api.parked(f"bulk-{n}") for n in range(3)]
    running = await api.start("bulk-running")
    async with serving(api.app) as base:
        page = Page(browser, base)
        await asyncio.to_thread(not_offered_without_a_filter, page)
        await asyncio.to_thread(retry_all_of_the_filter, page, running)
    for saga_id in parked:
        state = await api.store.get(saga_id)
        assert state is not None and state.status == "running"
        history = (await api.client.get(f"/api/sagas/{saga_id}/history")).json()["items"]
        [retried] = [h for h in history if h["event"] == "saga_retried"]
        assert (retried["actor"], retried["detail"]) == ("api:ann", {"reason": "mail is back"})
    history = (await api.client.get(f"/api/sagas/{running}/history")).json()["items"]
    assert history[-1]["event"] == "operator_action_refused"


def offered(page: Page) -> dict[str, str | None]:
    """Each bulk action's button: None when enabled, else its tooltip (read in one go: the
    live refresh redraws them)."""
    found: dict[str, str | None] = page.js(
        "return Object.fromEntries([...document.querySelectorAll('#bulk-actions button')]"
        ".map(b => [b.id, b.disabled ? b.title : null]))"
    )
    return found


def press(page: Page, css: str) -> None:
    """Click, again if the live refresh redrew the button between finding and clicking it."""

    def clicked() -> bool:
        page.click(css)
        return True

    page.until(clicked, f"{css} to be clicked")


def not_offered_without_a_filter(page: Page) -> None:
    page.open("/")
    page.until(lambda: len(page.rows()) == 4, "the four sagas")
    buttons = page.until(lambda: offered(page), "the bulk action buttons")
    assert len(buttons) == 6
    assert all(
        why == "Not now: set a filter first: an action on every saga is never offered"
        for why in buttons.values()
    ), buttons


def retry_all_of_the_filter(page: Page, running: UUID) -> None:
    page.open("/?saga=order")

    def for_the_filter() -> dict[str, str | None] | None:
        buttons = offered(page)
        return buttons if buttons and buttons["bulk-retry"] is None else None

    buttons = page.until(for_the_filter, "the actions for the filter")
    # No step in the filter: nothing says which step to skip.
    assert buttons["bulk-skip"] == "Not now: filter by a step first: that step is skipped"
    press(page, "#bulk-retry")
    ok = page.driver.find_element(By.ID, "bulk-ok")
    page.until(ok.is_enabled, "the dry run's count")
    assert ok.text == "Retry all 3"
    count = page.driver.find_element(By.ID, "bulk-count").text
    assert count == "4 saga(s) match this filter: 3 would be retried, 1 refused:", count
    [refusal] = page.driver.find_elements(By.CSS_SELECTOR, "#bulk-preview li")
    assert refusal.get_attribute("data-saga-id") == str(running)
    assert refusal.text == (
        "bulk-running (order) not_applicable: only a failed (parked) saga can be retried; "
        "it is running"
    )
    page.shot("30-bulk-retry-confirmation")

    page.click("#bulk-ok")  # no reason yet: the form is not sent
    assert page.js("return document.getElementById('bulk-reason').validity.valueMissing")
    assert page.js("return document.getElementById('bulk-confirm').open")
    page.type_into("#bulk-reason", "mail is back")
    page.type_into("#bulk-who", "ann")
    page.click("#bulk-ok")
    page.until(
        lambda: not page.js("return document.getElementById('bulk-confirm').open"),
        "the dialog to close",
    )
    summary = page.until(lambda: page.driver.find_element(By.ID, "bulk-summary").text, "the result")
    assert summary.endswith("(saga order): 3 of 4 saga(s) retried, 1 refused:"), summary
    [refused] = page.driver.find_elements(By.CSS_SELECTOR, "#bulk-result li")
    assert refused.get_attribute("data-outcome") == "not_applicable"
    page.until(
        lambda: sorted(r["status"] for r in page.rows()) == ["running"] * 4,
        "the list to show the three retried sagas running",
    )
    page.shot("31-bulk-retry-done")
