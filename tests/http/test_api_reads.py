"""Reading through the API: a saga, by key, its history, the list with each filter, pages,
counts; secrets redacted. A real PostgreSQL database behind the app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from sqlalchemy import text

from orchestrator.state import SagaStatus
from sagas import order
from tests.http.conftest import Api, assert_problem, order_input

SUMMARY = {
    "saga_id",
    "saga",
    "version",
    "key",
    "status",
    "status_since",
    "created_at",
    "updated_at",
    "error",
    "current_steps",
    "waiting_for",
}
DETAIL = SUMMARY | {
    "input",
    "cancel_reason",
    "parent",
    "deadline_at",
    "resume_status",
    "output",
    "steps",
}
STEP = {
    "name",
    "index",
    "status",
    "attempt",
    "compensation_attempt",
    "result",
    "error",
    "item",
    "payload",
    "dispatched_at",
    "started_at",
    "due_at",
    "kind",
    "wait",
}


async def test_a_saga_with_its_steps(api: Api) -> None:
    saga_id = await api.start("o-1")
    await api.reply(saga_id, "reserve_credit", result={"reservation": "r-1"})
    answer = await api.client.get(f"/api/sagas/{saga_id}")
    assert answer.status_code == 200
    saga = answer.json()
    assert set(saga) == DETAIL
    assert (saga["saga_id"], saga["saga"], saga["key"]) == (str(saga_id), "order", "o-1")
    assert (saga["status"], saga["version"]) == ("running", order.order_v2.version)
    assert saga["input"] == order_input("o-1")
    assert saga["current_steps"] == ["reserve_stock"]
    assert all(set(s) == STEP for s in saga["steps"])
    credit, stock = saga["steps"][:2]
    assert (credit["status"], credit["result"]) == ("succeeded", {"reservation": "r-1"})
    assert [s["kind"] for s in saga["steps"]] == ["remote"] * 4
    assert saga["waiting_for"] == [] and all(s["wait"] is None for s in saga["steps"])
    assert (stock["status"], stock["attempt"]) == ("running", 1)
    assert stock["dispatched_at"] is not None and stock["due_at"] is not None


async def test_an_unknown_saga_is_a_404_problem(api: Api) -> None:
    missing = uuid4()
    assert_problem(await api.client.get(f"/api/sagas/{missing}"), 404, says=str(missing))
    assert_problem(await api.client.get(f"/api/sagas/{missing}/history"), 404)
    assert_problem(await api.client.get("/api/sagas/not-a-uuid"), 422, says="saga_id")
    assert_problem(await api.client.get("/api/nothing-here"), 404, says="/docs")


async def test_find_by_key(api: Api) -> None:
    saga_id = await api.start("shared-key")
    answer = await api.client.get("/api/sagas/by-key/shared-key")
    assert answer.status_code == 200
    [found] = answer.json()["items"]
    assert set(found) == DETAIL and found["saga_id"] == str(saga_id)
    assert (await api.client.get("/api/sagas/by-key/shared-key?saga=order")).json()["items"]
    assert_problem(
        await api.client.get("/api/sagas/by-key/shared-key?saga=invoice"), 404, says="invoice"
    )
    assert_problem(await api.client.get("/api/sagas/by-key/nobody"), 404, says="'nobody'")


async def test_history_lists_every_transition_with_its_actor(api: Api) -> None:
    saga_id = await api.start("h-1")
    await api.reply(saga_id, "reserve_credit")
    answer = await api.client.get(f"/api/sagas/{saga_id}/history")
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert all(set(i) == {"seq", "at", "event", "step", "detail", "actor"} for i in items)
    assert [i["seq"] for i in items] == list(range(1, len(items) + 1))
    assert items[0]["event"] == "saga_started" and items[0]["actor"] == "api:anonymous"
    succeeded = [i for i in items if i["event"] == "step_succeeded"]
    assert [(i["step"], i["actor"]) for i in succeeded] == [("reserve_credit", "engine")]


async def keys(api: Api, query: str = "", **params: Any) -> list[str]:
    answer = await api.client.get(f"/api/sagas{query}", params=params)
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert all(set(i) == SUMMARY for i in items)
    return [i["key"] for i in items]


async def test_list_filters(api: Api) -> None:
    running = await api.start("f-running")
    charging = await api.past_pivot("f-charging")
    parked = await api.parked("f-parked")
    v1 = await api.start("f-v1", version=1)
    assert {running, charging, parked, v1}  # four sagas, newest activity first:
    assert await keys(api) == ["f-v1", "f-parked", "f-charging", "f-running"]

    assert await keys(api, status="failed") == ["f-parked"]
    assert await keys(api, status="running") == ["f-v1", "f-charging", "f-running"]
    assert await keys(api, saga="order", status="running", limit=2) == ["f-v1", "f-charging"]
    assert await keys(api, saga="invoice") == []
    assert await keys(api, version=1) == ["f-v1"]
    assert await keys(api, version=order.order_v2.version, status="running") == [
        "f-charging",
        "f-running",
    ]
    assert await keys(api, key="f-parked") == ["f-parked"]
    # step: where that step is now, running or compensating, or failed and parked.
    assert await keys(api, step="charge_payment") == ["f-charging"]
    assert await keys(api, step="notify_customer") == ["f-parked"]
    assert await keys(api, step="reserve_credit") == ["f-v1", "f-running"]
    # An empty value is no filter (what an HTML form sends).
    assert await keys(api, status="", step="", limit="") == await keys(api)


async def test_list_by_creation_time(api: Api) -> None:
    first = await api.start("t-1")
    second = await api.start("t-2")
    created = {
        k: datetime.fromisoformat((await api.client.get(f"/api/sagas/{i}")).json()["created_at"])
        for k, i in (("t-1", first), ("t-2", second))
    }
    assert await keys(api, created_after=created["t-2"].isoformat()) == ["t-2"]
    assert await keys(api, created_before=created["t-2"].isoformat()) == ["t-1"]
    window = {
        "created_after": (created["t-1"] - timedelta(seconds=1)).isoformat(),
        "created_before": (created["t-2"] + timedelta(seconds=1)).isoformat(),
    }
    assert await keys(api, **window) == ["t-2", "t-1"]
    # Without an offset a time is UTC; with one, it is the same moment.
    naive = created["t-2"].astimezone(UTC).replace(tzinfo=None).isoformat()
    assert await keys(api, created_after=naive) == ["t-2"]
    assert_problem(await api.client.get("/api/sagas?created_after=yesterday"), 422)


async def test_list_by_time_in_status(api: Api) -> None:
    stuck = await api.parked("s-stuck")
    await api.parked("s-fresh")
    await api.start("s-running")
    # As if the first had been parked for two hours.
    async with api.store.db_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE saga_instances SET status_since = now() - interval '2 hours' WHERE id = :id"
            ),
            {"id": stuck},
        )
    assert await keys(api, in_status_for_minutes=60) == ["s-stuck"]
    assert await keys(api, in_status_for_minutes=60, status="failed") == ["s-stuck"]
    assert await keys(api, in_status_for_minutes=60, status="running") == []
    assert set(await keys(api, in_status_for_minutes=0)) == {"s-stuck", "s-fresh", "s-running"}
    assert_problem(await api.client.get("/api/sagas?in_status_for_minutes=-1"), 422)


async def test_pages_follow_the_cursor_to_the_end(api: Api) -> None:
    for n in range(12):
        await api.start(f"p-{n:02}")
    everything = await keys(api)
    pages: list[list[str]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5} | ({} if cursor is None else {"cursor": cursor})
        body = (await api.client.get("/api/sagas", params=params)).json()
        pages.append([i["key"] for i in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [k for p in pages for k in p] == everything
    # Exactly a page's worth left: the last full page says there is no more.
    body = (await api.client.get("/api/sagas", params={"limit": 12})).json()
    assert len(body["items"]) == 12 and body["next_cursor"] is None


async def test_a_saga_that_changes_while_paging_is_not_listed_twice(api: Api) -> None:
    ids = [await api.start(f"c-{n}") for n in range(6)]  # newest last
    first = (await api.client.get("/api/sagas", params={"limit": 3})).json()
    assert [i["key"] for i in first["items"]] == ["c-5", "c-4", "c-3"]
    await api.reply(ids[5], "reserve_credit")  # seen already: moves to the front
    await api.reply(ids[1], "reserve_credit")  # not seen yet: moves to the front too
    rest = (
        await api.client.get("/api/sagas", params={"limit": 3, "cursor": first["next_cursor"]})
    ).json()
    assert [i["key"] for i in rest["items"]] == ["c-2", "c-0"]
    assert rest["next_cursor"] is None
    # Starting over shows what moved.
    assert (await keys(api, limit=2)) == ["c-1", "c-5"]


async def test_a_cursor_the_api_did_not_issue_is_a_400_problem(api: Api) -> None:
    for bad in ("garbage", "bm90IGEgY3Vyc29y", ""):
        answer = await api.client.get("/api/sagas", params={"cursor": bad})
        if bad == "":
            assert answer.status_code == 200  # blank: no cursor
        else:
            assert_problem(answer, 400, says="next_cursor")
    assert_problem(await api.client.get("/api/sagas?limit=501"), 422, says="limit")
    assert_problem(await api.client.get("/api/sagas?limit=0"), 422, says="limit")
    assert_problem(await api.client.get("/api/sagas?status=lost"), 422, says="status")


async def test_counts_by_status(api: Api) -> None:
    empty = (await api.client.get("/api/sagas/counts")).json()
    assert empty == {"counts": dict.fromkeys([s.value for s in SagaStatus], 0)}
    await api.start("n-1")
    await api.start("n-2")
    await api.parked("n-3")
    counts = (await api.client.get("/api/sagas/counts")).json()["counts"]
    assert counts == {**empty["counts"], "running": 2, "failed": 1}
    other = (await api.client.get("/api/sagas/counts", params={"saga": "invoice"})).json()
    assert other == empty


async def test_secrets_are_redacted_everywhere_but_kept_in_the_database(api: Api) -> None:
    secret = {"user": "ann", "payment": {"Card_Number": "4111111111111111", "cvv": "123"}}
    saga_id = await api.start("r-1", secret, saga="vault")
    result = {"ok": True, "api_key": "k-9", "list": [{"token": "t"}]}
    await api.reply(saga_id, "store_secret", result=result)
    shown = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert shown["input"] == {"user": "ann", "payment": {"Card_Number": "***", "cvv": "***"}}
    assert shown["steps"][0]["result"] == {"ok": True, "api_key": "***", "list": [{"token": "***"}]}
    by_key = (await api.client.get("/api/sagas/by-key/r-1")).json()["items"][0]
    assert by_key["input"]["payment"]["cvv"] == "***"
    # A history detail: a step an operator skipped with a result.
    parked = await api.parked("r-2")
    skipped = await api.client.post(
        f"/api/sagas/{parked}/skip",
        json={"step": "notify_customer", "result": {"password": "hunter2"}, "reason": "mailed"},
    )
    assert skipped.status_code == 200
    assert skipped.json()["steps"][3]["result"] == {"password": "***"}
    history = (await api.client.get(f"/api/sagas/{parked}/history")).json()["items"]
    [skip] = [h for h in history if h["event"] == "step_skipped"]
    assert skip["detail"]["result"] == {"password": "***"}
    # The database keeps the real values: participants need them.
    stored = await api.store.get(saga_id)
    assert stored is not None and stored.input["payment"]["cvv"] == "123"


async def test_a_saga_shows_the_payloads_its_steps_built_and_its_output(api: Api) -> None:
    saga_id = await api.start("rec-1", {"order": 1}, saga="receipt")
    running = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert running["output"] is None
    assert [s["payload"] for s in running["steps"]] == [None, None]
    await api.reply(saga_id, "pay", result={"charge": "c-1"})
    await api.reply(saga_id, "mail", result={"sent": True})
    shown = (await api.client.get(f"/api/sagas/{saga_id}")).json()
    assert shown["status"] == "completed"
    assert [s["payload"] for s in shown["steps"]] == [None, {"charge": "c-1"}]
    assert shown["output"] == {"charge": "c-1", "token": "***"}  # redacted like the rest
    stored = await api.store.get(saga_id)
    assert stored is not None and stored.output == {"charge": "c-1", "token": "t-1"}


async def test_redacted_fields_are_configurable(make_api: Any) -> None:
    api: Api = await make_api(redact_fields=["customer"])
    saga_id = await api.start("rc-1", {"customer": "ann", "password": "shown now"}, saga="vault")
    shown = (await api.client.get(f"/api/sagas/{saga_id}")).json()["input"]
    assert shown == {"customer": "***", "password": "shown now"}
