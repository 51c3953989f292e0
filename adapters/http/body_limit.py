"""A cap on request bodies, counted on the bytes that arrive, not only on Content-Length:
a chunked upload (no length) or a client that understates its length is cut off as soon as
it passes the cap, before the body is parsed, so memory stays bounded."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.http.problems import problem


class BodyTooLarge(HTTPException):
    """Raised while the body is read; answered as a 413 problem (problems.py).

    FastAPI's HTTPException, not Starlette's: FastAPI turns any other error raised while it
    reads a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _advice(limit))


def _advice(limit: int) -> str:
    return (
        f"the request body is larger than this API accepts ({limit} bytes, SAGA_HTTP_MAX_BODY); "
        "send less, e.g. put large data elsewhere and pass a reference in the saga's input"
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                response = problem(
                    400, "bad-request", "Bad request", "Content-Length is not a byte count"
                )
                await response(scope, receive, send)
                return
            if length > self.limit:
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except BodyTooLarge:
            # Read by something that lets exceptions through (not a FastAPI route).
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413, "body-too-large", "Request body too large", _advice(self.limit), Connection="close"
        )
        await response(scope, receive, send)
