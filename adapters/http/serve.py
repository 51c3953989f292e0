"""Serving the app from `saga run`: uvicorn inside the orchestrator's own event loop.

The socket is bound here, before uvicorn starts, so a taken port or a bad address fails
start-up with an OSError saying so (uvicorn itself would `sys.exit` from deep inside), and
port 0 (any free port) can be read back. uvicorn is kept from installing signal handlers:
the orchestrator owns SIGTERM and SIGINT and stops the server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Generator
from dataclasses import dataclass

import structlog
import uvicorn
from fastapi import FastAPI

from adapters.http.auth import Tokens
from adapters.settings import Settings

log = structlog.get_logger(__name__)


class HttpSetupError(Exception):
    """HTTP cannot be served as configured; the message says what to change."""


class UnsafeBind(HttpSetupError):
    """The API would listen beyond this machine with no tokens to check: refused."""


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind(value: str) -> Bind:
    """`host:port`, `[v6]:port`. Raises HttpSetupError saying what is wrong."""
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise HttpSetupError(
            f"SAGA_HTTP_BIND={value!r} is not host:port (e.g. 127.0.0.1:8080, [::1]:8080); "
            "empty serves no HTTP"
        )
    return Bind(host, int(port))


def http_plan(settings: Settings) -> Bind | None:
    """Where `saga run` serves HTTP (None: it does not), checked before anything connects.

    Raises UnsafeBind for a host other than loopback without SAGA_API_TOKENS, and
    HttpSetupError for a malformed bind or token list."""
    if not settings.http_bind.strip():
        return None
    bind = parse_bind(settings.http_bind)
    try:
        tokens = Tokens(settings.api_tokens)
    except ValueError as exc:
        raise HttpSetupError(str(exc)) from exc
    if not bind.loopback and not tokens:
        raise UnsafeBind(
            f"refusing to serve the HTTP API on {bind}, which is reachable from other "
            "machines, without tokens: set SAGA_API_TOKENS (name:role:token,...), or bind "
            "127.0.0.1 (SAGA_HTTP_BIND=127.0.0.1:8080), or set SAGA_HTTP_BIND= to serve no HTTP"
        )
    return bind


class _Embedded(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the orchestrator handles signals (runtime.run_until_signalled)


class HttpServer:
    """A running server; `stop()` finishes the requests in flight (up to a few seconds)."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], address: Bind) -> None:
        self._server = server
        self._task = task
        self.address = address

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        log.info("http_stopped", address=str(self.address))


def listen(bind: Bind) -> socket.socket:
    """A listening socket on `bind`; raises HttpSetupError when the address is taken or
    not this machine's."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    try:
        sock = socket.create_server((bind.host, bind.port), family=family)
    except OSError as exc:
        raise HttpSetupError(
            f"cannot serve HTTP on {bind}: {exc.strerror or exc}; set SAGA_HTTP_BIND to "
            "another host:port, or to nothing (SAGA_HTTP_BIND=) to serve no HTTP"
        ) from exc
    sock.setblocking(False)
    # Accepted connections inherit it (Linux). asyncio sets it only on sockets it creates,
    # and without it a keep-alive GET waited ~40 ms for the delayed ACK (bench/GROWTH.md).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def serve(app: FastAPI, sock: socket.socket) -> HttpServer:
    """Serve `app` on the listening `sock` from a task of the running loop."""
    config = uvicorn.Config(
        app,
        log_config=None,  # our structlog line per request (app.RequestLog) instead
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = _Embedded(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    host, port = sock.getsockname()[:2]
    address = Bind(host, port)
    log.info("http_serving", address=str(address), url=f"http://{address}/")
    return HttpServer(server, task, address)
