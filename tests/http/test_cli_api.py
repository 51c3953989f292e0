"""`saga list/status/history/cancel/...` with `--url`: the CLI as a subprocess, talking to the
API served over real HTTP (uvicorn in the test's loop) on a real database. Over the API a
command prints what it prints from the database, and its exit code says what happened."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.http.serve import Bind, listen, serve
from tests.http.conftest import OPERATOR, READER, TOKENS, Api


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
