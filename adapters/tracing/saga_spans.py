"""The orchestrator's spans, made from its committed transitions (the engine's `spans=` hook,
orchestrator/unit_of_work.py `Spans`): one per saga, from its start to its end, and one per
attempt of a step's action or compensation, from its dispatch to the reply, timeout or cut-off
that ended it (adapters/tracing/endings.py).

A saga lives for days, across transactions, processes and replicas, so no span object is
held while it runs: each span is made whole when it ends, by whichever replica committed its
end, with the times the saga's state recorded and ids derived from the saga
(orchestrator/trace.py): the same in every replica, and the ones its messages named as their
parent when they were sent, so a participant's handler span nests under its attempt's span.

The spans go through the SDK's own pipeline (sampler, span limits, processors, exporters):
`DerivedIds`, the provider's id generator, hands the tracer the ids chosen for the one span
being started, and random ones to any other. Building `ReadableSpan`s by hand and calling a
processor would skip that pipeline, and the SDK documents them as not for users to create.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from adapters.metrics import step_label
from adapters.tracing import attributes as attr
from adapters.tracing.endings import AttemptOutcome, Ended, attempts_ended, saga_ended
from orchestrator import trace
from orchestrator.state import SagaState, SagaStatus
from orchestrator.unit_of_work import Committed

SCOPE = "saga-orchestrator"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PROPAGATOR = TraceContextTextMapPropagator()
# (trace id, span id) of the span being started; None: any other span gets random ids.
_CHOSEN: ContextVar[tuple[int, int] | None] = ContextVar("saga_span_ids", default=None)


class DerivedIds(IdGenerator):
    """The ids chosen for the span `SagaSpans` is starting, random ones otherwise. The SDK
    asks for a span id once per span, and for a trace id only for a span without a parent,
    synchronously inside `start_span`."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        chosen = _CHOSEN.get()
        return self._random.generate_span_id() if chosen is None else chosen[1]

    def generate_trace_id(self) -> int:
        chosen = _CHOSEN.get()
        return self._random.generate_trace_id() if chosen is None else chosen[0]


class SagaSpans:
    """The engine's `spans=` hook: makes the spans of what each committed transition ended."""

    def __init__(self, provider: TracerProvider) -> None:
        if not isinstance(provider.id_generator, DerivedIds):
            raise ValueError("the tracer provider must be made with id_generator=DerivedIds()")
        self.provider = provider
        self._tracer = provider.get_tracer(SCOPE)

    def shutdown(self) -> None:
        """Export what is still batched, then stop (blocks: run it in a thread)."""
        self.provider.shutdown()

    def __call__(self, changes: Sequence[Committed]) -> None:
        for change in changes:
            for ended in attempts_ended(change):
                self._attempt(change.after, ended)
            if saga_ended(change):
                self._saga(change.after)

    def _saga(self, state: SagaState) -> None:
        # A saga undone after a failure, or parked, is an error; completed or cancelled is not.
        error = None
        if state.status in (SagaStatus.COMPENSATED, SagaStatus.FAILED):
            error = str((state.error or {}).get("type") or state.status.value)
        self._emit(
            f"saga {state.name}",
            span_id=trace.saga_span_id(state.saga_id),
            parent=dict(state.trace or {}),  # the starter's span; none: the saga is a root
            state=state,
            start=state.created_at,
            end=state.updated_at,
            kind=SpanKind.INTERNAL,
            attributes={attr.VERSION: state.version, attr.OUTCOME: state.status.value},
            error=error,
        )

    def _attempt(self, state: SagaState, ended: Ended) -> None:
        attributes: dict[str, AttributeValue] = {
            attr.STEP: ended.step,
            attr.KIND: ended.kind,
            attr.ATTEMPT: ended.attempt,
            attr.COMMAND_ID: str(ended.command_id),
            attr.OUTCOME: ended.outcome.value,
        }
        if ended.timeout is not None:
            attributes[attr.TIMEOUT] = ended.timeout
        word = "step" if ended.kind == "action" else "compensation"
        end = state.updated_at
        saga_span = trace.saga_span_id(state.saga_id)
        self._emit(
            f"{word} {step_label(ended.step)}",
            span_id=trace.attempt_span_id(ended.command_id),
            parent=trace.span_headers(state.trace, state.saga_id, saga_span),
            state=state,
            start=ended.dispatched_at or end,
            end=end,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            error=None
            if ended.outcome == AttemptOutcome.SUCCEEDED
            else ended.error_type or ended.outcome.value,
        )

    def _emit(
        self,
        name: str,
        *,
        span_id: str,
        parent: Mapping[str, str],
        state: SagaState,
        start: datetime,
        end: datetime,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        error: str | None,
    ) -> None:
        """One finished span. `parent`: W3C headers naming its parent span (no valid
        `traceparent`: a root span, in the saga's own trace)."""
        context = _PROPAGATOR.extract(carrier=parent, context=Context())
        attributes = {
            attr.SAGA: state.name,
            attr.SAGA_ID: str(state.saga_id),
            attr.KEY: state.key,
            **attributes,
        }
        if error is not None:
            attributes[attr.ERROR_TYPE] = error
        ids = (int(trace.saga_trace_id(state.trace, state.saga_id), 16), int(span_id, 16))
        chosen = _CHOSEN.set(ids)
        try:
            span = self._tracer.start_span(
                name, context=context, kind=kind, attributes=attributes, start_time=_ns(start)
            )
        finally:
            _CHOSEN.reset(chosen)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=_ns(max(start, end)))


def _ns(at: datetime) -> int:
    """Nanoseconds since the epoch, exactly (a float would round off microseconds)."""
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000
