"""The load generator: separate processes (multiprocessing, spawned, so no gRPC state is ever
forked), each running an asyncio loop over several gRPC channels of its own. Each channel is a
distinct TCP connection, so the kernel spreads them over the server's SO_REUSEPORT workers.

A run is bounded in time: `warmup` seconds that are not counted, then `seconds` that are; every
call has a deadline. Two ways to drive:

- closed loop (peak throughput): `concurrency` calls in flight at all times, each task sending
  its next call as soon as the previous one answers. Latency: from send to answer.
- open loop (latency at a given rate): calls are sent on a fixed schedule whatever the answers,
  and latency counts from the *scheduled* send time, so a slow server cannot slow the client down
  and hide its own delay (no coordinated omission). Past `max_in_flight` a scheduled call is
  dropped and counted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import queue
import random
import signal
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from bench import ids

SCENARIOS: dict[str, str] = {
    "identify_existing": "Identify of an existing person by id: an attribute update (EMAIL_OR_ID, people with both)",
    "identify_ids_only": "Identify of an existing person by id in an ID_ONLY workspace (people with ids only)",
    "identify_emails_only": (
        "Identify of an existing person by email in an EMAIL_ONLY workspace (people with emails only)"
    ),
    "identify_new": "Identify of a new person (id and email)",
    "identify_merge": "Identify(id=A.id, email=B.email) merging A (only an id) and B (only an email), R13",
    "update_email": "UpdateIdentifier of an email, by cio_id, to a fresh unique email",
    "get_person": "GetPerson by id",
    "mix": "A mix: 55% Identify existing, 30% GetPerson, 8% Identify new, 5% UpdateIdentifier, 2% merges",
}
MIX: tuple[tuple[str, float], ...] = (
    ("identify_existing", 0.55),
    ("get_person", 0.30),
    ("identify_new", 0.08),
    ("update_email", 0.05),
    ("identify_merge", 0.02),
)
# The scenarios that identify existing people, each in the workspace of one shape (bench.ids).
SHAPE_OF = {"identify_existing": "both", "identify_ids_only": "ids", "identify_emails_only": "emails"}
# The share of a scenario's calls that consume a merge pair.
MERGE_SHARE = {"identify_merge": 1.0, "mix": dict(MIX)["identify_merge"]}
_MIX_KINDS = [k for k, _ in MIX]
_MIX_WEIGHTS = [w for _, w in MIX]


@dataclass(frozen=True)
class Setup:
    target: str
    workspace_id: str  # the "both" workspace: the scenarios other than the shapes' own
    workspaces: dict[str, str]  # shape -> workspace id
    people: int
    tag: str  # makes this run's fresh ids and emails unique
    deadline: float
    channels: int


@dataclass(frozen=True)
class RunSpec:
    run_id: int
    scenario: str
    start_at: float  # time.time() of the start, shared by every process
    warmup: float
    seconds: float
    concurrency: int  # closed loop: this process's calls in flight
    rate: float | None  # open loop: this process's calls per second
    max_in_flight: int
    pairs: tuple[int, int]  # merge pairs this process may use: [first, end)
    seed: int


@dataclass
class ProcessResult:
    latencies: dict[str, array] = field(default_factory=dict)  # seconds, per kind, successful calls
    errors: Counter = field(default_factory=Counter)  # status code name -> calls
    outcomes: Counter = field(default_factory=Counter)  # Identify outcome -> calls
    dropped: int = 0
    pairs_exhausted: int = 0
    cpu_seconds: float = 0.0


# --- in the load-generator processes ---


class _Generator:
    def __init__(self, index: int, setup: Setup, progress: Any):
        self.index = index
        self.setup = setup
        self.progress = progress
        self.channels: list[Any] = []
        self.stubs: list[Any] = []
        self.seq = 0
        self.turn = 0

    async def open(self) -> None:
        import grpc

        from identity.v1 import identity_pb2_grpc as pb_grpc

        for _ in range(self.setup.channels):
            # A local subchannel pool: a TCP connection per channel, not one shared by all.
            channel = grpc.aio.insecure_channel(self.setup.target, options=[("grpc.use_local_subchannel_pool", 1)])
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            self.channels.append(channel)
            self.stubs.append(pb_grpc.IdentityServiceStub(channel))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    # requests

    def _fresh(self) -> str:
        self.seq += 1
        return f"{self.setup.tag}-{self.index}-{self.seq}"

    def _person(self) -> int:
        return self.rng.randint(1, self.setup.people)

    def _next_pair(self) -> int | None:
        if self.pair_next >= self.pair_end:
            return None
        self.pair_next += 1
        return self.pair_next - 1

    def _kind(self, scenario: str) -> str:
        return self.rng.choices(_MIX_KINDS, _MIX_WEIGHTS)[0] if scenario == "mix" else scenario

    def _request(self, stub: Any, kind: str) -> tuple[Any, Any, str] | None:
        from identity.v1 import identity_pb2 as pb

        ws = self.setup.workspace_id
        if kind in SHAPE_OF:
            shape = SHAPE_OF[kind]
            k = self._person()
            if shape == "emails":
                request = pb.IdentifyRequest(workspace_id=self.setup.workspaces[shape], email=ids.person_email(k))
            else:
                request = pb.IdentifyRequest(workspace_id=self.setup.workspaces[shape], id=ids.person_id(k))
            request.attributes.update({"visits": self.rng.randint(1, 1_000_000_000), "plan": "pro"})
            return stub.Identify, request, kind
        if kind == "identify_new":
            fresh = self._fresh()
            request = pb.IdentifyRequest(workspace_id=ws, id=f"n-{fresh}", email=f"n-{fresh}@{ids.EMAIL_DOMAIN}")
            request.attributes.update({"plan": "free", "source": "bench"})
            return stub.Identify, request, kind
        if kind == "identify_merge":
            j = self._next_pair()
            if j is None:
                return None
            request = pb.IdentifyRequest(workspace_id=ws, id=ids.pair_a_id(j), email=ids.pair_b_email(j))
            return stub.Identify, request, kind
        if kind == "update_email":
            request = pb.UpdateIdentifierRequest(
                workspace_id=ws,
                person=pb.PersonRef(cio_id=ids.person_cio_id(ws, self._person())),
                identifier=pb.IDENTIFIER_TYPE_EMAIL,
                value=f"e-{self._fresh()}@{ids.EMAIL_DOMAIN}",
            )
            return stub.UpdateIdentifier, request, kind
        if kind == "get_person":
            request = pb.GetPersonRequest(workspace_id=ws, person=pb.PersonRef(id=ids.person_id(self._person())))
            return stub.GetPerson, request, kind
        raise ValueError(f"unknown scenario {kind!r}")

    async def _call(self, stub: Any, kind: str) -> tuple[str, str, str] | None:
        """Sends one call; (status code name, Identify outcome, kind of call sent), or None when
        no merge pair is left."""
        import grpc

        from identity.v1 import identity_pb2 as pb

        made = self._request(stub, kind)
        if made is None and kind == "identify_merge" and self.scenario == "mix":
            kind = "identify_existing"  # the mix goes on without merges
            made = self._request(stub, kind)
        if made is None:
            self.result.pairs_exhausted += 1
            return None
        method, request, _ = made
        try:
            response = await method(request, timeout=self.setup.deadline)
        except grpc.aio.AioRpcError as error:
            return error.code().name, "", kind
        except Exception as error:  # noqa: BLE001 - a client-side failure is an error too
            return f"CLIENT_{type(error).__name__}", "", kind
        outcome = pb.IdentifyOutcome.Name(response.outcome).removeprefix("IDENTIFY_OUTCOME_") if (
            isinstance(response, pb.IdentifyResponse)
        ) else ""
        return "OK", outcome, kind

    def _record(self, kind: str, code: str, outcome: str, latency: float) -> None:
        if code == "OK":
            self.result.latencies.setdefault(kind, array("d")).append(latency)
            self.ok += 1
            if outcome:
                self.result.outcomes[outcome] += 1
        else:
            self.result.errors[code] += 1
            self.failed += 1

    # runs

    async def run(self, spec: RunSpec) -> ProcessResult:
        self.scenario = spec.scenario
        self.result = ProcessResult()
        self.rng = random.Random(spec.seed)
        self.pair_next, self.pair_end = spec.pairs
        self.ok = self.failed = 0
        start = time.monotonic() + (spec.start_at - time.time())
        self.measure_from = start + spec.warmup
        self.end = self.measure_from + spec.seconds
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        clock = asyncio.create_task(self._clock(spec.run_id))
        try:
            if spec.rate is None:
                await self._closed(spec)
            else:
                await self._open(spec)
        finally:
            clock.cancel()
        self.progress.put((spec.run_id, self.index, self.ok, self.failed))
        return self.result

    async def _clock(self, run_id: int) -> None:
        """Reports progress twice a second, and measures this process's CPU (all its threads,
        gRPC's own included) over exactly the counted window."""
        cpu_start = None
        measured = False
        while True:
            now = time.monotonic()
            if cpu_start is None and now >= self.measure_from:
                cpu_start = time.process_time()
            if cpu_start is not None and not measured:
                self.result.cpu_seconds = time.process_time() - cpu_start
                measured = now >= self.end
            self.progress.put((run_id, self.index, self.ok, self.failed))
            wake = now + 0.5
            for edge in (self.measure_from, self.end):
                if now < edge:
                    wake = min(wake, edge)
                    break
            await asyncio.sleep(max(0.001, wake - time.monotonic()))

    def _stub(self) -> Any:
        """The channels in turn, call by call: every connection carries calls, so each server
        worker gets its share of the connections' share (SO_REUSEPORT spreads connections)."""
        self.turn = (self.turn + 1) % len(self.stubs)
        return self.stubs[self.turn]

    async def _closed(self, spec: RunSpec) -> None:
        async def worker(i: int) -> None:
            while True:
                t0 = time.monotonic()
                if t0 >= self.end:
                    return
                kind = self._kind(spec.scenario)
                answer = await self._call(self._stub(), kind)
                if answer is None:
                    return  # no merge pair left for this task
                t1 = time.monotonic()
                if self.measure_from <= t1 <= self.end:
                    self._record(answer[2], answer[0], answer[1], t1 - t0)

        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))

    async def _open(self, spec: RunSpec) -> None:
        assert spec.rate
        interval = 1.0 / spec.rate
        pending: set[asyncio.Task] = set()

        async def one(stub: Any, kind: str, scheduled: float, counted: bool) -> None:
            answer = await self._call(stub, kind)
            if answer is not None and counted:
                self._record(answer[2], answer[0], answer[1], time.monotonic() - scheduled)

        scheduled = time.monotonic() + self.rng.random() * interval  # processes out of phase
        while scheduled < self.end:
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            counted = scheduled >= self.measure_from
            if len(pending) >= spec.max_in_flight:
                if counted:
                    self.result.dropped += 1
            else:
                task = asyncio.create_task(one(self._stub(), self._kind(spec.scenario), scheduled, counted))
                pending.add(task)
                task.add_done_callback(pending.discard)
            scheduled += interval
        if pending:
            await asyncio.wait(pending, timeout=self.setup.deadline + 1)


def _process_main(index: int, setup: Setup, conn: multiprocessing.connection.Connection, progress: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us in order
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    generator = _Generator(index, setup, progress)
    loop.run_until_complete(generator.open())
    conn.send("ready")
    while True:
        spec = conn.recv()
        if spec is None:
            break
        conn.send(loop.run_until_complete(generator.run(spec)))
    loop.run_until_complete(generator.close())
    loop.close()


# --- in the benchmark's own process ---


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Drivers:
    """The load-generator processes, started once and reused by every run."""

    def __init__(self, setup: Setup, processes: int):
        ctx = multiprocessing.get_context("spawn")
        self.progress = ctx.Queue()
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.setup = setup
        self.run_id = 0
        for i in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(i, setup, child, self.progress), name=f"bench-driver-{i}")
            proc.daemon = True
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn, proc in zip(self.conns, self.procs):
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError(f"load generator {proc.name} did not start")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def run(
        self,
        scenario: str,
        *,
        seconds: float,
        warmup: float,
        concurrency: int,
        rate: float | None = None,
        pairs: tuple[int, int] = (0, 0),
        on_progress: Callable[[float, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """One run over every process; the processes' results, merged."""
        self.run_id += 1
        n = len(self.procs)
        shares = _split(concurrency, n) if rate is None else [1] * n
        active = [i for i in range(n) if shares[i] > 0]
        pair_counts = _split(pairs[1] - pairs[0], len(active))
        start_at = time.time() + 0.3
        first = pairs[0]
        for slot, i in enumerate(active):
            spec = RunSpec(
                run_id=self.run_id,
                scenario=scenario,
                start_at=start_at,
                warmup=warmup,
                seconds=seconds,
                concurrency=shares[i],
                rate=None if rate is None else rate / len(active),
                max_in_flight=max(8, 4 * concurrency // len(active)),
                pairs=(first, first + pair_counts[slot]),
                seed=hash((self.setup.tag, self.run_id, i)) & 0xFFFFFFFF,
            )
            first += pair_counts[slot]
            self.conns[i].send(spec)

        counts: dict[int, tuple[int, int]] = {}
        results: dict[int, ProcessResult] = {}
        limit = time.monotonic() + 0.3 + warmup + seconds + self.setup.deadline + 30
        while len(results) < len(active):
            for conn in multiprocessing.connection.wait([self.conns[i] for i in active if i not in results], 0.2):
                results[self.conns.index(conn)] = conn.recv()  # type: ignore[arg-type]
            try:
                while True:
                    run_id, index, ok, failed = self.progress.get_nowait()
                    if run_id == self.run_id:
                        counts[index] = (ok, failed)
            except queue.Empty:
                pass
            if on_progress is not None:
                on_progress(
                    time.time() - start_at - warmup,
                    sum(c[0] for c in counts.values()),
                    sum(c[1] for c in counts.values()),
                )
            dead = [self.procs[i].name for i in active if not self.procs[i].is_alive() and i not in results]
            if dead:
                raise RuntimeError(f"load generator(s) died: {', '.join(dead)}")
            if time.monotonic() > limit:
                raise RuntimeError("the load generators did not finish in time")
        return _merge(list(results.values()), seconds, rate)

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            try:
                if proc.is_alive():
                    conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def percentiles_ms(latencies: Any) -> dict[str, float]:
    import numpy as np

    values = np.asarray(latencies, dtype=float)
    if values.size == 0:
        return {}
    p50, p95, p99, p999 = np.percentile(values, [50, 95, 99, 99.9]) * 1000
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "p99_9": round(float(p999), 3),
        "max": round(float(values.max()) * 1000, 3),
        "mean": round(float(values.mean()) * 1000, 3),
    }


def _merge(results: list[ProcessResult], seconds: float, rate: float | None) -> dict[str, Any]:
    by_kind: dict[str, array] = {}
    errors: Counter = Counter()
    outcomes: Counter = Counter()
    for r in results:
        for kind, values in r.latencies.items():
            by_kind.setdefault(kind, array("d")).extend(values)
        errors.update(r.errors)
        outcomes.update(r.outcomes)
    everything = array("d")
    for values in by_kind.values():
        everything.extend(values)
    ok = len(everything)
    failed = sum(errors.values())
    out: dict[str, Any] = {
        "calls": ok + failed,
        "ok": ok,
        "seconds": seconds,
        "calls_per_s": round((ok + failed) / seconds, 1),
        "ok_per_s": round(ok / seconds, 1),
        "latency_ms": percentiles_ms(everything),
        "errors": dict(errors),
        "error_count": failed,
        "outcomes": dict(outcomes),
        "client_cpu_s": round(sum(r.cpu_seconds for r in results), 3),
        "processes": len(results),
    }
    if len(by_kind) > 1:
        out["by_kind"] = {
            kind: {"calls": len(v), **{k: p for k, p in percentiles_ms(v).items() if k in ("p50", "p99")}}
            for kind, v in sorted(by_kind.items())
        }
    if rate is not None:
        out["target_rate"] = round(rate, 1)
        out["dropped"] = sum(r.dropped for r in results)
    exhausted = sum(r.pairs_exhausted for r in results)
    if exhausted:
        out["pairs_exhausted"] = exhausted
    return out
