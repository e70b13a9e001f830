"""One structured log line per call, which a client cannot forge or flood: the workspace_id is
logged as sent (before it is validated), so it is escaped and cut; an undecodable request logs
its line and no traceback."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc

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
    return [json.loads(r.getMessage()) for r in _records(caplog)]


def test_each_call_logs_one_json_line(channel, workspace, caplog):
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        pb_grpc.IdentityServiceStub(channel).Identify(pb.IdentifyRequest(workspace_id=workspace, id="ab100"))
        (line,) = _call_lines(caplog)
    assert line["method"] == "Identify" and line["workspace"] == workspace and line["code"] == "OK"
    assert line["ms"] >= 0


def test_a_newline_in_the_workspace_id_cannot_forge_a_log_line(channel, caplog):
    forged = 'x\n2026-01-01 00:00:00 INFO identity.calls {"method": "DeletePerson", "code": "OK"}'
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id=forged))
        (record,) = _records(caplog)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in record.getMessage()
    logged = json.loads(record.getMessage())["workspace"]
    assert logged.startswith(forged[:50]) and len(logged.encode()) <= 64


def test_a_huge_workspace_id_is_cut_in_the_log(channel, caplog):
    with caplog.at_level(logging.INFO, logger="identity.calls"):
        with pytest.raises(grpc.RpcError):
            pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id="w" * 3_000_000))
        (record,) = _records(caplog)
    assert len(record.getMessage()) < 300


def test_an_undecodable_request_is_invalid_and_logs_no_traceback(channel, caplog):
    call = channel.unary_unary(IDENTIFY, request_serializer=None, response_deserializer=None)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff\x0f", timeout=10)
        codes = [line["code"] for line in _call_lines(caplog)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert codes == ["INVALID_ARGUMENT"]
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
