"""python -m bench.grpc_servers: is the asyncio gRPC server (grpc.aio) faster than the sync server
(grpc.server + ThreadPoolExecutor) for this service's workload shape, on this machine?

No database and no service code: both servers serve identity.v1.IdentityService.GetSettings (the
generated code) with a handler doing a fixed amount of simulated work, so the only difference
between two cases is the server framework and where the work runs.

Cases (one server process each, started fresh, bound to 127.0.0.1 on a free port, no SO_REUSEPORT):

  sync-none        grpc.server(ThreadPoolExecutor(16)); the handler does nothing (framework cost)
  aio-none         grpc.aio.server(); the handler does nothing
  sync-db          sync server; the handler blocks 0.3 ms (time.sleep: a sync DB driver's wait,
                   GIL released) then spins ~0.3 ms of Python CPU (the GIL held), in the pool thread
  aio-db-thread    aio server; the same blocking function via asyncio.to_thread, on a default
                   executor of 16 threads (as many as the sync pool): a sync DB driver under asyncio
  aio-db-thread6   the same with asyncio's own default executor (min(32, cores + 4) = 6 threads
                   here): what an aio service gets when nobody sizes the executor
  aio-db-async     aio server; `await asyncio.sleep(0.0003)` then the same CPU inline on the event
                   loop: an async DB driver

The CPU part is a fixed number of iterations of a Python loop, calibrated once per run with
time.perf_counter (the fastest of many timings, so a busy machine does not inflate it) and given to
every server: the same CPU work per call in every case, not "spin until 0.3 ms of wall time".

Load: 2 load-generator processes (multiprocessing, spawn), each with 16 channels
(grpc.insecure_channel, a local subchannel pool: one TCP connection each) and 16 calls in flight
(one per channel) through the futures API: a closed loop with 32 calls in flight in all. Each case:
1 s of warm-up, then 8 s counted; every call has a deadline; each process stops at a cap on calls.

Per case: calls/s (calls that completed inside the counted window), latency p50/p95/p99 (send to
answer, on the client), the server process's CPU per call (psutil: user+system of all its threads
over the window / calls) and the cores it used, the load generators' CPU per call, and the machine's
busy cores that were neither (other work on a shared machine). The servers also report what the
work really took (a 0.3 ms sleep is never 0.3 ms), over the same window.

Caveats: the load generators run on the same 2 cores as the server, so calls/s is the throughput of
the whole machine; server CPU per call is the cleaner comparison. With 32 calls always in flight,
latency is mostly 32 / throughput (Little's law). asyncio.sleep(0.0003) is rounded up by the event
loop (epoll's timeout is in whole milliseconds): when the loop is otherwise idle it waits ~1 ms, a
real async driver would wake on its socket; the "wait" column shows what each case really waited.

Writes bench-results/grpc-servers.json (--out). `--reverse` runs the cases in the opposite order
(for a second run, so slow drift of the machine's other load does not always favour the same case).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import select
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 0.0003  # the database's wait per call
CPU_S = 0.0003  # the Python CPU per call
SYNC_WORKERS = 16
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]  # one process; no port sharing
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel
WORKSPACE = "bench-grpc-servers"

# name -> (server, work, default-executor threads for aio (None: asyncio's default), description)
CASES: dict[str, tuple[str, str, int | None, str]] = {
    "sync-none": ("sync", "none", None, "sync server, no work"),
    "aio-none": ("aio", "none", None, "aio server, no work"),
    "sync-db": ("sync", "blocking", None, "sync server, 0.3 ms blocking wait + 0.3 ms CPU in the pool thread"),
    "aio-db-thread": ("aio", "thread", 16, "aio server, the same via asyncio.to_thread (16-thread executor)"),
    "aio-db-thread6": ("aio", "thread", None, "aio server, the same via asyncio.to_thread (default executor)"),
    "aio-db-async": ("aio", "async", None, "aio server, await asyncio.sleep(0.0003) + 0.3 ms CPU inline"),
}


# --- the simulated work ---


def spin(n: int) -> int:
    """n iterations of plain Python bytecode: CPU with the GIL held."""
    x = 0
    for i in range(n):
        x += i
    return x


def time_spin(n: int, repeats: int) -> float:
    """The fastest of `repeats` timings of spin(n), seconds."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        spin(n)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(target: float = CPU_S) -> tuple[int, float]:
    """Iterations of spin() that take `target` seconds on an idle core; and the seconds per
    iteration. The fastest of many timings: other work on the machine only ever slows one down."""
    spin(200_000)  # warm the interpreter's specialisation
    n = 10_000
    per_iteration = time_spin(n, 200) / n
    iterations = max(1, round(target / per_iteration))
    per_iteration = time_spin(iterations, 200) / iterations  # at the size used
    return max(1, round(target / per_iteration)), per_iteration


def blocking_work(iterations: int) -> tuple[float, float]:
    """A sync DB driver's call: wait (GIL released), then CPU. (waited, spun) seconds."""
    t0 = time.perf_counter()
    time.sleep(WAIT_S)
    t1 = time.perf_counter()
    spin(iterations)
    return t1 - t0, time.perf_counter() - t1


class Stats:
    """What the handlers did, read by the benchmark over the counted window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.wait = 0.0
        self.cpu = 0.0
        self.handler = 0.0

    def add(self, wait: float = 0.0, cpu: float = 0.0, handler: float = 0.0) -> None:
        with self.lock:
            self.calls += 1
            self.wait += wait
            self.cpu += cpu
            self.handler += handler

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return {"calls": self.calls, "wait": self.wait, "cpu": self.cpu, "handler": self.handler}


# --- the server (a subprocess: python -m bench.grpc_servers --serve ...) ---


def _response(request: Any) -> Any:
    from identity.v1 import identity_pb2 as pb

    return pb.GetSettingsResponse(
        settings=pb.WorkspaceSettings(
            workspace_id=request.workspace_id,
            identifier_mode=pb.IDENTIFIER_MODE_EMAIL_OR_ID,
            email_updatable_by_id=True,
            sole_identifier_updatable=False,
            auto_merge=True,
        )
    )


def _servicer(kind: str, work: str, iterations: int, stats: Stats) -> Any:
    from identity.v1 import identity_pb2_grpc as pb_grpc

    if kind == "sync":

        class SyncServicer(pb_grpc.IdentityServiceServicer):
            def GetSettings(self, request: Any, context: Any) -> Any:
                if work == "none":
                    stats.add()
                else:
                    t0 = time.perf_counter()
                    waited, spun = blocking_work(iterations)
                    stats.add(waited, spun, time.perf_counter() - t0)
                return _response(request)

        return SyncServicer()

    import asyncio

    class AioServicer(pb_grpc.IdentityServiceServicer):
        async def GetSettings(self, request: Any, context: Any) -> Any:  # type: ignore[override]
            if work == "none":
                stats.add()
            elif work == "thread":
                t0 = time.perf_counter()
                waited, spun = await asyncio.to_thread(blocking_work, iterations)
                stats.add(waited, spun, time.perf_counter() - t0)
            elif work == "async":
                t0 = time.perf_counter()
                await asyncio.sleep(WAIT_S)
                t1 = time.perf_counter()
                spin(iterations)
                t2 = time.perf_counter()
                stats.add(t1 - t0, t2 - t1, t2 - t0)
            else:
                raise ValueError(work)
            return _response(request)

    return AioServicer()


def _control(stats: Stats) -> None:
    """Commands from the benchmark on stdin: `stats` (answered on stdout), `quit` (or EOF)."""
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            print(json.dumps(stats.snapshot()), flush=True)
        elif command == "quit":
            return


def _announce(port: int, iterations: int, **extra: Any) -> None:
    import grpc

    facts = {
        "port": port,
        "pid": os.getpid(),
        "grpc": grpc.__version__,
        "spin_seconds_here": time_spin(iterations, 200) if iterations else None,
        **extra,
    }
    print(json.dumps(facts), flush=True)


def serve_sync(work: str, iterations: int) -> None:
    import grpc

    from identity.v1 import identity_pb2_grpc as pb_grpc

    stats = Stats()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS, thread_name_prefix="rpc"), options=SERVER_OPTIONS
    )
    pb_grpc.add_IdentityServiceServicer_to_server(_servicer("sync", work, iterations, stats), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _announce(port, iterations, server="sync", work=work, threads=SYNC_WORKERS)
    _control(stats)
    server.stop(1).wait(5)


def serve_aio(work: str, iterations: int, executor_threads: int | None) -> None:
    import asyncio

    import grpc

    from identity.v1 import identity_pb2_grpc as pb_grpc

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if executor_threads:
            loop.set_default_executor(futures.ThreadPoolExecutor(executor_threads, thread_name_prefix="db"))
        stats = Stats()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_IdentityServiceServicer_to_server(_servicer("aio", work, iterations, stats), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        threads = executor_threads or min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
        _announce(port, iterations, server="aio", work=work, executor_threads=threads if work == "thread" else None)
        stopped = asyncio.Event()

        def control() -> None:
            _control(stats)
            loop.call_soon_threadsafe(stopped.set)

        # A thread of its own, not the executor: it must not take one of the handlers' threads.
        threading.Thread(target=control, name="control", daemon=True).start()
        await stopped.wait()
        await server.stop(1)

    asyncio.run(main())


# --- the load generators (spawned processes) ---


def _client_main(index: int, target: str, channels: int, in_flight: int, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's
    import grpc

    from identity.v1 import identity_pb2 as pb
    from identity.v1 import identity_pb2_grpc as pb_grpc

    chans = [grpc.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    for channel in chans:
        grpc.channel_ready_future(channel).result(timeout=30)
    stubs = [pb_grpc.IdentityServiceStub(channel) for channel in chans]
    request = pb.GetSettingsRequest(workspace_id=WORKSPACE)
    conn.send("ready")
    spec = conn.recv()

    start = time.perf_counter() + (spec["start_at"] - time.time())
    measure_from = start + spec["warmup"]
    end = measure_from + spec["seconds"]
    deadline, max_calls = spec["deadline"], spec["max_calls"]
    lock = threading.Lock()
    latencies = array("d")
    errors: Counter[str] = Counter()
    state = {"issued": 0, "outstanding": 0, "late": 0}
    finished = threading.Event()

    def issue(slot: int) -> None:
        with lock:
            state["issued"] += 1
        t0 = time.perf_counter()
        future = stubs[slot % len(stubs)].GetSettings.future(request, timeout=deadline)
        future.add_done_callback(lambda f: done(f, slot, t0))

    def done(future: Any, slot: int, t0: float) -> None:
        t1 = time.perf_counter()
        error = future.exception()
        with lock:
            if measure_from <= t1 <= end:
                if error is None:
                    latencies.append(t1 - t0)
                else:
                    code = error.code() if hasattr(error, "code") else None
                    errors[code.name if code is not None else type(error).__name__] += 1
            elif t1 > end:
                state["late"] += 1
            again = t1 < end and state["issued"] < max_calls
            if not again:
                state["outstanding"] -= 1
                if state["outstanding"] == 0:
                    finished.set()
        if again:
            issue(slot)

    time.sleep(max(0.0, start - time.perf_counter()))
    state["outstanding"] = in_flight
    for slot in range(in_flight):
        issue(slot)
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, end - time.perf_counter()))
    cpu1 = time.process_time()
    finished.wait(deadline + 5)
    with lock:
        result = {
            "latencies": latencies.tobytes(),
            "errors": dict(errors),
            "issued": state["issued"],
            "unfinished": state["outstanding"],
            "capped": state["issued"] >= max_calls,
            "cpu_seconds": cpu1 - cpu0,
        }
    conn.send(result)
    conn.recv()  # "close"
    for channel in chans:
        channel.close()


# --- the benchmark (the parent process) ---


class Server:
    def __init__(self, kind: str, work: str, iterations: int, executor_threads: int | None):
        command = [sys.executable, "-m", "bench.grpc_servers", "--serve", kind, "--work", work,
                   "--spin-iterations", str(iterations)]  # fmt: skip
        if executor_threads:
            command += ["--executor-threads", str(executor_threads)]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.facts = json.loads(self._line(60))
        self.address = f"127.0.0.1:{self.facts['port']}"
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("the server did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited ({self.proc.poll()})")
        return line

    def stats(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self._line(10))

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - then by force
                self.proc.kill()
                self.proc.wait(5)


def _busy_seconds(t: Any) -> float:
    """Busy CPU seconds (all cores) in a psutil.cpu_times() reading."""
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.perf_counter()))


def run_case(name: str, iterations: int, args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    kind, work, executor_threads, description = CASES[name]
    server = Server(kind, work, iterations if work != "none" else 0, executor_threads)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    conns: list[Any] = []
    try:
        shares = [args.in_flight // args.processes + (1 if i < args.in_flight % args.processes else 0)
                  for i in range(args.processes)]  # fmt: skip
        for i in range(args.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(i, server.address, args.channels, shares[i], child),
                               name=f"grpc-servers-load-{i}", daemon=True)  # fmt: skip
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        for conn, proc in zip(conns, procs):
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError(f"{proc.name} did not connect")

        start_at = time.time() + 0.3
        spec = {"start_at": start_at, "warmup": args.warmup, "seconds": args.seconds, "deadline": args.deadline,
                "max_calls": args.max_calls}  # fmt: skip
        for conn in conns:
            conn.send(spec)
        start = time.perf_counter() + (start_at - time.time())
        _sleep_until(start + args.warmup)
        cpu0, sys0, stats0 = server.cpu(), psutil.cpu_times(), server.stats()
        _sleep_until(start + args.warmup + args.seconds)
        cpu1, sys1, stats1 = server.cpu(), psutil.cpu_times(), server.stats()

        results = []
        for conn, proc in zip(conns, procs):
            if not conn.poll(args.deadline + 30):
                raise RuntimeError(f"{proc.name} did not finish")
            results.append(conn.recv())
        for conn in conns:
            conn.send("close")
    finally:
        server.stop()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    latencies: list[float] = []
    for r in results:
        a = array("d")
        a.frombytes(r["latencies"])
        latencies.extend(a)
    latencies.sort()
    calls = len(latencies)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    server_cpu = cpu1 - cpu0
    client_cpu = sum(r["cpu_seconds"] for r in results)
    busy = _busy_seconds(sys1) - _busy_seconds(sys0)
    handled = stats1["calls"] - stats0["calls"]
    per_handled = (lambda key: (stats1[key] - stats0[key]) / handled * 1000 if handled else None)
    seconds = args.seconds
    return {
        "case": name,
        "description": description,
        "server": server.facts,
        "calls": calls,
        "calls_per_second": calls / seconds,
        "errors": dict(errors),
        "latency_ms": {f"p{p}": _percentile(latencies, p) * 1000 for p in (50, 95, 99)}
        | {"mean": (sum(latencies) / calls * 1000) if calls else math.nan, "max": latencies[-1] * 1000 if calls else math.nan},
        "server_cpu_ms_per_call": server_cpu / calls * 1000 if calls else None,
        "server_cores": server_cpu / seconds,
        "clients_cpu_ms_per_call": client_cpu / calls * 1000 if calls else None,
        "clients_cores": client_cpu / seconds,
        "machine_busy_cores": busy / seconds,
        "other_cores": (busy - server_cpu - client_cpu) / seconds,
        "server_handled": handled,
        "server_wait_ms": per_handled("wait") if work != "none" else None,
        "server_cpu_work_ms": per_handled("cpu") if work != "none" else None,
        "server_handler_ms": per_handled("handler") if work != "none" else None,
        "clients": [{k: v for k, v in r.items() if k != "latencies"} for r in results],
    }


def _load() -> dict[str, Any]:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"uptime": uptime, "loadavg": os.getloadavg()}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'case':<15} {'calls/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'srv CPU':>8} "
            f"{'srv':>5} {'load CPU':>8} {'other':>6} {'wait':>6} {'spin':>6} {'handler':>7} {'err':>4}")  # fmt: skip
    sub = (f"{'':<15} {'':>8} {'':>7} {'':>7} {'':>7} {'ms/call':>8} {'cores':>5} {'ms/call':>8} "
           f"{'cores':>6} {'ms':>6} {'ms':>6} {'ms':>7} {'':>4}")  # fmt: skip
    print(head)
    print(sub)
    for r in rows:
        lat = r["latency_ms"]
        print(
            f"{r['case']:<15} {r['calls_per_second']:>8.0f} {lat['p50']:>7.2f} {lat['p95']:>7.2f} {lat['p99']:>7.2f} "
            f"{_fmt(r['server_cpu_ms_per_call'], 3):>8} {r['server_cores']:>5.2f} "
            f"{_fmt(r['clients_cpu_ms_per_call'], 3):>8} {r['other_cores']:>6.2f} "
            f"{_fmt(r['server_wait_ms']):>6} {_fmt(r['server_cpu_work_ms']):>6} {_fmt(r['server_handler_ms']):>7} "
            f"{sum(r['errors'].values()):>4}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_servers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--reverse", action="store_true", help="run the cases in the opposite order")
    p.add_argument("--seconds", type=float, default=8.0, help="counted seconds per case (default 8)")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds before each case (default 1)")
    p.add_argument("--processes", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--channels", type=int, default=16, help="channels per load-generator process (default 16)")
    p.add_argument("--in-flight", type=int, default=32, help="calls in flight in all (default 32)")
    p.add_argument("--deadline", type=float, default=5.0, help="deadline of each call, seconds (default 5)")
    p.add_argument("--max-calls", type=int, default=1_000_000, help="cap on calls per process per case")
    p.add_argument("--out", default=str(ROOT / "bench-results" / "grpc-servers.json"))
    # the server subprocess
    p.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    p.add_argument("--work", choices=("none", "blocking", "thread", "async"), help=argparse.SUPPRESS)
    p.add_argument("--spin-iterations", type=int, help="iterations of the CPU loop (default: calibrated to 0.3 ms)")
    p.add_argument("--executor-threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        p.error(f"unknown case(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        if args.serve == "sync":
            serve_sync(args.work, args.spin_iterations or 0)
        else:
            serve_aio(args.work, args.spin_iterations or 0, args.executor_threads)
        return 0

    import psutil

    cases = args.cases.split(",")
    if args.reverse:
        cases.reverse()
    load_before = _load()
    print(f"load before: {load_before['uptime']}")
    if args.spin_iterations:
        iterations, per_iteration = args.spin_iterations, time_spin(args.spin_iterations, 200) / args.spin_iterations
    else:
        iterations, per_iteration = calibrate()
    print(f"CPU work: {iterations} loop iterations = {iterations * per_iteration * 1000:.3f} ms on an idle core; "
          f"wait {WAIT_S * 1000:.1f} ms")  # fmt: skip
    print(f"{args.processes} load processes x {args.channels} channels, {args.in_flight} calls in flight, "
          f"{args.warmup:g} s warm-up + {args.seconds:g} s per case; cases: {', '.join(cases)}")  # fmt: skip

    rows = []
    for name in cases:
        row = run_case(name, iterations, args)
        rows.append(row)
        print(f"  {name:<15} {row['calls_per_second']:>7.0f} calls/s  p99 {row['latency_ms']['p99']:.2f} ms  "
              f"server {row['server_cpu_ms_per_call']:.3f} ms CPU/call  other load {row['other_cores']:.2f} cores",
              flush=True)  # fmt: skip
    load_after = _load()
    print()
    print_table(rows)
    print("srv CPU: server process user+system / calls; srv cores: its CPU / wall; load CPU: the load generators'; "
          "other: busy cores used by neither (the machine's other work); wait/spin/handler: what the server's "
          "handlers measured per call (target 0.30 + 0.30)")  # fmt: skip
    print(f"load after:  {load_after['uptime']}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "question": "grpc.aio server vs grpc.server(ThreadPoolExecutor) for GetSettings-shaped calls",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu_affinity": len(psutil.Process().cpu_affinity() or []),
            "platform": platform.platform(),
            "python": sys.version,
            "load_before": load_before,
            "load_after": load_after,
        },
        "config": {
            "cases": cases,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "processes": args.processes,
            "channels_per_process": args.channels,
            "in_flight": args.in_flight,
            "deadline": args.deadline,
            "max_calls_per_process": args.max_calls,
            "sync_max_workers": SYNC_WORKERS,
            "wait_ms": WAIT_S * 1000,
            "cpu_ms_target": CPU_S * 1000,
            "spin_iterations": iterations,
            "spin_ms_idle": iterations * per_iteration * 1000,
        },
        "results": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
