"""Fair shares under a flood (issue 11, item 3), in one run: `python -m bench.fairness`.

Starts the server as deployed (`python -m service.runtime.server`, `--workers`), creates two
workspaces, and drives "Identify of a new person" (bench.driver's identify_new) from separate
load-generator processes:

1. the calm tenant alone at peak (closed loop): its peak P;
2. --repeats times, alternately (drift on a shared machine shows, and hits both alike):
   the calm tenant alone at half peak (open loop, P/2 calls/s), then the same while the
   flooding tenant sends ten times its limit (open loop). The flooder's limit, set in its
   settings (max_calls_per_second, per server process; max_concurrent_calls), is --flood-share
   of P over every worker: its calls past it are refused RESOURCE_EXHAUSTED;
3. the flood again with the flooder's limits off: what fair shares save.

The figure of merit is the calm tenant's median p99 under the flood against its median p99
alone; the target is at most 1.5x. Latency counts from each call's scheduled send time
(no coordinated omission). Writes bench-results/fairness-<time>.json and prints a table.
Figures, not a test: a shared 2-core machine moves them.

    python -m bench.fairness [--seconds 10] [--workers 2] [--flood-share 0.05] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from bench import load
from bench.driver import Drivers, Setup
from bench.server import ROOT, ServerProcess
from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc

TARGET_RATIO = 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="unset: the embedded Postgres")
    p.add_argument("--seconds", type=float, help="measured seconds per run (default 10; --quick: 2)")
    p.add_argument("--warmup", type=float, help="uncounted seconds before each run (default 1; --quick: 0.5)")
    p.add_argument("--workers", default=os.environ.get("BENCH_WORKERS") or "2", help="server workers (default 2)")
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight of the peak run (default 16)")
    p.add_argument("--flood-share", type=float, default=0.05,
                   help="the flooder's limit over every worker, as a share of the calm tenant's peak (default 0.05)")
    p.add_argument("--flood-concurrency", type=int, default=2, help="the flooder's max_concurrent_calls (default 2)")
    p.add_argument("--repeats", type=int, help="pairs of runs alone and flooded, alternated (default 3; --quick: 1)")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="folder of the JSON results")
    p.add_argument("--quick", action="store_true", help="a short run for CI")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def _set_limits(address: str, workspace_id: str, rate: int, concurrency: int) -> None:
    request = pb.UpdateSettingsRequest(
        workspace_id=workspace_id,
        settings=pb.WorkspaceSettings(max_calls_per_second=rate, max_concurrent_calls=concurrency),
        update_mask=field_mask_pb2.FieldMask(paths=["max_calls_per_second", "max_concurrent_calls"]),
    )
    with grpc.insecure_channel(address) as channel:
        for attempt in range(20):
            try:
                pb_grpc.WorkspaceServiceStub(channel).UpdateSettings(request, timeout=30)
                break
            except grpc.RpcError as error:  # the change is one of the workspace's calls: within its share
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == 19:
                    raise
                time.sleep(0.5)
    time.sleep(1.5)  # every worker reads the workspaces' limits every second


def _create(address: str, workspace_id: str) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.WorkspaceServiceStub(channel).CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace_id),
                                                              timeout=30)


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run.get(k) for k in ("calls", "ok", "calls_per_s", "ok_per_s", "latency_ms", "errors", "dropped",
                                    "target_rate")}


def _both(calm: Drivers, flood: Drivers, calm_rate: float, flood_rate: float, args: argparse.Namespace
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The calm tenant and the flooder at once, each from its own load-generator processes."""
    out: dict[str, Any] = {}

    def flooding() -> None:
        out["flood"] = flood.run("identify_new", seconds=args.seconds, warmup=args.warmup, concurrency=64,
                                 rate=flood_rate)

    thread = threading.Thread(target=flooding)
    thread.start()
    calm_run = calm.run("identify_new", seconds=args.seconds, warmup=args.warmup, concurrency=args.concurrency,
                        rate=calm_rate)
    thread.join()
    return calm_run, out["flood"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = args.database_url
    if not url:
        from service.runtime import embedded

        url = embedded.start()
    url = load.libpq_url(url)
    load.prepare(url, {})  # the migrations (the database may be brand new)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = secrets.token_hex(3)
    calm_ws, flood_ws = f"bench-calm-{tag}", f"bench-flood-{tag}"
    server = ServerProcess(url, out_dir / f"fairness-{stamp}-server.log", workers=args.workers, log_level="WARNING")
    server.start()
    workers = server.workers_wanted()
    drivers: list[Drivers] = []
    try:
        _create(server.address, calm_ws)
        _create(server.address, flood_ws)
        common = dict(target=server.address, people=1, deadline=10.0)
        calm = Drivers(Setup(workspace_id=calm_ws, workspaces={}, tag=f"c{tag}", channels=8, **common), 2)
        flood = Drivers(Setup(workspace_id=flood_ws, workspaces={}, tag=f"f{tag}", channels=4, **common), 1)
        drivers += [calm, flood]
        print("calm tenant alone at peak", file=sys.stderr)
        peak = calm.run("identify_new", seconds=args.seconds, warmup=args.warmup, concurrency=args.concurrency)
        half = peak["ok_per_s"] / 2
        limit = max(1, round(peak["ok_per_s"] * args.flood_share / workers))  # per worker process
        flood_rate = 10 * limit * workers
        _set_limits(server.address, flood_ws, limit, args.flood_concurrency)
        alone_runs, flooded_runs, flood_runs = [], [], []
        for i in range(args.repeats):
            print(f"{i + 1}/{args.repeats}: calm alone at half peak ({half:.0f}/s), then beside the flooder at "
                  f"{flood_rate}/s (10x its {limit}/s x {workers} workers)", file=sys.stderr)
            alone_runs.append(calm.run("identify_new", seconds=args.seconds, warmup=args.warmup,
                                       concurrency=args.concurrency, rate=half))
            flooded, flood_run = _both(calm, flood, half, flood_rate, args)
            flooded_runs.append(flooded)
            flood_runs.append(flood_run)
        _set_limits(server.address, flood_ws, 0, 0)
        print("the same flood with the flooder's limits off", file=sys.stderr)
        unlimited, unlimited_flood = _both(calm, flood, half, flood_rate, args)
    finally:
        for d in drivers:
            d.close()
        server.stop()
        load.drop_workspaces(url, [calm_ws, flood_ws])

    alone_p99 = [r["latency_ms"]["p99"] for r in alone_runs]
    flooded_p99 = [r["latency_ms"]["p99"] for r in flooded_runs]
    p99_alone = statistics.median(alone_p99)
    ratio = statistics.median(flooded_p99) / p99_alone
    ratio_unlimited = unlimited["latency_ms"]["p99"] / p99_alone
    served = sum(r["ok"] for r in flood_runs) / (args.seconds * len(flood_runs))
    refused = sum(r["errors"].get("RESOURCE_EXHAUSTED", 0) for r in flood_runs)
    results = {
        "config": {"workers": workers, "seconds": args.seconds, "repeats": args.repeats, "scenario": "identify_new",
                   "flood_limit_per_worker": limit, "flood_rate": flood_rate,
                   "flood_concurrency": args.flood_concurrency, "calm_rate": half},
        "calm_peak": _summary(peak),
        "calm_alone": [_summary(r) for r in alone_runs],
        "calm_flooded": [_summary(r) for r in flooded_runs],
        "flood": [_summary(r) for r in flood_runs],
        "calm_flooded_without_limits": _summary(unlimited),
        "flood_without_limits": _summary(unlimited_flood),
        "p99_alone_ms": round(p99_alone, 3),
        "p99_ratio": round(ratio, 3),
        "p99_ratio_without_limits": round(ratio_unlimited, 3),
        "target_ratio": TARGET_RATIO,
    }
    path = out_dir / f"fairness-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    shown = lambda values: ", ".join(f"{v:.1f}" for v in values)  # noqa: E731
    print(f"""
fair shares ({workers} workers, identify_new, {args.repeats} x {args.seconds:.0f} s runs alternated)
  calm tenant peak                      {peak['ok_per_s']:.1f} calls/s
  calm p99 alone at half peak ({half:.0f}/s)    {shown(alone_p99)} ms (median {p99_alone:.1f})
  calm p99 beside the limited flood       {shown(flooded_p99)} ms   ratio of medians {ratio:.2f} (target <= {TARGET_RATIO})
  flooder: sent {flood_rate}/s, served {served:.1f}/s (limit {limit}/s x {workers}), refused {refused}
  calm p99 beside the flood, no limits    {unlimited['latency_ms']['p99']:.1f} ms   ratio {ratio_unlimited:.2f}, calm refused {unlimited['errors']}; flooder served {unlimited_flood['ok_per_s']:.1f}/s
results: {path}""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
