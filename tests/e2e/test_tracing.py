"""Tracing (service.runtime.telemetry): a caller's trace (its traceparent metadata) continues
through the server's span into the spans of the SQL statements the call runs, all of one
trace_id, which the call's log line carries too; server-streaming calls are traced and still
work; and with no OTEL_* variable nothing of OpenTelemetry is even imported."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.runtime import telemetry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spans(channel) -> Iterator[InMemorySpanExporter]:
    """Instrumented for this module only; the session's server (`channel`) is made before, so
    that it stays untraced for the other tests."""
    exporter = InMemorySpanExporter()
    provider = telemetry.tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.instrument(provider)
    try:
        yield exporter
    finally:
        telemetry.uninstrument()


@pytest.fixture(scope="module")
def traced(spans, start_server) -> Iterator[grpc.Channel]:
    """A server made while instrumented: its gRPC server and its pool's connections are traced."""
    server = start_server(pool_size=2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel
    server.stop(0)


def _caller() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A caller's trace and span ids and the W3C traceparent it sends (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def _trace(spans: InMemorySpanExporter, trace_id: str, method: str, timeout: float = 10) -> list:
    """The finished spans of `trace_id` once its server span has ended (after the reply)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
        if any(s.kind == SpanKind.SERVER and s.name.endswith("/" + method) for s in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _call_record(caplog: pytest.LogCaptureFixture, trace_id: str) -> logging.LogRecord:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.name == "identity.calls" and getattr(record, "call", {}).get("trace_id") == trace_id:
                return record
        time.sleep(0.01)
    raise AssertionError(f"no call line with trace_id {trace_id}: {[r.getMessage() for r in caplog.records]}")


def test_a_callers_trace_continues_through_the_server_span_into_the_sql(traced, spans, workspace, caplog):
    trace_id, parent_span_id, metadata = _caller()
    stub = pb_grpc.IdentityServiceStub(traced)
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        stub.Identify(pb.IdentifyRequest(workspace_id=workspace, id="tr1", email="tr1@example.com"), metadata=metadata)
        record = _call_record(caplog, trace_id)

    found = _trace(spans, trace_id, "Identify")
    (server,) = [s for s in found if s.kind == SpanKind.SERVER]
    assert server.name == "/identity.v1.IdentityService/Identify"
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == parent_span_id
    sql = [s for s in found if s.kind == SpanKind.CLIENT]
    assert sql, [s.name for s in found]
    by_id = {s.context.span_id: s for s in found}
    for span in sql:
        assert span.attributes.get("db.system") == "postgresql" or span.attributes.get("db.system.name") == "postgresql"
        assert span.attributes.get("db.statement") or span.attributes.get("db.query.text")
        ancestor = span
        while ancestor.kind != SpanKind.SERVER:  # every statement's span descends from the call's
            ancestor = by_id[ancestor.parent.span_id]
        assert ancestor is server
    statements = " ".join(str(s.attributes.get("db.statement") or s.attributes.get("db.query.text")) for s in sql)
    assert "people" in statements  # the call's own SQL, not only BEGIN/COMMIT

    assert record.call["trace_id"] == trace_id and record.call["method"] == "Identify"
    assert f"trace_id={trace_id}" in record.getMessage()


def test_a_refusal_gives_the_server_span_its_code_and_logs_the_trace_id(traced, spans, caplog):
    trace_id, _, metadata = _caller()
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.IdentityServiceStub(traced).GetSettings(pb.GetSettingsRequest(workspace_id="no such\n"), metadata=metadata)
        record = _call_record(caplog, trace_id)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (server,) = [s for s in _trace(spans, trace_id, "GetSettings") if s.kind == SpanKind.SERVER]
    # A client's error leaves a server span's status unset (OpenTelemetry's gRPC conventions);
    # the code is its attribute.
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code == StatusCode.UNSET
    assert record.call["code"] == "INVALID_ARGUMENT"


def test_a_server_streaming_call_is_traced_and_still_answers(traced, spans, workspace):
    stub = pb_grpc.IdentityServiceStub(traced)
    stub.Identify(pb.IdentifyRequest(workspace_id=workspace, id="tr2"))
    trace_id, _, metadata = _caller()
    batches = list(stub.ExportPeople(pb.ExportPeopleRequest(workspace_id=workspace), metadata=metadata, timeout=10))
    assert [p.id for b in batches for p in b.people] == ["tr2"]
    found = _trace(spans, trace_id, "ExportPeople")
    assert [s.name for s in found if s.kind == SpanKind.SERVER] == ["/identity.v1.IdentityService/ExportPeople"]


def test_sql_outside_any_call_makes_no_trace(traced, spans):
    """The health monitor pings the database every 0.5 s: no root span of kind CLIENT."""
    time.sleep(1.2)
    assert [s.name for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT and s.parent is None] == []


@pytest.mark.parametrize(
    "environ, on",
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ, on):
    assert telemetry.requested(environ) is on


def _python(code: str, **environ: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | environ
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_off_by_default_nothing_of_opentelemetry_is_loaded():
    result = _python(
        "import sys, grpc.aio, psycopg\n"
        "from service.runtime import server, telemetry\n"
        "server_factory = grpc.aio.server\n"
        "assert telemetry.setup_from_environment() is False\n"
        "assert grpc.aio.server is server_factory\n"
        "assert telemetry.current_trace_id() == ''\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    assert result.returncode == 0, result.stderr


def test_on_from_the_environment_installs_both_instrumentations():
    result = _python(
        "import grpc.aio, psycopg\n"
        "from opentelemetry import trace\n"
        "from service.runtime import telemetry\n"
        "server_factory = grpc.aio.server\n"
        "assert telemetry.setup_from_environment() is True\n"
        "assert grpc.aio.server is not server_factory\n"
        "assert hasattr(psycopg.AsyncConnection.connect, '__wrapped__')\n"
        "resource = trace.get_tracer_provider().resource.attributes\n"
        "assert resource['service.name'] == 'identity-service', resource\n",
        OTEL_TRACES_EXPORTER="console",
    )
    assert result.returncode == 0, result.stderr
