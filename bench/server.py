"""The service under test, as a subprocess exactly as it is deployed (`python -m service.runtime.server`),
and what it costs: RSS per process and CPU per call (psutil)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        workers: str | None,
        log_level: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        """`cwd` (default: this checkout) is where `python -m service.runtime.server` finds the
        `service` package, so a git worktree of another commit runs that commit's code; `env`
        (default: this process's) e.g. puts that tree's `generated/` first on PYTHONPATH."""
        self.cwd = cwd or ROOT
        self.env = env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "service.runtime.server",
            "--database-url", database_url,
            "--listen", self.address,
            "--default-workspace", "",
            "--log-level", log_level,
        ]  # fmt: skip
        if workers:
            self.command += ["--workers", workers]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log_path, "wb")
        # A session of its own: a Ctrl-C at the terminal reaches the benchmark, which stops the
        # server in order, and not the server directly.
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING and self._workers_up():
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not serve within {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.2)

    def _workers_up(self) -> bool:
        """With several workers, every one must be listening before the load starts."""
        wanted = self.workers_wanted()
        return wanted <= 1 or len(self.processes()) == wanted + 1

    def workers_wanted(self) -> int:
        if "--workers" in self.command:
            return int(self.command[self.command.index("--workers") + 1])
        return int(os.environ.get("WORKERS", str(os.cpu_count() or 1)))

    def processes(self) -> list[psutil.Process]:
        """The supervisor and its workers (or the one serving process)."""
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def roles(self) -> dict[int, str]:
        procs = self.processes()
        if len(procs) <= 1:
            return {p.pid: "server" for p in procs}
        return {p.pid: ("supervisor" if i == 0 else f"worker {i}") for i, p in enumerate(procs)}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


class PostgresProcesses:
    """The local Postgres's processes, all of them or the backends of one application_name (the
    service's pool says 'identity-service', pgbench says 'pgbench'), for CPU accounting. Empty
    when the database is not on this machine."""

    def __init__(self, database_url: str, postmaster_pid: int | None):
        self.url = database_url
        self.postmaster_pid = postmaster_pid
        self.lock = threading.Lock()
        self.conn: Any = None

    @property
    def local(self) -> bool:
        return self.postmaster_pid is not None

    def all(self) -> list[psutil.Process]:
        if self.postmaster_pid is None:
            return []
        try:
            return psutil.Process(self.postmaster_pid).children()
        except psutil.Error:
            return []

    def of(self, application_name: str) -> list[psutil.Process]:
        if self.postmaster_pid is None:
            return []
        import psycopg

        with self.lock:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.url, autocommit=True, application_name="identity-bench-meter")
            rows = self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
            ).fetchall()
        procs = []
        for (pid,) in rows:
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                pass
        return procs

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()


class CpuMeter:
    """CPU seconds spent by a changing set of processes between start() and stop(). Sampled in a
    thread of its own, so that a process that exits meanwhile (a pgbench connection) still counts
    up to its last sample; one that appears meanwhile counts from zero."""

    def __init__(self, list_processes: Callable[[], list[psutil.Process]], interval: float = 0.2):
        self.list_processes = list_processes
        self.interval = interval
        self.before: dict[int, float] = {}
        self.latest: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.before = cpu_seconds(self.list_processes())
        self.latest = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.latest.update(cpu_seconds(self.list_processes()))

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.latest.update(cpu_seconds(self.list_processes()))
        return sum(t - self.before.get(pid, 0.0) for pid, t in self.latest.items())


@dataclass
class RssSampler:
    """Samples the RSS of every server process every `interval` seconds in a thread of its own;
    keeps, per process, the first, last and largest value, and the largest per labelled phase."""

    server: ServerProcess
    interval: float = 0.25
    per_pid: dict[int, dict[str, float]] = field(default_factory=dict)
    per_phase: dict[str, dict[str, float]] = field(default_factory=dict)
    phase: str = "idle"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        total = 0.0
        roles = self.server.roles()
        for p in self.server.processes():
            try:
                rss = p.memory_info().rss / MB
            except psutil.Error:
                continue
            total += rss
            entry = self.per_pid.setdefault(p.pid, {"first_mb": rss, "max_mb": rss})
            entry["last_mb"] = rss
            entry["max_mb"] = max(entry["max_mb"], rss)
            entry["role"] = roles.get(p.pid, "?")  # type: ignore[assignment]
            phase = self.per_phase.setdefault(self.phase, {})
            phase[roles.get(p.pid, str(p.pid))] = max(phase.get(roles.get(p.pid, str(p.pid)), 0.0), rss)
        phase = self.per_phase.setdefault(self.phase, {})
        phase["total"] = max(phase.get("total", 0.0), total)

    def unique_mb(self) -> dict[str, float]:
        """USS per process now (memory no other process shares): what a worker really adds,
        since forked workers share the parent's pages and RSS counts them in each."""
        out = {}
        roles = self.server.roles()
        for p in self.server.processes():
            try:
                out[roles.get(p.pid, str(p.pid))] = round(p.memory_full_info().uss / MB, 1)
            except psutil.Error:
                pass
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
