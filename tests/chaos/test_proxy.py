"""The chaos proxy does what the harness's network faults rely on: it passes bytes both ways,
adds latency, resets every connection at once, and holds traffic during a stall."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.chaos.proxy import FaultyProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultyProxy]:
    p = FaultyProxy("echo", echo_port)
    await p.start()
    yield p
    await p.stop()


async def round_trip(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bytes:
    writer.write(b"ping")
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(4), 5)


async def test_bytes_pass_both_ways(proxy: FaultyProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    assert await round_trip(writer, reader) == b"ping"
    writer.close()


async def test_latency_delays_each_direction(proxy: FaultyProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    await round_trip(writer, reader)
    proxy.delay = 0.1
    began = time.monotonic()
    assert await round_trip(writer, reader) == b"ping"
    assert time.monotonic() - began >= 0.2  # there and back
    writer.close()


async def test_reset_all_breaks_every_connection(proxy: FaultyProxy) -> None:
    links = [await asyncio.open_connection("127.0.0.1", proxy.listen_port) for _ in range(3)]
    for reader, writer in links:
        await round_trip(writer, reader)
    assert proxy.reset_all() == 3
    for reader, _ in links:
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)


async def test_a_stall_holds_traffic_then_resets(proxy: FaultyProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    await round_trip(writer, reader)
    stall = asyncio.create_task(proxy.stall(0.5))
    await asyncio.sleep(0)  # let the stall begin before the next write
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)  # nothing comes back meanwhile
    assert await stall == 1
