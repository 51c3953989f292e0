"""The participant SDK core: command handlers in, replies out. No broker, no environment.

A participant service registers one async function per command name and answers every
command with a reply, so the saga can always move on:

    payments = Participant("payments")

    @payments.handler("payments.charge")
    async def charge(command: Command) -> dict[str, Any] | None:
        if not await has_funds(command.payload):
            raise StepFailed("insufficient_funds", "card declined", retryable=False)
        return {"charge_id": ...}

Handlers run at least once per command (a crash before the reply is acked redelivers it);
use `command.idempotency_key` to make the effect happen once.

A handler gets the step's start-to-close timeout (`command.timeout`) and no more: past it,
it is cancelled (its `finally` blocks run, its transaction rolls back) and the reply is a
retryable `timeout` failure. While it runs, the transport sends heartbeats (`heartbeats()`
below): they tell the orchestrator the process is alive and carry `report_progress`
checkpoints, but never buy the handler more time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

import pydantic_core
import structlog

from orchestrator.errors import DefinitionError
from orchestrator.messages import COMMAND_RE, Command, Reply, ReplyError, aware_utc

log = structlog.get_logger(__name__)

CommandHandler = Callable[[Command], Awaitable[dict[str, Any] | None]]
H = TypeVar("H", bound=CommandHandler)

# ReplyError's field limits; longer text would make the reply itself invalid.
_MAX_TYPE = 200
_MAX_MESSAGE = 10_000

MIN_HEARTBEAT_INTERVAL = 0.05
MAX_HEARTBEAT_INTERVAL = 10.0

SendReply = Callable[[Reply], Awaitable[None]]


class StepFailed(Exception):
    """A business failure a handler reports on purpose, e.g. "insufficient_funds".

    `retryable=False` tells the orchestrator that trying again cannot help, so it compensates
    at once instead of spending the step's retries.
    """

    def __init__(self, type: str, message: str = "", *, retryable: bool = True) -> None:
        super().__init__(message or type)
        self.type = type
        self.message = message
        self.retryable = retryable


class Participant:
    """The handlers of one participant service, keyed by command name."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._handlers: dict[str, CommandHandler] = {}

    def __repr__(self) -> str:
        return f"Participant({self.service!r}, commands={self.commands()})"

    def handler(self, command: str) -> Callable[[H], H]:
        """Register an async function as the handler of `command` (e.g. "payments.charge")."""
        if not COMMAND_RE.match(command):
            raise DefinitionError(
                f"participant {self.service!r}: {command!r} is not a valid command name: use "
                "'<service>.<command>' in lowercase, e.g. 'payments.charge'"
            )
        if command in self._handlers:
            raise DefinitionError(
                f"participant {self.service!r}: {command!r} has a handler already "
                f"({_name(self._handlers[command])}); register one handler per command"
            )

        def register(fn: H) -> H:
            # Through a bool: the TypeGuard would otherwise narrow `fn` away from H.
            is_async: bool = inspect.iscoroutinefunction(fn)
            if not is_async:
                raise DefinitionError(
                    f"participant {self.service!r}: the handler of {command!r} must be an "
                    f"'async def' function, got {fn!r}"
                )
            self._handlers[command] = fn
            return fn

        return register

    def commands(self) -> list[str]:
        return sorted(self._handlers)

    def services(self) -> set[str]:
        """The services whose command queues this participant consumes."""
        return {c.split(".", 1)[0] for c in self._handlers}

    @staticmethod
    def expired(command: Command, now: datetime) -> bool:
        """Received at or past its `expires_at`: refused, not run."""
        return aware_utc(now) >= aware_utc(command.expires_at)

    async def handle(self, command: Command, now: datetime) -> Reply:
        """Run the command's handler and turn whatever happened into a reply. Never raises
        (cancellation aside): every command gets an answer."""
        bound = log.bind(
            service=self.service,
            command=command.command,
            saga_id=str(command.saga_id),
            step=command.step,
            kind=command.kind,
            attempt=command.attempt,
        )
        handler = self._handlers.get(command.command)
        if handler is None:
            bound.warning("participant_command_unknown")
            return _failure(
                command,
                "unknown_command",
                f"participant {self.service!r} has no handler for {command.command!r}; "
                f"it handles {self.commands()}",
                retryable=False,
            )
        if self.expired(command, now) and not await _answered(handler, command):
            # The orchestrator has stopped waiting (or soon will): acting now would act on a
            # decision that may no longer hold. A retry gets a fresh command and deadline.
            bound.warning("participant_command_expired", expires_at=command.expires_at.isoformat())
            return _failure(
                command,
                "expired",
                f"command expired at {command.expires_at.isoformat()}, received at "
                f"{now.isoformat()}; not executed",
                retryable=True,
            )
        limit = asyncio.timeout(command.timeout)
        try:
            async with limit:
                result = await handler(command)
        except TimeoutError:
            if not limit.expired():
                bound.exception("participant_handler_crashed")  # the handler's own timeout
                return _failure(command, "TimeoutError", "a timeout inside the handler")
            bound.warning("participant_handler_timed_out", timeout=command.timeout)
            return _failure(
                command,
                "timeout",
                f"the handler ran past the step's start-to-close timeout of "
                f"{command.timeout:g}s and was cancelled",
                retryable=True,
            )
        except StepFailed as exc:
            bound.info("participant_step_failed", error_type=exc.type, retryable=exc.retryable)
            return _failure(command, exc.type, exc.message, retryable=exc.retryable)
        except Exception as exc:
            bound.exception("participant_handler_crashed")
            return _failure(command, type(exc).__name__, str(exc), retryable=True)
        try:
            # Checked here, not when the reply is published: a result that cannot be sent
            # would otherwise crash every redelivery and never produce any answer.
            pydantic_core.to_json(result)
        except Exception as exc:
            bound.exception("participant_result_invalid")
            return _failure(
                command,
                "invalid_result",
                f"the handler's result cannot be sent as JSON: {exc}",
                retryable=False,
            )
        bound.info("participant_step_succeeded")
        return Reply(
            command_id=command.command_id,
            saga_id=command.saga_id,
            step=command.step,
            outcome="success",
            result=result,
        )


async def _answered(handler: Any, command: Command) -> bool:
    """A guarded handler (Barrier.guard) whose barrier settled this step already: an expired
    command is answered from it all the same. Refusing it would hide an effect an earlier
    attempt applied (its charge stands while the saga, told "expired", undoes the rest)."""
    answered = getattr(handler, "answered", None)
    return answered is not None and bool(await answered(command))


def _failure(command: Command, type: str, message: str, *, retryable: bool = True) -> Reply:
    return Reply(
        command_id=command.command_id,
        saga_id=command.saga_id,
        step=command.step,
        outcome="failure",
        error=ReplyError(
            type=type[:_MAX_TYPE] or "error",
            message=message[:_MAX_MESSAGE],
            retryable=retryable,
        ),
    )


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def heartbeat_interval(expires_at: datetime, now: datetime) -> float:
    """Seconds before the first heartbeat of a command received at `now`."""
    remaining = (aware_utc(expires_at) - aware_utc(now)).total_seconds()
    # A third of the time left puts two heartbeats inside the step's timeout (at 1/3 and 2/3),
    # so the orchestrator still hears one in time when the other is lost or slow; each one it
    # applies moves the deadline a whole timeout ahead, so the next third fits again.
    # The cap bounds what a participant clock running behind the orchestrator's can do (it
    # believes more time is left than there is): any step with a timeout over 20 s hears two
    # heartbeats in time whatever the skew. The floor keeps a command received at (or past)
    # its deadline from flooding the reply queue.
    return _bounded(remaining / 3)


def _bounded(seconds: float) -> float:
    return max(MIN_HEARTBEAT_INTERVAL, min(MAX_HEARTBEAT_INTERVAL, seconds))


def heartbeat(command: Command, details: Any = None) -> Reply:
    """The reply that tells the orchestrator the command's handler is still running;
    `details` (JSON) is a checkpoint stored with the step and sent with its next attempt."""
    return Reply(
        command_id=command.command_id,
        saga_id=command.saga_id,
        step=command.step,
        outcome="heartbeat",
        result=details,
    )


class _Beat:
    """The heartbeats of one running command: what the next one carries."""

    def __init__(self) -> None:
        self.details: Any = None


_current_beat: ContextVar[_Beat | None] = ContextVar("saga_current_beat", default=None)


def report_progress(details: Any) -> None:
    """Record a checkpoint of the running command (JSON, e.g. `{"done": 5000}`): the next
    heartbeat carries it, the orchestrator stores it with the step, and a later attempt of the
    step receives it as `command.progress` to resume from. Call it from a handler."""
    beat = _current_beat.get()
    if beat is None:
        raise RuntimeError("report_progress() is for handlers, called while a command runs")
    pydantic_core.to_json(details)  # fail here, in the handler, not in the heartbeat task
    beat.details = details


@asynccontextmanager
async def heartbeats(
    command: Command, now: datetime, send: SendReply, *, reported: bool = False
) -> AsyncIterator[None]:
    """Send heartbeats for `command` through `send` while the block runs.

    The first one goes out at once when the command asks for a start report (its step has a
    schedule-to-start or heartbeat timeout) and the caller has not sent it (`reported`), else
    after `heartbeat_interval`, so a quick handler sends none. Then every third of the
    heartbeat timeout (`command.heartbeat_timeout`), or without one every third of the step's
    timeout, at most 10 s apart. When the block ends (returns, raises or is cancelled) the
    heartbeats stop before this returns, so one can never follow the final reply the caller
    sends next.
    """
    interval = heartbeat_interval(command.expires_at, now)
    every = interval
    if command.heartbeat_timeout is not None:
        # Two heartbeats inside every heartbeat timeout, as a third of the time left gives.
        every = max(MIN_HEARTBEAT_INTERVAL, command.heartbeat_timeout / 3)
        interval = min(interval, every)
    elif command.timeout is not None:
        # Without a timeout (an older sender), keep the pace the deadline gives.
        every = _bounded(command.timeout / 3)
    first = 0.0 if command.report_start and not reported else interval
    beat = _Beat()
    token = _current_beat.set(beat)
    task = asyncio.create_task(
        _beat(command, beat, first, every, send),
        name=f"saga-heartbeat:{command.command_id}",
    )
    try:
        yield
    finally:
        _current_beat.reset(token)
        task.cancel()
        # Not `await task` under suppress(CancelledError): that would also swallow a
        # cancellation of *this* task arriving while it waits, and the handler would go on.
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            # _beat catches what `send` raises; this is a bug in it, not a broker failure.
            log.error("participant_heartbeat_crashed", error=str(task.exception()))


async def _beat(command: Command, beat: _Beat, first: float, every: float, send: SendReply) -> None:
    delay = first
    while True:
        await asyncio.sleep(delay)
        delay = every
        try:
            await send(heartbeat(command, beat.details))
        except Exception as exc:
            # A lost heartbeat costs nothing while the next one arrives in time; the handler
            # must go on either way (its final reply is what the saga needs).
            log.warning(
                "participant_heartbeat_failed",
                saga_id=str(command.saga_id),
                step=command.step,
                attempt=command.attempt,
                error=str(exc),
            )
