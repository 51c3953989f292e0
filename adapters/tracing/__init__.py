"""Spans through OpenTelemetry (docs/observability.md#spans), off unless the `OTEL_*`
variables configure them: `setup` (on or off; the exporting pipeline), `saga_spans` (the
orchestrator's spans, made from its committed transitions), `wiring` (what `saga run` calls).
The participant SDK's handler spans are in adapters/participant/handler_spans.py.

Nothing here imports OpenTelemetry until spans are on."""
