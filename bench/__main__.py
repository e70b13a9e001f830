"""python -m bench: load a workspace of each shape (ids only, emails only, both: bench/ids.py),
start the server, drive every scenario, compare the Identify of each shape with its pgbench floor
(the service's own statements, bench/floor.py), write bench-results/bench-<time>.json and .png.

Environment: DATABASE_URL (else the embedded Postgres in .pgdata), BENCH_PEOPLE (people per
workspace; a comma-separated list runs the whole benchmark once per size, e.g.
BENCH_PEOPLE=10000,1000000), BENCH_WORKERS (passed to the server as --workers; unset: the
server's own default)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import floor, ids, load, report
from bench.driver import MERGE_SHARE, SCENARIOS, SHAPE_OF, Drivers, Setup
from bench.server import CpuMeter, PostgresProcesses, RssSampler, ServerProcess

# People per workspace: the benchmark runs once at each size (each shape's workspace holds them).
DEFAULTS = {"people": "10000,1000000", "seconds": 10.0, "concurrency": 32}
QUICK = {"people": 2_000, "seconds": 2.0, "concurrency": 8, "processes": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--people",
        help="people in each shape's workspace; a comma-separated list runs once per size, e.g. 10000,1000000"
        " (default: BENCH_PEOPLE or 10000,1000000; --quick: 2000)",
    )
    p.add_argument("--seconds", type=float, help="measured seconds per scenario run (default 10; --quick: 2)")
    p.add_argument("--concurrency", type=int, help="calls in flight, and pgbench clients (default 32; --quick: 8)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="a short run for CI: 2,000 people, ~2 s per scenario, 8 calls in flight")
    p.add_argument("--out", default="bench-results", help="folder of the JSON, PNG and server log (default bench-results)")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="default: DATABASE_URL, else the embedded Postgres")
    p.add_argument("--processes", type=int, help="load-generator processes (default: max(2, cores/2), at most 8; --quick: 2)")
    p.add_argument("--channels", type=int, help="gRPC channels (TCP connections) per load-generator process (default: 2 per call in flight, at least 4)")
    p.add_argument("--deadline", type=float, default=10.0, help="deadline of each call, seconds (default 10)")
    p.add_argument("--warmup", type=float, help="uncounted seconds before each run (default: 10%% of --seconds, 0.5..2)")
    p.add_argument("--no-half-peak", action="store_true", help="skip the runs at half the peak rate")
    p.add_argument("--no-floor", action="store_true", help="skip pgbench")
    p.add_argument("--pgbench", help="the pgbench binary (default: found; see bench/floor.py)")
    p.add_argument("--server-log-level", default="INFO", help="the server's --log-level (default INFO, as deployed)")
    p.add_argument("--keep-workspace", action="store_true", help="leave the benchmark's workspaces in the database")
    args = p.parse_args(argv)

    base = QUICK if args.quick else DEFAULTS
    if args.people is None:
        args.people = str(base["people"]) if args.quick else os.environ.get("BENCH_PEOPLE", base["people"])
    try:
        args.sizes = [int(n.replace("_", "")) for n in str(args.people).split(",") if n.strip()]
    except ValueError:
        p.error(f"--people / BENCH_PEOPLE must be numbers, comma-separated: {args.people!r}")
    args.people = args.sizes[0] if args.sizes else 0
    args.seconds = base["seconds"] if args.seconds is None else args.seconds
    args.concurrency = base["concurrency"] if args.concurrency is None else args.concurrency
    if args.warmup is None:
        args.warmup = min(2.0, max(0.5, args.seconds / 10))
    cores = os.cpu_count() or 1
    if args.processes is None:
        args.processes = QUICK["processes"] if args.quick else max(2, min(8, cores // 2))
    args.processes = max(1, min(args.processes, args.concurrency))
    if args.channels is None:
        # Many connections: SO_REUSEPORT spreads connections, not calls, over the server's workers,
        # and a handful of connections can land mostly on one of them.
        args.channels = max(4, 2 * math.ceil(args.concurrency / args.processes))
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if not args.sizes or min(args.sizes) < 1 or args.seconds <= 0 or args.concurrency < 1:
        p.error("--people, --seconds and --concurrency must be positive")
    return args


class Progress:
    """One line that rewrites itself on a terminal; a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif now - self.last >= 2:
            print(text, file=sys.stderr, flush=True)
            self.last = now

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr, flush=True)
        self.last = 0.0


class Window:
    """Measures CPU (server processes, Postgres backends) over the counted part of a run: the
    meters start once the warm-up is over and stop when the run's seconds are."""

    def __init__(self, meters: dict[str, CpuMeter], seconds: float):
        self.meters = meters
        self.machine: tuple[Any, Any] | None = None
        self.seconds = seconds
        self.started: float | None = None
        self.cpu: dict[str, float] = {}
        self.interval = 0.0

    def tick(self, elapsed: float) -> None:
        if self.started is None and elapsed >= 0:
            for meter in self.meters.values():
                meter.start()
            self.machine = (psutil.cpu_times(), None)
            self.started = time.monotonic()
        elif self.started is not None and not self.cpu and elapsed >= self.seconds:
            self.cpu = {name: meter.stop() for name, meter in self.meters.items()}
            assert self.machine is not None
            self.machine = (self.machine[0], psutil.cpu_times())
            self.interval = time.monotonic() - self.started

    def figures(self, calls_per_s: float) -> dict[str, float]:
        if not self.cpu or self.interval <= 0:
            return {}
        out = {}
        for name, seconds in self.cpu.items():
            out[f"{name}_cores"] = round(seconds / self.interval, 3)
            if calls_per_s > 0:
                out[f"{name}_cpu_ms_per_call"] = round(seconds / (self.interval * calls_per_s) * 1000, 3)
        if self.machine and self.machine[1] is not None:
            # All cores, all processes, kernel included (softirq: the loopback network).
            before, after = self.machine
            total = sum(after) - sum(before)
            idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
            if total > 0:
                out["machine_busy"] = round(1 - idle / total, 3)
        return out


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.progress = Progress()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{args.people}" if len(args.sizes) > 1 else "")
        self.next_pair = 1
        self.results: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "scenarios": {}}

    def say(self, text: str) -> None:
        self.progress.done(text)

    # --- the whole run ---

    def run(self) -> int:
        args = self.args
        url, kind = args.database_url, args.database_kind
        self.url = url
        facts = load.database_facts(url)
        self.postgres = PostgresProcesses(url, facts["postmaster_pid"])
        self.workspaces = {shape: load.new_workspace_id(shape) for shape in ids.SHAPES}
        self.workspace = self.workspaces[load.MERGE_SHAPE]
        self.results["config"] = {
            "people": args.people,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "load_processes": args.processes,
            "channels_per_process": args.channels,
            "deadline_s": args.deadline,
            "scenarios": args.scenarios,
            "quick": args.quick,
            "database": kind,
            "database_url": _redact(url),
            "postgres_version": facts["server_version"],
            "workspace": self.workspace,
            "workspaces": {shape: {"id": ws, "mode": load.mode(shape).value} for shape, ws in self.workspaces.items()},
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "bench_workers_env": os.environ.get("BENCH_WORKERS"),
        }
        server = drivers = sampler = None
        loaded = False
        try:
            loaded = True  # from here on, the workspaces are deleted at the end whatever happens
            load.prepare(url, self.workspaces)
            self.results["load"] = {"people": args.people}
            for shape, workspace_id in self.workspaces.items():
                mode = load.mode(shape).value
                self.say(f"workspace {workspace_id} ({mode}): loading {args.people:,} people with COPY")
                took = load.load_people(
                    url, workspace_id, shape, args.people,
                    lambda n: self.progress.update(f"  loaded {n:,} people"),
                )  # fmt: skip
                self.results["load"][shape] = {"seconds": round(took, 2), "rows_per_s": round(args.people / took)}
                self.say(f"  loaded in {took:.1f}s ({args.people / took:,.0f} rows/s)")
            took = load.analyze(url)
            self.results["load"]["analyze_seconds"] = round(took, 2)
            self.say(f"  VACUUM (ANALYZE) in {took:.1f}s")

            server = ServerProcess(
                url,
                self.out / f"bench-{self.stamp}-server.log",
                workers=os.environ.get("BENCH_WORKERS") or None,
                log_level=args.server_log_level,
            )
            server.start()
            roles = server.roles()
            workers = sum(1 for r in roles.values() if r != "supervisor")
            self.results["config"]["server_workers"] = workers
            self.results["config"]["server_command"] = " ".join(
                "<url>" if a == url else (a or "''") for a in server.command[1:]
            )
            self.say(f"server {server.address}: {', '.join(f'{r} pid {p}' for p, r in roles.items())}")
            sampler = RssSampler(server)
            sampler.start()
            self.meters = {"server": CpuMeter(server.processes)}
            if self.postgres.local:  # CPU of the service's backends, and of all of Postgres
                self.meters["postgres_backends"] = CpuMeter(lambda: self.postgres.of("identity-service"))
                self.meters["postgres_all"] = CpuMeter(self.postgres.all)

            setup = Setup(
                target=server.address,
                workspace_id=self.workspace,
                workspaces=self.workspaces,
                people=args.people,
                tag=secrets.token_hex(3),
                deadline=args.deadline,
                channels=args.channels,
            )
            drivers = Drivers(setup, args.processes)
            self.say(
                f"load generator: {args.processes} processes x {args.channels} channels, "
                f"{args.concurrency} calls in flight, pids {drivers.pids()}"
            )
            for i, name in enumerate(args.scenarios, 1):
                sampler.phase = name
                self.scenario(drivers, i, name)
            sampler.sample()
            self.results["server_rss"] = {
                "processes": [
                    {"pid": pid, "role": e["role"], "first_mb": round(e["first_mb"], 1),
                     "max_mb": round(e["max_mb"], 1), "last_mb": round(e["last_mb"], 1)}
                    for pid, e in sampler.per_pid.items()
                ],  # fmt: skip
                "total_max_mb": round(max((p.get("total", 0.0) for p in sampler.per_phase.values()), default=0.0), 1),
                "max_mb_per_scenario": {k: {r: round(v, 1) for r, v in d.items()} for k, d in sampler.per_phase.items()},
                "uss_end_mb": sampler.unique_mb(),
            }
        finally:
            if drivers is not None:
                drivers.close()
            if sampler is not None:
                sampler.stop()
            if server is not None:
                server.stop()
                self.results["server_calls_per_process"] = _calls_per_process(server, sampler)
            self.postgres.close()
            if loaded and not args.keep_workspace:
                try:
                    load.drop_workspaces(url, list(self.workspaces.values()))
                except Exception as error:  # noqa: BLE001 - report, do not hide the first error
                    print(f"could not delete workspaces {list(self.workspaces.values())}: {error}", file=sys.stderr)

        json_path = self.out / f"bench-{self.stamp}.json"
        png_path = self.out / f"bench-{self.stamp}.png"
        self.results["files"] = {"json": str(json_path), "png": str(png_path)}
        report.write_json(json_path, self.results)
        report.write_png(png_path, self.results)
        print(report.table(self.results))
        print(f"\nresults: {json_path}\nchart:   {png_path}")
        return 0

    # --- one scenario: peak, floor, half peak ---

    def scenario(self, drivers: Drivers, index: int, name: str) -> None:
        args = self.args
        entry: dict[str, Any] = {"description": SCENARIOS[name]}
        self.results["scenarios"][name] = entry
        label = f"[{index}/{len(args.scenarios)}] {name}"

        entry["peak"] = self.measure(drivers, label, name, rate=None)
        peak = entry["peak"]
        lat = peak.get("latency_ms", {})
        self.say(
            f"{label} peak: {peak['calls_per_s']:.1f} calls/s, p50 {lat.get('p50', 0):.2f} ms, "
            f"p95 {lat.get('p95', 0):.2f} ms, p99 {lat.get('p99', 0):.2f} ms, errors {peak['errors'] or 0}"
            + (f", outcomes {peak['outcomes']}" if peak.get("outcomes") else "")
        )
        if name in SHAPE_OF and not args.no_floor:
            self.floor(name, peak)
        if not args.no_half_peak and peak["ok_per_s"] > 0:
            half = self.measure(drivers, label, name, rate=peak["ok_per_s"] / 2)
            entry["half_peak"] = half
            hl = half.get("latency_ms", {})
            self.say(
                f"{label} at half peak ({half['target_rate']:.0f}/s): {half['calls_per_s']:.1f} calls/s, "
                f"p50 {hl.get('p50', 0):.2f} ms, p99 {hl.get('p99', 0):.2f} ms, errors {half['errors'] or 0}"
                + (f", dropped {half['dropped']}" if half.get("dropped") else "")
            )

    def _pairs_for(self, name: str, rate: float | None) -> tuple[int, int]:
        """Loads (COPY) enough fresh merge pairs for one run; each pair merges once."""
        share = MERGE_SHARE.get(name, 0.0)
        if not share:
            return (0, 0)
        if rate is None:  # peak: as fast as the fastest scenario so far, or a generous guess
            seen = [s["peak"]["calls_per_s"] for s in self.results["scenarios"].values() if "calls_per_s" in s.get("peak", {})]
            rate = max(seen) if seen else 1000.0 * (os.cpu_count() or 1)
            rate *= 1.5
        count = math.ceil(rate * (self.args.warmup + self.args.seconds + 1) * share * 1.5) + 50 * self.args.processes
        first = self.next_pair
        load.load_pairs(self.url, self.workspace, first, count)
        self.next_pair += count
        return (first, first + count)

    def measure(self, drivers: Drivers, label: str, name: str, rate: float | None) -> dict[str, Any]:
        args = self.args
        pairs = self._pairs_for(name, rate)
        self.progress.update(f"{label}: settling (CHECKPOINT, sync)")
        load.settle(self.url)
        window = Window(self.meters, args.seconds)
        phase = "peak" if rate is None else f"half peak {rate:.0f}/s"

        def on_progress(elapsed: float, ok: int, failed: int) -> None:
            window.tick(elapsed)
            if elapsed < 0:
                self.progress.update(f"{label} {phase}: warming up")
            else:
                shown = min(elapsed, args.seconds)
                rate_now = (ok + failed) / shown if shown > 0.2 else 0.0
                self.progress.update(
                    f"{label} {phase}: {shown:4.1f}/{args.seconds:g}s  {ok + failed} calls  "
                    f"{rate_now:,.0f}/s  errors {failed}"
                )

        result = drivers.run(
            name,
            seconds=args.seconds,
            warmup=args.warmup,
            concurrency=args.concurrency,
            rate=rate,
            pairs=pairs,
            on_progress=on_progress,
        )
        window.tick(args.seconds)  # in case the last progress came a little early
        figures = window.figures(result["calls_per_s"])
        result.update(figures)
        result["client_cores"] = round(result["client_cpu_s"] / args.seconds, 3)
        if "machine_busy" in result and "postgres_all_cores" in result:
            # Busy cores not spent by the server, Postgres or the load generator: the kernel's
            # network work, this process, and anything else running on the machine.
            busy = result["machine_busy"] * (os.cpu_count() or 1)
            result["other_cores"] = round(
                busy - result["server_cores"] - result["postgres_all_cores"] - result["client_cores"], 3
            )
        if result["calls"]:
            result["client_cpu_ms_per_call"] = round(result["client_cpu_s"] / result["calls"] * 1000, 3)
        if pairs != (0, 0):
            result["merge_pairs_loaded"] = pairs[1] - pairs[0]
        if result.get("pairs_exhausted"):
            self.say(f"{label}: warning: {result['pairs_exhausted']} task(s) ran out of merge pairs")
        return result

    def floor(self, scenario: str, service: dict[str, Any]) -> None:
        """pgbench running the service's own transaction of `scenario` (an Identify of an
        existing person in the workspace of one shape), at the same concurrency."""
        args = self.args
        shape = SHAPE_OF[scenario]
        floors = self.results.setdefault("floors", {})
        version = re.match(r"(\d+)", str(self.results["config"]["postgres_version"]))
        embedded_major = int(version.group(1)) if version and self.results["config"]["database"] == "embedded" else None
        found = floor.find_pgbench(embedded_major, args.pgbench)
        if found is None:
            floors[scenario] = {"scenario": scenario, "shape": shape, "skipped": "no pgbench found"}
            self.say("floor: skipped, no pgbench found")
            return
        path, version_text = found
        entry: dict[str, Any] = {
            "scenario": scenario,
            "shape": shape,
            "pgbench_path": path,
            "pgbench_version": version_text,
            "service_calls_per_s": service["calls_per_s"],
            "service_latency_ms": service.get("latency_ms", {}),
        }
        # As fast as pgbench goes, at the service's concurrency: the floor of the calls' rate.
        result, cpu = self._pgbench(path, shape, "", clients=args.concurrency)
        entry["pgbench"] = result
        entry["script"] = result["script"]
        if result.get("tps") and result["returncode"] == 0:
            entry["ratio"] = round(service["calls_per_s"] / result["tps"], 4)
            entry.update(cpu)
            entry["service_backends_cpu_ms_per_call"] = service.get("postgres_backends_cpu_ms_per_call")
            entry["service_postgres_all_cpu_ms_per_call"] = service.get("postgres_all_cpu_ms_per_call")
            self.say(
                f"floor ({shape}): service {service['calls_per_s']:.1f} calls/s / pgbench {result['tps']:.1f} tps "
                f"= {entry['ratio']:.3f}  (pgbench p99 {result.get('latency_ms', {}).get('p99', 0):.2f} ms)"
            )
            # At the service's rate over as many connections as the service holds: each backend
            # as idle between transactions as the service's, so that Postgres CPU per call
            # compares like with like (a backend woken up for each transaction costs more).
            connections = len(self.postgres.of("identity-service")) or args.concurrency
            if service.get("calls_per_s"):
                paced, paced_cpu = self._pgbench(
                    path, shape, "-paced", clients=connections, rate=service["calls_per_s"]
                )
                entry["paced"] = {"clients": connections, "rate": service["calls_per_s"], "pgbench": paced, **paced_cpu}
                if "pgbench_backends_cpu_ms_per_tx" in paced_cpu:
                    self.say(
                        f"floor ({shape}) paced at {service['calls_per_s']:.0f}/s over {connections} connections: "
                        f"Postgres backends {paced_cpu['pgbench_backends_cpu_ms_per_tx']:.3f} ms per transaction"
                    )
        else:
            self.say(f"floor ({shape}): pgbench failed: {result.get('error', '')[-500:]}")
        floors[scenario] = entry

    def _pgbench(
        self, path: str, shape: str, suffix: str, *, clients: int, rate: float | None = None
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """One pgbench run of a shape's floor; its result, and Postgres CPU per transaction."""
        args = self.args
        load.settle(self.url)
        self.progress.update(
            f"floor ({shape}{suffix}): pgbench -c {clients} -T {args.seconds:g} -M prepared"
            + (f" -R {rate:.0f}" if rate else "")
        )
        meters = {}
        if self.postgres.local:
            meters = {"backends": CpuMeter(lambda: self.postgres.of("pgbench")), "all": CpuMeter(self.postgres.all)}
        for meter in meters.values():
            meter.start()
        started = time.monotonic()
        script = self.out / f"bench-{self.stamp}-floor-{shape}{suffix}.sql"
        workdir = self.out / f"bench-{self.stamp}-tmp"
        result = floor.run(
            path,
            self.url,
            shape=shape,
            workspace_id=self.workspaces[shape],
            people=args.people,
            concurrency=clients,
            seconds=args.seconds,
            deadline=args.deadline,
            script=script,
            workdir=workdir,
            rate=rate,
        )
        used = {name: meter.stop() for name, meter in meters.items()}
        elapsed = time.monotonic() - started
        try:
            workdir.rmdir()
        except OSError:
            pass
        result["script"] = str(script)
        cpu: dict[str, float] = {}
        if used and result.get("transactions"):
            tx = result["transactions"]
            cpu["pgbench_backends_cpu_ms_per_tx"] = round(used["backends"] / tx * 1000, 3)
            cpu["postgres_all_cpu_ms_per_tx"] = round(used["all"] / tx * 1000, 3)
            cpu["postgres_all_cores"] = round(used["all"] / elapsed, 3)
        return result, cpu


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _calls_per_process(server: ServerProcess, sampler: RssSampler | None) -> dict[str, int]:
    """Calls each server process logged (its INFO line per call): how SO_REUSEPORT spread them."""
    counts: dict[str, int] = {}
    roles = {pid: e["role"] for pid, e in (sampler.per_pid.items() if sampler else [])}
    pattern = re.compile(r"^\S+ \S+ \S+ (\d+) identity\.calls (?:method=|\{)")
    try:
        with open(server.log_path, errors="replace") as f:
            for line in f:
                match = pattern.match(line)
                if match:
                    key = str(roles.get(int(match.group(1)), match.group(1)))
                    counts[key] = counts.get(key, 0) + 1
    except OSError:
        pass
    return counts


def _database(args: argparse.Namespace) -> None:
    """The database to run against: the one given, else the embedded Postgres (started once)."""
    args.database_kind = "given"
    if not args.database_url:
        from service.runtime import embedded

        print("database: the embedded Postgres (.pgdata)", file=sys.stderr)
        args.database_url = embedded.start()
        args.database_kind = "embedded"
    args.database_url = load.libpq_url(args.database_url)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _database(args)
        runs = []
        for people in args.sizes:
            args.people = people
            bench = Bench(args)
            code = bench.run()
            if code:
                return code
            runs.append(bench.results)
        if len(runs) > 1:
            print("\n" + report.by_size(runs))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
