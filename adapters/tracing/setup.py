"""Whether spans are made, and the OpenTelemetry pipeline that exports them, both read from
the standard `OTEL_*` variables. OpenTelemetry is an optional dependency (`pip install
saga-orchestrator[otel]`): this module imports it only once spans are on, so a process that
does not configure them never loads it.

On when `OTEL_TRACES_EXPORTER` names an exporter, or when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (then the exporter is OTLP); off when neither is,
when `OTEL_TRACES_EXPORTER=none`, or when `OTEL_SDK_DISABLED=true`. The rest (endpoint,
headers, timeout, batching, resource attributes, sampler) the SDK reads as it always does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestrator.errors import SagaError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.id_generator import IdGenerator

EXPORTERS = "OTEL_TRACES_EXPORTER"
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
INSTALL = "pip install 'saga-orchestrator[otel]'"


class TracingMisconfigured(SagaError):
    """The `OTEL_*` variables ask for spans this installation cannot make; says what to do."""


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether the `OTEL_*` variables in `environ` turn spans on (the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(environ)
    if exporters:
        return exporters != ["none"]
    return any(environ.get(name, "").strip() for name in ENDPOINTS)


def tracer_provider(
    environ: Mapping[str, str], service: str, ids: IdGenerator | None = None
) -> TracerProvider:
    """A tracer provider exporting in batches to the exporters `environ` names, its resource
    from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (service.name `service` when they
    name none). Shut it down on exit: that sends what is still batched."""
    require_sdk(environ)
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource, id_generator=ids)
    for exporter in exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def require_sdk(environ: Mapping[str, str]) -> None:
    """Raise, saying what to install, when the OpenTelemetry SDK is missing."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingMisconfigured(
            f"spans are configured ({_why(environ)}) but OpenTelemetry is not installed: "
            f"{INSTALL}, or unset the OTEL_* variables"
        ) from exc


def exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (`otlp` when only an endpoint is set)."""
    made: list[SpanExporter] = []
    for name in _exporters(environ) or ["otlp"]:
        if name == "otlp":
            made.append(_otlp(environ))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            made.append(ConsoleSpanExporter())
        elif name != "none":
            raise TracingMisconfigured(
                f"{EXPORTERS}={environ.get(EXPORTERS)!r}: {name!r} is not an exporter saga "
                "knows; use otlp (with OTEL_EXPORTER_OTLP_ENDPOINT), console or none"
            )
    return made


def _otlp(environ: Mapping[str, str]) -> SpanExporter:
    protocol = next(
        (environ[name].strip() for name in PROTOCOLS if environ.get(name, "").strip()),
        "http/protobuf",
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise TracingMisconfigured(
                "OTLP over gRPC needs its exporter: pip install opentelemetry-exporter-otlp-"
                "proto-grpc, or use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (port 4318)"
            ) from exc
        exporter: SpanExporter = GrpcSpanExporter()
        return exporter
    raise TracingMisconfigured(
        f"OTLP protocol {protocol!r} is not supported: use http/protobuf (the default) or grpc"
    )


def _exporters(environ: Mapping[str, str]) -> list[str]:
    names = environ.get(EXPORTERS, "")
    return [n.strip().lower() for n in names.split(",") if n.strip()]


def _why(environ: Mapping[str, str]) -> str:
    return next(
        (f"{name}={environ[name]}" for name in (EXPORTERS, *ENDPOINTS) if environ.get(name)),
        "OTEL_* variables",
    )
