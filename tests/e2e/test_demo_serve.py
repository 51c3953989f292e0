"""`saga demo --serve` as a newcomer runs it: the demo's summary, then the dashboard's address;
the dashboard answers there and lists the demo's sagas; Ctrl-C (SIGINT) stops the orchestrator
and the shop and the demo exits 0. On databases of the test's own (the engine's and the
shop's, dropped afterwards) and a broker prefix of its own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import make_url

from adapters.rabbitmq.topology import Topology
from tests.fixtures.databases import drop_database
from tests.fixtures.postgres import SERVER_URL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ADDRESS = re.compile(r"^dashboard: (http://127\.0\.0\.1:\d+/)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def databases() -> AsyncIterator[tuple[str, str]]:
    """URLs of an engine database and a shop database nobody else uses (the demo creates
    them), dropped at the end."""
    run = uuid.uuid4().hex[:10]
    urls = tuple(
        make_url(SERVER_URL).set(database=f"{kind}_{run}").render_as_string(hide_password=False)
        for kind in ("demo_saga", "demo_shop")
    )
    yield urls[0], urls[1]
    for url in urls:
        await drop_database(url)


async def test_demo_serve_keeps_the_dashboard_until_ctrl_c(
    databases: tuple[str, str], topology: Topology
) -> None:
    engine_url, shop_url = databases
    env = {
        **os.environ,
        "SAGA_DATABASE_URL": engine_url,
        "SHOP_DATABASE_URL": shop_url,
        "SAGA_AMQP_PREFIX": topology.prefix,
        "SAGA_HTTP_BIND": f"127.0.0.1:{free_port()}",
        "SAGA_API_TOKENS": "",
        "PYTHONUNBUFFERED": "1",
    }
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        "demo",
        "--orders",
        "8",
        "--serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert demo.stdout is not None
    shown: list[str] = []
    try:
        url = await asyncio.wait_for(_address(demo.stdout, shown), timeout=120)
        assert "overall: OK" in "\n".join(shown)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            page = await http.get("/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            listed = (await http.get("/api/sagas", params={"limit": 100})).json()["items"]
            assert len(listed) >= 8  # the demo's orders (and the late cancel's)
            assert (await http.get("/readyz")).status_code == 200
        assert demo.returncode is None  # still serving: the demo waits for Ctrl-C
        demo.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(demo.communicate(), timeout=60)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    rest = out.decode()
    assert demo.returncode == 0, (rest, err.decode()[-3000:])
    assert "stopping the orchestrator and the shop" in rest
    assert "Traceback" not in err.decode()
    async with httpx.AsyncClient(base_url=url, timeout=2) as http:
        with pytest.raises(httpx.HTTPError):  # the orchestrator stopped with the demo
            await http.get("/healthz")


async def _address(stdout: asyncio.StreamReader, shown: list[str]) -> str:
    """Read the demo's output up to the dashboard's address line; the address."""
    while line := (await stdout.readline()).decode():
        shown.append(line.rstrip("\n"))
        found = ADDRESS.match(shown[-1])
        if found:
            return found.group(1)
    raise AssertionError("the demo ended without an address:\n" + "\n".join(shown))
