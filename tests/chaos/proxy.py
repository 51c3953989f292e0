"""A TCP proxy on loopback in front of a server, that the processes under test connect
through, and that can make the network misbehave on command:

- `delay`: every chunk waits this long before it is passed on (both ways; order kept);
- `stall(seconds)`: nothing is passed on and no new connection reaches the server for that
  long, as if the cable were cut (a blackhole: no FIN, no RST, the bytes just stop), then
  every connection is reset;
- `reset_all()`: every open connection is closed with an RST at once (SO_LINGER 0), as a
  crashed NAT box or a broken link does.

It runs on the harness's event loop; faults are method calls."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

CHUNK = 65536


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultyProxy:
    def __init__(self, name: str, target_port: int, listen_port: int = 0) -> None:
        self.name = name
        self.target_port = target_port
        self.listen_port = listen_port
        self.delay = 0.0
        self.connections = 0
        self.resets = 0
        self._open = asyncio.Event()
        self._open.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        log.info("chaos_proxy_started", proxy=self.name, port=self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset_all()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def reset_all(self) -> int:
        """RST every connection now; returns how many there were."""
        links = list(self._links)
        for link in links:
            self._drop(link)
        self.resets += len(links)
        return len(links)

    async def stall(self, seconds: float) -> int:
        """Pass nothing on for `seconds`, then reset every connection; returns how many."""
        self._open.clear()
        try:
            await asyncio.sleep(seconds)  # the length of the outage, not a wait for anything
        finally:
            self._open.set()
        return self.reset_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        self.connections += 1
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except (OSError, asyncio.CancelledError):
            self._drop(link)
            return
        link.server = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if not self._open.is_set():
                    await self._open.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)  # injected latency
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError, asyncio.CancelledError):
            # RuntimeError: uvloop's word for a write to a transport reset meanwhile.
            pass
        finally:
            self._drop(link, cancel_pumps=False)

    def _drop(self, link: _Link, *, cancel_pumps: bool = True) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for writer in (link.client, link.server):
            if writer is not None:
                _reset(writer)
        if cancel_pumps:
            for task in link.tasks:
                task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger on with a timeout of 0: close() sends an RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
