"""Spans are off unless the standard `OTEL_*` variables configure them, and while off nothing
of OpenTelemetry's SDK is loaded; a configuration saga cannot honour fails, saying why."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from adapters.tracing.setup import TracingMisconfigured, enabled, exporters, tracer_provider
from adapters.tracing.wiring import engine_spans


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "orders"}, False),  # naming a service configures nothing
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_spans_are_on_only_when_the_otel_variables_say_so(
    environ: dict[str, str], on: bool
) -> None:
    assert enabled(environ) is on


def test_the_exporters_are_the_ones_named_otlp_when_only_an_endpoint_is() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert [type(e) for e in exporters(endpoint)] == [OTLPSpanExporter]
    both = {"OTEL_TRACES_EXPORTER": "otlp, console"}
    assert [type(e) for e in exporters(both)] == [OTLPSpanExporter, ConsoleSpanExporter]


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin' is not an exporter saga knows"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "use http/protobuf",
        ),
    ],
)
def test_a_configuration_saga_cannot_honour_says_what_to_change(
    environ: dict[str, str], says: str
) -> None:
    with pytest.raises(TracingMisconfigured, match=says):
        engine_spans(environ)


def test_the_service_name_is_sagas_unless_the_variables_name_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {"OTEL_TRACES_EXPORTER": "none"}
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert tracer_provider(environ, "saga-orchestrator").resource.attributes["service.name"] == (
        "saga-orchestrator"
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-saga")
    assert tracer_provider(environ, "saga-orchestrator").resource.attributes["service.name"] == (
        "orders-saga"
    )


def test_spans_off_load_nothing_of_the_sdk_in_the_orchestrator_or_a_participant() -> None:
    """In a clean process without OTEL_* variables: `saga run`'s wiring and a participant
    worker's make no spans and import no OpenTelemetry SDK (the participant SDK imports no
    OpenTelemetry at all; the orchestrator's HTTP framework brings the bare API itself)."""
    script = textwrap.dedent(
        """
        import os, sys
        assert not any(name.startswith("OTEL_") for name in os.environ)
        from adapters.participant.serve import _handler_spans
        from adapters.participant.worker import ParticipantWorker
        assert _handler_spans([]) == (None, None)
        participant = [m for m in sys.modules if m.startswith("opentelemetry")]
        from adapters.runtime import Orchestrator
        from adapters.tracing.wiring import engine_spans
        assert engine_spans(os.environ) is None
        sdk = [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
        print(participant, sdk)
        """
    )
    clean = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=clean, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []"
