"""Writing through the API: starts, cancels and every operator action, each recorded in the
saga's history with who and why; refusals as 409 problems that say why and what to do."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from tests.http.conftest import Api, assert_problem, order_input


async def history(api: Api, saga_id: UUID) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await api.client.get(f"/api/sagas/{saga_id}/history")).json()[
        "items"
    ]
    return items


async def test_start_is_idempotent_by_key(api: Api) -> None:
    body = {"saga": "order", "key": "s-1", "input": order_input("s-1")}
    first = await api.client.post("/api/sagas", json=body)
    assert first.status_code == 201
    started = first.json()
    assert started == {
        "saga_id": started["saga_id"],
        "created": True,
        "status": "running",
        "queued": False,
        "input_differs": False,
    }
    again = await api.client.post("/api/sagas", json=body)
    assert again.status_code == 200
    assert again.json() == {**started, "created": False}
    assert [m.routing_key for m in api.publisher.published] == [
        "customers.reserve_credit",
        "inventory.reserve",
    ]


async def test_a_key_reused_with_other_input_is_flagged_in_the_answer_and_history(
    api: Api,
) -> None:
    saga_id = await api.start("s-reused", order_input("s-reused"))
    body = {"saga": "order", "key": "s-reused", "input": order_input("s-reused", amount="99.00")}
    again = await api.client.post("/api/sagas", json=body)
    assert again.status_code == 200
    assert again.json() == {
        "saga_id": str(saga_id),
        "created": False,
        "status": "running",
        "queued": False,
        "input_differs": True,
    }
    [repeat] = [h for h in await history(api, saga_id) if h["event"] == "start_repeated"]
    assert repeat["detail"] == {"same_input": False, "differing_fields": ["amount"]}
    assert repeat["actor"] == "api:anonymous"
    saga = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert saga["input"]["amount"] == "25.00"  # the first start's input stays


async def test_a_start_pins_a_version_and_joins_the_callers_trace(api: Api) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    answer = await api.client.post(
        "/api/sagas",
        json={"saga": "order", "key": "s-2", "input": order_input("s-2"), "version": 1},
        headers={"traceparent": trace},
    )
    assert answer.status_code == 201
    saga = (await api.client.get(f"/api/sagas/{answer.json()['saga_id']}")).json()
    assert saga["version"] == 1
    assert api.publisher.published[0].headers == {"traceparent": trace}


async def test_a_start_a_semantic_lock_holds_back_is_409_or_202(api: Api) -> None:
    holder = await api.start("first", {"user": "ann"}, saga="exclusive")
    rejected = await api.client.post(
        "/api/sagas", json={"saga": "exclusive", "key": "second", "input": {"user": "ann"}}
    )
    problem = assert_problem(rejected, 409, says="user:ann")
    assert (
        problem["type"] == "urn:saga:problem:resource-locked" and str(holder) in problem["detail"]
    )
    queued = await api.client.post(
        "/api/sagas", json={"saga": "patient", "key": "third", "input": {"user": "ann"}}
    )
    assert queued.status_code == 202
    assert queued.json() == {
        "saga_id": None,
        "created": False,
        "status": None,
        "queued": True,
        "input_differs": False,
    }


async def test_bad_starts_are_422_problems_that_say_what_to_fix(api: Api) -> None:
    def start(**body: Any) -> Any:
        return api.client.post("/api/sagas", json=body)

    assert_problem(
        await start(saga="nope", key="k", input={}),
        422,
        says="no saga named 'nope'; known: exclusive, order",
    )
    assert_problem(
        await start(saga="order", key="k", input={"order_id": "x"}), 422, says="customer_id"
    )
    assert_problem(
        await start(saga="order", key="k", input=order_input(), version=9), 422, says="version 9"
    )
    assert_problem(await start(saga="order", key="", input={}), 422, says="body.key")
    assert_problem(await start(saga="order", key="k", input={}, extra=1), 422, says="body.extra")
    assert_problem(await start(saga="order", key="k\x00", input=order_input()), 422, says="NUL")
    stored_nowhere = order_input(note="a\x00b")
    assert_problem(await start(saga="order", key="k", input=stored_nowhere), 422, says="NUL")
    infinite = b'{"saga": "order", "key": "k", "input": {"order_id": "o", "amount": 1e400}}'
    too_big = await api.client.post(
        "/api/sagas", content=infinite, headers={"content-type": "application/json"}
    )
    assert_problem(too_big, 422, says="finite")
    not_json = await api.client.post(
        "/api/sagas", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(not_json, 422)
    assert api.publisher.published == []


async def test_cancel_before_the_pivot_undoes_the_saga(api: Api) -> None:
    saga_id = await api.start("x-1")
    await api.reply(saga_id, "reserve_credit")
    answer = await api.client.post(
        f"/api/sagas/{saga_id}/cancel", json={"reason": "customer called", "who": "ann"}
    )
    assert answer.status_code == 200
    saga = answer.json()
    assert (saga["status"], saga["cancel_reason"]) == ("compensating", "customer called")
    [accepted] = [h for h in await history(api, saga_id) if h["event"] == "saga_cancel_accepted"]
    assert accepted["actor"] == "api:ann" and accepted["detail"]["reason"] == "customer called"


async def test_a_cancel_by_an_unknown_key_is_404_and_holds_nothing(api: Api) -> None:
    answer = await api.client.post("/api/sagas/by-key/typo-1/cancel", json={"reason": "oops"})
    problem = assert_problem(answer, 404, says="no saga has key 'typo-1'")
    assert "hold=true" in problem["detail"]
    started = await api.client.post(
        "/api/sagas", json={"saga": "order", "key": "typo-1", "input": order_input("typo-1")}
    )
    assert (started.status_code, started.json()["status"]) == (201, "running")


async def test_a_cancel_by_key_with_hold_waits_for_its_start(api: Api) -> None:
    answer = await api.client.post(
        "/api/sagas/by-key/later-1/cancel",
        params={"hold": "true"},
        json={"reason": "changed mind", "who": "ann"},
    )
    assert (answer.status_code, answer.json()) == (202, {"held": True, "items": []})
    started = await api.client.post(
        "/api/sagas", json={"saga": "order", "key": "later-1", "input": order_input("later-1")}
    )
    assert (started.status_code, started.json()["status"]) == (201, "cancelled")


async def test_a_cancel_by_key_finds_sagas_and_starts_waiting_for_a_lock(api: Api) -> None:
    saga_id = await api.start("k-1")
    answer = await api.client.post(
        "/api/sagas/by-key/k-1/cancel", json={"reason": "customer called", "who": "ann"}
    )
    assert answer.status_code == 200 and answer.json()["held"] is False
    [saga] = answer.json()["items"]
    assert (saga["saga_id"], saga["status"]) == (str(saga_id), "compensating")

    await api.start("holder", {"user": "bo"}, saga="patient")
    queued = await api.client.post(
        "/api/sagas", json={"saga": "patient", "key": "waiter", "input": {"user": "bo"}}
    )
    assert queued.status_code == 202  # no saga has key "waiter" yet: its start waits
    answer = await api.client.post("/api/sagas/by-key/waiter/cancel", json={"reason": "no"})
    assert answer.status_code == 200
    [saga] = answer.json()["items"]
    assert (saga["key"], saga["status"]) == ("waiter", "cancelled")

    await api.past_pivot("k-2")
    refused = await api.client.post("/api/sagas/by-key/k-2/cancel", json={"reason": "late"})
    assert_problem(refused, 409, says="'charge_payment'")


async def test_cancel_past_the_pivot_is_a_409_naming_the_pivot(api: Api) -> None:
    saga_id = await api.past_pivot("x-2")
    answer = await api.client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "too late?"})
    problem = assert_problem(answer, 409, says="'charge_payment'")
    assert problem["type"] == "urn:saga:problem:cancel-refused"
    assert "past the pivot" in problem["detail"] and "refund" in problem["detail"]
    refused = (await history(api, saga_id))[-1]
    assert (refused["event"], refused["actor"]) == ("cancel_refused", "api:anonymous")
    assert refused["detail"]["reason"] == "too late?"
    saga = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert saga["status"] == "running" and saga["cancel_reason"] is None


async def test_cancel_of_a_finished_saga_says_there_is_nothing_to_cancel(api: Api) -> None:
    saga_id = await api.start("x-3")
    await api.client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "first"})
    await api.reply(saga_id, "reserve_credit", ok=False)
    await api.reply(saga_id, "reserve_stock", ok=False)
    assert (await api.client.get(f"/api/sagas/{saga_id}")).json()["status"] == "cancelled"
    answer = await api.client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "again"})
    assert_problem(answer, 409, says="nothing left to cancel")


async def test_pause_and_resume(api: Api) -> None:
    saga_id = await api.start("o-1")
    paused = await api.client.post(
        f"/api/sagas/{saga_id}/pause", json={"reason": "checking stock", "who": "bo"}
    )
    assert paused.status_code == 200
    assert (paused.json()["status"], paused.json()["resume_status"]) == ("paused", "running")
    resumed = await api.client.post(f"/api/sagas/{saga_id}/resume", json={"reason": "all good"})
    assert resumed.json()["status"] == "running"
    events = [
        (h["event"], h["actor"], (h["detail"] or {}).get("reason"))
        for h in await history(api, saga_id)
    ]
    assert ("saga_paused", "api:bo", "checking stock") in events
    assert ("saga_resumed", "api:anonymous", "all good") in events


async def test_a_refused_action_is_a_409_and_is_recorded(api: Api) -> None:
    saga_id = await api.start("o-2")
    answer = await api.client.post(
        f"/api/sagas/{saga_id}/resume", json={"reason": "go on", "who": "cy"}
    )
    problem = assert_problem(answer, 409, says="only a paused saga can be resumed; it is running")
    assert "GET the saga" in problem["detail"]
    refused = (await history(api, saga_id))[-1]
    assert (refused["event"], refused["actor"]) == ("operator_action_refused", "api:cy")
    assert refused["detail"] == {
        "action": "resume",
        "reason": "go on",
        "why": "only a paused saga can be resumed; it is running",
    }


async def test_retry_carries_a_parked_saga_on(api: Api) -> None:
    saga_id = await api.parked("o-3")
    assert (await api.client.get(f"/api/sagas/{saga_id}")).json()["status"] == "failed"
    answer = await api.client.post(f"/api/sagas/{saga_id}/retry", json={"reason": "mail is back"})
    assert answer.status_code == 200
    assert answer.json()["status"] == "running"
    assert answer.json()["current_steps"] == ["notify_customer"]
    await api.reply(saga_id, "notify_customer")
    assert (await api.client.get(f"/api/sagas/{saga_id}")).json()["status"] == "completed"


async def test_skip_finishes_a_parked_step_with_a_result(api: Api) -> None:
    saga_id = await api.parked("o-4")
    answer = await api.client.post(
        f"/api/sagas/{saga_id}/skip",
        json={"step": "notify_customer", "result": {"sent": "by hand"}, "reason": "phoned"},
    )
    assert answer.status_code == 200
    saga = answer.json()
    assert saga["status"] == "completed"
    assert (saga["steps"][3]["status"], saga["steps"][3]["result"]) == (
        "skipped",
        {"sent": "by hand"},
    )
    unknown = await api.client.post(
        f"/api/sagas/{saga_id}/skip", json={"step": "nope", "reason": "x"}
    )
    assert_problem(unknown, 409)


async def test_mark_compensated_finishes_a_parked_compensation(api: Api) -> None:
    saga_id = await api.parked_compensating("o-5")
    saga = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert saga["status"] == "failed" and saga["error"]["type"] == "compensation_failed"
    answer = await api.client.post(
        f"/api/sagas/{saga_id}/mark-compensated", json={"reason": "released credit by hand"}
    )
    assert answer.status_code == 200
    assert answer.json()["status"] == "compensated"
    marked = [h for h in await history(api, saga_id) if h["event"] == "step_marked_compensated"]
    assert [(h["step"], h["actor"]) for h in marked] == [("reserve_credit", "api:anonymous")]


async def test_actions_need_a_reason_and_a_known_saga(api: Api) -> None:
    saga_id = await api.start("o-6")
    for action in ("cancel", "retry", "pause", "resume", "mark-compensated"):
        assert_problem(await api.client.post(f"/api/sagas/{saga_id}/{action}", json={}), 422)
        blank = await api.client.post(f"/api/sagas/{saga_id}/{action}", json={"reason": "  "})
        assert_problem(blank, 422, says="body.reason")
        missing = await api.client.post(f"/api/sagas/{uuid4()}/{action}", json={"reason": "x"})
        assert_problem(missing, 404, says="no saga with id")
    assert_problem(
        await api.client.post(f"/api/sagas/{saga_id}/skip", json={"reason": "x"}), 422, says="step"
    )
    # Nothing happened to the saga.
    assert [h["event"] for h in await history(api, saga_id)][-1] == "step_dispatched"


async def test_a_read_only_app_refuses_writes_with_503(make_api: Any) -> None:
    api: Api = await make_api(engine=False)
    answer = await api.client.post(
        "/api/sagas", json={"saga": "order", "key": "ro", "input": order_input()}
    )
    assert_problem(answer, 503, says="cannot act on sagas")
    assert_problem(await api.client.post(f"/api/sagas/{uuid4()}/pause", json={"reason": "x"}), 503)
    assert (await api.client.get("/api/sagas")).status_code == 200
