"""Machinery shared by the race and fault suites: the real server as a subprocess, client threads
with one gRPC channel each, a record of every call, and the checks made afterwards in SQL.

Every call is recorded with its request and its result: the OK response, or the status code and
the ErrorInfo reason. A call is then one of:

- OK: acknowledged; its effect must be in the data (or undone later by another OK call);
- refused: the service answered a refusal that guarantees a rollback (R40): INVALID_ARGUMENT,
  NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, or UNAVAILABLE/DATABASE_BUSY (no
  connection was taken); it must have left no trace;
- unknown: anything else (a transport error, a deadline, a connection that broke during COMMIT):
  it may or may not have been applied, and the checks allow both.

The checks are sound for any interleaving: they use only facts that every correct execution
satisfies (see check_history).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import grpc
import psutil
import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.runtime.healthcheck import is_serving
from service.rules.validation import email_key

REPO = Path(__file__).resolve().parents[2]

# Each channel opens its own connection (by default gRPC shares one between channels with the
# same target), so that SO_REUSEPORT spreads the channels over the worker processes.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

C = grpc.StatusCode
# Refusals after which the service guarantees that nothing was written.
NO_TRACE_CODES = {C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION, C.ABORTED}
NO_TRACE_REASONS = {(C.UNAVAILABLE, "DATABASE_BUSY")}  # the pool had no connection: no transaction
WRITE_METHODS = {"Identify", "UpdateIdentifier", "DeleteIdentifier", "DeletePerson", "UpdateSettings"}
TOKEN_RE = re.compile(r"^tk[0-9a-f]{4}x\d{2}x\d{5}$")


# --------------------------------------------------------------------------- ports and server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int) -> int:
    """A first port such that it and the `count - 1` after it are free (the server's metrics
    ports are metrics_port + worker index)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class ServerProcess:
    """`python -m service.runtime.server --workers N` as a subprocess: a supervisor forking N workers
    that share one port (SO_REUSEPORT), each with a Prometheus endpoint on metrics_port + index."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        workers: int = 2,
        grace: float = 5.0,
        extra_args: Iterable[str] = (),
    ):
        self.database_url = database_url
        self.log_path = log_path
        self.workers = workers
        self.grace = grace
        self.port = free_port()
        self.metrics_port = free_port_block(workers)
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "service.runtime.server",
            "--workers", str(workers),
            "--database-url", database_url,
            "--listen", self.address,
            "--default-workspace", "",
            "--metrics-port", str(self.metrics_port),
            "--grace", str(grace),
            "--log-level", "WARNING",
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.exit_seconds: float | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "WORKERS", "METRICS_PORT")}
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        if not wait_until(self._ready, timeout, 0.2):
            tail = self.log_tail()
            self.kill()
            raise RuntimeError(f"server did not become ready in {timeout}s; log:\n{tail}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")
        if len(self.worker_pids()) != self.workers:
            return False
        if not all(self.metrics_text(i) is not None for i in range(self.workers)):
            return False
        return is_serving(self.address) and self.all_serving(probes=4)

    def all_serving(self, probes: int = 8) -> bool:
        """Health SERVING on `probes` fresh connections (which SO_REUSEPORT spreads over workers)."""
        return all(health_status(self.address) == health_pb2.HealthCheckResponse.SERVING for _ in range(probes))

    def worker_pids(self) -> list[int]:
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return sorted(p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)

    def worker_index(self, pid: int) -> int | None:
        """Which worker a pid is, by the metrics port it listens on."""
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    index = conn.laddr.port - self.metrics_port
                    if 0 <= index < self.workers:
                        return index
        return None

    def metrics_text(self, worker: int) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port + worker}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def counter(self, worker: int, name: str, **labels: str) -> float:
        """The sum of a counter's samples on one worker (0 when the worker does not answer)."""
        text = self.metrics_text(worker)
        if text is None:
            return 0.0
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def retries(self) -> float:
        """identity_transaction_retries_total summed over the workers."""
        return sum(self.counter(i, "identity_transaction_retries_total") for i in range(self.workers))

    def calls_answered(self, worker: int, **labels: str) -> float:
        return self.counter(worker, "identity_calls_total", **labels)

    def terminate(self, timeout: float | None = None) -> tuple[int, float]:
        """SIGTERM and wait; returns (exit code, seconds until exit)."""
        assert self.proc is not None
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout if timeout is not None else self.grace + 15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.exit_code, self.exit_seconds = self.proc.returncode, time.monotonic() - start
        return self.exit_code, self.exit_seconds

    def kill(self) -> None:
        """Last resort: SIGKILL the supervisor and its workers (by pid)."""
        if self.proc is None:
            return
        pids = self.worker_pids()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """For fixtures: SIGTERM if still running, SIGKILL if that does not end it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
        self.kill()

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def health_status(address: str, timeout: float = 1.0) -> int | None:
    """The overall health status on a fresh connection; None when the call itself fails."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return None


# --------------------------------------------------------------------------- calls


@dataclass
class Call:
    thread: int
    seq: int
    method: str
    workspace: str
    request: Any
    start: float
    end: float
    code: grpc.StatusCode
    response: Any = None
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    tag: Any = None  # what the scenario wants to remember (a round, an operation name)

    @property
    def ok(self) -> bool:
        return self.code == C.OK

    @property
    def refused(self) -> bool:
        """Answered by the service with a refusal that guarantees nothing was written."""
        if self.ok or self.reason is None:
            return False
        return self.code in NO_TRACE_CODES or (self.code, self.reason) in NO_TRACE_REASONS

    @property
    def unknown(self) -> bool:
        return not self.ok and not self.refused

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def person(self) -> pb.Person | None:
        if self.ok and self.method in ("Identify", "UpdateIdentifier", "DeleteIdentifier", "GetPerson"):
            return self.response.person
        return None

    def describe(self) -> str:
        result = "OK" if self.ok else f"{self.code.name}/{self.reason}"
        request = MessageToDict(self.request, preserving_proto_field_name=True)
        return f"[t{self.thread}#{self.seq} {self.method} {request} -> {result} in {self.seconds * 1000:.0f}ms]"


def error_info(error: grpc.RpcError) -> tuple[str | None, dict[str, str]]:
    """The ErrorInfo of a refusal (R42), or (None, {}) when the status carries none (transport
    errors, client-side deadlines)."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:
        return None, {}
    if status is None:
        return None, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return None, {}


class Client:
    """One thread's client: its own channel (so its own connection), its own random generator,
    and its own list of calls. Loops are bounded by `max_calls` and by `stop_at`."""

    def __init__(self, index: int, address: str, run_id: str, seed: int, stop_at: float, max_calls: int, timeout: float):
        self.index = index
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.identity = pb_grpc.IdentityServiceStub(self.channel)
        self.workspaces = pb_grpc.WorkspaceServiceStub(self.channel)
        self.rng = random.Random(seed * 1000 + index)
        self.run_id = run_id
        self.stop_at = stop_at
        self.max_calls = max_calls
        self.timeout = timeout
        self.calls: list[Call] = []
        self.stop_event: threading.Event | None = None

    def more(self) -> bool:
        """Whether the loop may make another call (bounded in count and in time)."""
        if self.stop_event is not None and self.stop_event.is_set():
            return False
        return len(self.calls) < self.max_calls and time.monotonic() < self.stop_at

    def token(self) -> str:
        """A value unique to the next call, written as an attribute to find its trace later."""
        return f"tk{self.run_id}x{self.index:02d}x{len(self.calls):05d}"

    def call(self, method: str, request: Any, *, token: str | None = None, tag: Any = None, timeout: float | None = None) -> Call:
        stub = self.workspaces if method in ("UpdateSettings", "CreateWorkspace") else self.identity
        start = time.monotonic()
        response, code, reason, metadata = None, C.OK, None, {}
        try:
            response = getattr(stub, method)(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            reason, metadata = error_info(error)
        call = Call(
            self.index, len(self.calls), method, request.workspace_id, request, start, time.monotonic(),
            code, response, reason, metadata, token, tag,
        )
        self.calls.append(call)
        return call

    def close(self) -> None:
        self.channel.close()


class Load:
    """`threads` client threads, each running `body(client)` with a channel of its own. Every
    body must loop on client.more(); the whole run is bounded by `seconds` (plus the calls'
    own deadline when joining)."""

    def __init__(
        self,
        address: str,
        threads: int,
        body: Callable[[Client], None],
        *,
        seconds: float,
        max_calls: int,
        timeout: float = 10.0,
        seed: int | None = None,
        first_index: int = 0,
        barriers: Iterable[threading.Barrier] = (),
    ):
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.run_id = secrets.token_hex(2)
        self.seconds = seconds
        self.timeout = timeout
        self.stop_event = threading.Event()
        stop_at = time.monotonic() + seconds
        self.clients = [
            Client(first_index + i, address, self.run_id, self.seed, stop_at, max_calls, timeout) for i in range(threads)
        ]
        for client in self.clients:
            client.stop_event = self.stop_event
        self.errors: list[BaseException] = []
        self.barriers = list(barriers)  # broken when a thread fails, so that the others stop waiting
        self.body = body
        self.threads = [threading.Thread(target=self._run, args=(c,), name=f"load-{c.index}", daemon=True) for c in self.clients]

    def _run(self, client: Client) -> None:
        try:
            self.body(client)
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.errors.append(error)
            self.stop_event.set()
            for barrier in self.barriers:
                barrier.abort()

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def join(self) -> list[Call]:
        deadline = time.monotonic() + self.seconds + self.timeout + 30
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        for client in self.clients:
            client.close()
        if self.errors:
            causes = [e for e in self.errors if not isinstance(e, threading.BrokenBarrierError)]
            raise (causes or self.errors)[0]
        assert not alive, f"client threads did not end in time: {alive}"
        return sorted((c for client in self.clients for c in client.calls), key=lambda c: c.start)

    def run(self) -> list[Call]:
        return self.start().join()

    def stop(self) -> None:
        self.stop_event.set()


def case_variant(rng: random.Random, email: str) -> str:
    """The same address with random upper/lower case letters (R4: the same person)."""
    return "".join(ch.upper() if ch.isalpha() and rng.random() < 0.5 else ch.lower() for ch in email)


# --------------------------------------------------------------------------- invariants in SQL

_INVARIANTS_SQL = sa.text(
    """
    WITH w AS (
        SELECT workspace_id, identifier_mode AS mode,
               identifier_mode IN ('EMAIL_OR_ID', 'ID_ONLY') AS id_ident,
               identifier_mode IN ('EMAIL_OR_ID', 'EMAIL_ONLY') AS email_ident
        FROM workspaces WHERE workspace_id = ANY(:ws)
    ), p AS (SELECT p.*, w.mode, w.id_ident, w.email_ident FROM people p JOIN w USING (workspace_id))
    SELECT workspace_id, mode,
           count(*) AS people,
           count(*) FILTER (WHERE id_key IS DISTINCT FROM CASE WHEN id_ident THEN id END) AS id_key_not_mode,
           count(*) FILTER (WHERE email_key IS DISTINCT FROM CASE WHEN email_ident THEN email_norm END)
               AS email_key_not_mode,
           count(*) FILTER (WHERE mode = 'EMAIL_OR_ID' AND id IS NULL AND email IS NULL) AS without_identifier,
           count(*) FILTER (WHERE mode = 'ID_ONLY' AND id IS NULL) AS without_id,
           count(*) FILTER (WHERE mode = 'EMAIL_ONLY' AND email IS NULL) AS without_email,
           (SELECT count(*) FROM (SELECT 1 FROM p q WHERE q.workspace_id = p.workspace_id AND q.id_key IS NOT NULL
                                  GROUP BY q.id_key HAVING count(*) > 1) d) AS duplicate_id_keys,
           (SELECT count(*) FROM (SELECT 1 FROM p q WHERE q.workspace_id = p.workspace_id AND q.email_key IS NOT NULL
                                  GROUP BY q.email_key HAVING count(*) > 1) d) AS duplicate_email_keys,
           (SELECT count(*) FROM (SELECT 1 FROM p q WHERE q.workspace_id = p.workspace_id AND q.id_ident
                                  AND q.id IS NOT NULL GROUP BY q.id HAVING count(*) > 1) d) AS duplicate_ids,
           (SELECT count(*) FROM (SELECT 1 FROM p q WHERE q.workspace_id = p.workspace_id AND q.email_ident
                                  AND q.email_norm IS NOT NULL GROUP BY q.email_norm HAVING count(*) > 1) d)
               AS duplicate_emails
    FROM p GROUP BY workspace_id, mode
    """
)
DUPLICATE_COLUMNS = ("duplicate_id_keys", "duplicate_email_keys", "duplicate_ids", "duplicate_emails")
VIOLATION_COLUMNS = (
    "id_key_not_mode", "email_key_not_mode", "without_identifier", "without_id", "without_email", *DUPLICATE_COLUMNS,
)


def invariant_violations(conn: sa.Connection, workspaces: list[str]) -> dict[str, dict[str, int]]:
    """Per workspace, the counts of rows breaking R1/R2/R41 as the data stands: keys that do not
    match the mode, people without the identifier their mode requires, duplicate identifiers.
    Only non-zero counts are returned."""
    found: dict[str, dict[str, int]] = {}
    for row in conn.execute(_INVARIANTS_SQL, {"ws": workspaces}).mappings():
        bad = {k: int(row[k]) for k in VIOLATION_COLUMNS if row[k]}
        if bad:
            found[row["workspace_id"]] = {"mode": row["mode"], **bad}  # type: ignore[dict-item]
    return found


class Watcher:
    """Checks the invariants continuously while the load runs, each time on one consistent
    snapshot (REPEATABLE READ): every committed state must satisfy them, not only the last."""

    def __init__(self, engine: sa.Engine, workspaces: list[str], interval: float = 0.02):
        self.engine = engine
        self.workspaces = workspaces
        self.interval = interval
        self.snapshots = 0
        self.violations: list[dict[str, Any]] = []
        self.duplicates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="invariant-watcher", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                while not self._stop.wait(self.interval):
                    with conn.begin():
                        found = invariant_violations(conn, self.workspaces)
                    self.snapshots += 1
                    if found:
                        self.duplicates += sum(v.get(k, 0) for v in found.values() for k in DUPLICATE_COLUMNS)  # type: ignore[misc]
                        if len(self.violations) < 20:
                            self.violations.append({"snapshot": self.snapshots, **found})
        except BaseException as error:  # noqa: BLE001
            self.error = error

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def assert_clean(self) -> None:
        assert self.error is None, f"the invariant watcher failed: {self.error!r}"
        assert self.snapshots > 0, "the invariant watcher never ran"
        assert not self.violations, f"invariants broken in committed states: {self.violations}"


# --------------------------------------------------------------------------- the history check


def _ts(message: Any) -> datetime:
    return message.ToDatetime(tzinfo=timezone.utc)


@dataclass(frozen=True)
class State:
    id: str | None
    email: str | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def same_data(self, other: "State") -> bool:
        return (self.id, self.email, self.attributes, self.created_at) == (
            other.id, other.email, other.attributes, other.created_at
        )


def state_of(person: pb.Person) -> State:
    """The person as stored: where id or email is not an identifier, the service presents it
    among the attributes (R12), while the table keeps it in its column."""
    attributes = MessageToDict(person.attributes)
    id_ = person.id if person.HasField("id") else attributes.pop("id", None)
    email = person.email if person.HasField("email") else attributes.pop("email", None)
    return State(id_, email, attributes, _ts(person.create_time), _ts(person.update_time))


def fetch_people(conn_or_engine: sa.Engine | sa.Connection, workspace: str) -> dict[str, State]:
    query = sa.text(
        "SELECT cio_id, id, email, attributes, created_at, updated_at FROM people WHERE workspace_id = :w"
    )
    if isinstance(conn_or_engine, sa.Engine):
        with conn_or_engine.connect() as conn:
            rows = conn.execute(query, {"w": workspace}).all()
    else:
        rows = conn_or_engine.execute(query, {"w": workspace}).all()
    return {r.cio_id: State(r.id, r.email, dict(r.attributes), r.created_at, r.updated_at) for r in rows}


def _tokens(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if TOKEN_RE.match(value):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tokens(v)
    elif isinstance(value, list):
        for v in value:
            yield from _tokens(v)


def response_problem(call: Call) -> str | None:
    """What an OK response says that contradicts its own request (R15, R20-R24, R31)."""
    req, res = call.request, call.response
    if call.method == "Identify":
        p = res.person
        s = state_of(p)
        if req.HasField("id") and s.id != req.id:
            return "the person returned does not have the requested id"
        if req.HasField("email") and (s.email is None or email_key(s.email) != email_key(req.email)):
            return "the person returned does not have the requested email"
        if req.HasField("cio_id") and p.cio_id != req.cio_id:
            return "the person returned is not the one referenced by cio_id"
        attributes = s.attributes
        for name, value in MessageToDict(req.attributes).items():
            if value is not None and attributes.get(name) != value:
                return f"attribute {name} was not applied"
        merged = res.outcome == pb.IDENTIFY_OUTCOME_MERGED
        if merged != bool(res.merged_cio_ids):
            return "outcome MERGED and merged_cio_ids disagree"
        if p.cio_id in res.merged_cio_ids:
            return "the survivor of a merge is reported merged away"
    elif call.method == "UpdateIdentifier":
        s = state_of(res.person)
        name = "id" if req.identifier == pb.IDENTIFIER_TYPE_ID else "email"
        if getattr(s, name) != req.value:
            return f"the {name} was not set to the requested value"
    elif call.method == "DeleteIdentifier":
        s = state_of(res.person)
        name = "id" if req.identifier == pb.IDENTIFIER_TYPE_ID else "email"
        if getattr(s, name) is not None:
            return f"the {name} is still there"
        if s.id is None and s.email is None:
            return "the person was left without id and email (R31)"
    return None


@dataclass
class HistoryReport:
    problems: list[str] = field(default_factory=list)
    writes_checked: int = 0
    people: int = 0
    merges: int = 0
    deleted: int = 0
    unknown: int = 0
    duplicates: int = 0

    def assert_clean(self) -> None:
        assert not self.problems, f"{len(self.problems)} problems:\n" + "\n".join(self.problems[:30])


def check_history(engine: sa.Engine, workspace: str, calls: list[Call], *, identifiers_write_once: bool = False) -> HistoryReport:
    """Checks the final data of `workspace` against every recorded call on it. Facts used (each
    holds for every correct serial order of the OK calls, whatever the interleaving):

    1. A person's row changes only through calls that return that person (the merge survivor,
       the person whose identifier changed), its updated_at is taken after its row lock, so it
       grows with each commit: the final row equals the OK response with the greatest
       update_time for that cio_id, unless an unknown-outcome call wrote it later (then the
       final updated_at is greater). A final updated_at below an acknowledged one is a lost write.
    2. A cio_id disappears only by a merge (R13) or DeletePerson: every cio_id an OK call
       returned exists at the end or was reported merged/deleted by an OK call; a merged-away
       cio_id never exists at the end (no half-done merge) and is reported once.
    3. People are created only by Identify: each existing person was returned by an OK call, and
       people = created - merged - deleted when no outcome is unknown.
    4. Every call writes a unique token as an attribute: a refused call's token appears nowhere.
    5. With identifiers_write_once (EMAIL_OR_ID, email not updatable by id, Identify without
       cio_id only): an id or email, once set, stays on the person or on the survivor it was
       merged into.
    """
    calls = [c for c in calls if c.workspace == workspace]
    final = fetch_people(engine, workspace)
    report = HistoryReport(people=len(final))
    problems = report.problems
    ok = [c for c in calls if c.ok]
    unknown = [c for c in calls if c.unknown and c.method in WRITE_METHODS]
    report.unknown = len(unknown)

    # Responses must agree with their requests.
    for c in ok:
        problem = response_problem(c)
        if problem:
            problems.append(f"{problem}: {c.describe()}")

    # 2. Removed people.
    merged_into: dict[str, str] = {}
    removed: Counter[str] = Counter()
    for c in ok:
        if c.method == "Identify":
            for gone in c.response.merged_cio_ids:
                removed[gone] += 1
                merged_into[gone] = c.response.person.cio_id
        elif c.method == "DeletePerson":
            removed[c.response.cio_id] += 1
    report.merges = sum(1 for c in ok if c.method == "Identify" and c.response.merged_cio_ids)
    report.deleted = sum(1 for c in ok if c.method == "DeletePerson")
    for cio_id, times in removed.items():
        if times > 1:
            problems.append(f"{cio_id} was reported removed {times} times")
        if cio_id in final:
            problems.append(f"{cio_id} was reported merged away or deleted but still exists (half-done merge?)")

    # 1. States returned by OK calls, per person.
    states: dict[str, list[tuple[State, Call]]] = defaultdict(list)
    for c in ok:
        if c.person is not None:
            states[c.person.cio_id].append((state_of(c.person), c))

    def mentioned_by_unknown(cio_id: str) -> bool:
        """Could an unknown-outcome call have merged or deleted this person?"""
        known = {cio_id}
        for s, _ in states.get(cio_id, []):
            known.update(v for v in (s.id, email_key(s.email) if s.email else None) if v)
        for u in unknown:
            r = u.request
            values: set[str] = set()
            if u.method == "Identify":
                values |= {r.id} if r.HasField("id") else set()
                values |= {email_key(r.email)} if r.HasField("email") else set()
            elif u.method == "DeletePerson":
                which = r.person.WhichOneof("ref")
                if which:
                    value = getattr(r.person, which)
                    values.add(email_key(value) if which == "email" else value)
            if values & known:
                return True
        return False

    for cio_id, seen in states.items():
        for s, c in seen:
            if c.method in WRITE_METHODS:
                report.writes_checked += 1
        if cio_id not in final:
            if cio_id not in removed and not mentioned_by_unknown(cio_id):
                problems.append(f"acknowledged person {cio_id} is gone, removed by no acknowledged call: {seen[-1][1].describe()}")
            continue
        now = final[cio_id]
        latest = max(s.updated_at for s, _ in seen)
        if now.updated_at < latest:
            problems.append(f"{cio_id}: stored updated_at {now.updated_at} is older than an acknowledged write at {latest} (lost write)")
            continue
        newest = [(s, c) for s, c in seen if s.updated_at == latest]
        for s, c in newest:
            if not s.same_data(newest[0][0]):
                problems.append(f"{cio_id}: two acknowledged calls returned different states at the same time: {c.describe()} {newest[0][1].describe()}")
        if now.updated_at == latest:
            if not now.same_data(newest[0][0]):
                problems.append(
                    f"{cio_id}: stored {now} differs from the last acknowledged state {newest[0][0]} of {newest[0][1].describe()}"
                )
        elif not unknown:
            problems.append(f"{cio_id}: changed at {now.updated_at} by no acknowledged call (after {latest})")

    # 3. Creations.
    created = sum(1 for c in ok if c.method == "Identify" and c.response.outcome == pb.IDENTIFY_OUTCOME_CREATED)
    unacknowledged = [cio_id for cio_id in final if cio_id not in states]
    if len(unacknowledged) > len(unknown):
        problems.append(f"{len(unacknowledged)} people exist that no acknowledged call returned: {unacknowledged[:5]}")
    expected = created - len(removed)
    if not unknown and len(final) != expected:
        problems.append(f"{len(final)} people, but {created} acknowledged creations - {len(removed)} removals = {expected}")

    # 4. Tokens.
    ok_tokens = {c.token for c in ok if c.token}
    unknown_tokens = {c.token for c in calls if c.unknown and c.token}
    refused_tokens = {c.token for c in calls if c.refused and c.token}
    for cio_id, s in final.items():
        for token in _tokens(s.attributes):
            if token in refused_tokens:
                problems.append(f"{cio_id} carries {token}, written by a refused call")
            elif token not in ok_tokens and token not in unknown_tokens:
                problems.append(f"{cio_id} carries {token}, written by no recorded call")

    # 5. Write-once identifiers follow the person, through merges.
    if identifiers_write_once:
        def survivor(cio_id: str) -> str:
            hops = 0
            while cio_id in merged_into and hops < 1000:
                cio_id, hops = merged_into[cio_id], hops + 1
            return cio_id

        for cio_id, seen in states.items():
            s, c = max(seen, key=lambda sc: sc[0].updated_at)
            last = final.get(survivor(cio_id))
            if last is None:
                if not unknown:
                    problems.append(f"{cio_id}: neither it nor the survivor it was merged into exists")
                continue
            if s.id is not None and last.id != s.id:
                problems.append(f"{cio_id}: id {s.id!r} did not stay with the person (now {last.id!r})")
            if s.email is not None and last.email != s.email:
                problems.append(f"{cio_id}: email {s.email!r} did not stay with the person (now {last.email!r})")

    # Duplicates, computed here too (the keys as Python computes them, R4), among the fields that
    # are identifiers in the workspace's mode.
    with engine.connect() as conn:
        mode = conn.execute(
            sa.text("SELECT identifier_mode FROM workspaces WHERE workspace_id = :w"), {"w": workspace}
        ).scalar_one()
    by_id = Counter(s.id for s in final.values() if s.id is not None and mode != "EMAIL_ONLY")
    by_email = Counter(email_key(s.email) for s in final.values() if s.email is not None and mode != "ID_ONLY")
    report.duplicates = sum(1 for n in by_id.values() if n > 1) + sum(1 for n in by_email.values() if n > 1)
    return report


def duplicates_in_sql(engine: sa.Engine, workspaces: list[str]) -> int:
    """GROUP BY id_key / email_key HAVING count(*) > 1, per workspace (R41)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM people WHERE workspace_id = ANY(:ws) AND id_key IS NOT NULL"
                    "        GROUP BY workspace_id, id_key HAVING count(*) > 1) a)"
                    "     + (SELECT count(*) FROM (SELECT 1 FROM people WHERE workspace_id = ANY(:ws) AND email_key IS NOT NULL"
                    "        GROUP BY workspace_id, email_key HAVING count(*) > 1) b)"
                ),
                {"ws": workspaces},
            ).scalar_one()
        )


# --------------------------------------------------------------------------- figures


def tally(calls: list[Call]) -> dict[str, Any]:
    """Calls, OK, refused by code (and reason), unknown by code."""
    refused = Counter(f"{c.code.name}/{c.reason}" for c in calls if c.refused)
    unknown = Counter(f"{c.code.name}/{c.reason or '-'}" for c in calls if c.unknown)
    return {
        "calls": len(calls),
        "ok": sum(1 for c in calls if c.ok),
        "refused": sum(refused.values()),
        "refused_by_code": dict(sorted(refused.items())),
        "unknown": sum(unknown.values()),
        "unknown_by_code": dict(sorted(unknown.items())),
    }


def summary_line(name: str, figures: dict[str, Any]) -> str:
    by_code = Counter()
    for key, n in figures.get("refused_by_code", {}).items():
        by_code[key.split("/")[0]] += n
    parts = [
        f"{name}:",
        f"calls={figures.get('calls', 0)}",
        f"ok={figures.get('ok', 0)}",
        "refused=" + (",".join(f"{k}:{v}" for k, v in sorted(by_code.items())) or "0"),
        f"unknown={figures.get('unknown', 0)}",
        f"retries={figures.get('retries', 0):.0f}",
        f"duplicates={figures.get('duplicates', 0)}",
        f"writes_checked={figures.get('writes_checked', 0)}",
    ]
    for key in (
        "merges", "snapshots", "snapshot_violations", "recovery_seconds", "replacement_seconds", "exit_seconds",
        "events", "gaps_or_duplicates", "lag_p50_ms", "lag_p99_ms",
    ):
        if key in figures:
            value = figures[key]
            parts.append(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def dumps(figures: dict[str, Any]) -> str:
    return json.dumps(figures, sort_keys=True, default=str)
