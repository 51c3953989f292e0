"""What `saga run` calls: the engine's spans hook, as the `OTEL_*` variables configure it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from adapters.tracing.setup import enabled, require_sdk, tracer_provider

if TYPE_CHECKING:
    from adapters.tracing.saga_spans import SagaSpans

SERVICE = "saga-orchestrator"  # service.name unless OTEL_SERVICE_NAME says otherwise


def engine_spans(environ: Mapping[str, str]) -> SagaSpans | None:
    """The orchestrator's spans, exported as `environ` says; None (OpenTelemetry not even
    imported) when it does not turn them on. Misconfigured: TracingMisconfigured, saying
    what to change."""
    if not enabled(environ):
        return None
    require_sdk(environ)
    from adapters.tracing.saga_spans import DerivedIds, SagaSpans

    return SagaSpans(tracer_provider(environ, SERVICE, ids=DerivedIds()))
