"""What the change log costs (issue 8, "Cost"), in one run: `python -m bench.change_log`.

Loads one EMAIL_OR_ID workspace (bench.ids / bench.load, by COPY), then, with two servers up side
by side on the same database and schema:

- without the log: the server of the last commit before the change log (`--old-commit`, run from
  a git worktree of it, so that it imports its own `service` and `generated` packages);
- with the log: the server of `--new-commit` (default HEAD, from a worktree too, so that
  uncommitted edits in this checkout are not measured; '.' runs this checkout as it is);

drives "Identify of an existing person by id with an attribute update" (bench.driver's
identify_existing, closed loop, from separate load-generator processes) at peak, alternately
without and with the log (A, B, A, B, ...), so that drift on a shared machine shows. Each run
reports calls/s, server CPU per call and Postgres CPU per call. Then:

- with watchers: `--watchers` WatchChanges streams on that workspace, opened from a separate
  process (one connection each, `after_sequence` = the last sequence), held open during one more
  peak run of the server with the log: calls/s, server CPU per call and RSS against the run
  without them, and the feed lag under load (each watcher records time.time() - commit_time of
  every event it receives, for the events committed in the measured window);
- idle lag: no load, one watcher, `--idle-calls` Identify calls spaced `--idle-interval` apart.

commit_time is the Postgres clock at the event's insert, just before COMMIT, and the watchers
run on this machine: the lag is commit-to-delivery (to the client's parsed message), within
about a millisecond.

Writes bench-results/change_log-<time>.json and prints a table.

    python -m bench.change_log [--people 100000] [--seconds 10] [--concurrency 32]
                               [--watchers 100] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Callable

import grpc
import psutil
import psycopg

from bench import load
from bench.__main__ import Progress, Window, _redact
from bench.driver import SCENARIOS, Drivers, Setup
from bench.ids import person_id
from bench.server import MB, ROOT, CpuMeter, PostgresProcesses, RssSampler, ServerProcess

SCENARIO = "identify_existing"
OLD_COMMIT = "f3ab5ca"  # the last commit before the change log
DEFAULTS = {
    "people": 100_000, "seconds": 10.0, "concurrency": 32, "watchers": 100, "repeats": 2,
    "idle_calls": 200, "processes": 2,
}  # fmt: skip
QUICK = {
    "people": 2_000, "seconds": 1.5, "concurrency": 8, "watchers": 5, "repeats": 1,
    "idle_calls": 40, "processes": 1,
}  # fmt: skip
TARGETS = {"throughput_ratio_min": 0.85, "idle_lag_p99_ms_max": 100.0, "peak_lag_p99_ms_max": 1000.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.change_log", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--people", type=int, help="people in the workspace (default 100000; --quick: 2000)")
    p.add_argument("--seconds", type=float, help="measured seconds per peak run (default 10; --quick: 1.5)")
    p.add_argument("--warmup", type=float, help="uncounted seconds before each run (default: 10%% of --seconds, 0.5..2)")
    p.add_argument("--concurrency", type=int, help="calls in flight at peak (default 32; --quick: 8)")
    p.add_argument("--watchers", type=int, help="WatchChanges streams held open in the watched run (default 100; --quick: 5)")
    p.add_argument("--repeats", type=int, help="pairs of runs without and with the log, alternated (default 2; --quick: 1)")
    p.add_argument("--idle-calls", type=int, help="Identify calls of the idle-lag run (default 200; --quick: 40)")
    p.add_argument("--idle-interval", type=float, default=0.05, help="seconds between them (default 0.05)")
    p.add_argument("--processes", type=int, help="load-generator processes per server (default 2; --quick: 1)")
    p.add_argument("--channels", type=int, help="gRPC channels per load-generator process (default: 2 per call in flight, at least 4)")
    p.add_argument("--workers", default=os.environ.get("BENCH_WORKERS") or "2", help="server worker processes (default: BENCH_WORKERS or 2)")
    p.add_argument("--old-commit", default=OLD_COMMIT, help=f"the commit without the change log (default {OLD_COMMIT})")
    p.add_argument(
        "--new-commit",
        default="HEAD",
        help="the commit with the change log, run from a worktree of its own (default HEAD: what is committed,"
        " not uncommitted edits); '.' runs this checkout as it is",
    )
    p.add_argument("--deadline", type=float, default=10.0, help="deadline of each call, seconds (default 10)")
    p.add_argument("--server-log-level", default="INFO", help="the servers' --log-level (default INFO, as deployed)")
    p.add_argument("--quick", action="store_true", help="a short run for CI: 2,000 people, 1.5 s runs, 5 watchers, A and B once")
    p.add_argument("--out", default="bench-results", help="folder of the JSON and the server logs (default bench-results)")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="default: DATABASE_URL, else the embedded Postgres")
    p.add_argument("--keep-workspace", action="store_true", help="leave the benchmark's workspace in the database")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name in ("people", "seconds", "concurrency", "watchers", "repeats", "idle_calls", "processes"):
        if getattr(args, name) is None:
            setattr(args, name, base[name])
    if args.warmup is None:
        args.warmup = min(2.0, max(0.5, args.seconds / 10))
    args.processes = max(1, min(args.processes, args.concurrency))
    if args.channels is None:
        args.channels = max(4, 2 * -(-args.concurrency // args.processes))
    if min(args.people, args.concurrency, args.repeats) < 1 or args.seconds <= 0 or args.watchers < 0:
        p.error("--people, --seconds, --concurrency and --repeats must be positive, --watchers not negative")
    return args


# --- the watchers, in a process of their own ---


class _Watcher:
    def __init__(self) -> None:
        self.last = 0
        self.commit = array("d")  # the event's commit_time (seconds since the epoch)
        self.received = array("d")  # time.time() when its message was parsed here
        self.gaps = 0
        self.duplicates = 0
        self.error: str | None = None


class _Watchers:
    """Serves commands from the benchmark over a pipe: open N streams, status, lags, close."""

    def __init__(self, target: str, workspace_id: str, conn: multiprocessing.connection.Connection):
        self.target, self.workspace_id, self.conn = target, workspace_id, conn
        self.watchers: list[_Watcher] = []
        self.channels: list[Any] = []
        self.tasks: list[asyncio.Task] = []
        self.closing = False

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, params = await loop.run_in_executor(None, self.conn.recv)
            if command == "open":
                reply: Any = await self.open(*params)
            elif command == "status":
                reply = self.status()
            elif command == "lags":
                reply = self.lags(*params)
            elif command == "close":
                self.conn.send(await self.close())
                return
            else:
                reply = {"error": f"unknown command {command!r}"}
            self.conn.send(reply)

    async def open(self, count: int, after: int) -> dict:
        from identity.v1 import identity_pb2 as pb
        from identity.v1 import identity_pb2_grpc as pb_grpc

        for _ in range(count):
            # A connection per watcher, as separate consumers would have.
            channel = grpc.aio.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)])
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            watcher = _Watcher()
            watcher.last = after
            request = pb.WatchChangesRequest(workspace_id=self.workspace_id, after_sequence=after)
            call = pb_grpc.IdentityServiceStub(channel).WatchChanges(request)
            self.channels.append(channel)
            self.watchers.append(watcher)
            self.tasks.append(asyncio.create_task(self._watch(watcher, call)))
        return {"open": len(self.watchers)}

    async def _watch(self, watcher: _Watcher, call: Any) -> None:
        try:
            async for response in call:
                now = time.time()
                for event in response.events:
                    sequence = event.sequence
                    if sequence <= watcher.last:
                        watcher.duplicates += 1
                        continue
                    if sequence != watcher.last + 1:
                        watcher.gaps += 1
                    watcher.last = sequence
                    watcher.commit.append(event.commit_time.seconds + event.commit_time.nanos * 1e-9)
                    watcher.received.append(now)
            if not self.closing:
                watcher.error = "ENDED"
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as error:
            if not self.closing:
                watcher.error = error.code().name
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            watcher.error = f"CLIENT_{type(error).__name__}"

    def status(self) -> dict:
        lasts = [w.last for w in self.watchers] or [0]
        errors: dict[str, int] = {}
        for w in self.watchers:
            if w.error:
                errors[w.error] = errors.get(w.error, 0) + 1
        return {
            "min_last": min(lasts),
            "max_last": max(lasts),
            "events": sum(len(w.commit) for w in self.watchers),
            "gaps": sum(w.gaps for w in self.watchers),
            "duplicates": sum(w.duplicates for w in self.watchers),
            "errors": errors,
        }

    def lags(self, since: float, until: float) -> dict:
        """Lag of every event committed in [since, until], over every watcher, in ms."""
        import numpy as np

        lags = []
        per_watcher = []
        for w in self.watchers:
            commit = np.frombuffer(w.commit, dtype=float)
            received = np.frombuffer(w.received, dtype=float)
            chosen = (commit >= since) & (commit <= until)
            lags.append(received[chosen] - commit[chosen])
            per_watcher.append(int(chosen.sum()))
        values = np.concatenate(lags) if lags else np.zeros(0)
        out: dict[str, Any] = {"events": int(values.size), "per_watcher_min": min(per_watcher, default=0),
                               "per_watcher_max": max(per_watcher, default=0)}  # fmt: skip
        if values.size:
            p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000
            out.update(
                p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2), p99_ms=round(float(p99), 2),
                max_ms=round(float(values.max()) * 1000, 2), mean_ms=round(float(values.mean()) * 1000, 2),
                min_ms=round(float(values.min()) * 1000, 2),
            )  # fmt: skip
        return out

    async def close(self) -> dict:
        self.closing = True
        status = self.status()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()
        return status


def _watchers_main(target: str, workspace_id: str, conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us in order
    asyncio.run(_Watchers(target, workspace_id, conn).serve())


class WatcherProcess:
    """The benchmark's handle on the watchers' process."""

    def __init__(self, target: str, workspace_id: str):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_watchers_main, args=(target, workspace_id, child), name="bench-watchers")
        self.proc.daemon = True
        self.proc.start()
        child.close()

    def ask(self, command: str, *params: Any, timeout: float = 120.0) -> Any:
        self.conn.send((command, params))
        if not self.conn.poll(timeout):
            raise RuntimeError(f"the watchers' process did not answer {command!r} within {timeout:.0f}s")
        return self.conn.recv()

    def process(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid)]
        except psutil.Error:
            return []

    def wait_for(self, sequence: int, timeout: float) -> tuple[bool, float, dict]:
        """Until every watcher has received `sequence`: (reached, seconds it took, status)."""
        start = time.monotonic()
        while True:
            status = self.ask("status")
            if status["min_last"] >= sequence:
                return True, time.monotonic() - start, status
            if time.monotonic() - start > timeout or status["errors"]:
                return False, time.monotonic() - start, status
            time.sleep(0.05)

    def close(self) -> dict:
        try:
            status = self.ask("close", timeout=30) if self.proc.is_alive() else {}
        except (RuntimeError, OSError, EOFError):
            status = {}
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        return status


# --- the benchmark ---


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _top_processes(n: int = 6) -> list[str]:
    """What else the machine was running (by CPU over a short sample), for the report."""
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    rows = []
    for p in procs:
        try:
            rows.append((p.cpu_percent(None), " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:110]))
        except psutil.Error:
            pass
    rows.sort(reverse=True)
    return [f"{cpu:.0f}% {cmd}" for cpu, cmd in rows[:n]]


class WaitSampler:
    """What the service's active Postgres backends wait on, sampled every `interval` seconds in a
    thread of its own (pg_stat_activity): where a run's transactions queue (e.g. Lock:transactionid
    behind the per-workspace counter's row lock, IO:WALSync at COMMIT)."""

    def __init__(self, url: str, interval: float = 0.2):
        self.url, self.interval = url, interval
        self.samples = 0
        self.active = 0
        self.waits: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wait-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="identity-bench-meter") as conn:
            while not self._stop.wait(self.interval):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'identity-service' AND state = 'active' GROUP BY 1"
                ).fetchall()
                self.samples += 1
                for name, count in rows:
                    self.waits[name] = self.waits.get(name, 0) + count
                    self.active += count

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self.samples:
            return {}
        top = sorted(self.waits.items(), key=lambda kv: -kv[1])[:6]
        return {
            "samples": self.samples,
            "active_backends_mean": round(self.active / self.samples, 2),
            "mean_backends_per_wait": {name: round(count / self.samples, 2) for name, count in top},
        }


class ChangeLogBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.url = load.libpq_url(args.database_url)
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.progress = Progress()
        self.workspace = load.new_workspace_id("both")
        self.results: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}

    def say(self, text: str) -> None:
        self.progress.done(text)

    # --- the database, read directly ---

    def _scalar(self, sql: str, params: tuple = ()) -> Any:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def last_sequence(self) -> int:
        value = self._scalar("SELECT last_sequence FROM event_sequences WHERE workspace_id = %s", (self.workspace,))
        return int(value or 0)

    def transactions(self) -> int:
        """Transactions ended in this database so far (pg_stat_database, flushed about once a
        second by each backend): over a run, the service's reads and writes, the feed's included."""
        return int(self._scalar(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ))  # fmt: skip

    def event_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM person_events WHERE workspace_id = %s", (self.workspace,)))

    # --- the whole run ---

    def run(self) -> dict[str, Any]:
        args = self.args
        facts = load.database_facts(self.url)
        self.postgres = PostgresProcesses(self.url, facts["postmaster_pid"])
        self.results["config"] = {
            "scenario": SCENARIO,
            "scenario_description": SCENARIOS[SCENARIO],
            "people": args.people,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "watchers": args.watchers,
            "repeats": args.repeats,
            "idle_calls": args.idle_calls,
            "idle_interval_s": args.idle_interval,
            "load_processes_per_server": args.processes,
            "channels_per_process": args.channels,
            "server_workers": args.workers,
            "server_log_level": args.server_log_level,
            "old_commit": args.old_commit,
            "new_commit": args.new_commit,
            "quick": args.quick,
            "database_url": _redact(self.url),
            "postgres_version": facts["server_version"],
            "postgres_local": facts["postmaster_pid"] is not None,
            "workspace": self.workspace,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        }
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.results["config"]["postgres_settings"] = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'commit_delay', 'shared_buffers', 'max_connections')"
            ).fetchall())  # fmt: skip
        self.results["machine"] = {"load_average_start": _load_average(), "busiest_at_start": _top_processes()}
        tmp = Path(tempfile.mkdtemp(prefix="change-log-bench-"))
        tree = tmp / "old"
        new_tree = ROOT if args.new_commit == "." else tmp / "new"
        worktrees: list[Path] = []
        old = new = None
        drivers: list[Drivers] = []
        samplers: list[RssSampler] = []
        loaded = False
        try:
            loaded = True
            load.prepare(self.url, {"both": self.workspace})
            self.say(f"workspace {self.workspace} (EMAIL_OR_ID): loading {args.people:,} people with COPY")
            took = load.load_people(self.url, self.workspace, "both", args.people,
                                    lambda n: self.progress.update(f"  loaded {n:,} people"))  # fmt: skip
            load.analyze(self.url)
            self.results["load"] = {"seconds": round(took, 2)}
            self.results["schema_version"] = self._scalar("SELECT version_num FROM alembic_version")

            for path, commit in ((tree, args.old_commit), (new_tree, args.new_commit)):
                if path != ROOT:
                    _git("worktree", "add", "--detach", str(path), commit)
                    worktrees.append(path)
            old_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "generated")])}
            new_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(new_tree), str(new_tree / "generated")])}
            self.results["code"] = {
                "without_log": _imports(tree, old_env, tree),
                "with_log": _imports(new_tree, new_env, new_tree),
            }
            self.results["code"]["without_log"]["commit"] = _git("-C", str(tree), "rev-parse", "HEAD")
            self.results["code"]["with_log"]["commit"] = _git("-C", str(new_tree), "rev-parse", "HEAD")
            self.results["code"]["with_log"]["uncommitted_changes_in_service_or_generated"] = bool(
                _git("-C", str(new_tree), "status", "--porcelain", "--", "service", "generated")
            )

            old = ServerProcess(self.url, self.out / f"change_log-{self.stamp}-without-log.log", workers=args.workers,
                                log_level=args.server_log_level, cwd=tree, env=old_env)  # fmt: skip
            new = ServerProcess(self.url, self.out / f"change_log-{self.stamp}-with-log.log", workers=args.workers,
                                log_level=args.server_log_level, cwd=new_tree, env=new_env)  # fmt: skip
            for server in (old, new):
                server.start()
                samplers.append(RssSampler(server))
                samplers[-1].start()
            self.samplers = {"without_log": samplers[0], "with_log": samplers[1]}
            self._check_servers(old, new, tree, new_tree)
            self.say(
                f"servers: without the log {old.address} ({args.old_commit}, from {tree}), "
                f"with it {new.address} ({args.new_commit}, from {new_tree})"
            )

            setup = {
                name: Setup(target=server.address, workspace_id=self.workspace, workspaces={"both": self.workspace},
                            people=args.people, tag=secrets.token_hex(3), deadline=args.deadline,
                            channels=args.channels)  # fmt: skip
                for name, server in (("without_log", old), ("with_log", new))
            }
            self.drivers = {}
            for name in ("without_log", "with_log"):
                self.drivers[name] = Drivers(setup[name], args.processes)
                drivers.append(self.drivers[name])
            self.servers = {"without_log": old, "with_log": new}

            for i in range(1, args.repeats + 1):
                for name in ("without_log", "with_log"):
                    self.results["runs"].append(self.peak(name, f"{name}_{i}"))
            if args.watchers > 0:
                self.with_watchers(new)
            self.idle_lag(new)
            self.results["old_code_wrote_no_events"] = all(
                r["events_written"] == 0 for r in self.results["runs"] if r["server"] == "without_log"
            )
            for name, sampler in self.samplers.items():
                sampler.sample()
                self.results.setdefault("rss_max_mb_per_phase", {})[name] = {
                    phase: {role: round(v, 1) for role, v in d.items()} for phase, d in sampler.per_phase.items()
                }
        finally:
            for d in drivers:
                d.close()
            for sampler in samplers:
                sampler.stop()
            for server in (old, new):
                if server is not None:
                    server.stop()
            self.postgres.close()
            for path in worktrees:
                try:
                    _git("worktree", "remove", "--force", str(path))
                except subprocess.CalledProcessError as error:
                    print(f"could not remove the worktree {path}: {error.stderr}", file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
            if loaded and not args.keep_workspace:
                try:
                    self._drop_workspace()
                except Exception as error:  # noqa: BLE001 - report, do not hide the first error
                    print(f"could not delete workspace {self.workspace}: {error}", file=sys.stderr)
        self.results["machine"]["load_average_end"] = _load_average()
        self.results["summary"] = self.summary()
        path = self.out / f"change_log-{self.stamp}.json"
        self.results["files"] = {"json": str(path), "logs": [str(s.log_path) for s in (old, new) if s]}
        path.write_text(json.dumps(self.results, indent=2))
        return self.results

    def _drop_workspace(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for table in ("person_events", "event_sequences", "stored_responses"):
                conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (self.workspace,))
        load.drop_workspaces(self.url, [self.workspace])

    def _check_servers(self, old: ServerProcess, new: ServerProcess, tree: Path, new_tree: Path) -> None:
        """The old server runs the old code (from the worktree: no WatchChanges at all) on the new
        schema; the new one serves the feed."""
        from identity.v1 import identity_pb2 as pb
        from identity.v1 import identity_pb2_grpc as pb_grpc

        checks: dict[str, Any] = {}
        for name, server, root in (("without_log", old, tree), ("with_log", new, new_tree)):
            cwds = {p.cwd() for p in server.processes()}
            checks[name] = {"process_cwds": sorted(cwds), "cwd_ok": cwds == {str(root)}}
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.IdentityServiceStub(channel)
                request = pb.WatchChangesRequest(workspace_id=self.workspace, end_when_caught_up=True)
                try:
                    checks[name]["watch_changes"] = f"OK, {len(list(stub.WatchChanges(request, timeout=10)))} events"
                except grpc.RpcError as error:
                    checks[name]["watch_changes"] = error.code().name
                before = self.event_count()
                request = pb.IdentifyRequest(workspace_id=self.workspace, id=person_id(1))
                request.attributes.update({"checked_by": name})
                answer = stub.Identify(request, timeout=10)
                checks[name]["identify"] = pb.IdentifyOutcome.Name(answer.outcome)
                checks[name]["events_written_by_one_identify"] = self.event_count() - before
        self.results["server_checks"] = checks
        problems = []
        if not checks["without_log"]["cwd_ok"] or not checks["with_log"]["cwd_ok"]:
            problems.append("a server runs from the wrong directory")
        old_code, new_code = checks["without_log"], checks["with_log"]
        if old_code["watch_changes"] != "UNIMPLEMENTED" or old_code["events_written_by_one_identify"]:
            problems.append("the server without the log has a change feed: not the old code")
        if not new_code["watch_changes"].startswith("OK") or new_code["events_written_by_one_identify"] != 1:
            problems.append("the server with the log writes no event or serves no feed")
        if problems:
            raise RuntimeError("; ".join(problems) + f": {json.dumps(checks)}")

    # --- one peak run ---

    def peak(
        self,
        server_name: str,
        label: str,
        extra_meters: dict[str, CpuMeter] | None = None,
        after_load: Callable[[], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One closed-loop run at peak; `after_load` runs as soon as the last call has answered
        (the watchers' catch-up), and its answer is kept as the run's "after_load"."""
        args = self.args
        server = self.servers[server_name]
        self.samplers[server_name].phase = label
        self.progress.update(f"{label}: settling (CHECKPOINT, sync)")
        load.settle(self.url)
        meters = {"server": CpuMeter(server.processes)}
        if self.postgres.local:
            meters["postgres_backends"] = CpuMeter(lambda: self.postgres.of("identity-service"))
            meters["postgres_all"] = CpuMeter(self.postgres.all)
        meters.update(extra_meters or {})
        window = Window(meters, args.seconds)
        wall: dict[str, float] = {}

        def on_progress(elapsed: float, ok: int, failed: int) -> None:
            window.tick(elapsed)
            if window.started is not None and "since" not in wall:
                wall["since"] = time.time()
            if elapsed < 0:
                self.progress.update(f"{label}: warming up")
            else:
                shown = min(elapsed, args.seconds)
                self.progress.update(f"{label}: {shown:4.1f}/{args.seconds:g}s  {ok + failed} calls  errors {failed}")

        load_before = _load_average()
        events_before = self.event_count()
        sequence_before = self.last_sequence()
        transactions_before = self.transactions()
        waits = WaitSampler(self.url)
        waits.start()
        try:
            result = self.drivers[server_name].run(
                SCENARIO,
                seconds=args.seconds,
                warmup=args.warmup,
                concurrency=args.concurrency,
                on_progress=on_progress,
            )
        finally:
            result_waits = waits.stop()
        window.tick(args.seconds)
        if after_load is not None:
            result["after_load"] = after_load()
        result["postgres_waits"] = result_waits
        time.sleep(1.1)  # every backend has flushed its statistics
        result["db_transactions"] = self.transactions() - transactions_before
        result.update(window.figures(result["calls_per_s"]))
        result["label"] = label
        result["server"] = server_name
        result["load_average_before"] = load_before
        result["load_average_after"] = _load_average()
        result["busiest_just_after"] = _top_processes(5)  # what else was running (ours are now idle)
        result["events_written"] = self.event_count() - events_before
        result["last_sequence_before"] = sequence_before
        result["last_sequence_after"] = self.last_sequence()
        result["window_wall"] = [wall.get("since", 0.0), wall.get("since", 0.0) + window.interval]
        result["client_cores"] = round(result["client_cpu_s"] / args.seconds, 3)
        lat = result.get("latency_ms", {})
        self.say(
            f"{label}: {result['calls_per_s']:.1f} calls/s, p99 {lat.get('p99', 0):.1f} ms, "
            f"server {result.get('server_cpu_ms_per_call', 0):.3f} ms/call, "
            f"postgres backends {result.get('postgres_backends_cpu_ms_per_call', 0):.3f} ms/call, "
            f"errors {result['errors'] or 0}, machine busy {result.get('machine_busy', 0):.2f}, load {load_before}"
        )
        return result

    # --- watchers ---

    def _open_watchers(self, server: ServerProcess, count: int) -> tuple[WatcherProcess, dict]:
        from identity.v1 import identity_pb2 as pb
        from identity.v1 import identity_pb2_grpc as pb_grpc

        watchers = WatcherProcess(server.address, self.workspace)
        after = self.last_sequence()
        started = time.monotonic()
        watchers.ask("open", count, after, timeout=120)
        # A marker event: once every watcher has it, every stream is live.
        with grpc.insecure_channel(server.address) as channel:
            request = pb.IdentifyRequest(workspace_id=self.workspace, id=person_id(2))
            request.attributes.update({"marker": time.time()})
            pb_grpc.IdentityServiceStub(channel).Identify(request, timeout=10)
        reached, _, status = watchers.wait_for(self.last_sequence(), timeout=60)
        if not reached:
            watchers.close()
            raise RuntimeError(f"the {count} watchers did not all receive the marker event: {status}")
        return watchers, {"after_sequence": after, "open_seconds": round(time.monotonic() - started, 2)}

    def with_watchers(self, server: ServerProcess) -> None:
        args = self.args
        sampler = self.samplers["with_log"]
        entry: dict[str, Any] = {"watchers": args.watchers}
        entry["uss_mb_before"] = sampler.unique_mb()
        entry["rss_mb_before"] = _rss(server)
        sampler.phase = "watchers_open_idle"
        self.say(f"opening {args.watchers} WatchChanges streams on {self.workspace} from a separate process")
        watchers, opened = self._open_watchers(server, args.watchers)
        entry.update(opened)
        try:
            time.sleep(1.0)
            entry["rss_mb_open_idle"] = _rss(server)
            entry["uss_mb_open_idle"] = sampler.unique_mb()

            def catch_up() -> dict[str, Any]:
                """Every watcher has every event committed: how long after the last call answered."""
                reached, took, status = watchers.wait_for(self.last_sequence(), timeout=max(60.0, 3 * args.seconds))
                return {"caught_up": reached, "seconds": round(took, 2), "status": status}

            run = self.peak(
                "with_log", "with_log_watchers", {"watch_client": CpuMeter(watchers.process)}, after_load=catch_up
            )
            reached, took, status = (run["after_load"][k] for k in ("caught_up", "seconds", "status"))
            entry["caught_up"] = reached
            entry["catch_up_seconds_after_load"] = took
            entry["rss_mb_after"] = _rss(server)
            entry["uss_mb_after"] = sampler.unique_mb()
            since, until = run["window_wall"]
            run["lag"] = watchers.ask("lags", since, until)
            run["watch_status"] = status
            run["events_committed_in_run"] = run["last_sequence_after"] - run["last_sequence_before"]
            self.results["runs"].append(run)
            lag = run["lag"]
            self.say(
                f"with {args.watchers} watchers: lag p50 {lag.get('p50_ms', 0):.1f} ms, "
                f"p95 {lag.get('p95_ms', 0):.1f} ms, p99 {lag.get('p99_ms', 0):.1f} ms, "
                f"max {lag.get('max_ms', 0):.1f} ms over {lag['events']} deliveries; "
                f"caught up {took:.1f}s after the load; gaps {status['gaps']}, duplicates {status['duplicates']}, "
                f"errors {status['errors'] or 0}"
            )
        finally:
            entry["final_status"] = watchers.close()
        self.results["watchers"] = entry

    def idle_lag(self, server: ServerProcess) -> None:
        """No load: one watcher, Identify calls spaced apart, the lag of each event."""
        from identity.v1 import identity_pb2 as pb
        from identity.v1 import identity_pb2_grpc as pb_grpc

        args = self.args
        self.samplers["with_log"].phase = "idle_lag"
        watchers, opened = self._open_watchers(server, 1)
        entry: dict[str, Any] = {"calls": args.idle_calls, "interval_s": args.idle_interval, **opened}
        entry["load_average_before"] = _load_average()
        rng = random.Random(7)
        try:
            since = time.time()
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.IdentityServiceStub(channel)
                start = time.monotonic()
                for i in range(args.idle_calls):
                    delay = start + i * args.idle_interval - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    request = pb.IdentifyRequest(workspace_id=self.workspace, id=person_id(rng.randint(1, args.people)))
                    request.attributes.update({"visits": rng.randint(1, 1_000_000_000)})
                    stub.Identify(request, timeout=10)
            until = time.time()
            reached, _, status = watchers.wait_for(self.last_sequence(), timeout=30)
            entry["caught_up"] = reached
            entry["lag"] = watchers.ask("lags", since, until)
            entry["watch_status"] = status
            entry["load_average_after"] = _load_average()
        finally:
            watchers.close()
        self.results["idle_lag"] = entry
        lag = entry["lag"]
        self.say(
            f"idle lag, {lag['events']} events: p50 {lag.get('p50_ms', 0):.1f} ms, p99 {lag.get('p99_ms', 0):.1f} ms, "
            f"max {lag.get('max_ms', 0):.1f} ms"
        )

    # --- the figures ---

    def summary(self) -> dict[str, Any]:
        runs = self.results["runs"]
        plain = {name: [r for r in runs if r["server"] == name and r["label"] != "with_log_watchers"]
                 for name in ("without_log", "with_log")}  # fmt: skip
        out: dict[str, Any] = {}
        for name, rs in plain.items():
            if not rs:
                continue
            out[name] = {
                "calls_per_s": [r["calls_per_s"] for r in rs],
                "calls_per_s_mean": round(statistics.mean(r["calls_per_s"] for r in rs), 1),
                **{key: round(statistics.mean(r.get(key, 0.0) for r in rs), 3)
                   for key in ("server_cpu_ms_per_call", "postgres_backends_cpu_ms_per_call",
                               "postgres_all_cpu_ms_per_call", "machine_busy")},  # fmt: skip
            }
        if plain["without_log"] and plain["with_log"]:
            without, with_ = out["without_log"], out["with_log"]
            out["throughput_ratio"] = round(with_["calls_per_s_mean"] / without["calls_per_s_mean"], 3)
            out["throughput_ratio_per_pair"] = [
                round(b["calls_per_s"] / a["calls_per_s"], 3) if a["calls_per_s"] else None
                for a, b in zip(plain["without_log"], plain["with_log"])
            ]
            for key in ("server_cpu_ms_per_call", "postgres_backends_cpu_ms_per_call"):
                if out["without_log"][key]:
                    out[key.replace("_ms_per_call", "_ratio")] = round(with_[key] / without[key], 3)
        watched = next((r for r in runs if r["label"] == "with_log_watchers"), None)
        if watched is not None and plain["with_log"]:
            before = plain["with_log"][-1]  # the run just before, same server, no watchers
            w = self.results["watchers"]
            phases = self.samplers["with_log"].per_phase
            entry = {
                "watchers": w["watchers"],
                "calls_per_s": watched["calls_per_s"],
                "calls_per_s_without_watchers": before["calls_per_s"],
                "throughput_ratio": (
                    round(watched["calls_per_s"] / before["calls_per_s"], 3) if before["calls_per_s"] else None
                ),
                "server_cpu_ms_per_call": watched.get("server_cpu_ms_per_call"),
                "server_cpu_ms_per_call_without_watchers": before.get("server_cpu_ms_per_call"),
                "postgres_backends_cpu_ms_per_call": watched.get("postgres_backends_cpu_ms_per_call"),
                "postgres_backends_cpu_ms_per_call_without_watchers": before.get("postgres_backends_cpu_ms_per_call"),
                "watch_client_cores": watched.get("watch_client_cores"),
                "server_rss_mb_total_max": phases.get("with_log_watchers", {}).get("total"),
                "server_rss_mb_total_max_without_watchers": phases.get(before["label"], {}).get("total"),
                "server_rss_mb_before_open": w["rss_mb_before"],
                "server_rss_mb_open_idle": w["rss_mb_open_idle"],
                "server_uss_mb_before_open": w["uss_mb_before"],
                "server_uss_mb_open_idle": w["uss_mb_open_idle"],
                "server_uss_mb_after_load": w["uss_mb_after"],
                "lag": watched.get("lag"),
                "caught_up": w["caught_up"],
                "catch_up_seconds_after_load": w["catch_up_seconds_after_load"],
                "gaps": w["final_status"].get("gaps"),
                "duplicates": w["final_status"].get("duplicates"),
                "errors": w["final_status"].get("errors"),
            }
            deliveries = watched.get("lag", {}).get("events", 0)
            if deliveries and "server_cpu_ms_per_call" in before and "server_cores" in watched:
                # Server CPU beyond what the same calls cost without watchers, per event delivered.
                used_s = watched["server_cores"] * watched["seconds"]
                extra_s = used_s - before["server_cpu_ms_per_call"] / 1000 * watched["calls"]
                entry["server_cpu_ms_per_delivery"] = round(1000 * extra_s / deliveries, 4)
                entry["deliveries_per_s"] = round(deliveries / watched["seconds"], 1)
            if entry["server_rss_mb_total_max"] and entry["server_rss_mb_total_max_without_watchers"]:
                added = entry["server_rss_mb_total_max"] - entry["server_rss_mb_total_max_without_watchers"]
                entry["server_rss_mb_added"] = round(added, 1)
            out["watchers"] = entry
        if "idle_lag" in self.results:
            out["idle_lag"] = self.results["idle_lag"]["lag"]
        checks = {}
        if "throughput_ratio" in out:
            checks["throughput_ratio_ge_0.85"] = out["throughput_ratio"] >= TARGETS["throughput_ratio_min"]
        if out.get("idle_lag", {}).get("p99_ms") is not None:
            checks["idle_lag_p99_le_100ms"] = out["idle_lag"]["p99_ms"] <= TARGETS["idle_lag_p99_ms_max"]
        if out.get("watchers", {}).get("lag", {}).get("p99_ms") is not None:
            checks["peak_lag_p99_le_1s"] = out["watchers"]["lag"]["p99_ms"] <= TARGETS["peak_lag_p99_ms_max"]
        out["targets_met"] = checks
        return out


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _imports(cwd: Path, env: dict[str, str], root: Path) -> dict[str, Any]:
    """Where `service` and `identity` resolve for a server started in `cwd` with `env` (the same
    interpreter, so the same sys.path rules as `python -m service.runtime.server`)."""
    code = "import service, identity.v1.identity_pb2 as m, json; print(json.dumps([service.__file__, m.__file__]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    service_file, pb_file = json.loads(done.stdout)
    ok = Path(service_file).is_relative_to(root) and Path(pb_file).is_relative_to(root)
    if not ok:
        raise RuntimeError(f"a server started in {cwd} would import {service_file} and {pb_file}, not {root}'s")
    return {"service": service_file, "identity_pb2": pb_file}


def _rss(server: ServerProcess) -> float:
    total = 0.0
    for p in server.processes():
        try:
            total += p.memory_info().rss / MB
        except psutil.Error:
            pass
    return round(total, 1)


def table(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [f"change log cost: {results['config']['scenario_description']}",
             f"  {results['config']['people']:,} people, {results['config']['concurrency']} calls in flight, "
             f"{results['config']['seconds']:g} s per run, {results['config']['server_workers']} server workers, "
             f"load average {results['machine']['load_average_start']} at start, {results['machine']['load_average_end']} at end",
             "",
             f"{'run':<22}{'calls/s':>9}{'p99 ms':>9}{'server ms/call':>16}{'pg backends ms/call':>21}"
             f"{'pg all ms/call':>16}{'busy':>6}{'load1':>7}{'events':>8}"]  # fmt: skip
    for r in results["runs"]:
        lines.append(
            f"{r['label']:<22}{r['calls_per_s']:>9.1f}{r.get('latency_ms', {}).get('p99', 0):>9.1f}"
            f"{r.get('server_cpu_ms_per_call', 0):>16.3f}{r.get('postgres_backends_cpu_ms_per_call', 0):>21.3f}"
            f"{r.get('postgres_all_cpu_ms_per_call', 0):>16.3f}{r.get('machine_busy', 0):>6.2f}"
            f"{r['load_average_before'][0]:>7.1f}{r['events_written']:>8}"
        )
    lines.append("")
    lines.append("Postgres: the service's active backends, mean count by wait (CPU: not waiting), over each run:")
    for r in results["runs"]:
        waits = r.get("postgres_waits", {})
        shown = ", ".join(f"{k} {v}" for k, v in list(waits.get("mean_backends_per_wait", {}).items())[:4])
        per_call = r["db_transactions"] / r["calls"] if r.get("calls") else 0
        lines.append(f"  {r['label']:<20}active {waits.get('active_backends_mean', 0)}: {shown};"
                     f" {r.get('db_transactions', 0)} transactions in the run (warm-up included), {per_call:.1f} per counted call")
    lines.append("")
    if "throughput_ratio" in s:
        lines.append(
            f"throughput with/without the log: {s['throughput_ratio']:.3f} (mean {s['with_log']['calls_per_s_mean']:.1f} / "
            f"{s['without_log']['calls_per_s_mean']:.1f} calls/s; per pair {s['throughput_ratio_per_pair']}); "
            f"server CPU/call x{s.get('server_cpu_ratio', 0):.2f}, Postgres backends CPU/call x{s.get('postgres_backends_cpu_ratio', 0):.2f}"
        )
    w = s.get("watchers")
    if w:
        lag = w.get("lag") or {}
        lines.append(
            f"{w['watchers']} watchers at peak: {w['calls_per_s']:.1f} calls/s vs {w['calls_per_s_without_watchers']:.1f} "
            f"without (x{w['throughput_ratio']}); server {w['server_cpu_ms_per_call']} ms/call vs "
            f"{w['server_cpu_ms_per_call_without_watchers']}; Postgres backends {w['postgres_backends_cpu_ms_per_call']} vs "
            f"{w['postgres_backends_cpu_ms_per_call_without_watchers']} ms/call; server CPU per delivery "
            f"{w.get('server_cpu_ms_per_delivery', '?')} ms ({w.get('deliveries_per_s', '?')} deliveries/s); "
            f"watchers' client process {w.get('watch_client_cores')} cores"
        )
        lines.append(
            f"  server RSS max {w['server_rss_mb_total_max']:.1f} MB vs {w['server_rss_mb_total_max_without_watchers']:.1f} MB "
            f"without (all processes); open and idle {w['server_rss_mb_open_idle']} MB vs {w['server_rss_mb_before_open']} MB "
            f"before; USS {w['server_uss_mb_before_open']} -> {w['server_uss_mb_open_idle']} -> {w['server_uss_mb_after_load']}"
        )
        lines.append(
            f"  lag under load: p50 {lag.get('p50_ms')} ms, p95 {lag.get('p95_ms')} ms, p99 {lag.get('p99_ms')} ms, "
            f"max {lag.get('max_ms')} ms over {lag.get('events')} deliveries; caught up {w['catch_up_seconds_after_load']} s "
            f"after the load; gaps {w['gaps']}, duplicates {w['duplicates']}, errors {w['errors'] or 0}"
        )
    if "idle_lag" in s:
        lag = s["idle_lag"]
        lines.append(
            f"idle lag (1 watcher, {results['idle_lag']['calls']} calls {results['idle_lag']['interval_s'] * 1000:g} ms apart): "
            f"p50 {lag.get('p50_ms')} ms, p95 {lag.get('p95_ms')} ms, p99 {lag.get('p99_ms')} ms, max {lag.get('max_ms')} ms "
            f"over {lag['events']} events"
        )
    lines.append(f"targets: {s['targets_met']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.database_url:
        from service.runtime import embedded

        args.database_url = embedded.start()
    try:
        results = ChangeLogBench(args).run()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(table(results))
    print(f"\nresults: {results['files']['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
