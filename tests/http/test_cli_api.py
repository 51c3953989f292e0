"""`saga list/status/history/cancel/...` with `--url`: the CLI as a subprocess, talking to the
API served over real HTTP (uvicorn in the test's loop) on a real database. Over the API a
command prints what it prints from the database, and its exit code says what happened."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from adapters.http.serve import Bind, listen, serve
from orchestrator.ports import SagaQuery
from sagas import order
from tests.http.conftest import OPERATOR, READER, TOKENS, Api, order_input
from tests.http.test_api_signals import APPROVED, at_review


@dataclass
class Served:
    api: Api
    url: str
    database_url: str

    async def saga(
        self, *args: str, token: str | None = OPERATOR, url: bool = True
    ) -> tuple[int, str, str]:
        """Run `saga ARGS` over the API (or, `url=False`, on the database)."""
        env = {**os.environ, "SAGA_DATABASE_URL": self.database_url, "SAGA_LOG_FORMAT": "json"}
        env.pop("SAGA_API_URL", None)
        env.pop("SAGA_API_TOKEN", None)
        if url:
            env["SAGA_API_URL"] = self.url
        if token is not None:
            env["SAGA_API_TOKEN"] = token
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "adapters.cli",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def served(make_api: Any, database_url: str) -> AsyncIterator[Served]:
    api: Api = await make_api(api_tokens=TOKENS, headers={"Authorization": f"Bearer {OPERATOR}"})
    server = await serve(api.app, listen(Bind("127.0.0.1", 0)))
    try:
        yield Served(api, f"http://{server.address}", database_url)
    finally:
        await server.stop()


async def test_reads_over_the_api_print_what_the_database_shows(served: Served) -> None:
    api = served.api
    await api.start("cli-1")
    parked = await api.parked("cli-2")
    await api.client.post(f"/api/sagas/{parked}/retry", json={"reason": "again"})
    commands = [
        ("status", "cli-2", "--json"),
        ("status", str(parked)),
        ("list", "--json"),
        ("list",),
        ("history", "cli-2", "--json"),
        ("history", str(parked)),
        ("status", "cli-2", "--wide"),
        ("history", "cli-2", "--wide"),
    ]
    runs = await asyncio.gather(
        *(served.saga(*c) for c in commands), *(served.saga(*c, url=False) for c in commands)
    )
    over_api, on_database = runs[: len(commands)], runs[len(commands) :]
    for command, (code, out, err), expected in zip(commands, over_api, on_database, strict=True):
        assert code == 0, (command, err)
        assert expected[0] == 0, (command, expected[2])
        assert out == expected[1], command
    assert [s["key"] for s in json.loads(over_api[2][1])] == ["cli-2", "cli-1"]


def row(shown: str, step: str) -> str:
    """The line of `saga status` for `step`."""
    [line] = [line for line in shown.splitlines() if line.startswith(f"{step} ")]
    return line


async def test_status_shows_how_each_compensation_went(served: Served) -> None:
    """On both paths: a parked compensation, one compensated after an operator's retry, one
    marked done by hand, and a step that needed no undo."""
    api = served.api
    parked = await api.parked_compensating("u-1")
    retried = await api.parked_compensating("u-2")
    await api.client.post(f"/api/sagas/{retried}/retry", json={"reason": "again"})
    await api.reply(retried, "reserve_credit", kind="compensation", result={"released": 1})
    marked = await api.parked_compensating("u-3")
    await api.client.post(
        f"/api/sagas/{marked}/mark-compensated", json={"reason": "released by hand", "who": "ann"}
    )
    keys = ("u-1", "u-2", "u-3")
    runs = await asyncio.gather(
        *(served.saga("status", k) for k in keys),
        *(served.saga("status", k, url=False) for k in keys),
    )
    assert all(code == 0 for code, _, _ in runs), [err for _, _, err in runs]
    over_api, on_database = [out for _, out, _ in runs[:3]], [out for _, out, _ in runs[3:]]
    assert over_api == on_database
    u1, u2, u3 = over_api
    assert f"{parked}  key=u-1  status=failed" in u1
    assert "compensation" in u1.splitlines()[2]  # the column's header
    assert row(u1, "reserve_credit").endswith("parked after 1 attempt; last failure: no")
    # The action's outcome stays in its column: reserve_stock's refusal, reserve_credit's
    # (empty) result, not the compensation's failure.
    assert row(u1, "reserve_stock").split() == ["reserve_stock", "failed", "1", "no"]
    assert row(u1, "reserve_credit").split()[:4] == [
        "reserve_credit",
        "compensating",
        "1",
        "parked",
    ]
    assert "status=compensated" in u2
    assert row(u2, "reserve_credit").endswith("compensated (2 attempts); last failure: no")
    assert row(u3, "reserve_credit").endswith(
        "marked compensated by api:ann: released by hand; last failure: no"
    )
    assert row(u3, "charge_payment").split() == ["charge_payment", "pending", "0"]


async def test_wide_status_and_history_print_everything_in_full(served: Served) -> None:
    api = served.api
    parked = await api.parked("w-1")
    note = "delivered by hand, signed for by the neighbour at number " + "1" * 60
    code, _, err = await served.saga(
        "skip", "w-1", "notify_customer", "--result", json.dumps({"note": note}), "-r", "phoned"
    )
    assert code == 0, err
    runs = await asyncio.gather(
        *(
            served.saga(c, "w-1", *wide, url=url)
            for c in ("status", "history")
            for wide in ((), ("--wide",))
            for url in (True, False)
        )
    )
    assert all(code == 0 for code, _, _ in runs), [err for _, _, err in runs]
    status, status_db, wide, wide_db, history, history_db, wide_history, wide_history_db = (
        out for _, out, _ in runs
    )
    assert (status, wide, history, wide_history) == (
        status_db,
        wide_db,
        history_db,
        wide_history_db,
    )
    # Cut short by default: the result in its cell, the skip's detail in the history.
    assert note not in status and "…" in row(status, "notify_customer")
    assert note not in history and "history:" not in status
    # In full with --wide: the result, the history below the steps, every detail whole.
    assert row(wide, "notify_customer").split()[:3] == ["notify_customer", "skipped", "1"]
    assert json.dumps({"note": note}) in row(wide, "notify_customer")
    steps, shown_history = wide.split("\nhistory:\n")
    assert f"{parked}  key=w-1  status=completed" in steps
    assert shown_history.strip() == wide_history.strip()
    skipped = [line for line in wide_history.splitlines() if " step_skipped " in line]
    assert len(skipped) == 1 and note in skipped[0] and '"reason":"phoned"' in skipped[0]


CARD, CVV, KEY, PASSWORD = "4111111111111111", "123", "k-9f2", "hunter2"


async def secret_saga(api: Api) -> UUID:
    """A vault saga with secrets in its input and its step's result, and a parked order saga
    skipped with a secret result (in its history's detail): the key `v-1` and `v-2`."""
    secret = {"user": "ann", "payment": {"Card_Number": CARD, "cvv": CVV}}
    saga_id = await api.start("v-1", secret, saga="vault")
    await api.reply(saga_id, "store_secret", result={"ok": True, "list": [{"api_key": KEY}]})
    parked = await api.parked("v-2")
    await api.client.post(
        f"/api/sagas/{parked}/skip",
        json={"step": "notify_customer", "result": {"password": PASSWORD}, "reason": "mailed"},
    )
    return saga_id


async def test_the_cli_masks_on_the_database_as_the_api_does(served: Served) -> None:
    """`status` (table, --wide, --json, --json --wide), `list --json` and `history` (table,
    --wide, --json) print the same on both paths, with every value SAGA_REDACT_FIELDS names
    masked; the database keeps the values."""
    vault_id = await secret_saga(served.api)
    commands = [
        ("status", "v-1"),
        ("status", "v-1", "--wide"),
        ("status", "v-1", "--json"),
        ("status", "v-2", "--json", "--wide"),
        ("list", "--json"),
        ("history", "v-2"),
        ("history", "v-2", "--wide"),
        ("history", "v-2", "--json"),
    ]
    runs = await asyncio.gather(
        *(served.saga(*c) for c in commands), *(served.saga(*c, url=False) for c in commands)
    )
    assert all(code == 0 for code, _, _ in runs), [err for _, _, err in runs]
    over_api, on_database = runs[: len(commands)], runs[len(commands) :]
    for command, (_, out, _), (_, expected, err) in zip(
        commands, over_api, on_database, strict=True
    ):
        assert out == expected, command
        assert not {CARD, CVV, KEY, PASSWORD} & set(re.findall(r"\w+", out)), command
        assert "saga_data_revealed" not in err
    status = json.loads(on_database[2][1])
    assert status["input"] == {"user": "ann", "payment": {"Card_Number": "***", "cvv": "***"}}
    assert status["steps"][0]["result"] == {"ok": True, "list": [{"api_key": "***"}]}
    [skip] = [h for h in json.loads(on_database[7][1]) if h["event"] == "step_skipped"]
    assert skip["detail"]["result"] == {"password": "***"}
    assert '"password": "***"' in json.dumps(json.loads(on_database[3][1])["history"])
    stored = await served.api.store.get(vault_id)
    assert stored is not None and stored.input["payment"]["cvv"] == CVV


async def test_reveal_shows_the_values_on_the_database_and_logs_who_and_which_saga(
    served: Served,
) -> None:
    vault_id = await secret_saga(served.api)
    parked = (await served.api.store.find(SagaQuery(key="v-2", limit=1)))[0].saga_id
    status = await served.saga("status", "v-1", "--json", "--reveal", url=False)
    history = await served.saga("history", "v-2", "--reveal", "--wide", url=False)
    listed = await served.saga("list", "--json", "--reveal", url=False)
    assert [code for code, _, _ in (status, history, listed)] == [0, 0, 0]
    shown = json.loads(status[1])
    assert shown["input"]["payment"] == {"Card_Number": CARD, "cvv": CVV}
    assert shown["steps"][0]["result"]["list"] == [{"api_key": KEY}]
    assert PASSWORD in history[1]
    assert {s["key"] for s in json.loads(listed[1])} == {"v-1", "v-2"}
    assert CVV in listed[1]
    reveals = [revealed(err) for _, _, err in (status, history, listed)]
    who = getpass.getuser()
    assert reveals[0] == {"who": who, "command": "status", "saga_ids": [str(vault_id)]}
    assert reveals[1] == {"who": who, "command": "history", "saga_ids": [str(parked)]}
    assert reveals[2]["command"] == "list"
    assert set(reveals[2]["saga_ids"]) == {str(vault_id), str(parked)}
    # Over the API there is nothing to reveal: the API masks for every caller.
    for command in (("status", "v-1"), ("history", "v-1"), ("list", "--json")):
        code, out, err = await served.saga(*command, "--reveal")
        assert (code, out) == (2, ""), command
        assert "--reveal reads the database" in err


def revealed(err: str) -> dict[str, Any]:
    """The `saga_data_revealed` log line of a command's standard error (JSON lines)."""
    [line] = [json.loads(x) for x in err.splitlines() if "saga_data_revealed" in x]
    assert line["level"] == "warning"
    return {k: line[k] for k in ("who", "command", "saga_ids")}


async def test_list_filters_over_the_api(served: Served) -> None:
    api = served.api
    await api.start("f-1")
    await api.parked("f-2")
    await api.start("f-3", version=1)

    async def keys(*args: str) -> list[str]:
        code, out, err = await served.saga("list", "--json", *args)
        assert code == 0, err
        return [s["key"] for s in json.loads(out)]

    found = await asyncio.gather(
        keys("--status", "failed"),
        keys("--step", "reserve_credit"),
        keys("--version", "1"),
        keys("--key", "f-1"),
        keys("--in-status-for", "60"),
        keys("--created-after", "2000-01-01T00:00:00", "--created-before", "2999-01-01"),
        keys("--limit", "2"),
    )
    assert found == [
        ["f-2"],
        ["f-3", "f-1"],
        ["f-3"],
        ["f-1"],
        [],
        ["f-3", "f-2", "f-1"],
        ["f-3", "f-2"],
    ]
    code, _out, err = await served.saga("list", "--created-after", "last tuesday")
    assert code == 2 and "ISO 8601" in err


async def test_actions_over_the_api_and_their_exit_codes(served: Served) -> None:
    api = served.api
    running = await api.start("a-1")
    past_pivot = await api.past_pivot("a-2")
    parked = await api.parked("a-3")
    undoing = await api.parked_compensating("a-4")

    code, out, _ = await served.saga("pause", "a-1", "--reason", "look", "--who", "ann")
    assert (code, out.strip()) == (0, f"{running}: paused")
    code, out, _ = await served.saga("resume", str(running), "-r", "go")
    assert (code, out.strip()) == (0, f"{running}: running")
    code, _, err = await served.saga("resume", "a-1", "-r", "again")  # refused: 1
    assert code == 1 and "refused: only a paused saga can be resumed" in err
    code, _, err = await served.saga("cancel", "a-2", "--reason", "too late")
    assert code == 1 and "past the pivot" in err and "'charge_payment'" in err
    code, out, _ = await served.saga(
        "skip", "a-3", "notify_customer", "--result", '{"sent": "by hand"}', "-r", "phoned"
    )
    assert (code, out.strip()) == (0, f"{parked}: completed")
    code, out, _ = await served.saga("mark-compensated", "a-4", "-r", "done by hand")
    assert (code, out.strip()) == (0, f"{undoing}: compensated")
    code, out, _ = await served.saga("cancel", "a-1", "--reason", "customer", "--who", "bo")
    assert (code, out.strip()) == (0, f"{running}: compensating")

    history = (await api.client.get(f"/api/sagas/{running}/history")).json()["items"]
    actors = {h["event"]: h["actor"] for h in history}
    assert actors["saga_paused"] == "api:ann" and actors["saga_cancel_accepted"] == "api:bo"
    assert past_pivot  # untouched by the refused cancel


async def test_bulk_actions_over_the_api_print_counts_and_refusals(served: Served) -> None:
    api = served.api
    parked = sorted([str(await api.parked(f"bk-{n}")) for n in range(3)])
    running = await api.start("bk-running")

    code, out, err = await served.saga(
        "retry", "--status", "failed", "--step", "notify_customer", "-r", "mail", "--dry-run"
    )
    first, second = out.splitlines()
    assert (code, first) == (
        0,
        "dry run, nothing changed: retry: 3 saga(s) matched, 3 would be acted on, "
        "0 would be refused",
    ), err
    assert sorted(second.removeprefix("would act on: ").split(", ")) == parked
    history = (await api.client.get(f"/api/sagas/{parked[0]}/history")).json()["items"]
    assert "saga_retried" not in [h["event"] for h in history]

    code, out, err = await served.saga(
        "retry", "--saga", "order", "-r", "mail is back", "--who", "ann"
    )
    lines = out.splitlines()
    assert (code, lines[0]) == (
        1,
        "retry: 4 saga(s) matched, 3 acted on, 1 refused (not_applicable 1)",
    ), err
    assert lines[2:] == [
        "refused:",
        f"  {running} (order bk-running) not_applicable: only a failed (parked) saga can be "
        "retried; it is running",
    ]
    history = (await api.client.get(f"/api/sagas/{parked[0]}/history")).json()["items"]
    [retried] = [h for h in history if h["event"] == "saga_retried"]
    assert (retried["actor"], retried["detail"]) == ("api:ann", {"reason": "mail is back"})

    code, out, err = await served.saga(
        "cancel", "--status", "running", "--key", "bk-running", "--reason", "recall"
    )
    assert (code, out.splitlines()[0]) == (0, "cancel: 1 saga(s) matched, 1 acted on, 0 refused")
    code, out, err = await served.saga("pause", "--saga", "order", "-r", "x", "--limit", "2")
    assert out.splitlines()[-1] == (
        "more sagas match beyond --limit 2: run the command again for the next ones"
    )
    code, _, err = await served.saga("retry", "--status", "failed", "-r", "x", token=READER)
    assert code == 2 and "has the read role" in err


async def test_a_cancel_by_an_unknown_key_is_refused_unless_held(served: Served) -> None:
    code, out, err = await served.saga("cancel", "typo-9", "--reason", "oops")
    assert (code, out) == (3, "")
    assert "no saga has key 'typo-9'" in err and "--hold" in err
    key = "later/9?x#y"  # what a URL path must escape
    code, out, err = await served.saga("cancel", key, "--hold", "--reason", "changed mind")
    assert (code, out.strip()) == (
        0,
        f"no saga has key {key!r} yet: the cancel is held and applies when a start with this "
        "key arrives",
    ), err
    started = await served.api.client.post(
        "/api/sagas", json={"saga": "order", "key": key, "input": order_input("later-9")}
    )
    assert started.json()["status"] == "cancelled"


async def test_exit_codes_say_what_went_wrong(served: Served) -> None:
    await served.api.start("e-1")
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing serves it once closed
    results = await asyncio.gather(
        served.saga("status", "nobody"),  # not found: 3
        served.saga("status", "e-1", token=None),  # no token: 2
        served.saga("status", "e-1", token="wrong"),  # unknown token: 2
        served.saga("pause", "e-1", "-r", "x", token=READER),  # read role: 2
        served.saga("history", "e-1", "--url", closed),  # unreachable: 4
    )
    assert [code for code, _, _ in results] == [3, 2, 2, 2, 4]
    errors = [err for _, _, err in results]
    assert "no saga has key 'nobody'" in errors[0]
    assert "Authorization: Bearer" in errors[1]
    assert "has the read role" in errors[3]
    assert "cannot reach the API" in errors[4]
    assert all(OPERATOR not in e and READER not in e for e in errors)


async def test_start_over_the_api_says_what_the_start_came_to(served: Served) -> None:
    order = json.dumps(order_input("st-1"))
    other = json.dumps(order_input("st-1", amount="99.00"))
    code, out, err = await served.saga("start", "order", "--key", "st-1", "--input", order)
    assert (code, out.strip(), err) == (0, "st-1", "")
    [saga] = (await served.api.client.get("/api/sagas/by-key/st-1")).json()["items"]
    runs = await asyncio.gather(
        served.saga("start", "order", "--key", "st-1", "--input", order),  # a repeat: 0
        served.saga("start", "nosuch", "--input", order),  # unknown saga: 2
        served.saga("start", "order", "--input", '{"order_id": "x"}'),  # invalid input: 2
    )
    assert [code for code, _, _ in runs] == [0, 2, 2]
    assert f"key 'st-1' has saga {saga['saga_id']} (running) already, with this input" in runs[0][2]
    assert "no saga named 'nosuch'; known: exclusive, order, patient, receipt, vault" in runs[1][2]
    assert "input for saga 'order' is invalid: customer_id: Field required" in runs[2][2]
    # The key again, with other input: started nothing, and says so (and the history has it).
    code, out, err = await served.saga("start", "order", "--key", "st-1", "--input", other)
    assert (code, out.strip()) == (0, "st-1")
    assert f"warning: key 'st-1' has saga {saga['saga_id']} (running) already" in err
    assert "started with other input: nothing new was started" in err
    history = (await served.api.client.get(f"/api/sagas/{saga['saga_id']}/history")).json()
    assert [h["event"] for h in history["items"]].count("start_repeated") == 1
    found = (await served.api.client.get("/api/sagas", params={"saga": "order"})).json()
    assert [s["key"] for s in found["items"]] == ["st-1"]  # the bad starts started nothing


@pytest.fixture
async def served_v4(make_api: Any, database_url: str) -> AsyncIterator[Served]:
    """The API of an orchestrator that loads the order saga v4 (a review for big orders)."""
    api: Api = await make_api(
        api_tokens=TOKENS,
        headers={"Authorization": f"Bearer {OPERATOR}"},
        sagas=(order.saga,),
    )
    server = await serve(api.app, listen(Bind("127.0.0.1", 0)))
    try:
        yield Served(api, f"http://{server.address}", database_url)
    finally:
        await server.stop()


async def test_a_waiting_saga_shows_alike_on_both_paths_and_takes_a_signal(
    served_v4: Served,
) -> None:
    served = served_v4
    saga_id = await at_review(served.api, "sig-1")
    await served.api.start("sig-2", order_input("sig-2", amount="2500.00"))  # reserving
    commands = [
        ("status", "sig-1"),
        ("status", "sig-1", "--json"),
        ("list",),
        ("list", "--json"),
        ("list", "--waiting-for", "fraud_review", "--json"),
    ]
    runs = await asyncio.gather(
        *(served.saga(*c) for c in commands), *(served.saga(*c, url=False) for c in commands)
    )
    assert all(code == 0 for code, _, _ in runs), [err for _, _, err in runs]
    over_api, on_database = [out for _, out, _ in runs[:5]], [out for _, out, _ in runs[5:]]
    assert over_api == on_database
    status, status_json, listed, _, waiting = over_api
    assert re.search(
        r"fraud_review +running +0 +waiting for signal fraud_review since \S+ \S+ UTC, "
        r"until \S+ \S+ UTC",
        status,
    ), status
    assert "payloads" not in status
    shown = json.loads(status_json)
    assert shown["waiting_for"] == ["fraud_review"]
    wait = next(s for s in shown["steps"] if s["name"] == "fraud_review")["wait"]
    assert (wait["stage"], wait["timeout"], wait["signal_id"]) == ("waiting", 86400.0, None)
    assert "fraud_review (waits for signal)" in row(listed, str(saga_id))
    assert [s["key"] for s in json.loads(waiting)] == ["sig-1"]

    code, out, err = await served.saga(
        "signal", "sig-1", "fraud_review", "--payload", json.dumps(APPROVED), "--who", "ann"
    )
    assert code == 0, err
    said = re.fullmatch(
        rf"{saga_id}: signal fraud_review \(id (\S+)\) taken; the saga is running\n", out
    )
    assert said is not None, out
    again = await served.saga(
        "signal", str(saga_id), "fraud_review", "--payload", "{}", "--id", said.group(1)
    )
    assert again[:2] == (
        0,
        f"{saga_id}: signal fraud_review (id {said.group(1)}) was held or taken already: "
        "nothing changed\n",
    )
    held = await served.saga(
        "signal", "sig-2", "fraud_review", "--payload", json.dumps(APPROVED), "--id", "early"
    )
    assert held[0] == 0 and "(id early) held: taken when its wait begins" in held[1]
    code, out, _ = await served.saga("status", "sig-2")
    assert "signal fraud_review held (id early, received " in row(out, "fraud_review")
    history = (await served.api.client.get(f"/api/sagas/{saga_id}/history")).json()["items"]
    assert next(h for h in history if h["event"] == "wait_finished")["actor"] == "api:ann"


async def test_signal_exit_codes_over_the_api(served_v4: Served) -> None:
    await at_review(served_v4.api, "sig-3")
    results = await asyncio.gather(
        served_v4.saga("signal", "sig-3", "fraud_review", "--payload", '{"approved": 1.5}'),
        served_v4.saga("signal", "sig-3", "refund"),
        served_v4.saga("signal", "nobody", "fraud_review"),
        served_v4.saga("signal", "sig-3", "fraud_review", "--payload", "{"),
        served_v4.saga("signal", "sig-3", "Fraud-Review"),
        served_v4.saga("signal", "sig-3", "fraud_review", token=READER),
    )
    assert [code for code, _, _ in results] == [1, 1, 3, 2, 2, 2]
    errors = [err for _, _, err in results]
    assert "refused: the payload does not match FraudReview: approved:" in errors[0]
    assert "(reason invalid_payload; signal id " in errors[0]
    assert "it waits for: fraud_review (reason not_waited_for" in errors[1]
    assert "error: no saga has key 'nobody' (reason unknown_saga" in errors[2]
    assert "--payload is not valid JSON" in errors[3]
    assert "String should match pattern" in errors[4]
    assert "has the read role" in errors[5]
