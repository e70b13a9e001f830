"""Bulk import and export (issue 10, R80-R82) against a real server and Postgres:

1. new people: a CSV of `--rows` people (id, email and three attributes) streamed to
   StreamImportPeople into an empty workspace;
2. updates: the same people again, each with new attribute values;
3. export: ExportPeople of the whole workspace.

Throughout, the server's memory (RSS of every process, sampled) and its and Postgres's CPU are
measured; during each import, online Identify calls at a fixed rate on another workspace measure
what the import costs the other tenants (p50/p99, beside the same calls with no import running).
Targets (issue 10, 1,000,000 rows on this 2-core machine): new <= 60 s, updates <= 90 s, export
<= 30 s, server memory <= 300 MB, online p99 <= 50 ms. Figures drift on a shared machine:
compare within one run.

    python -m bench.bulk_import                 # 1,000,000 rows
    python -m bench.bulk_import --quick         # 3,000 rows: that it runs and reports (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc

from bench.server import MB, CpuMeter, PostgresProcesses, RssSampler, ServerProcess
from bench import load
from service.db.engine import create_engine, migrate
from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc

TARGETS = {"import_new_s": 60.0, "import_updates_s": 90.0, "export_s": 30.0, "server_rss_mb": 300.0, "online_p99_ms": 50.0}
TARGET_ROWS = 1_000_000
CHUNK = 1 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bulk_import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rows", type=int, help=f"people in the file (default {TARGET_ROWS:,}; --quick: 3,000)")
    p.add_argument("--online-rate", type=float, default=50.0, help="online Identify calls per second (default 50)")
    p.add_argument("--online-baseline", type=float, default=5.0, help="seconds of online calls alone (default 5)")
    p.add_argument("--workers", default=os.environ.get("BENCH_WORKERS") or "2", help="server worker processes (default 2)")
    p.add_argument("--quick", action="store_true", help="3,000 rows, 1 s of baseline: for CI")
    p.add_argument("--out", default="bench-results", help="folder of the JSON and the server log")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="default: DATABASE_URL")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = 3000 if args.quick else TARGET_ROWS
    if args.quick:
        args.online_baseline = min(args.online_baseline, 1.0)
    if not args.database_url:
        p.error("--database-url or DATABASE_URL is required")
    return args


def write_file(path: Path, rows: int, version: int) -> int:
    """The import file: `version` changes every attribute value (the second import updates)."""
    with open(path, "w") as out:
        out.write("id,email,first_name,last_name,plan\n")
        batch = []
        for i in range(rows):
            batch.append(f"user-{i},user-{i}@example.com,First{i}v{version},Last{i},plan-{(i + version) % 5}\n")
            if len(batch) == 10_000:
                out.write("".join(batch))
                batch = []
        out.write("".join(batch))
    return path.stat().st_size


class OnlineLoad:
    """Identify calls at a fixed rate on a workspace of their own, in a thread: latencies in ms."""

    def __init__(self, address: str, workspace: str, rate: float):
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.IdentityServiceStub(self.channel)
        self.workspace = workspace
        self.interval = 1.0 / rate
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "OnlineLoad":
        self.latencies, self.errors = [], {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="online", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            n += 1
            request = pb.IdentifyRequest(workspace_id=self.workspace, id=f"online-{n % 2000}", email=f"online-{n % 2000}@example.com")
            start = time.perf_counter()
            try:
                self.stub.Identify(request, timeout=10)
                self.latencies.append((time.perf_counter() - start) * 1000)
            except grpc.RpcError as error:
                self.errors[error.code().name] = self.errors.get(error.code().name, 0) + 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        return latency_summary(self.latencies, self.errors)

    def close(self) -> None:
        self.channel.close()


def latency_summary(latencies: list[float], errors: dict[str, int]) -> dict[str, Any]:
    if not latencies:
        return {"calls": 0, "errors": errors}
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max_ms": round(ordered[-1], 2),
        "errors": errors,
    }


def stream_file(stub: pb_grpc.IdentityServiceStub, workspace: str, path: Path) -> tuple[pb.ImportProgress, float, int]:
    def requests() -> Iterator[pb.StreamImportPeopleRequest]:
        yield pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=str(uuid.uuid4()))
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK):
                yield pb.StreamImportPeopleRequest(chunk=chunk)

    start = time.perf_counter()
    last, refused = pb.ImportProgress(), 0
    for response in stub.StreamImportPeople(requests()):
        last = response.progress
        refused += len(response.refused_rows)
    return last, time.perf_counter() - start, refused


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.results: dict[str, Any] = {"rows": args.rows, "targets": TARGETS, "target_rows": TARGET_ROWS}

    def run(self) -> dict[str, Any]:
        args = self.args
        engine = create_engine(args.database_url, pool_size=1)
        migrate(engine)  # a fresh database works too
        engine.dispose()
        facts = load.database_facts(args.database_url)
        postgres = PostgresProcesses(args.database_url, facts["postmaster_pid"])
        server = ServerProcess(args.database_url, self.out / f"bulk_import-{self.stamp}-server.log",
                               workers=args.workers, log_level="WARNING")  # fmt: skip
        server.start()
        rss = RssSampler(server)
        rss.start()
        try:
            with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 8 * MB)]) as channel:
                self._run(channel, server, postgres, rss)
        finally:
            rss.stop()
            server.stop()
            postgres.close()
        self.results["server_rss_mb"] = {phase: {k: round(v, 1) for k, v in by.items()} for phase, by in rss.per_phase.items()}
        peak = max((by.get("total", 0.0) for by in rss.per_phase.values()), default=0.0)
        self.results["server_rss_peak_mb"] = round(peak, 1)
        self.results["verdict"] = self._verdict(peak)
        path = self.out / f"bulk_import-{self.stamp}.json"
        path.write_text(json.dumps(self.results, indent=2))
        self.results["json"] = str(path)
        return self.results

    def _run(self, channel: grpc.Channel, server: ServerProcess, postgres: PostgresProcesses, rss: RssSampler) -> None:
        args = self.args
        workspaces = pb_grpc.WorkspaceServiceStub(channel)
        stub = pb_grpc.IdentityServiceStub(channel)
        bulk, online_ws = f"bench-bulk-{uuid.uuid4().hex[:8]}", f"bench-online-{uuid.uuid4().hex[:8]}"
        for workspace in (bulk, online_ws):
            workspaces.CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace), timeout=10)
        online = OnlineLoad(server.address, online_ws, args.online_rate)
        rss.phase = "online alone"
        online.start()
        time.sleep(args.online_baseline)
        self.results["online_alone"] = online.stop()

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "people.csv"
            for phase, version in (("import_new", 1), ("import_updates", 2)):
                size = write_file(path, args.rows, version)
                rss.phase = phase
                cpu_server, cpu_pg = CpuMeter(server.processes), CpuMeter(postgres.all)
                cpu_server.start(), cpu_pg.start()
                online.start()
                progress, seconds, refused = stream_file(stub, bulk, path)
                latency = online.stop()
                server_cpu, pg_cpu = cpu_server.stop(), cpu_pg.stop()
                self.results[phase] = {
                    "seconds": round(seconds, 2),
                    "rows_per_second": round(args.rows / seconds),
                    "file_mb": round(size / MB, 1),
                    "rows_applied": progress.rows_applied,
                    "rows_refused": progress.rows_refused,
                    "refused_reported": refused,
                    "server_cpu_us_per_row": round(server_cpu / args.rows * 1e6, 1),
                    "postgres_cpu_us_per_row": round(pg_cpu / args.rows * 1e6, 1),
                    "online_during": latency,
                    "seconds_at_target_rows": round(seconds * TARGET_ROWS / args.rows, 1),
                }
                print(f"{phase}: {args.rows:,} rows in {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s); "
                      f"online p99 {latency.get('p99_ms')} ms", flush=True)  # fmt: skip

        rss.phase = "export"
        cpu_server, cpu_pg = CpuMeter(server.processes), CpuMeter(postgres.all)
        cpu_server.start(), cpu_pg.start()
        start = time.perf_counter()
        people = 0
        for response in stub.ExportPeople(pb.ExportPeopleRequest(workspace_id=bulk)):
            people += len(response.people)
        seconds = time.perf_counter() - start
        server_cpu, pg_cpu = cpu_server.stop(), cpu_pg.stop()
        self.results["export"] = {
            "seconds": round(seconds, 2),
            "people": people,
            "people_per_second": round(people / seconds),
            "server_cpu_us_per_person": round(server_cpu / max(people, 1) * 1e6, 1),
            "postgres_cpu_us_per_person": round(pg_cpu / max(people, 1) * 1e6, 1),
            "seconds_at_target_rows": round(seconds * TARGET_ROWS / max(people, 1), 1),
        }
        print(f"export: {people:,} people in {seconds:.1f} s", flush=True)
        online.close()

    def _verdict(self, peak_mb: float) -> dict[str, Any]:
        r = self.results
        figures = {
            "import_new_s": r["import_new"]["seconds_at_target_rows"],
            "import_updates_s": r["import_updates"]["seconds_at_target_rows"],
            "export_s": r["export"]["seconds_at_target_rows"],
            "server_rss_mb": peak_mb,
            "online_p99_ms": max(r[p]["online_during"].get("p99_ms", 0.0) for p in ("import_new", "import_updates")),
        }
        return {
            name: {"figure": value, "target": TARGETS[name], "met": value <= TARGETS[name],
                   "scaled_from_rows": r["rows"] if name.endswith("_s") else None}
            for name, value in figures.items()
        }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = Bench(args).run()
    print(json.dumps(results["verdict"], indent=2))
    print(f"results: {results['json']}")


if __name__ == "__main__":
    main()
