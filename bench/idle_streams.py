"""Idle streams against unary latency, on one worker: `python -m bench.idle_streams`.

Starts the server with one worker, finds the peak rate of GetPerson and Identify (closed loop),
then paces calls at half that peak and measures p50/p99, first alone and then while N idle streams
(reflection streams that sent one request and wait, and health watches) are held open on other
connections; reports the ratio of the two p99s and the worker's RSS before and after. All in one
run, so that the comparison holds on a shared machine.

    python -m bench.idle_streams [--streams 1000] [--seconds 8] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bench.server import MB, ServerProcess
from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc

PEOPLE = 2000
CONCURRENCY = 16


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Scenario:
    def __init__(self, stub: pb_grpc.IdentityServiceStub, workspace: str, kind: str):
        self.stub, self.workspace, self.kind = stub, workspace, kind

    def call(self, i: int):
        n = i % PEOPLE
        if self.kind == "get_person":
            return self.stub.GetPerson(
                pb.GetPersonRequest(workspace_id=self.workspace, person=pb.PersonRef(id=f"u{n}")), timeout=10
            )
        return self.stub.Identify(
            pb.IdentifyRequest(workspace_id=self.workspace, id=f"u{n}", email=f"u{n}@example.com"), timeout=10
        )

    async def peak(self, seconds: float) -> float:
        counter = iter(range(10**9))
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await self.call(next(counter))
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])
        return done / (time.perf_counter() - start)

    async def paced(self, rate: float, seconds: float) -> dict[str, float]:
        """Open loop: a call every 1/rate seconds, whatever the answers; latency per call."""
        latencies: list[float] = []
        tasks = []

        async def one(i: int) -> None:
            start = time.perf_counter()
            await self.call(i)
            latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        return {
            "calls": len(latencies),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * _percentile(latencies, 0.99),
        }


async def _open_idle_streams(address: str, count: int) -> tuple[list, list, asyncio.Event]:
    release = asyncio.Event()
    per_connection = 100  # idle streams spread over several connections, as many clients would
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range((count + per_connection - 1) // per_connection)
    ]

    async def one_request_then_wait():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        await release.wait()

    streams = []
    for i in range(count):
        channel = channels[i // per_connection]
        if i % 2 == 0:
            streams.append(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(one_request_then_wait()))
        else:
            streams.append(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()))
    for stream in streams:
        await asyncio.wait_for(stream.read(), timeout=60)
    return channels, streams, release


def _rss_mb(server: ServerProcess) -> float:
    total = 0.0
    for process in server.processes():
        try:
            total += process.memory_info().rss / MB
        except psutil.Error:
            pass
    return total


async def run(args: argparse.Namespace, server: ServerProcess) -> dict:
    results: dict = {"streams": args.streams}
    async with grpc.aio.insecure_channel(server.address) as channel:
        workspace = "idle-" + secrets.token_hex(4)
        await pb_grpc.WorkspaceServiceStub(channel).CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace))
        stub = pb_grpc.IdentityServiceStub(channel)
        for n in range(PEOPLE):
            await stub.Identify(pb.IdentifyRequest(workspace_id=workspace, id=f"u{n}", email=f"u{n}@example.com"))
        scenarios = [Scenario(stub, workspace, kind) for kind in ("get_person", "identify")]
        for scenario in scenarios:
            peak = await scenario.peak(args.seconds / 2)
            results[scenario.kind] = {"peak_calls_per_s": peak, "half_peak": peak / 2}
        results["rss_mb_before"] = _rss_mb(server)
        for scenario in scenarios:
            results[scenario.kind]["alone"] = await scenario.paced(results[scenario.kind]["half_peak"], args.seconds)
        channels, streams, release = await _open_idle_streams(server.address, args.streams)
        results["rss_mb_with_streams"] = _rss_mb(server)
        for scenario in scenarios:
            with_streams = await scenario.paced(results[scenario.kind]["half_peak"], args.seconds)
            results[scenario.kind]["with_idle_streams"] = with_streams
            results[scenario.kind]["p99_ratio"] = with_streams["p99_ms"] / results[scenario.kind]["alone"]["p99_ms"]
        release.set()
        for stream in streams:
            stream.cancel()
        for c in channels:
            await c.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--out", default="bench-results/idle_streams.json")
    args = parser.parse_args()
    if not args.database_url:
        from service.runtime import embedded

        args.database_url = embedded.start()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(args.database_url, Path(args.out).with_suffix(".log"), workers="1", log_level="WARNING")
    server.command += ["--migrate"]
    server.start()
    try:
        results = asyncio.run(run(args, server))
    finally:
        server.stop()
    Path(args.out).write_text(json.dumps(results, indent=2))
    for kind in ("get_person", "identify"):
        r = results[kind]
        print(
            f"{kind}: peak {r['peak_calls_per_s']:.0f}/s; at half peak p99 {r['alone']['p99_ms']:.2f} ms alone, "
            f"{r['with_idle_streams']['p99_ms']:.2f} ms with {args.streams} idle streams (x{r['p99_ratio']:.2f})"
        )
    print(f"server RSS {results['rss_mb_before']:.0f} MB, {results['rss_mb_with_streams']:.0f} MB with the streams open")


if __name__ == "__main__":
    main()
