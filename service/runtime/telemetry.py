"""Tracing (OpenTelemetry), off unless the standard OTEL_* variables ask for it: on when
OTEL_TRACES_EXPORTER (otlp, console, or otlp_proto_grpc / otlp_proto_http) or an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and not with
OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. The exporter, its endpoint, headers and
protocol, the batch processor, the sampler, the propagators and the resource (OTEL_SERVICE_NAME,
default identity-service) all follow their OTEL_* variables. Needs the `tracing` extra.

When on, each gRPC call is a server span (opentelemetry-instrumentation-grpc's aio server
interceptor) that continues the caller's trace (traceparent metadata), and each SQL statement a
client span under it (opentelemetry-instrumentation-psycopg, which wraps
psycopg.AsyncConnection.connect: the pool's connections opened after setup are traced, pipeline
mode included, where a span measures the queueing of its statement, the round trip being at the
pipeline's end). SQL run outside any call (the health monitor's ping, LISTEN, the retention
janitor) makes no trace: a root span of kind CLIENT is dropped by the sampler.

When off, nothing of OpenTelemetry is imported or installed; the call log asks current_trace_id(),
which returns "" at once."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Callable, Mapping

log = logging.getLogger("identity.telemetry")

DEFAULT_SERVICE_NAME = "identity-service"
_ON_WHEN_SET = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_trace_id: Callable[[], str] | None = None  # set while instrumented
_instrumentors: list[Any] = []


def current_trace_id() -> str:
    """The trace id (32 hex digits) of the span in progress; "" when tracing is off or there is none."""
    return _trace_id() if _trace_id is not None else ""


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return any(environ.get(name, "").strip() for name in _ON_WHEN_SET)


def setup_from_environment() -> bool:
    """Turns tracing on in this process when the environment asks for it (once per process,
    after any fork: the OTLP exporter holds a gRPC channel). Returns whether it is on."""
    if not requested() or _trace_id is not None:
        return _trace_id is not None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporters = _exporters_from_environment()
        provider = tracer_provider()
    except ImportError as e:
        log.warning("OTEL_* variables ask for tracing but %s is missing (install the `tracing` extra): tracing off", e.name)
        return False
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrument(provider)
    log.info(
        "tracing on: %s to %s",
        ", ".join(type(e).__name__ for e in exporters) or "no exporter",
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "the default endpoint",
    )
    return True


def _exporters_from_environment() -> list[Any]:
    """The span exporters OTEL_TRACES_EXPORTER names (default otlp), by their entry points;
    `otlp` is OTLP over gRPC, or over HTTP with OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=http/protobuf."""
    from importlib.metadata import entry_points

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip().lower()
    exporters = []
    for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = name.strip().lower()
        if not name or name == "none":
            continue
        if name == "otlp":
            name = "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise ValueError(f"OTEL_TRACES_EXPORTER: no span exporter named {name!r} is installed")
        exporters.append(found[0].load()())
    return exporters


def tracer_provider() -> Any:
    """A TracerProvider with the environment's resource (service.name identity-service unless
    OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one) and sampler (OTEL_TRACES_SAMPLER,
    default parent-based always-on), less the root CLIENT spans."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider, sampling

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return TracerProvider(resource=resource, sampler=_calls_only(sampling._get_from_env_or_default()))


def _calls_only(inner: Any) -> Any:
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind, get_current_span

    class CallsOnly(Sampler):
        """`inner`, but a span of kind CLIENT with no parent (SQL outside any call) is dropped."""

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):  # type: ignore[no-untyped-def]
            if kind == SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"CallsOnly{{{inner.get_description()}}}"

    return CallsOnly()


def instrument(provider: Any) -> None:
    """Installs the gRPC aio server and psycopg instrumentations with `provider`: servers made
    (grpc.aio.server) and connections opened (psycopg) from now on are traced."""
    global _trace_id
    from opentelemetry import trace
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    if _trace_id is not None:
        return
    server = _server_instrumentor()
    server.instrument(tracer_provider=provider)
    psycopg = PsycopgInstrumentor()
    psycopg.instrument(tracer_provider=provider)
    _instrumentors[:] = [server, psycopg]

    def trace_id() -> str:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    _trace_id = trace_id


def uninstrument() -> None:
    """Undoes instrument() (the tests): servers and connections made afterwards are not traced."""
    global _trace_id
    for instrumentor in reversed(_instrumentors):
        instrumentor.uninstrument()
    _instrumentors.clear()
    _trace_id = None


def _server_instrumentor() -> Any:
    """GrpcAioInstrumentorServer, whose interceptor also serves a server-streaming behavior that
    is a coroutine writing with context.write (the edge's WatchChanges and ExportPeople): the
    stock interceptor iterates every streaming behavior as an async generator, which fails on
    those. A coroutine is wrapped as a unary behavior is: awaited within the call's span."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
    from opentelemetry.instrumentation.grpc import __name__ as scope
    from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
    from opentelemetry.instrumentation.grpc.version import __version__

    class Interceptor(OpenTelemetryAioServerInterceptor):
        def _intercept_aio_server_stream(self, behavior, handler_call_details):  # type: ignore[no-untyped-def]
            if inspect.isasyncgenfunction(behavior):
                return super()._intercept_aio_server_stream(behavior, handler_call_details)
            return self._intercept_aio_server_unary(behavior, handler_call_details)

    class Instrumentor(GrpcAioInstrumentorServer):
        def _instrument(self, **kwargs: Any) -> None:
            self._original_func = original = grpc_aio.server
            tracer = trace.get_tracer(
                scope, __version__, kwargs.get("tracer_provider"), schema_url="https://opentelemetry.io/schemas/1.11.0"
            )

            def server(*args: Any, **options: Any) -> Any:
                options["interceptors"] = [Interceptor(tracer, filter_=self._filter), *(options.get("interceptors") or ())]
                return original(*args, **options)

            grpc_aio.server = server

    import grpc.aio as grpc_aio

    return Instrumentor()
