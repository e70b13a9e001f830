"""The gRPC server: create_server() for tests and main() for `make run` and the container."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from identity.v1 import identity_pb2, identity_pb2_grpc
from service.api import reflection
from service.api.auth import ApiKeys
from service.db.engine import create_engine, migrate
from service.db.monitor import DatabaseMonitor
from service.domain import Settings
from service.errors import AlreadyExists
from service.api.interceptors import CallInterceptor
from service.api.servicer import IdentityServicer, WorkspaceServicer
from service.usecases import IdentityService

log = logging.getLogger("identity.server")

SERVICE_NAMES = [
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["WorkspaceService"].full_name,
]


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    monitor: DatabaseMonitor

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            self.health.set(name, status)

    def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING at once; calls in flight get `grace` seconds to finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.monitor.stop()


def create_server(
    address: str,
    engine: sa.Engine,
    *,
    threads: int = 8,
    max_concurrent_calls: int | None = 64,
    monitor_interval: float = 0.5,
    api_keys: ApiKeys | None = None,
) -> RunningServer:
    """Builds and starts a server on `address` ("host:port"; port 0 picks a free one).
    Past `max_concurrent_calls` in flight, new calls get RESOURCE_EXHAUSTED instead of queueing.
    The database is pinged every `monitor_interval` seconds: health follows it."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
        interceptors=[CallInterceptor(api_keys)],
        maximum_concurrent_rpcs=max_concurrent_calls,
        options=[("grpc.so_reuseport", 1)],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    holder: list[RunningServer] = []
    monitor = DatabaseMonitor(engine, lambda ok: holder[0].set_serving(ok), monitor_interval)
    service = IdentityService(engine, database_available=lambda: monitor.available)
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(service), server)
    identity_pb2_grpc.add_WorkspaceServiceServicer_to_server(WorkspaceServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable([*SERVICE_NAMES, health.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    server.start()
    running = RunningServer(server, health_servicer, port, monitor)
    holder.append(running)
    running.set_serving(True)
    monitor.start()
    return running


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="identity-server", description=__doc__)
    p.add_argument("--listen", default=_env("LISTEN_ADDRESS", "127.0.0.1:50051"), help="host:port to serve on")
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql:// URL; unset: the embedded Postgres in .pgdata",
    )
    p.add_argument("--pool-size", type=int, default=int(_env("DB_POOL_SIZE", "8")), help="connections per process")
    p.add_argument(
        "--threads",
        type=int,
        default=int(_env("GRPC_THREADS", "8")),
        help="RPC threads per process (more than the pool size only wait for a connection)",
    )
    p.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=int(_env("MAX_CONCURRENT_CALLS", "64")),
        help="calls in flight per process before RESOURCE_EXHAUSTED",
    )
    p.add_argument("--grace", type=float, default=float(_env("SHUTDOWN_GRACE", "10")), help="seconds to drain on stop")
    p.add_argument(
        "--migrate",
        action="store_true",
        default=_env("MIGRATE_ON_START", "0") == "1",
        help="apply migrations before serving",
    )
    p.add_argument("--migrate-only", action="store_true", help="apply migrations and exit")
    p.add_argument(
        "--default-workspace",
        default=_env("DEFAULT_WORKSPACE", "default"),
        help="workspace created at start if missing ('' for none)",
    )
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", "0")), help="Prometheus port; 0: off")
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", str(os.cpu_count() or 1))),
        help="server processes sharing the port (SO_REUSEPORT); default: the number of cores",
    )
    p.add_argument(
        "--api-keys",
        type=ApiKeys.parse,
        default=_env("API_KEYS", ""),
        help="key=workspace|workspace,key=* (empty: no key needed; for local development only)",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def ensure_workspace(engine: sa.Engine, workspace_id: str) -> None:
    try:
        IdentityService(engine).create_workspace(Settings(workspace_id))
        log.info("created workspace %r", workspace_id)
    except AlreadyExists:
        pass


def check_connection_budget(database_url: str, workers: int, pool_size: int) -> None:
    """Each worker opens at most pool_size connections (plus one for its monitor): say so at
    start if that does not fit under the database's limit."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
    needed = workers * (pool_size + 1)
    if needed > limit - reserved:
        log.warning(
            "%d workers x (pool size %d + 1 monitor) = %d connections, over the database's limit of %d "
            "(max_connections %d - %d reserved): lower --workers or --pool-size",
            workers, pool_size, needed, limit - reserved, limit, reserved,
        )
    else:
        log.info("connections: %d workers x (pool %d + 1) = %d of %d available", workers, pool_size, needed, limit - reserved)


def serve(args: argparse.Namespace, database_url: str, worker: int = 0) -> int:
    """One server process: its own engine and pool, created here (after any fork)."""
    engine = create_engine(database_url, pool_size=args.pool_size)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port + worker)
    running = create_server(
        args.listen,
        engine,
        threads=args.threads,
        max_concurrent_calls=args.max_concurrent_calls,
        api_keys=args.api_keys,
    )
    log.info("worker %d (pid %d) serving on %s", worker, os.getpid(), args.listen)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("worker %d: %s, draining for up to %.1fs", worker, signal.Signals(signum).name, args.grace)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    running.stop(args.grace)
    engine.dispose()
    log.info("worker %d stopped", worker)
    return 0


def supervise(args: argparse.Namespace, database_url: str) -> int:
    """Forks the workers (before any gRPC object exists in this process, as gRPC requires), each
    listening on the same port with SO_REUSEPORT; restarts a worker that dies; on SIGTERM or
    SIGINT, passes the signal on and waits for the workers to drain."""
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(worker: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve(args, database_url, worker)
            finally:
                logging.shutdown()
                os._exit(code)  # never run the parent's atexit handlers (the embedded Postgres)
        children[pid] = worker

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for worker in range(args.workers):
        spawn(worker)
    log.info("supervisor (pid %d): %d workers on %s", os.getpid(), args.workers, args.listen)

    while not stopping.is_set():
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            stopping.wait(0.2)
            continue
        worker = children.pop(pid)
        log.error("worker %d (pid %d) died (status %d); starting another", worker, pid, status)
        spawn(worker)

    for pid in children:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.grace + 5
    failed = False
    while children and time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.05)
            continue
        children.pop(pid, None)
        failed |= status != 0
    for pid in children:  # still running past the grace period
        os.kill(pid, signal.SIGKILL)
        failed = True
    log.info("stopped")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s",
        stream=sys.stderr,
    )
    database_url = args.database_url
    if not database_url:
        from service.runtime import embedded

        database_url = embedded.start()
        args.migrate = True
    if args.migrate or args.migrate_only or args.default_workspace:
        engine = create_engine(database_url, pool_size=1)
        if args.migrate or args.migrate_only:
            migrate(engine)
            log.info("migrations applied")
        if args.default_workspace and not args.migrate_only:
            ensure_workspace(engine, args.default_workspace)
        engine.dispose()  # nothing pooled may cross the fork
    if args.migrate_only:
        return 0
    check_connection_budget(database_url, args.workers, args.pool_size)
    if not args.api_keys.enabled:
        log.warning("no API keys configured (API_KEYS): every caller may use every workspace")
    if args.workers <= 1:
        return serve(args, database_url)
    return supervise(args, database_url)


if __name__ == "__main__":
    sys.exit(main())
