"""A Citus worker node stopped under load is survived like a Postgres restart, for the workspaces
it holds, and is not noticed by the others:

- while it is down, every call on a workspace whose shard it holds fails fast with UNAVAILABLE
  DATABASE_UNAVAILABLE (Citus reports the refused connection as a connection failure, which the
  unit of work answers as it answers a database it cannot reach);
- every call on a workspace of the other worker is served (OK, or a refusal of the rules: the
  shared people's identifiers conflict), and health stays SERVING (the
  coordinator, which the health monitor pings, is up: the service is partly available);
- the server's processes stay up, and once the worker is back every client gets OK calls again
  within RECOVERY_LIMIT seconds (the coordinator reconnects to it on the next statement);
- no acknowledged write is lost and no identifier is duplicated, in any workspace.

The load: 24 client threads, each writing its own people (and a few shared ones) into one of
8 workspaces, 4 on each worker."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2

from identity.v1 import identity_pb2 as pb
from tests.citus.nodes import Node, node_at
from tests.races.conftest import figures  # noqa: F401  (a fixture)
from tests.races.harness import (
    CHANNEL_OPTIONS,
    NO_TRACE_CODES,
    Call,
    Client,
    Load,
    ServerProcess,
    case_variant,
    check_history,
    duplicates_in_sql,
    health_status,
    tally,
    wait_until,
)
from identity.v1 import identity_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

C = grpc.StatusCode
THREADS = 24
PER_WORKER = 4  # workspaces on each worker
DEADLINE = 2.0  # per call
OUTAGE_S = 3.0
FAST_S = 1.0  # a call on the stopped worker's workspaces must fail within this (typically a few ms)
RECOVERY_LIMIT = 10.0  # seconds from the worker answering again to every client's first OK (typically < 1)
SERVING = health_pb2.HealthCheckResponse.SERVING


def worker_of(conn: sa.Connection, workspace: str) -> int:
    """The port of the worker that holds the workspace's shard group."""
    return int(
        conn.execute(
            sa.text(
                "SELECT nodeport FROM citus_shards WHERE table_name = 'workspaces'::regclass"
                " AND shardid = get_shard_id_for_distribution_column('workspaces', CAST(:w AS text))"
            ),
            {"w": workspace},
        ).scalar_one()
    )


@pytest.fixture(scope="module")
def placed_workspaces(engine: sa.Engine, database_url: str) -> dict[int, list[str]]:
    """PER_WORKER new workspaces on each worker (by worker port), made through the service's own
    use case so that each has its rows as a real one does."""
    import asyncio

    from service.db.engine import create_pool
    from service.db.unit_of_work import UnitOfWork
    from service.domain import Settings
    from service.usecases import IdentityService

    by_worker: dict[int, list[str]] = {}
    candidates: list[tuple[str, int]] = []
    with engine.connect() as conn:
        workers = [p for (p,) in conn.execute(sa.text("SELECT nodeport FROM pg_dist_node WHERE groupid <> 0 AND isactive"))]
        assert len(workers) >= 2, workers
        while any(len(by_worker.get(p, [])) < PER_WORKER for p in workers):
            workspace = "wd-" + secrets.token_hex(5)
            port = worker_of(conn, workspace)
            if len(by_worker.setdefault(port, [])) < PER_WORKER:
                by_worker[port].append(workspace)
                candidates.append((workspace, port))

    async def create() -> None:
        pool = create_pool(database_url, size=1)
        await pool.open()
        try:
            for workspace, _ in candidates:
                await IdentityService(UnitOfWork(pool)).create_workspace(Settings(workspace))
        finally:
            await pool.close()

    asyncio.run(create())
    return by_worker


@pytest.fixture
def server(database_url: str, engine: sa.Engine, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(database_url, tmp_path / "server.log", workers=2, grace=5.0).start()
    try:
        yield server
    finally:
        server.stop()


def writer(workspaces: list[str]) -> Callable[[Client], None]:
    """Thread i writes into workspaces[i % len]: people of its own (unique id and email), updates
    of them, and a share of people from a small pool shared with the other threads there."""

    def body(client: Client) -> None:
        rng = client.rng
        workspace = workspaces[client.index % len(workspaces)]
        mine: list[str] = []
        n = 0
        while client.more():
            token = client.token()
            roll = rng.random()
            if roll < 0.2:
                request = pb.IdentifyRequest(
                    workspace_id=workspace, id=f"s{rng.randrange(6)}",
                    email=case_variant(rng, f"s{rng.randrange(6)}@down.example.com"),
                )
            elif mine and roll < 0.5:
                request = pb.IdentifyRequest(workspace_id=workspace, id=rng.choice(mine))
            else:
                n += 1
                new = f"d{client.index}-{n}"
                request = pb.IdentifyRequest(workspace_id=workspace, id=new, email=f"{new}@down.example.com")
            request.attributes.update({f"t{client.index}": token})
            call = client.call("Identify", request, token=token, timeout=DEADLINE)
            if call.ok and call.response.outcome == pb.IDENTIFY_OUTCOME_CREATED and request.id.startswith("d"):
                mine.append(request.id)
            time.sleep(0.01 if call.ok else 0.05)

    return body


def served(call: Call) -> bool:
    """Answered: OK, or a refusal of the rules (which says nothing about availability)."""
    return call.ok or call.code in NO_TRACE_CODES


def first_ok_after(client: Client, moment: float) -> float | None:
    ends = [c.end for c in list(client.calls) if c.ok and c.start >= moment]
    return min(ends) if ends else None


def test_a_worker_stopped_under_load(citus_url, engine, placed_workspaces, server, figures):  # noqa: F811
    ports = sorted(placed_workspaces)
    down_port, up_port = ports[-1], ports[0]
    node: Node = node_at(citus_url, down_port)
    down_ws, up_ws = set(placed_workspaces[down_port]), set(placed_workspaces[up_port])
    workspaces = [w for pair in zip(placed_workspaces[up_port], placed_workspaces[down_port]) for w in pair]
    workers = server.worker_pids()

    load = Load(server.address, THREADS, writer(workspaces), seconds=60, max_calls=100_000, timeout=DEADLINE).start()
    health_during: list[int | None] = []
    try:
        time.sleep(2.0)
        t_stop = time.monotonic()
        node.stop()
        t_stopped = time.monotonic()
        while time.monotonic() < t_stopped + OUTAGE_S:
            health_during.append(health_status(server.address))
            time.sleep(0.2)
        alive = server.proc.poll() is None and server.worker_pids() == workers
        t_restart = time.monotonic()
        node.start()
        assert wait_until(node.accepts, 30, 0.05), "the worker did not come back"
        t_up = time.monotonic()
        recovered = wait_until(lambda: all(first_ok_after(c, t_up) is not None for c in load.clients), RECOVERY_LIMIT + 20, 0.05)
        time.sleep(1.0)
    finally:
        load.stop()
        calls = load.join()
        node.ensure_started()

    # Calls made entirely while the worker was down (its fast shutdown takes a moment: from when
    # pg_ctl returned), by the side they were on.
    outage = [c for c in calls if c.start >= t_stopped and c.end <= t_restart]
    on_down = [c for c in outage if c.workspace in down_ws]
    on_up = [c for c in outage if c.workspace in up_ws]
    recovery = [first_ok_after(c, t_up) for c in load.clients]
    values: dict[str, Any] = {
        **tally(calls),
        "worker_stop_seconds": t_stopped - t_stop,
        "outage_calls_on_stopped_worker": len(on_down),
        "outage_calls_on_other_worker": len(on_up),
        "outage_other_worker_ok": sum(1 for c in on_up if c.ok),
        "outage_max_call_seconds_stopped_worker": max((c.seconds for c in on_down), default=0.0),
        "recovery_seconds": max((t - t_up for t in recovery if t is not None), default=float("inf")),
        "health_during_outage": sorted({health_pb2.HealthCheckResponse.ServingStatus.Name(h) if h is not None else "none" for h in health_during}),
    }
    duplicates = duplicates_in_sql(engine, workspaces)
    reports = {w: check_history(engine, w, calls) for w in workspaces}
    values.update(
        writes_checked=sum(r.writes_checked for r in reports.values()),
        duplicates=duplicates + sum(r.duplicates for r in reports.values()),
    )
    figures(values)

    assert alive, "the server or one of its processes did not stay up while the worker was down"
    assert on_down and on_up, "no call was made on one side during the outage"
    wrong = [c for c in on_down if c.code != C.UNAVAILABLE or c.reason != "DATABASE_UNAVAILABLE"]
    assert not wrong, "calls on the stopped worker's workspaces must fail with UNAVAILABLE:\n" + "\n".join(
        c.describe() for c in wrong[:10]
    )
    assert values["outage_max_call_seconds_stopped_worker"] < FAST_S, "a call on the stopped worker did not fail fast"
    # Served: answered OK, or refused by the rules (the shared people's identifiers conflict).
    failed_up = [c for c in on_up if not served(c)]
    assert not failed_up, "calls on the other worker's workspaces failed during the outage:\n" + "\n".join(
        c.describe() for c in failed_up[:10]
    )
    assert health_during and all(h == SERVING for h in health_during), values["health_during_outage"]
    # Any failure outside the outage is one of the calls in flight when the worker stopped or
    # came back, on its workspaces, and UNAVAILABLE (its connection broke): nothing else.
    odd = [c for c in calls if not served(c) and (c.workspace not in down_ws or c.code != C.UNAVAILABLE)]
    assert not odd, "unexpected failures:\n" + "\n".join(c.describe() for c in odd[:10])
    assert recovered, f"client threads got no OK call within {RECOVERY_LIMIT + 20}s of the worker's return"
    assert values["recovery_seconds"] <= RECOVERY_LIMIT, f"service resumed {values['recovery_seconds']:.2f}s after the worker came back"
    for report in reports.values():
        report.assert_clean()
    assert values["duplicates"] == 0
    # and the workspaces of the worker that came back take writes again through a new channel
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.IdentityServiceStub(channel)
        for workspace in down_ws:
            stub.Identify(pb.IdentifyRequest(workspace_id=workspace, id="after-" + secrets.token_hex(3)), timeout=10)
