"""Bulk actions through the API (`POST /api/bulk/{action}`) on a real database: one request
with a filter, answered with counts per outcome and the refusals; each saga's action in its
own history; a saga changed or deleted between the listing and its turn refused; a dry run
that writes nothing; problems for a bad filter, none at all, or a read token."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from tests.fixtures.row_lock import row_locked
from tests.http.conftest import OPERATOR, READER, TOKENS, Api, assert_problem

PARKED = {"status": "failed", "step": "notify_customer"}
NONE = {"applied": 0, "changed": 0, "not_applicable": 0, "gone": 0, "not_loaded": 0}


async def history(api: Api, saga_id: UUID) -> list[dict[str, Any]]:
    answer = await api.client.get(f"/api/sagas/{saga_id}/history")
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def status(api: Api, saga_id: UUID) -> str:
    return str((await api.client.get(f"/api/sagas/{saga_id}")).json()["status"])


async def test_retry_of_every_parked_saga_in_one_request(api: Api) -> None:
    parked = [await api.parked(f"b-{n}") for n in range(3)]
    running = await api.start("b-running")

    answer = await api.client.post(
        "/api/bulk/retry", json={"filter": PARKED, "reason": "mail is back", "who": "ann"}
    )

    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result == {
        "action": "retry",
        "dry_run": False,
        "matched": 3,
        "more": False,
        "counts": {**NONE, "applied": 3},
        "refusals": [],
        "sample": result["sample"],
    }
    assert sorted(result["sample"]) == sorted(str(i) for i in parked)
    for saga_id in parked:
        assert await status(api, saga_id) == "running"
        [retried] = [h for h in await history(api, saga_id) if h["event"] == "saga_retried"]
        assert (retried["actor"], retried["detail"]) == ("api:ann", {"reason": "mail is back"})
    assert await status(api, running) == "running"
    assert "saga_retried" not in [h["event"] for h in await history(api, running)]


async def test_sagas_changed_or_deleted_after_the_listing_are_refused_and_reported(
    api: Api, database_url: str
) -> None:
    """The request lists the three parked sagas, then waits for the row lock the test holds
    on the first one it locks (the lowest id); meanwhile another operator retries one of the
    others singly and retention deletes the third. Neither is forced."""
    keys = {await api.parked(f"c-{n}"): f"c-{n}" for n in range(3)}
    first, moved, deleted = sorted(keys)
    async with row_locked(database_url, first) as held:
        request = asyncio.create_task(
            api.client.post("/api/bulk/retry", json={"filter": PARKED, "reason": "mail is back"})
        )
        await held.waited_for()
        single = await api.client.post(
            f"/api/sagas/{moved}/retry", json={"reason": "this one first", "who": "bob"}
        )
        assert single.status_code == 200, single.text
        await held.delete(deleted)
    answer = await request

    result = answer.json()
    assert result["counts"] == {**NONE, "applied": 1, "changed": 1, "gone": 1}
    assert result["sample"] == [str(first)]
    refusals = {r["outcome"]: r for r in result["refusals"]}
    assert (refusals["changed"]["saga_id"], refusals["changed"]["key"]) == (str(moved), keys[moved])
    assert refusals["changed"]["why"].startswith(
        "changed since it was listed (status failed -> running, revision"
    )
    assert refusals["gone"]["saga_id"] == str(deleted)
    events = [(h["event"], h["actor"]) for h in await history(api, moved)]
    assert ("saga_retried", "api:bob") in events
    assert events[-1] == ("operator_action_refused", "api:anonymous")


async def test_a_dry_run_says_how_many_and_which_and_changes_nothing(api: Api) -> None:
    parked = [await api.parked(f"d-{n}") for n in range(2)]
    running = await api.start("d-running")
    before = [await history(api, i) for i in [*parked, running]]

    answer = await api.client.post(
        "/api/bulk/retry",
        json={"filter": {"saga": "order"}, "reason": "see first", "dry_run": True},
    )

    result = answer.json()
    assert (result["dry_run"], result["matched"], result["counts"]) == (
        True,
        3,
        {**NONE, "applied": 2, "not_applicable": 1},
    )
    assert sorted(result["sample"]) == sorted(str(i) for i in parked)
    [refusal] = result["refusals"]
    assert refusal["saga_id"] == str(running)
    assert refusal["why"] == "only a failed (parked) saga can be retried; it is running"
    assert [await history(api, i) for i in [*parked, running]] == before


async def test_limit_caps_it_and_more_says_others_match(api: Api) -> None:
    for n in range(3):
        await api.parked(f"l-{n}")
    body = {"filter": PARKED, "reason": "two at a time", "limit": 2}
    first = (await api.client.post("/api/bulk/retry", json=body)).json()
    second = (await api.client.post("/api/bulk/retry", json=body)).json()
    assert (first["matched"], first["more"], second["matched"], second["more"]) == (
        2,
        True,
        1,
        False,
    )


async def test_skip_and_cancel_and_the_others_in_bulk(api: Api) -> None:
    parked = await api.parked("s-1")
    skip = await api.client.post(
        "/api/bulk/skip",
        json={
            "filter": PARKED,
            "step": "notify_customer",
            "result": {"sent": "by post"},
            "reason": "mailed a letter",
        },
    )
    assert skip.json()["counts"]["applied"] == 1, skip.text
    assert await status(api, parked) == "completed"

    early = await api.start("x-1")
    late = await api.past_pivot("x-2")
    cancel = (
        await api.client.post(
            "/api/bulk/cancel", json={"filter": {"status": "running"}, "reason": "recall"}
        )
    ).json()
    assert cancel["counts"]["applied"] == 1 and cancel["sample"] == [str(early)]
    [refused] = cancel["refusals"]
    assert refused["saga_id"] == str(late) and refused["outcome"] == "not_applicable"
    assert "past the pivot" in refused["why"]
    assert (await history(api, late))[-1]["event"] == "cancel_refused"

    undoing = await api.parked_compensating("m-1")
    marked = await api.client.post(
        "/api/bulk/mark-compensated",
        json={"filter": {"status": "failed", "step": "reserve_credit"}, "reason": "by hand"},
    )
    assert marked.json()["counts"]["applied"] == 1, marked.text
    assert await status(api, undoing) == "compensated"

    paused = await api.client.post(
        "/api/bulk/pause", json={"filter": {"key": "x-1"}, "reason": "look"}
    )
    # x-1 is compensating: paused too (a compensating saga can be paused)
    assert paused.json()["counts"]["applied"] == 1, paused.text
    resumed = await api.client.post(
        "/api/bulk/resume", json={"filter": {"status": "paused"}, "reason": "go on"}
    )
    assert resumed.json()["counts"]["applied"] == 1, resumed.text


async def test_a_filter_that_says_no_sagas_or_is_wrong_is_a_problem(api: Api) -> None:
    await api.parked("p-1")
    for body, says in [
        ({"filter": {}, "reason": "all"}, "say which sagas"),
        ({"filter": {"status": "", "saga": ""}, "reason": "all"}, "say which sagas"),
        ({"filter": {"stauts": "failed"}, "reason": "typo"}, "body.filter.stauts"),
        ({"filter": {"status": "parked"}, "reason": "x"}, "body.filter.status"),
        ({"filter": PARKED}, "body.reason"),
        ({"filter": PARKED, "reason": "x", "limit": 0}, "body.limit"),
        ({"reason": "x"}, "body.filter"),
    ]:
        answer = await api.client.post("/api/bulk/retry", json=body)
        assert_problem(answer, 422, says=says)
    skip = await api.client.post("/api/bulk/skip", json={"filter": PARKED, "reason": "x"})
    assert_problem(skip, 422, says="body.step")
    events = [h["event"] for h in await history(api, await api.parked("p-2"))]
    assert "operator_action_refused" not in events


async def test_bulk_actions_need_the_operate_role(make_api: Any) -> None:
    api: Api = await make_api(api_tokens=TOKENS)
    body = {"filter": PARKED, "reason": "x", "dry_run": True}
    read = await api.client.post(
        "/api/bulk/retry", json=body, headers={"Authorization": f"Bearer {READER}"}
    )
    assert_problem(read, 403)
    ok = await api.client.post(
        "/api/bulk/retry", json=body, headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert ok.status_code == 200
