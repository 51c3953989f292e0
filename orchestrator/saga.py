"""The `Saga` builder: a saga definition, an ordered list of steps validated as it is built.

Step classes follow Garcia-Molina & Salem: compensatable steps first, then at most one pivot
(the go/no-go step, never compensated), then retriable steps (never compensated, retried until
their policy is exhausted). The rules each addition is checked against are in
orchestrator/definition_rules.py; users import the DSL from `orchestrator.definition`.

Over 400 lines for a reason: the class is the DSL users write, one method per kind of step,
each with the options and docstring they read; split up, the builder would read as pieces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator import locks as locks_
from orchestrator.definition_rules import (
    check_child,
    check_map,
    check_saga,
    check_sleep,
    check_step,
    check_wait,
    compensation_of,
)
from orchestrator.errors import DefinitionError
from orchestrator.locks import OnLocked
from orchestrator.messages import Command
from orchestrator.retry import Retry
from orchestrator.search_fields import Indexed, SearchField, SearchValue, Source, resolve, values
from orchestrator.steps import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ITEMS,
    UNSET,
    ChildInput,
    Guard,
    Items,
    LocalHandler,
    OnGuardFalse,
    OnTimeout,
    Output,
    Payload,
    StepContext,
    StepDefinition,
    Unset,
    Until,
    qualname,
)

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRY = Retry()
DEFAULT_COMPENSATION_RETRY = Retry(max_attempts=10, initial_interval=1.0, max_interval=60.0)
# A child saga has its own deadlines and retries; the parent's step waits as long as it runs.
DEFAULT_CHILD_TIMEOUT = 30 * 24 * 3600.0
CHILD_START = "sagas.start."
CHILD_UNDO = "sagas.undo."

F = TypeVar("F", bound=LocalHandler)


class Saga:
    """A saga definition. Build it at import time in a module under `sagas/`.

    >>> saga = Saga("order", version=1, input=OrderPlaced)
    >>> saga.remote("reserve_credit", command="customers.reserve_credit",
    ...             compensation="customers.release_credit")
    """

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        input: type[BaseModel],
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry = DEFAULT_RETRY,
        compensation_retry: Retry = DEFAULT_COMPENSATION_RETRY,
        deadline: float | None = None,
        compensation_deadline: float | None = None,
        locks: Sequence[str] = (),
        on_locked: OnLocked = "reject",
        lock_wait: float | None = None,
        output: Output | None = None,
        search: Sequence[str | SearchField] = (),
    ) -> None:
        """`deadline`: seconds from the start by which the saga must have finished its steps;
        past it the saga is compensated (or parked, once the pivot was dispatched).
        `compensation_deadline`: seconds the compensation phase may take, from its start;
        past it the saga is parked for an operator.
        `locks`: semantic locks, the resources the saga holds from start to finish, as
        templates over the input (`"order:{order_id}"`); `on_locked` says what a start finds
        when one is held: "reject", "queue", or "wait" at most `lock_wait` seconds
        (orchestrator/locks.py).
        `output(ctx)`: what the completed saga gives (a dict made from its input and step
        results): stored, shown, and the `completed` event's `result`. Without it that result
        is the dict of every step's result.
        `search`: business fields to find the saga by (`saga list --where customer_id=c-17`):
        input fields by name (`"customer_id"`, nested `"shipping.country"`), their type taken
        from the input model, or `SearchField("output.charge_id", type=int)` for a key of the
        output (orchestrator/search_fields.py)."""
        check_saga(
            name,
            version,
            input,
            timeout,
            deadline=deadline,
            compensation_deadline=compensation_deadline,
            output=output,
        )
        self.deadline = deadline
        self.compensation_deadline = compensation_deadline
        self.name = name
        self.version = version
        self.input = input
        self.timeout = timeout
        self.retry = retry
        self.compensation_retry = compensation_retry
        self.locks = locks_.check(f"saga {name!r} v{version}", input, locks, on_locked, lock_wait)
        self.on_locked = on_locked
        self.lock_wait = lock_wait
        self.output = output
        self.search: tuple[Indexed, ...] = resolve(
            f"saga {name!r} v{version}", search, input, has_output=output is not None
        )
        self._steps: list[StepDefinition] = []
        self._positions: dict[str, int] = {}
        self._groups = 0
        self._open_group: int | None = None

    @property
    def steps(self) -> tuple[StepDefinition, ...]:
        return tuple(self._steps)

    def position(self, name: str) -> int:
        """The step's index in the definition."""
        return self._positions[name]

    @property
    def pivot_index(self) -> int | None:
        return next((i for i, s in enumerate(self._steps) if s.pivot), None)

    def step(self, name: str) -> StepDefinition:
        return self._steps[self._positions[name]]

    def step_context(self, command: Command) -> StepContext:
        """What a local step's function gets for `command` of this saga. With `payload=` the
        command carries what the step built, not the saga's input, so there is no input."""
        built = self.step(command.step).payload is not None
        return StepContext(
            saga_id=str(command.saga_id),
            saga=command.saga,
            step=command.step,
            kind=command.kind,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            saga_input=None if built else self.input.model_validate(command.payload),
            payload=command.payload,
            action_result=command.action_result,
        )

    @contextmanager
    def parallel(self) -> Iterator[Saga]:
        """Steps added inside the block run concurrently (fan-out) and the saga moves on when
        all have succeeded (fan-in). If one fails for good, the others are compensated once
        they answer, then the earlier steps in reverse.

        >>> with saga.parallel():
        ...     saga.remote("reserve_credit", command="customers.reserve_credit", ...)
        ...     saga.remote("reserve_stock", command="inventory.reserve", ...)
        """
        where = f"saga {self.name!r} v{self.version}"
        if self._open_group is not None:
            raise DefinitionError(f"{where}: parallel() blocks cannot be nested")
        self._groups += 1
        self._open_group = group = self._groups
        before = len(self._steps)
        try:
            yield self
        finally:
            self._open_group = None
        added = len([s for s in self._steps if s.group == group])
        if len(self._steps) != before and added < 2:
            raise DefinitionError(
                f"{where}: a parallel() block needs at least two steps; a single step "
                "needs no block"
            )
        if len(self._steps) == before:
            raise DefinitionError(f"{where}: a parallel() block holds no steps; add some")

    def map(
        self,
        name: str,
        *,
        command: str,
        items: Items,
        compensation: str | Unset | None = UNSET,
        cross_service_compensation: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_items: int = DEFAULT_MAX_ITEMS,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        compensation_heartbeat_timeout: float | None = None,
        compensation_schedule_to_close: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
        payload: Payload | None = None,
        result: type[BaseModel] | None = None,
    ) -> Saga:
        """Dynamic fan-out: split work into one `command` per item of `items(ctx)` (a JSON
        list computed from the saga's input and earlier results), at most `concurrency` in
        flight. Each item is a step of its own (`name[0]`, `name[1]`, ...: retried, timed
        and compensated alone) and its command carries the item in `item`. The step's
        result is the list of the items' results, in item order. If an item fails for good,
        the items that succeeded are compensated, then the earlier steps.

        `payload(ctx)`, computed once when the step begins, is every item's `payload`
        (default: the saga's input); `result`, a model each item's result must validate."""
        in_parallel = self._open_group is not None
        check_map(self._where(name), items, concurrency, max_items, in_parallel)
        undo = self._undo(name, command, compensation, False, cross_service_compensation)
        self._add(
            StepDefinition(
                name=name,
                command=command,
                compensation=undo,
                pivot=False,
                **self._policies(
                    timeout,
                    retry,
                    compensation_timeout,
                    compensation_retry,
                    schedule_to_start=schedule_to_start,
                    heartbeat_timeout=heartbeat_timeout,
                    schedule_to_close=schedule_to_close,
                    compensation_heartbeat_timeout=compensation_heartbeat_timeout,
                    compensation_schedule_to_close=compensation_schedule_to_close,
                ),
                guard=guard,
                on_guard_false=on_guard_false,
                items=items,
                concurrency=concurrency,
                max_items=max_items,
                payload=payload,
                result=result,
            )
        )
        return self

    def remote(
        self,
        name: str,
        *,
        command: str,
        compensation: str | Unset | None = UNSET,
        cross_service_compensation: bool = False,
        pivot: bool = False,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        compensation_heartbeat_timeout: float | None = None,
        compensation_schedule_to_close: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
        payload: Payload | None = None,
        result: type[BaseModel] | None = None,
    ) -> Saga:
        """Add a step whose command is routed to a participant service by its name.

        Time limits (seconds; docs/time-limits.md): `timeout` is the most one attempt may
        take from its start (heartbeats do not extend it); `heartbeat_timeout` the longest
        silence between heartbeats of a started attempt; `schedule_to_start` how long the
        command may wait in its queue; `schedule_to_close` the step's whole budget across
        attempts and retry waits. The `compensation_` ones are the same for its undo.

        `guard`: a precondition on the saga's state, checked just before dispatch; when it
        is false the step is skipped (`on_guard_false="skip"`) or fails without being sent
        (`"fail"`: the saga compensates, or is parked past the pivot).

        `payload(ctx)`: what the step's commands carry as `payload` instead of the saga's
        input, built from the input and the results of the steps that succeeded before it;
        computed once when the step begins (after its guard) and sent unchanged by every
        attempt and by the compensation. If it raises, the step fails without being sent.
        `result`: a model the reply's result must validate; a result that does not fails the
        step for good (`invalid_result`). With it, the step's compensation command carries
        the action's result as `action_result` (participants must then run an SDK that
        ignores command fields it does not know)."""
        undo = self._undo(name, command, compensation, pivot, cross_service_compensation)
        self._add(
            StepDefinition(
                name=name,
                command=command,
                compensation=undo,
                pivot=pivot,
                **self._policies(
                    timeout,
                    retry,
                    compensation_timeout,
                    compensation_retry,
                    schedule_to_start=schedule_to_start,
                    heartbeat_timeout=heartbeat_timeout,
                    schedule_to_close=schedule_to_close,
                    compensation_heartbeat_timeout=compensation_heartbeat_timeout,
                    compensation_schedule_to_close=compensation_schedule_to_close,
                ),
                guard=guard,
                on_guard_false=on_guard_false,
                payload=payload,
                result=result,
            )
        )
        return self

    def sleep(
        self,
        name: str,
        *,
        seconds: float | None = None,
        until: Until | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """Add a durable wait: `seconds` after the step is reached, or `until` a moment
        computed from the saga (e.g. `lambda ctx: datetime.fromisoformat(ctx.input["at"])`).
        The wait is a database timer: it survives restarts and holds while the saga is
        paused. A cancel ends it. It sends nothing and is never compensated."""
        check_sleep(self.name, self.version, name, seconds, until)
        return self._unsent(name, guard, on_guard_false, sleep_seconds=seconds, sleep_until=until)

    def wait(
        self,
        name: str,
        *,
        timeout: float | None = None,
        on_timeout: OnTimeout = "fail",
        result: type[BaseModel] | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """Add a step that waits for the signal `name` from outside: a webhook, a person's
        approval, another system's confirmation (docs/signals.md). The signal's payload
        (validated by `result` when given; a payload that does not match is refused and the
        wait goes on) becomes the step's result, which later steps read like any result.

        A signal that comes before the step begins is kept, and taken when it begins.
        `timeout` (seconds, required) is a database timer that holds while the saga is
        paused; when it passes, `on_timeout="fail"` fails the step (the saga compensates, or
        past the pivot parks for an operator) and `"skip"` skips it. A cancel ends the wait.
        It sends nothing and is never compensated."""
        check_wait(self._where(name), timeout, on_timeout)
        assert timeout is not None
        return self._unsent(
            name, guard, on_guard_false, result=result, wait_timeout=timeout, on_timeout=on_timeout
        )

    def _unsent(
        self, name: str, guard: Guard | None, on_guard_false: OnGuardFalse, **kind: Any
    ) -> Saga:
        """Add a step that sends nothing (a sleep, a wait): `kind` says which, and how long."""
        self._add(
            StepDefinition(
                name=name,
                command=None,
                compensation=None,
                pivot=False,
                timeout=self.timeout,
                retry=self.retry,
                compensation_timeout=self.timeout,
                compensation_retry=self.compensation_retry,
                guard=guard,
                on_guard_false=on_guard_false,
                **kind,
            )
        )
        return self

    def waits(self) -> tuple[str, ...]:
        """The signals the saga waits for: its wait steps' names."""
        return tuple(s.name for s in self._steps if s.wait)

    def local(
        self,
        name: str | None = None,
        *,
        compensate: LocalHandler | Unset | None = UNSET,
        pivot: bool = False,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        compensation_heartbeat_timeout: float | None = None,
        compensation_schedule_to_close: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
        payload: Payload | None = None,
        result: type[BaseModel] | None = None,
    ) -> Callable[[F], F]:
        """Decorate an async function as a step run by `saga worker`.

        It travels through RabbitMQ like a remote step, under the command name
        `local.<saga>.<step>` (and `local.<saga>.<step>.compensate`). `payload` and
        `result` work as for `remote`; with `payload`, the function reads `ctx.payload`
        (the saga's input is not in its command).
        """

        def decorate(fn: F) -> F:
            step_name = name or fn.__name__
            command = f"local.{self.name}.{step_name}"
            undo = f"{command}.compensate" if callable(compensate) else compensate
            undo = self._undo(step_name, command, undo, pivot, False, local=True)
            self._add(
                StepDefinition(
                    name=step_name,
                    command=command,
                    compensation=undo,
                    pivot=pivot,
                    **self._policies(
                        timeout,
                        retry,
                        compensation_timeout,
                        compensation_retry,
                        schedule_to_start=schedule_to_start,
                        heartbeat_timeout=heartbeat_timeout,
                        schedule_to_close=schedule_to_close,
                        compensation_heartbeat_timeout=compensation_heartbeat_timeout,
                        compensation_schedule_to_close=compensation_schedule_to_close,
                    ),
                    local=True,
                    guard=guard,
                    on_guard_false=on_guard_false,
                    handler=fn,
                    compensation_handler=compensate if callable(compensate) else None,
                    payload=payload,
                    result=result,
                )
            )
            return fn

        return decorate

    def child(
        self,
        name: str,
        *,
        saga: str,
        input: ChildInput | None = None,
        pivot: bool = False,
        compensate: bool | None = None,
        timeout: float = DEFAULT_CHILD_TIMEOUT,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """A step that starts another saga and waits for its outcome: it succeeds with the
        child's results when the child completes, and fails when the child is compensated or
        cancelled. `input(ctx)` builds the child's input (default: this saga's input).

        Cancelling this saga cancels the running child; compensating the step undoes the
        child (a completed child is compensated). Before the pivot the step is compensated
        (`compensate` defaults to True there), so the child must have no pivot of its own.
        The child retries its own steps: the step itself is not retried."""
        check_child(self._where(name), saga, input)
        if compensate is None:
            compensate = not pivot and self.pivot_index is None
        self._add(
            StepDefinition(
                name=name,
                command=CHILD_START + saga,
                compensation=CHILD_UNDO + saga if compensate else None,
                pivot=pivot,
                timeout=timeout,
                retry=Retry(max_attempts=1),
                compensation_timeout=timeout,
                compensation_retry=self.compensation_retry,
                guard=guard,
                on_guard_false=on_guard_false,
                child=saga,
                child_input=input,
            )
        )
        return self

    def _undo(
        self,
        name: str,
        command: str,
        compensation: str | Unset | None,
        pivot: bool,
        cross_service: bool,
        *,
        local: bool = False,
    ) -> str | None:
        """The step's compensation, checked against the saga's pivot (definition_rules)."""
        never_undone = pivot or self.pivot_index is not None
        return compensation_of(
            self._where(name),
            name,
            command,
            compensation,
            never_undone=never_undone,
            cross_service=cross_service,
            local=local,
        )

    def _policies(
        self,
        timeout: float | None,
        retry: Retry | None,
        compensation_timeout: float | None,
        compensation_retry: Retry | None,
        **limits: float | None,
    ) -> dict[str, Any]:
        """A step's time limits and retry policies, the saga's defaults where not given;
        `limits` are the optional ones (`schedule_to_start`, `heartbeat_timeout`, ...)."""
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "retry": retry or self.retry,
            "compensation_timeout": (
                self.timeout if compensation_timeout is None else compensation_timeout
            ),
            "compensation_retry": compensation_retry or self.compensation_retry,
            **limits,
        }

    def _add(self, step: StepDefinition) -> None:
        in_parallel = self._open_group is not None
        check_step(self._where(step.name), step, self._steps, in_parallel=in_parallel)
        stage = len(self._steps)
        if self._open_group is not None:
            first = next((s for s in self._steps if s.group == self._open_group), None)
            stage = stage if first is None else first.stage
        self._positions[step.name] = len(self._steps)
        self._steps.append(replace(step, group=self._open_group, stage=stage))

    def _where(self, step: str) -> str:
        return f"saga {self.name!r} v{self.version}, step {step!r}"

    def validate(self) -> None:
        """Whole-definition checks that cannot run while steps are still being added."""
        if not self._steps:
            raise DefinitionError(f"saga {self.name!r} v{self.version} has no steps; add one")

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "input_schema": self.input.model_json_schema(),
            "steps": [s.document() for s in self._steps],
        }
        if self.deadline is not None:
            doc["deadline"] = self.deadline
        if self.compensation_deadline is not None:
            doc["compensation_deadline"] = self.compensation_deadline
        if self.locks:
            doc["locks"] = {
                "resources": list(self.locks),
                "on_locked": self.on_locked,
                "lock_wait": self.lock_wait,
            }
        if self.output is not None:
            doc["output"] = qualname(self.output)
        if self.search:
            doc["search"] = [f.document() for f in self.search]
        return doc

    def search_values(self, source: Source, data: dict[str, Any] | None) -> list[SearchValue]:
        """The saga's search field values read from its input or its output."""
        return [] if not self.search or data is None else values(self.search, source, data)

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={len(self._steps)})"
