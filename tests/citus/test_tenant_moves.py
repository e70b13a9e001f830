"""Moving tenants while the service serves (README, "Citus": moving tenants): one large workspace
isolated onto a shard of its own (isolate_tenant_to_new_shard, CASCADE: every colocated table),
that shard group moved to the other worker (citus_move_shard_placement), then a third worker
added and the shards rebalanced onto it (citus_add_node, rebalance_table_shards), all with
shard_transfer_mode 'auto' (logical replication: the cluster runs with wal_level=logical), all
under a load of writes into the large workspace and six others. (Isolation with
shard_transfer_mode 'block_writes': see ISOLATE_MODE.)

Afterwards: every acknowledged write is present and no identifier is duplicated (the race
suite's history check, per workspace); each workspace's change log is whole (sequences 1..n with
no gap, the counter at n); the large workspace's shard holds only it, with its colocated tables
on one node; the new worker holds shards; the rebalancer has nothing left to do; and every
client got OK calls after the last move.

Its own database with 8 shards (so that the moves are few), and a node of its own: the fourth
port that tests/citus/run.sh reserved beside the cluster (the coordinator's + 3)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import psycopg
import pytest
import sqlalchemy as sa

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.api.convert import settings_to_pb
from service.db.citus import distribute, problems
from service.db.engine import create_engine, migrate, sqlalchemy_url
from service.domain import Settings
from tests.citus.conftest import create_citus_database, drop_citus_database
from tests.citus.nodes import PG_CTL, Node, cluster_folder
from tests.citus.test_worker_down import served, writer
from tests.races.conftest import figures  # noqa: F401  (a fixture)
from tests.races.harness import Load, ServerProcess, check_history, duplicates_in_sql, tally

pytestmark = pytest.mark.slow

C = grpc.StatusCode
SHARDS = 8
THREADS = 16
DEADLINE = 5.0
# Moves and the rebalancer copy through logical replication ('auto'): writes go on during the
# copy and pause only for the final switch. Tenant isolation splits a shard, and Citus 13.2.2's
# logical split fails on this PostgreSQL 15.20 as soon as a row is updated during it (the
# subscriber: "publisher did not send replica identity column expected by the logical
# replication target relation", retried for ever), so it blocks the shard group's writes while
# it copies instead: the large workspace's (and its shard neighbours') writes wait, for a
# fraction of a second at these sizes.
MOVE_MODE = "auto"
ISOLATE_MODE = "block_writes"
OPERATOR_TIMEOUT_MS = 180_000  # a move that hangs fails the test instead of the CI run
INITDB = "/usr/lib/postgresql/15/bin/initdb"


def _postgres(*command: str) -> None:
    result = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def new_worker(citus_url: str) -> Iterator[Node]:
    """A fourth PostgreSQL with Citus, set up as cluster.sh sets up its nodes, not yet in any
    database's node list."""
    folder = cluster_folder()
    port = (sa.engine.make_url(citus_url).port or 5432) + 3
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.fail(f"port {port}, which tests/citus/run.sh keeps free for this test, is taken")
    node = Node(folder, 3, port)
    assert not node.data.exists(), f"{node.data} exists: a node of an earlier run?"
    _postgres(INITDB, "-D", str(node.data), "-A", "trust", "-U", "postgres")
    with open(node.data / "postgresql.conf", "a") as conf:
        conf.write(
            f"shared_preload_libraries = 'citus'\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
            f"unix_socket_directories = '{folder}'\nmax_connections = 200\nwal_level = logical\n"
            "output_plugin_libraries = 'pgoutput, test_decoding, citus'\n"
        )
    node.start()
    try:
        yield node
    finally:
        _postgres(PG_CTL, "-D", str(node.data), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="module")
def moves_db(citus_url: str, citus_workers: list[tuple[str, int]], new_worker: Node) -> Iterator[tuple[str, sa.Engine]]:
    """A database of its own on the cluster, migrated and distributed with SHARDS shards, and on
    the new worker (with the citus extension, not registered yet)."""
    name = f"identity_citus_moves_{secrets.token_hex(4)}"
    url = create_citus_database(citus_url, citus_workers, name)
    with psycopg.connect(new_worker.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(sa.engine.make_url(new_worker.admin_url).set(database=name).render_as_string(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION citus")
    engine = create_engine(url, pool_size=4)
    try:
        migrate(engine)
        distribute(engine, shard_count=SHARDS)
        yield url, engine
    finally:
        engine.dispose()
        drop_citus_database(citus_url, [*citus_workers, ("127.0.0.1", new_worker.port)], name)


def _node_of(conn: sa.Connection, table: str, workspace: str) -> tuple[int, int]:
    """(shard id, worker port) of the workspace's shard of `table`."""
    row = conn.execute(
        sa.text(
            "SELECT shardid, nodeport FROM citus_shards WHERE table_name = CAST(:t AS regclass)"
            " AND shardid = get_shard_id_for_distribution_column(:t, CAST(:w AS text))"
        ),
        {"t": table, "w": workspace},
    ).one()
    return int(row[0]), int(row[1])


def test_tenant_isolated_moved_and_shards_rebalanced_under_load(
    citus_url: str, moves_db: tuple[str, sa.Engine], new_worker: Node, tmp_path: Path, figures: Any  # noqa: F811
) -> None:
    url, engine = moves_db
    big = "big-" + secrets.token_hex(4)
    small = [f"small{i}-" + secrets.token_hex(3) for i in range(6)]
    server = ServerProcess(url, tmp_path / "server.log", workers=2, grace=5.0).start()
    steps: dict[str, float] = {}
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.WorkspaceServiceStub(channel)
            for workspace in [big, *small]:
                stub.CreateWorkspace(
                    pb.CreateWorkspaceRequest(workspace_id=workspace, settings=settings_to_pb(Settings(workspace))), timeout=10
                )
        # Half the threads on the large workspace, the others spread over the small ones.
        spread = [big if i % 2 == 0 else small[(i // 2) % len(small)] for i in range(THREADS)]
        load = Load(server.address, THREADS, writer(spread), seconds=180, max_calls=1_000_000, timeout=DEADLINE).start()
        try:
            time.sleep(2.0)
            # The operator's session: not the service's (whose statements are capped at 5 s).
            operator = sa.create_engine(
                sqlalchemy_url(url), poolclass=sa.NullPool, connect_args={"options": f"-c statement_timeout={OPERATOR_TIMEOUT_MS}"}
            )
            with operator.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                before_shard, source = _node_of(conn, "workspaces", big)
                t = time.monotonic()
                isolated = conn.execute(
                    sa.text("SELECT isolate_tenant_to_new_shard('workspaces', CAST(:w AS text), 'CASCADE', shard_transfer_mode => :m)"),
                    {"w": big, "m": ISOLATE_MODE},
                ).scalar_one()
                steps["isolate_seconds"] = time.monotonic() - t
                time.sleep(1.0)
                target = next(p for (p,) in conn.execute(sa.text(
                    "SELECT nodeport FROM pg_dist_node WHERE groupid <> 0 AND isactive ORDER BY nodeport")) if p != source)
                t = time.monotonic()
                conn.execute(
                    sa.text(
                        "SELECT citus_move_shard_placement(:s, '127.0.0.1', :src, '127.0.0.1', :dst, shard_transfer_mode => :m)"
                    ),
                    {"s": isolated, "src": source, "dst": target, "m": MOVE_MODE},
                )
                steps["move_seconds"] = time.monotonic() - t
                time.sleep(1.0)
                conn.execute(sa.text("SELECT citus_add_node('127.0.0.1', :p)"), {"p": new_worker.port})
                planned = conn.execute(sa.text("SELECT count(*) FROM get_rebalance_table_shards_plan()")).scalar_one()
                t = time.monotonic()
                conn.execute(sa.text("SELECT rebalance_table_shards(shard_transfer_mode => :m)"), {"m": MOVE_MODE})
                steps["rebalance_seconds"] = time.monotonic() - t
                left = conn.execute(sa.text("SELECT count(*) FROM get_rebalance_table_shards_plan()")).scalar_one()
            t_moved = time.monotonic()
            time.sleep(2.0)
        finally:
            load.stop()
            calls = load.join()
        code, _ = server.terminate()
        assert code == 0, server.log_tail()
    finally:
        server.stop()

    workspaces = [big, *small]
    with engine.connect() as conn:
        tables = [t for (t,) in conn.execute(sa.text(
            "SELECT logicalrelid::regclass::text FROM pg_dist_partition WHERE partmethod = 'h' ORDER BY 1"))]
        placed = {table: _node_of(conn, table, big) for table in tables}
        bounds = conn.execute(
            sa.text("SELECT shardminvalue, shardmaxvalue FROM pg_dist_shard WHERE shardid = :s"), {"s": placed["workspaces"][0]}
        ).one()
        on_new = conn.execute(
            sa.text("SELECT count(*) FROM citus_shards WHERE nodeport = :p"), {"p": new_worker.port}
        ).scalar_one()
        logs = {
            w: conn.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT sequence), coalesce(max(sequence), 0),"
                    " (SELECT last_sequence FROM event_sequences WHERE workspace_id = :w)"
                    " FROM person_events WHERE workspace_id = :w"
                ),
                {"w": w},
            ).one()
            for w in workspaces
        }
        assert problems(conn) == []
    reports = {w: check_history(engine, w, calls) for w in workspaces}
    after = [c for c in calls if c.start >= t_moved]
    values = {
        **tally(calls),
        **steps,
        "rebalance_moves_planned": planned,
        "shards_on_new_worker": on_new,
        "writes_checked": sum(r.writes_checked for r in reports.values()),
        "duplicates": duplicates_in_sql(engine, workspaces) + sum(r.duplicates for r in reports.values()),
        "events_big_workspace": logs[big][0],
        "calls_after_moves": len(after),
    }
    figures(values)

    for report in reports.values():
        report.assert_clean()
    assert values["duplicates"] == 0
    for w, (count, distinct, top, counter) in logs.items():
        assert count == distinct == top and counter == top, f"{w}: change log {count} events, {distinct} numbers, max {top}, counter {counter}"
    assert isolated != before_shard and placed["workspaces"][0] == isolated
    assert bounds[0] == bounds[1], f"the large workspace's shard covers {bounds}, not its hash alone"
    assert len({port for _, port in placed.values()}) == 1, f"the workspace's tables are on different nodes: {placed}"
    assert planned > 0 and left == 0, (planned, left)
    assert on_new > 0, "the rebalancer put no shard on the new worker"
    # The service served throughout (OK, or a refusal of the rules: the shared people's
    # identifiers conflict): calls on every workspace were served after the moves, and none failed in a way that says anything but "retry" (a write that waited out its
    # deadline behind a move's final lock, while the shard's writes are paused).
    assert after and all(served(c) for c in after), [c.describe() for c in after if not served(c)][:10]
    odd = [c for c in calls if not served(c) and c.code not in (C.DEADLINE_EXCEEDED, C.UNAVAILABLE, C.ABORTED)]
    assert not odd, "unexpected failures during the moves:\n" + "\n".join(c.describe() for c in odd[:10])
    assert sum(1 for c in calls if not served(c)) <= 0.05 * len(calls), values
