"""Fair shares (issue 11): a workspace over its calls per second, or with too many calls running
and waiting, is refused RESOURCE_EXHAUSTED with an ErrorInfo and a google.rpc.RetryInfo, while
another workspace is served. The limits are workspace settings (0: the server's default)."""

from __future__ import annotations

import time

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from tests.e2e.helpers import assert_invalid, parse, refused
from tests.lock_waits import backend_id, blocked_by, until


def retry_delay(error: grpc.RpcError) -> float:
    refusal = parse(error)
    found = []
    for detail in refusal.status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            found.append(info.retry_delay.ToTimedelta().total_seconds())
    assert len(found) == 1, "RESOURCE_EXHAUSTED without exactly one RetryInfo"
    return found[0]


@pytest.fixture
def limited(start_server, make_workspace):
    running = start_server(pool_size=4)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, pb_grpc.IdentityServiceStub(channel), pb_grpc.WorkspaceServiceStub(channel)
    channel.close()
    running.stop(0)


def set_limits(running, workspaces, workspace_id: str, **limits: int) -> None:
    request = pb.UpdateSettingsRequest(workspace_id=workspace_id, settings=pb.WorkspaceSettings(**limits),
                                       update_mask=field_mask_pb2.FieldMask(paths=list(limits)))
    settings = workspaces.UpdateSettings(request).settings
    assert all(getattr(settings, name) == value for name, value in limits.items())
    running.call(running.running.control.poll(limits=True))  # the next poll, now rather than within 1 s


def test_a_workspace_over_its_rate_is_refused_with_retry_info_while_another_is_served(limited, make_workspace):
    running, people, workspaces = limited
    flood, calm = make_workspace(), make_workspace()
    set_limits(running, workspaces, flood, max_calls_per_second=5)
    ok = refusals = 0
    start = time.monotonic()
    last = None
    for i in range(40):
        try:
            people.GetSettings(pb.GetSettingsRequest(workspace_id=flood), timeout=10)
            ok += 1
        except grpc.RpcError as error:
            refusal = parse(error)
            assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refusal.reason == "WORKSPACE_RATE_LIMITED"
            assert refusal.metadata["limit"] == "5" and refusal.metadata["workspace_id"] == flood
            delay = retry_delay(error)
            assert 0 < delay <= 0.2 + 1e-6  # one token at 5 per second
            refusals += 1
            last = error
        # The other workspace is served all along.
        people.Identify(pb.IdentifyRequest(workspace_id=calm, id=f"calm-{i}"), timeout=10)
    elapsed = time.monotonic() - start
    assert refusals > 0 and ok <= 5 + 5 * elapsed + 1, (ok, refusals, elapsed)
    time.sleep(retry_delay(last) + 0.05)  # after the RetryInfo's delay, a token is back
    people.GetSettings(pb.GetSettingsRequest(workspace_id=flood), timeout=10)
    time.sleep(1.1)  # a full bucket: the settings change below is one of the workspace's calls too
    # Back to the server's default (none here): no refusal however fast.
    set_limits(running, workspaces, flood, max_calls_per_second=0)
    for _ in range(20):
        people.GetSettings(pb.GetSettingsRequest(workspace_id=flood), timeout=10)


def test_a_workspace_with_too_many_calls_at_once_is_refused_while_another_is_served(limited, make_workspace, database_url):
    running, people, workspaces = limited
    flood, calm = make_workspace(), make_workspace()
    set_limits(running, workspaces, flood, max_concurrent_calls=1)
    with psycopg.connect(database_url) as blocker:
        # Hold the workspace's settings row: its writes wait on it (FOR SHARE), holding their slot.
        blocker.execute("SELECT 1 FROM workspaces WHERE workspace_id = %s FOR UPDATE", (flood,))
        holder = backend_id(blocker)
        first = people.Identify.future(pb.IdentifyRequest(workspace_id=flood, id="first"), timeout=30)
        # Its wait is watched in pg_stat_activity, or on Citus in citus_lock_waits (tests/lock_waits.py).
        with psycopg.connect(database_url, autocommit=True) as watcher:
            assert until(lambda: blocked_by(watcher, holder) > 0, 10), "the first call never reached its lock"
        others = [people.Identify.future(pb.IdentifyRequest(workspace_id=flood, id=f"more-{i}"), timeout=30)
                  for i in range(5)]
        # One may wait for the running slot; the other four are refused at once.
        deadline = time.monotonic() + 10
        while sum(f.done() for f in others) < 4:
            assert time.monotonic() < deadline, "refusals did not come back while the workspace was blocked"
            time.sleep(0.02)
        refusals = [f.exception() for f in others if f.done()]
        assert len(refusals) == 4 and not first.done()
        for error in refusals:
            refusal = parse(error)
            assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message
            assert refusal.reason == "WORKSPACE_CONCURRENCY_LIMITED" and refusal.metadata["limit"] == "1"
            assert retry_delay(error) > 0
        # Meanwhile another workspace is served.
        assert people.Identify(pb.IdentifyRequest(workspace_id=calm, id="calm"), timeout=10).outcome == pb.IDENTIFY_OUTCOME_CREATED
        blocker.rollback()
    assert first.result().outcome == pb.IDENTIFY_OUTCOME_CREATED
    waiting = [f for f in others if f.exception() is None]
    assert len(waiting) == 1 and waiting[0].result().outcome == pb.IDENTIFY_OUTCOME_CREATED


def test_limits_are_settings_validated_like_any_other(limited, make_workspace):
    _, people, workspaces = limited
    workspace = make_workspace()
    request = pb.UpdateSettingsRequest(
        workspace_id=workspace, settings=pb.WorkspaceSettings(max_calls_per_second=-1, max_concurrent_calls=10_001),
        update_mask=field_mask_pb2.FieldMask(paths=["max_calls_per_second", "max_concurrent_calls"]),
    )
    refusal = refused(workspaces.UpdateSettings, request)
    assert_invalid(refusal, "settings.max_calls_per_second")
    assert set(refusal.fields) == {"settings.max_calls_per_second", "settings.max_concurrent_calls"}
    create = pb.CreateWorkspaceRequest(workspace_id=workspace + "n", settings=pb.WorkspaceSettings(max_concurrent_calls=-5))
    assert_invalid(refused(workspaces.CreateWorkspace, create), "settings.max_concurrent_calls")
    created = workspaces.CreateWorkspace(pb.CreateWorkspaceRequest(
        workspace_id=workspace + "m", settings=pb.WorkspaceSettings(max_calls_per_second=50, max_concurrent_calls=4)))
    assert (created.settings.max_calls_per_second, created.settings.max_concurrent_calls) == (50, 4)
    read = people.GetSettings(pb.GetSettingsRequest(workspace_id=workspace + "m")).settings
    assert (read.max_calls_per_second, read.max_concurrent_calls) == (50, 4)
