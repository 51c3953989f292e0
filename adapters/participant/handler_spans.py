"""A span around each command's handler: the participant SDK's own, optional use of
OpenTelemetry (this module imports it; a worker without spans never loads it).

The span's parent is the span the command's `traceparent` header names: the orchestrator's
span of the attempt that sent it when spans are on there (docs/observability.md#spans), else
the saga starter's span. The span is current while the handler runs, so what the handler
traces itself (its database calls, its HTTP calls) nests under it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from adapters.tracing import attributes as attr
from orchestrator.messages import Command, Reply

SCOPE = "saga-participant"
_PROPAGATOR = TraceContextTextMapPropagator()


class HandlerSpans:
    """Runs handlers inside spans of `tracer` (e.g. `opentelemetry.trace.get_tracer(...)`
    in a service that sets up OpenTelemetry itself)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    async def run(
        self,
        service: str,
        command: Command,
        trace: Mapping[str, str] | None,
        handle: Callable[[], Awaitable[Reply]],
    ) -> Reply:
        """`handle()` inside the span of `command`, whose W3C trace context is `trace`."""
        parent = _PROPAGATOR.extract(carrier=dict(trace or {}), context=Context())
        attributes: dict[str, AttributeValue] = {
            attr.SAGA: command.saga,
            attr.SAGA_ID: str(command.saga_id),
            attr.STEP: command.step,
            attr.KIND: command.kind,
            attr.ATTEMPT: command.attempt,
            attr.COMMAND: command.command,
            attr.COMMAND_ID: str(command.command_id),
            attr.SERVICE: service,
        }
        with self.tracer.start_as_current_span(
            f"handle {command.command}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            reply = await handle()
            if reply.error is None:
                span.set_attribute(attr.OUTCOME, "succeeded")
            else:
                timed_out = reply.error.type == "timeout"
                span.set_attribute(attr.OUTCOME, "timed_out" if timed_out else "failed")
                span.set_attribute(attr.ERROR_TYPE, reply.error.type)
                span.set_status(Status(StatusCode.ERROR, reply.error.type))
            return reply
