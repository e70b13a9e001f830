"""The gRPC server: create_server() for tests and main() for `make run` and the container."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from identity.v1 import identity_pb2, identity_pb2_grpc
from service import reflection
from service.db.engine import create_engine, migrate
from service.domain import Settings
from service.errors import AlreadyExists
from service.interceptors import CallInterceptor
from service.servicer import IdentityServicer, WorkspaceServicer
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

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            self.health.set(name, status)

    def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING at once; calls in flight get `grace` seconds to finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def create_server(
    address: str,
    engine: sa.Engine,
    *,
    threads: int = 16,
    max_concurrent_calls: int | None = 64,
) -> RunningServer:
    """Builds and starts a server on `address` ("host:port"; port 0 picks a free one).
    Past `max_concurrent_calls` in flight, new calls get RESOURCE_EXHAUSTED instead of queueing."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
        interceptors=[CallInterceptor()],
        maximum_concurrent_rpcs=max_concurrent_calls,
        options=[("grpc.so_reuseport", 1)],
    )
    service = IdentityService(engine)
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(service), server)
    identity_pb2_grpc.add_WorkspaceServiceServicer_to_server(WorkspaceServicer(service), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable([*SERVICE_NAMES, health.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    server.start()
    running = RunningServer(server, health_servicer, port)
    running.set_serving(True)
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
    p.add_argument("--threads", type=int, default=int(_env("GRPC_THREADS", "16")), help="RPC threads per process")
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
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def ensure_workspace(engine: sa.Engine, workspace_id: str) -> None:
    try:
        IdentityService(engine).create_workspace(Settings(workspace_id))
        log.info("created workspace %r", workspace_id)
    except AlreadyExists:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    database_url = args.database_url
    if not database_url:
        from service import embedded

        database_url = embedded.start()
        args.migrate = True
    engine = create_engine(database_url, pool_size=args.pool_size)
    if args.migrate or args.migrate_only:
        migrate(engine)
        log.info("migrations applied")
    if args.migrate_only:
        return 0
    if args.default_workspace:
        ensure_workspace(engine, args.default_workspace)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)

    running = create_server(args.listen, engine, threads=args.threads, max_concurrent_calls=args.max_concurrent_calls)
    log.info("serving on %s (port %d)", args.listen, running.port)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: draining for up to %.1fs", signal.Signals(signum).name, args.grace)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    running.stop(args.grace)
    engine.dispose()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
