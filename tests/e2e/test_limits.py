"""The process's limit of identity calls in flight: past it, RESOURCE_EXHAUSTED TOO_MANY_CALLS
with its ErrorInfo, at once; health checks and streams are not counted; the limit frees up when
the calls end."""

from __future__ import annotations

import threading
import time

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from tests.e2e.helpers import identify, refused
from tests.lock_waits import backend_id, blocked_by


def _wait_for_lock_waiters(engine: sa.Engine, holder: int, count: int, within: float = 10.0) -> bool:
    """Whether `count` sessions wait for the locks of the session `holder` within `within` s (on
    plain Postgres or on Citus, whose waits are on the workers: tests/lock_waits.py)."""
    deadline = time.monotonic() + within
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if blocked_by(conn, holder) >= count:
                return True
            time.sleep(0.01)
    return False


def test_past_the_limit_of_calls_in_flight_a_call_is_resource_exhausted(start_server, engine, make_workspace):
    workspace = make_workspace()
    server = start_server(pool_size=2, max_concurrent_calls=1)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.IdentityServiceStub(channel)
        person = identify(stub, workspace, id="held").person
        held_result: list[object] = []
        with engine.connect() as lock_conn:
            lock = lock_conn.begin()
            lock_conn.execute(
                sa.text("SELECT 1 FROM people WHERE workspace_id = :w AND cio_id = :c FOR UPDATE"),
                {"w": workspace, "c": person.cio_id},
            )
            holder = backend_id(lock_conn)
            held = threading.Thread(
                target=lambda: held_result.append(
                    stub.Identify(pb.IdentifyRequest(workspace_id=workspace, id="held"), timeout=30)
                )
            )
            held.start()
            assert _wait_for_lock_waiters(engine, holder, 1), "the held call never waited on the lock"
            refusal = refused(stub.GetSettings, pb.GetSettingsRequest(workspace_id=workspace),
                              grpc.StatusCode.RESOURCE_EXHAUSTED, timeout=10)
            assert refusal.reason == "TOO_MANY_CALLS"
            assert refusal.metadata == {"limit": "1"}
            # Health checks are not identity calls: still answered.
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            lock.rollback()
        held.join(30)
        assert held_result and held_result[0].person.cio_id == person.cio_id
        # The limit freed up with the call.
        assert stub.GetSettings(pb.GetSettingsRequest(workspace_id=workspace), timeout=10).settings.workspace_id == workspace
    server.stop(0)
