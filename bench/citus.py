"""python -m bench.citus (make citus-bench): the benchmark's scenarios (python -m bench) on plain
Postgres and on a local Citus cluster (a coordinator and two workers) on this same machine, one
after the other, alternated when --rounds > 1, then the figures side by side.

One machine cannot show what Citus is for (more machines): the coordinator, the workers and the
service share its cores, so the figures show the cost of the extra hop (each statement planned
on the coordinator, sent to a worker, its answer relayed back) and what it costs in CPU.

- Plain Postgres: a database of its own on POSTGRES_URL (default DATABASE_URL, else the machine's
  postgresql://postgres@127.0.0.1:5432/postgres), plan_cache_mode as deployed
  (force_generic_plan).
- Citus: CITUS_URL when set (a coordinator with its workers registered), else a cluster this
  module starts with ../shared/engines/citus/cluster.sh in a temporary folder (as root; Citus
  built first: make citus-test builds it) and stops at the end; a database of its own on every
  node, migrated and distributed (service.db.citus), served with DB_PLAN_CACHE_MODE=auto.

Each run is `python -m bench --database-url ... --people N --seconds S --no-half-peak` (the
pgbench floor included unless --no-floor); its JSON lands in OUT/postgres-<round> and
OUT/citus-<round>, the comparison in OUT/citus-vs-postgres-<time>.json and on stdout.
CPU figures: the service's processes and the coordinator's (or plain Postgres's) processes; the
workers' CPU is measured separately here (every process of the worker nodes' postmasters).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import sqlalchemy as sa

from bench.driver import SCENARIOS

REPO = Path(__file__).resolve().parents[1]
ENGINE = Path(os.environ.get("CITUS_ENGINE", REPO.parent / "shared" / "engines" / "citus"))
if not ENGINE.is_dir():
    ENGINE = Path("/work/shared/engines/citus")


def _with_database(url: str, name: str) -> str:
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


def _free_base(count: int = 3) -> int:
    for base in range(17441, 19441, 7):
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports for the Citus cluster")


class Cluster:
    """CITUS_URL, or a local cluster started (and later stopped) with cluster.sh."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.url = os.environ.get("CITUS_URL") or ""

    def __enter__(self) -> "Cluster":
        if not self.url:
            if not Path("/usr/lib/postgresql/15/lib/citus.so").exists():
                subprocess.run(["bash", str(ENGINE / "build.sh")], check=True)
            self.folder = tempfile.mkdtemp(prefix="identity-citus-bench.", dir="/var/tmp")
            os.chmod(self.folder, 0o755)
            started = subprocess.run(
                ["bash", str(ENGINE / "cluster.sh"), "start", self.folder, str(_free_base()), "2"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            self.url = started.stdout.strip().splitlines()[-1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.folder:
            subprocess.run(["bash", str(ENGINE / "cluster.sh"), "stop", self.folder], check=False)
            subprocess.run(["rm", "-rf", self.folder], check=False)

    def workers(self) -> list[tuple[str, int]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive AND groupid <> 0 ORDER BY nodeport"
            ).fetchall()
        return [(h, p) for h, p in rows]

    def worker_postmasters(self) -> list[int]:
        """The pids of the workers' postmasters (for their CPU), when they run on this machine."""
        pids = []
        for host, port in self.workers():
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                    pids.append(conn.pid)
        return sorted(set(pids))


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds of each postmaster and its processes, those that ended included: the
    coordinator opens and closes worker connections per transaction beyond its cached one, and
    an ended backend's time is in its postmaster's children_* times once reaped."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            own = root.cpu_times()
            total += own.children_user + own.children_system
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


def run_bench(url: str, out: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "bench", "--database-url", url, "--people", str(args.people),
        "--seconds", str(args.seconds), "--concurrency", str(args.concurrency), "--scenarios", args.scenarios,
        "--no-half-peak", "--out", str(out),
    ]  # fmt: skip
    if args.no_floor:
        command.append("--no-floor")
    subprocess.run(command, cwd=REPO, env=env, check=True)
    latest = max(out.glob("bench-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(latest.read_text())


def summary(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, entry in result["scenarios"].items():
        peak = entry["peak"]
        lat = peak.get("latency_ms", {})
        out[name] = {
            "calls_per_s": peak.get("calls_per_s"),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "errors": peak.get("errors") or 0,
            "server_cpu_ms_per_call": peak.get("server_cpu_ms_per_call"),
            "postgres_cpu_ms_per_call": peak.get("postgres_all_cpu_ms_per_call"),
        }
        fl = result.get("floors", {}).get(name, {})
        if fl.get("pgbench", {}).get("tps"):
            out[name]["pgbench_tps"] = fl["pgbench"]["tps"]
    return out


def table(pg: dict[str, dict[str, Any]], citus: dict[str, dict[str, Any]], extra: dict[str, Any]) -> str:
    def f(v: Any, digits: int = 1) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    lines = [
        "| scenario | Postgres calls/s | Citus calls/s | Citus / Postgres | p50 ms PG / Citus | p99 ms PG / Citus"
        " | server CPU ms/call PG / Citus | database CPU ms/call PG / Citus coordinator | pgbench tps PG / Citus |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in pg:
        a, b = pg[name], citus.get(name, {})
        ratio = (b.get("calls_per_s") or 0) / a["calls_per_s"] if a.get("calls_per_s") else None
        lines.append(
            f"| {name} | {f(a.get('calls_per_s'))} | {f(b.get('calls_per_s'))} | {f(ratio, 2)} |"
            f" {f(a.get('p50_ms'), 2)} / {f(b.get('p50_ms'), 2)} | {f(a.get('p99_ms'), 2)} / {f(b.get('p99_ms'), 2)} |"
            f" {f(a.get('server_cpu_ms_per_call'), 2)} / {f(b.get('server_cpu_ms_per_call'), 2)} |"
            f" {f(a.get('postgres_cpu_ms_per_call'), 2)} / {f(b.get('postgres_cpu_ms_per_call'), 2)} |"
            f" {f(a.get('pgbench_tps'))} / {f(b.get('pgbench_tps'))} |"
        )
    lines.append("")
    lines.append(
        "Citus: coordinator + 2 workers on this machine; worker processes' CPU during the Citus run:"
        f" {extra.get('citus_worker_cpu_s', 0):.1f} s over {extra.get('citus_seconds', 0):.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.citus", description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, default=int(os.environ.get("BENCH_PEOPLE", "10000").split(",")[0]))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: every one of python -m bench)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each, alternated Postgres, Citus, Postgres, ...")
    p.add_argument("--no-floor", action="store_true", help="skip pgbench")
    p.add_argument("--out", default="bench-results")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("POSTGRES_URL") or os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"identity_bench_{secrets.token_hex(4)}"

    from service.db.citus import distribute
    from service.db.engine import create_engine, migrate

    plain_env = {k: v for k, v in os.environ.items() if k != "DB_PLAN_CACHE_MODE"}
    citus_env = {**plain_env, "DB_PLAN_CACHE_MODE": "auto"}
    results: dict[str, Any] = {"started_at": stamp, "people": args.people, "seconds": args.seconds, "runs": []}
    with Cluster() as cluster:
        workers = cluster.workers()
        pg_url = _with_database(args.postgres_url, name)
        citus_url = _with_database(cluster.url, name)
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        for admin in [cluster.url, *(_with_database(f"postgresql://postgres@{h}:{port}/postgres", "postgres") for h, port in workers)]:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("SET citus.enable_create_database_propagation = off")
                conn.execute(f'CREATE DATABASE "{name}"')
            with psycopg.connect(_with_database(admin, name), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citus")
        try:
            coordinator = sa.engine.make_url(cluster.url)
            with psycopg.connect(citus_url, autocommit=True) as conn:
                conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (coordinator.host, coordinator.port))
                for host, port in workers:
                    conn.execute("SELECT citus_add_node(%s, %s)", (host, port))
            engine = create_engine(citus_url)
            try:
                migrate(engine)
                distribute(engine)
            finally:
                engine.dispose()
            postmasters = cluster.worker_postmasters()
            for r in range(1, args.rounds + 1):
                pg = run_bench(pg_url, out / f"postgres-{stamp}-{r}", args, plain_env)
                before, t = _tree_cpu(postmasters), time.monotonic()
                ci = run_bench(citus_url, out / f"citus-{stamp}-{r}", args, citus_env)
                extra = {"citus_worker_cpu_s": _tree_cpu(postmasters) - before, "citus_seconds": time.monotonic() - t}
                results["runs"].append({"postgres": summary(pg), "citus": summary(ci), **extra})
                print(f"\nround {r}: {args.people:,} people per workspace, {args.concurrency} calls in flight, {args.seconds:g} s per scenario\n")
                print(table(summary(pg), summary(ci), extra))
        finally:
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for admin in [cluster.url, *(f"postgresql://postgres@{h}:{port}/postgres" for h, port in workers)]:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute("SET citus.enable_create_database_propagation = off")
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    path = out / f"citus-vs-postgres-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
