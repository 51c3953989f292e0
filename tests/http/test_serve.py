"""`saga run` serves the API from its own event loop, and refuses to serve it to the network
without tokens: checked before it connects to anything."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import httpx
import pytest
from pydantic import SecretStr

from adapters.http.serve import (
    Bind,
    HttpSetupError,
    UnsafeBind,
    http_plan,
    listen,
    parse_bind,
)
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from adapters.settings import Settings
from tests.http.conftest import OPERATOR, READER, TOKENS, order_input


def plan(bind: str, tokens: str = "") -> Bind | None:
    return http_plan(Settings(http_bind=bind, api_tokens=SecretStr(tokens)))


def test_loopback_needs_no_tokens() -> None:
    for bind in ("127.0.0.1:8080", "127.9.9.9:1", "localhost:8080", "[::1]:8080"):
        found = plan(bind)
        assert found is not None and found.loopback
    assert plan("") is None and plan("  ") is None  # no HTTP at all
    assert parse_bind("[::1]:9") == Bind("::1", 9)


def test_any_other_address_needs_tokens() -> None:
    for bind in ("0.0.0.0:8080", "[::]:8080", "10.1.2.3:80", "api.internal:8080"):
        with pytest.raises(UnsafeBind, match="set SAGA_API_TOKENS") as refused:
            plan(bind)
        assert "127.0.0.1" in str(refused.value)
        found = plan(bind, TOKENS)
        assert found is not None and not found.loopback


def test_a_malformed_bind_or_token_list_is_refused_clearly() -> None:
    for bind in ("8080", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":8080"):
        with pytest.raises(HttpSetupError, match="is not host:port"):
            plan(bind)
    with pytest.raises(HttpSetupError, match="entry 2") as refused:
        plan("127.0.0.1:8080", f"a:read:x,b:root:{OPERATOR}")
    assert OPERATOR not in str(refused.value)


async def test_saga_run_serves_the_api_in_its_loop_and_stops_it(
    database_url: str, amqp_url: str, topology: Topology
) -> None:
    settings = Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_prefix=topology.prefix,
        http_bind="127.0.0.1:0",  # any free port
        api_tokens=SecretStr(TOKENS),
    )
    orchestrator = Orchestrator(settings)
    await orchestrator.start()
    try:
        assert orchestrator.http is not None
        url = f"http://{orchestrator.http.address}"
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/api/sagas")).status_code == 401
            started = await client.post(
                "/api/sagas",
                json={"saga": "order", "key": "served", "input": order_input("served")},
                headers={"Authorization": f"Bearer {OPERATOR}"},
            )
            assert started.status_code == 201, started.text
            saga = await client.get(
                f"/api/sagas/{started.json()['saga_id']}",
                headers={"Authorization": f"Bearer {READER}"},
            )
            assert saga.json()["status"] == "running"
            assert (await client.get("/openapi.json")).json()["info"]["title"]
    finally:
        await orchestrator.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/healthz")


async def saga_run(env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        "run",
        env={**os.environ, "SAGA_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_saga_run_refuses_a_public_address_without_tokens() -> None:
    # Nothing listens on port 9 of loopback: had it connected first, this would be a
    # database error, not the refusal.
    code, err = await saga_run(
        {
            "SAGA_HTTP_BIND": "0.0.0.0:8080",
            "SAGA_API_TOKENS": "",
            "SAGA_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",
            "SAGA_AMQP_URL": "amqp://nobody:x@127.0.0.1:9/",
        }
    )
    assert code == 2
    assert "refusing to serve the HTTP API on 0.0.0.0:8080" in err
    assert "set SAGA_API_TOKENS" in err and "bind 127.0.0.1" in err


async def test_saga_run_says_when_its_port_is_taken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, err = await saga_run(
            {
                "SAGA_HTTP_BIND": f"127.0.0.1:{port}",
                "SAGA_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",
            }
        )
    assert code == 2
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in err and "SAGA_HTTP_BIND" in err


def test_accepted_connections_send_without_waiting_for_acks() -> None:
    """TCP_NODELAY on the listening socket, which accepted connections inherit: without it a
    keep-alive GET waited ~40 ms for the client's delayed ACK (bench/GROWTH.md)."""
    server = listen(Bind("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname()[:2])
    try:
        server.setblocking(True)
        accepted, _ = server.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.close()
        server.close()
