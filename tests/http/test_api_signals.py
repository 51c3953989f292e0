"""Signals over the API: `POST /api/sagas/{id}/signals/{name}` and by start key, on the order
saga v4, whose orders above 1000 wait for the fraud desk's `fraud_review`. A signal is taken,
held or a duplicate (200), or refused as a `signal-refused` problem whose `reason` names why;
waiting sagas show in the list (`waiting_for`) and in the detail (a step's `kind` and
`wait`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
import pytest

from sagas import order
from tests.http.conftest import OPERATOR, READER, TOKENS, Api, order_input, vault

REVIEW = "fraud_review"
APPROVED = {"approved": True, "reviewer": "ann", "note": "known customer"}


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> Api:
    made: Api = await make_api(sagas=(order.saga, vault))
    return made


async def big_order(api: Api, key: str) -> UUID:
    """An order above the review amount: its reservations dispatched, the review pending."""
    return await api.start(key, order_input(key, amount="2500.00"))


async def reserved(api: Api, saga_id: UUID) -> None:
    for step in ("reserve_credit", "reserve_stock"):
        await api.reply(saga_id, step, result={"reservation_id": 7})


async def at_review(api: Api, key: str) -> UUID:
    saga_id = await big_order(api, key)
    await reserved(api, saga_id)
    return saga_id


def refusal(answer: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    """The problem of a refused signal, checked: its members and its reason."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert set(body) == {"type", "title", "status", "detail", "reason", "signal", "signal_id"}
    assert (body["type"], body["status"], body["reason"]) == (
        "urn:saga:problem:signal-refused",
        status,
        reason,
    )
    return body


def charges(api: Api, saga_id: UUID) -> list[dict[str, Any]]:
    """The saga's charge commands sent."""
    sent = [json.loads(m.body) for m in api.publisher.published if m.exchange == "saga.commands"]
    return [c for c in sent if c["step"] == "charge_payment" and c["saga_id"] == str(saga_id)]


async def test_a_waiting_saga_is_listed_shown_and_takes_its_signal(api: Api) -> None:
    saga_id = await at_review(api, "rev-1")
    small = await api.start("rev-small")  # 25.00: no review
    await reserved(api, small)
    listed = await api.client.get("/api/sagas", params={"waiting_for": REVIEW})
    assert [s["key"] for s in listed.json()["items"]] == ["rev-1"]
    assert listed.json()["items"][0]["waiting_for"] == [REVIEW]
    none = await api.client.get("/api/sagas", params={"waiting_for": "no_such_signal"})
    assert none.json()["items"] == []

    detail = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert detail["waiting_for"] == [REVIEW] and REVIEW in detail["current_steps"]
    kinds = {s["name"]: s["kind"] for s in detail["steps"]}
    assert kinds == {
        "reserve_credit": "remote",
        "reserve_stock": "remote",
        REVIEW: "wait",
        "charge_payment": "remote",
        "notify_customer": "remote",
    }
    review = next(s for s in detail["steps"] if s["name"] == REVIEW)
    wait = review["wait"]
    assert (wait["signal"], wait["stage"], wait["on_timeout"]) == (REVIEW, "waiting", "fail")
    assert wait["timeout"] == order.REVIEW_TIMEOUT
    assert wait["waiting_since"] == review["started_at"] and wait["until"] == review["due_at"]
    assert set(wait["payload_schema"]["required"]) == {"approved", "reviewer"}

    answer = await api.client.post(
        f"/api/sagas/{saga_id}/signals/{REVIEW}", json={"payload": APPROVED, "who": "ann"}
    )
    assert answer.status_code == 200, answer.text
    taken = answer.json()
    assert set(taken) == {"result", "saga_id", "status", "signal_id"}
    assert (taken["result"], taken["saga_id"], taken["status"]) == (
        "taken",
        str(saga_id),
        "running",
    )
    uuid.UUID(taken["signal_id"])  # made up, and answered so that it can be sent again
    assert len(charges(api, saga_id)) == 1  # the saga goes on

    history = (await api.client.get(f"/api/sagas/{saga_id}/history")).json()["items"]
    finished = next(h for h in history if h["event"] == "wait_finished")
    assert finished["actor"] == "api:ann"
    assert finished["detail"]["signal_id"] == taken["signal_id"]

    again = await api.client.post(
        f"/api/sagas/{saga_id}/signals/{REVIEW}",
        json={"payload": {**APPROVED, "approved": False}, "signal_id": taken["signal_id"]},
    )
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert len(charges(api, saga_id)) == 1
    after = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    review = next(s for s in after["steps"] if s["name"] == REVIEW)
    assert review["result"] == APPROVED and review["wait"]["stage"] == "taken"
    assert after["waiting_for"] == []


async def test_a_signal_by_key_before_the_wait_is_held_then_taken(api: Api) -> None:
    saga_id = await big_order(api, "rev/2")  # a key with a slash, escaped in the path
    answer = await api.client.post(
        f"/api/sagas/by-key/rev%2F2/signals/{REVIEW}",
        json={"payload": APPROVED, "signal_id": "desk-2"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "result": "held",
        "saga_id": str(saga_id),
        "status": "running",
        "signal_id": "desk-2",
    }
    detail = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    wait = next(s for s in detail["steps"] if s["name"] == REVIEW)["wait"]
    assert (wait["stage"], wait["signal_id"]) == ("held", "desk-2")
    assert wait["received_at"] is not None
    await reserved(api, saga_id)
    assert len(charges(api, saga_id)) == 1


async def test_refusals_name_their_reason(api: Api) -> None:
    saga_id = await at_review(api, "rev-3")
    post = api.client.post
    url = f"/api/sagas/{saga_id}/signals"

    missing = uuid.uuid4()
    body = refusal(
        await post(f"/api/sagas/{missing}/signals/{REVIEW}", json={}), 404, "unknown_saga"
    )
    assert body["detail"] == f"no saga has id {missing}"
    assert body["signal"] == REVIEW and uuid.UUID(body["signal_id"])
    body = refusal(
        await post(f"/api/sagas/by-key/nobody/signals/{REVIEW}", json={}), 404, "unknown_saga"
    )
    assert body["detail"] == "no saga has key 'nobody'"

    body = refusal(
        await post(f"{url}/{REVIEW}", json={"payload": {"approved": "maybe"}, "signal_id": "s-1"}),
        422,
        "invalid_payload",
    )
    assert body["detail"].startswith("the payload does not match FraudReview: approved:")
    assert "reviewer: Field required" in body["detail"] and body["signal_id"] == "s-1"
    assert "maybe" not in body["detail"]  # names the fields, never the values

    body = refusal(await post(f"{url}/refund", json={}), 409, "not_waited_for")
    assert (
        body["detail"]
        == "saga order v4 never waits for signal 'refund'; it waits for: fraud_review"
    )

    # The key of sagas of two names: name the saga.
    await api.start("rev-3", {"anything": 1}, saga="vault")
    body = refusal(
        await post(f"/api/sagas/by-key/rev-3/signals/{REVIEW}", json={}), 409, "ambiguous_key"
    )
    assert body["detail"] == "key 'rev-3' belongs to sagas order, vault: name the saga"
    named = await post(
        f"/api/sagas/by-key/rev-3/signals/{REVIEW}",
        params={"saga": "order"},
        json={"payload": {"approved": False, "reviewer": "bo"}},
    )
    assert named.status_code == 200 and named.json()["result"] == "taken"
    # Rejected: the saga undoes its reservations; a second verdict finds the wait over.
    body = refusal(await post(f"{url}/{REVIEW}", json={"payload": APPROVED}), 409, "wait_over")
    assert "has signal" in body["detail"]

    history = (await api.client.get(f"/api/sagas/{saga_id}/history")).json()["items"]
    refused = [h["detail"]["reason"] for h in history if h["event"] == "signal_refused"]
    assert refused == ["invalid_payload", "not_waited_for", "wait_over"]


async def test_a_finished_saga_refuses_signals(api: Api) -> None:
    saga_id = await big_order(api, "rev-4")
    cancelled = await api.client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "dup"})
    assert cancelled.status_code == 200
    for step in ("reserve_credit", "reserve_stock"):  # both answer, then both are undone
        await api.reply(saga_id, step, result={"reservation_id": 1})
    for step in ("reserve_credit", "reserve_stock"):
        await api.reply(saga_id, step, kind="compensation")
    detail = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert detail["status"] == "cancelled"
    answer = await api.client.post(
        f"/api/sagas/{saga_id}/signals/{REVIEW}", json={"payload": APPROVED}
    )
    body = refusal(answer, 409, "finished")
    assert body["detail"] == "the saga is cancelled: it waits for nothing"


async def test_a_bad_request_is_refused_before_any_saga_is_looked_at(api: Api) -> None:
    saga_id = await at_review(api, "rev-5")
    url = f"/api/sagas/{saga_id}/signals"
    bad = [
        await api.client.post(f"{url}/Fraud-Review", json={}),  # not a step name
        await api.client.post(f"{url}/{REVIEW}", json={"payload": [1, 2]}),  # not an object
        await api.client.post(f"{url}/{REVIEW}", json={"payload": {}, "reason": "x"}),  # typo
        await api.client.post(f"{url}/{REVIEW}", json={"signal_id": ""}),
        await api.client.post(
            f"{url}/{REVIEW}",
            content=b'{"payload": {"approved": true, "reviewer": "a", "n": NaN}}',
            headers={"Content-Type": "application/json"},
        ),
    ]
    for answer in bad:
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"] != "urn:saga:problem:signal-refused"
    history = (await api.client.get(f"/api/sagas/{saga_id}/history")).json()["items"]
    assert not [h for h in history if h["event"].startswith("signal")]


async def test_signals_need_the_operate_role_and_an_engine(make_api: Callable[..., Any]) -> None:
    guarded: Api = await make_api(api_tokens=TOKENS, sagas=(order.saga,))
    saga_id = await at_review(
        await make_api(sagas=(order.saga,)), "rev-6"
    )  # the same database, an open app
    url = f"/api/sagas/{saga_id}/signals/{REVIEW}"
    read = await guarded.client.post(
        url, json={"payload": APPROVED}, headers={"Authorization": f"Bearer {READER}"}
    )
    assert read.status_code == 403
    done = await guarded.client.post(
        url, json={"payload": APPROVED}, headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert done.status_code == 200 and done.json()["result"] == "taken"
    history = (
        await guarded.client.get(
            f"/api/sagas/{saga_id}/history", headers={"Authorization": f"Bearer {READER}"}
        )
    ).json()["items"]
    assert next(h for h in history if h["event"] == "wait_finished")["actor"] == "api:ops"

    read_only: Api = await make_api(engine=False)
    answer = await read_only.client.post(url, json={"payload": APPROVED})
    assert answer.status_code == 503 and "cannot act on sagas" in answer.json()["detail"]
    # Without the definitions the process cannot tell a wait from another step.
    detail = (await read_only.client.get(f"/api/sagas/{saga_id}")).json()
    assert all(s["kind"] is None and s["wait"] is None for s in detail["steps"])
    assert detail["waiting_for"] == []
