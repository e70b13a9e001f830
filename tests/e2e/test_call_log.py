"""One structured log line per call, which a client cannot forge or flood: the workspace_id is
logged as sent (before it is validated), so it is escaped and cut; an undecodable request logs
its line and no traceback. Both formats (service.runtime.logs): `json`, one JSON object per line
with the call's fields, and `text`, a human line; and a real server's start-up lines."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.runtime import logs

IDENTIFY = "/identity.v1.IdentityService/Identify"


def _records(caplog: pytest.LogCaptureFixture, count: int = 1) -> list[logging.LogRecord]:
    """The call log's records: the server logs a call after its client has the answer, so wait
    for them a little."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in caplog.records if r.name == "identity.calls"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def _call_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The call lines as --log-format json writes them."""
    return [json.loads(logs.JsonFormatter().format(r)) for r in _records(caplog)]


def _text(record: logging.LogRecord) -> str:
    """A call line as --log-format text writes it."""
    return logging.Formatter(logs.TEXT_FORMAT).format(record)


def test_each_call_logs_one_json_line(channel, workspace, caplog):
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        pb_grpc.IdentityServiceStub(channel).Identify(pb.IdentifyRequest(workspace_id=workspace, id="ab100"))
        (line,) = _call_lines(caplog)
        (record,) = _records(caplog)
    assert line["method"] == "Identify" and line["workspace"] == workspace and line["code"] == "OK"
    assert line["ms"] >= 0
    assert line["level"] == "INFO" and line["logger"] == "identity.calls" and line["process"] == os.getpid()
    assert line["time"].endswith("Z") and "request_id" not in line and "trace_id" not in line  # tracing is off
    text = _text(record)
    assert "\n" not in text and f" identity.calls Identify ws={workspace} OK " in text and text.endswith("ms")


def test_the_request_id_is_in_both_formats(channel, workspace, caplog):
    request_id = "5f0c6a52-3b8e-4c1e-9a51-7c9e2f4d8b10"
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        pb_grpc.IdentityServiceStub(channel).Identify(
            pb.IdentifyRequest(workspace_id=workspace, id="ab101", request_id=request_id)
        )
        (line,) = _call_lines(caplog)
        (record,) = _records(caplog)
    assert line["request_id"] == request_id
    assert _text(record).endswith(f"ms request_id={request_id}")


def test_a_request_id_as_sent_is_escaped_in_the_text_line(channel, workspace, caplog):
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        with pytest.raises(grpc.RpcError):  # not a UUID: refused, and logged as sent
            pb_grpc.IdentityServiceStub(channel).Identify(
                pb.IdentifyRequest(workspace_id=workspace, id="ab102", request_id="r code=OK\nx")
            )
        (line,) = _call_lines(caplog)
        (record,) = _records(caplog)
    assert line["request_id"] == "r code=OK\nx" and line["code"] == "INVALID_ARGUMENT"
    # Quoted: a space cannot start a forged field, nor a newline a forged line.
    assert _text(record).endswith('ms request_id="r code=OK\\nx"')


def test_a_newline_in_the_workspace_id_cannot_forge_a_log_line(channel, caplog):
    forged = 'x\n2026-01-01 00:00:00 INFO identity.calls {"method": "DeletePerson", "code": "OK"}'
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id=forged))
        (record,) = _records(caplog)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in record.getMessage()
    (line,) = _call_lines(caplog)
    logged = line["workspace"]
    assert logged.startswith(forged[:50]) and len(logged.encode()) <= 64
    for written in (logs.JsonFormatter().format(record), _text(record)):
        assert "\n" not in written
    assert json.loads(logs.JsonFormatter().format(record))["workspace"] == logged
    assert ' ws="x\\n2026-01-01 ' in _text(record)  # the newline shown escaped, inside quotes


def test_a_huge_workspace_id_is_cut_in_the_log(channel, caplog):
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        with pytest.raises(grpc.RpcError):
            pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id="w" * 3_000_000))
        (record,) = _records(caplog)
    assert len(record.getMessage()) < 300
    assert len(logs.JsonFormatter().format(record)) < 600


def test_an_undecodable_request_is_invalid_and_logs_no_traceback(channel, caplog):
    call = channel.unary_unary(IDENTIFY, request_serializer=None, response_deserializer=None)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff\x0f", timeout=10)
        codes = [line["code"] for line in _call_lines(caplog)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert codes == ["INVALID_ARGUMENT"]
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]


def test_the_database_password_is_hidden():
    assert logs.redact_url("postgresql://app:s3cret@db.internal:5432/identity") == "postgresql://app:***@db.internal:5432/identity"
    assert logs.redact_url("postgresql://app@db/identity?password=s3cret&sslmode=require") == (
        "postgresql://app@db/identity?password=***&sslmode=require"
    )
    assert logs.redact_url("host=db password='a b' user=app") == "host=db password=*** user=app"


REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_once(database_url: str, tmp_path: Path, *args: str) -> list[str]:
    """Runs the real server (one worker), makes one call, stops it; its log lines."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in ("LOG_FORMAT", "API_KEYS")}
    command = [sys.executable, "-m", "service.runtime.server", "--listen", f"127.0.0.1:{port}", "--workers", "1",
               "--pool-size", "2", "--database-url", database_url, "--default-workspace", "", "--grace", "1", *args]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            with pytest.raises(grpc.RpcError):
                pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id="nope\n"), timeout=10)
        deadline = time.monotonic() + 10
        while "GetSettings" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return log_path.read_text().splitlines()


def test_a_server_with_log_format_json_writes_only_json_lines(database_url, engine, tmp_path):
    lines = _serve_once(database_url, tmp_path, "--log-format", "json")
    parsed = [json.loads(line) for line in lines]  # every line, start-up and call alike
    assert all({"time", "level", "logger", "message", "process"} <= set(p) for p in parsed)
    messages = [p["message"] for p in parsed]
    assert any(m.startswith("identity service on 127.0.0.1:") and " database postgresql://" in m for m in messages), messages
    assert any(m.startswith("try it: grpcurl -plaintext 127.0.0.1:") and m.endswith(" list") for m in messages), messages
    (call,) = [p for p in parsed if p["logger"] == "identity.calls"]
    assert (call["method"], call["workspace"], call["code"]) == ("GetSettings", "nope\n", "INVALID_ARGUMENT")


def test_a_server_logs_human_lines_by_default(database_url, engine, tmp_path):
    lines = _serve_once(database_url, tmp_path)
    (call,) = [line for line in lines if " identity.calls " in line]
    assert ' identity.calls GetSettings ws="nope\\n" INVALID_ARGUMENT ' in call
    assert any("try it: grpcurl -plaintext 127.0.0.1:" in line for line in lines), lines
