"""The gRPC server (grpc.aio: an idle stream costs no thread): create_server() builds one in a
running event loop, ServerThread runs one beside synchronous code (the tests), main() is
`make run` and the container's entry point."""

from __future__ import annotations

import argparse
import asyncio
import random
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.api import reflection
from service.api.api_key_servicer import ApiKeyApi
from service.api.auth import ApiKeys, Authenticator
from service.api.fair_share import FairShare, WorkspaceLimits
from service.api.handlers import SERVICE_NAMES, Edge
from service.api.key_cache import KeyCache
from service.db.control import ControlWatcher
from service.api.servicer import IdentityApi
from service.db.engine import create_engine, create_pool, libpq_url, migrate
from service.db.monitor import DatabaseMonitor
from service.db.unit_of_work import UnitOfWork
from service.domain import Settings
from service.errors import AlreadyExists
from service.runtime import logs, telemetry
from service.runtime.tls import ServerTls, TlsError, check_listen, is_loopback
from service.runtime.tls import from_args as tls_from_args
from service.api.status import cut
from service.db.notifier import Notifier
from service.domain import Call
from service.usecases import IdentityService
from service.usecases.imports import BATCH_ROWS

log = logging.getLogger("identity.server")

MiB = 1024 * 1024


def channel_options(max_streams_per_connection: int = 1000) -> list[tuple[str, Any]]:
    """What each connection may cost the server, and how long a client channel stays on one
    worker process."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", 4 * MiB),
        ("grpc.max_send_message_length", 4 * MiB),
        ("grpc.max_metadata_size", 16 * 1024),
        ("grpc.max_concurrent_streams", max_streams_per_connection),
        # Keepalive: the server pings an idle connection every 2 minutes and drops it if the
        # ping goes unanswered for 20 s; clients may ping every 10 s at most, else GOAWAY.
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
        # A connection lives at most 10 minutes (+ 1 minute for its calls to finish): a client's
        # long-lived channel reconnects, and SO_REUSEPORT spreads it over the workers again.
        ("grpc.max_connection_age_ms", 600_000),
        ("grpc.max_connection_age_grace_ms", 60_000),
        ("grpc.max_connection_idle_ms", 900_000),
    ]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: Any  # grpc_health's aio HealthServicer
    port: int
    monitor: DatabaseMonitor
    uow: UnitOfWork
    database_url: str
    pool_size: int
    notifier: Notifier | None = None
    janitor: asyncio.Task[None] | None = None
    control: ControlWatcher | None = None

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, status)

    async def on_database_change(self, available: bool) -> None:
        if available:
            # Connections pooled before the outage are dead: serve from a fresh pool.
            stale, self.uow.pool = self.uow.pool, create_pool(self.database_url, size=self.pool_size)
            await self.uow.pool.open(wait=False)
            asyncio.get_running_loop().create_task(stale.close(timeout=1))
        await self.set_serving(available)

    async def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING at once; calls in flight get `grace` seconds to finish. Each
        step is bounded: a step that hangs is logged (with what is still running) and the
        stop goes on, so that a process always exits."""
        await _bounded("health", self.health.enter_graceful_shutdown(), STEP_TIMEOUT)
        if self.janitor is not None:
            self.janitor.cancel()
        if self.notifier is not None:
            # Change-feed streams end now (UNAVAILABLE): they resume elsewhere.
            await _bounded("change notifications", self.notifier.close(), STEP_TIMEOUT)
        await _bounded("gRPC server", self.server.stop(grace), grace + STEP_TIMEOUT)
        await _bounded("database monitor", self.monitor.stop(), STEP_TIMEOUT)
        if self.control is not None:
            await _bounded("key and limit watcher", self.control.stop(), STEP_TIMEOUT)
        await _bounded("connection pool", self.uow.pool.close(timeout=1), STEP_TIMEOUT)


STEP_TIMEOUT = 5.0  # seconds for one step of a stop, beyond its grace


async def _bounded(step: str, awaitable: Awaitable[Any], seconds: float) -> None:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        running = [
            f"{task.get_name()}: {task.get_coro()!r}"
            for task in asyncio.all_tasks()
            if task is not asyncio.current_task()
        ]
        log.error("stopping the %s took over %.0f s; going on. Still running: %s", step, seconds, running)


async def create_server(
    address: str,
    database_url: str,
    *,
    pool_size: int = 8,
    max_concurrent_calls: int = 64,
    max_streams: int = 10_000,
    monitor_interval: float = 0.5,
    api_keys: ApiKeys | None = None,
    require_api_keys: bool = False,
    workspace_calls_per_second: int = 0,
    workspace_concurrent_calls: int = 0,
    tls: ServerTls | None = None,
    insecure: bool = False,
    import_batch_rows: int = BATCH_ROWS,
) -> RunningServer:
    """Builds and starts a server on `address` ("host:port"; port 0 picks a free one), in the
    running event loop. Past `max_concurrent_calls` identity calls in flight, new ones get
    RESOURCE_EXHAUSTED; streams (reflection, health watches) count only towards `max_streams`.
    The database is pinged every `monitor_interval` seconds: health follows it. With `tls`, it
    serves TLS (mutual when `tls` has a client CA); without, only on loopback unless `insecure`.
    With static `api_keys` or `require_api_keys`, every call needs a key: a static one or a
    managed one (ApiKeyService), whose copy a watcher keeps current on a connection of its own.
    The workspace_* limits are the fair-share defaults of every workspace (0: none)."""
    refusal = check_listen(address, tls is not None, insecure)
    if refusal:
        raise ValueError(refusal)
    pool = create_pool(database_url, size=pool_size)
    await pool.open(wait=False)
    server = grpc.aio.server(maximum_concurrent_rpcs=max_streams, options=channel_options())
    health_servicer = health.aio.HealthServicer()
    holder: list[RunningServer] = []
    monitor = DatabaseMonitor(libpq_url(database_url), lambda ok: holder[0].on_database_change(ok), monitor_interval)
    uow = UnitOfWork(pool, available=lambda: monitor.available)
    service = IdentityService(uow, _pause_after_commit(os.environ.get(PAUSE_AFTER_COMMIT_ENV, "")))
    notifier = Notifier(libpq_url(database_url), service.events_after)
    static = api_keys or ApiKeys({})
    key_cache = KeyCache() if static.enabled or require_api_keys else None
    limits = WorkspaceLimits(workspace_calls_per_second, workspace_concurrent_calls)
    control = ControlWatcher(libpq_url(database_url), key_cache, limits)
    await control.start()
    edge = Edge(
        IdentityApi(service, notifier, import_batch_rows),
        Authenticator(static, key_cache),
        max_concurrent_calls,
        keys_api=ApiKeyApi(uow, control.refresh_keys),
        fair_share=FairShare(limits),
    )
    server.add_generic_rpc_handlers(edge.handlers())
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable([*SERVICE_NAMES, health.SERVICE_NAME], server)
    port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    await server.start()
    running = RunningServer(server, health_servicer, port, monitor, uow, database_url, pool_size, notifier,
                            control=control)
    holder.append(running)
    await running.set_serving(True)
    monitor.start()
    notifier.start()
    running.janitor = asyncio.get_running_loop().create_task(purge_events_forever(service), name="event-retention")
    return running


PAUSE_AFTER_COMMIT_ENV = "IDENTITY_TEST_PAUSE_AFTER_COMMIT"


def _pause_after_commit(request_id: str) -> Callable[[Call], Awaitable[None]] | None:
    """For the fault suite only (R70): a call with this request_id, once committed, never
    answers, so that a test can kill the process between the COMMIT and the reply."""
    if not request_id:
        return None
    log.warning("test hook: calls with request_id %s will hang after their COMMIT", cut(request_id, 64))

    async def pause(call: Call) -> None:
        if call.request_id.lower() == request_id.lower():
            log.warning("test hook: paused after COMMIT")
            await asyncio.Event().wait()

    return pause


RETENTION_INTERVAL_S = 300.0


async def purge_events_forever(service: IdentityService, interval: float = RETENTION_INTERVAL_S) -> None:
    """Retention (R52): every few minutes, each worker deletes events older than their
    workspace's setting, in bounded batches (a second worker doing the same finds little)."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.5, 1.5))
        try:
            purged = await service.purge_expired_events()
            if purged:
                log.info("purged %d change-log events past their retention", purged)
        except Exception:  # noqa: BLE001 - the next round tries again
            log.warning("change-log retention clean-up failed; retrying later", exc_info=True)


def new_event_loop(kind: str = "uvloop") -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop by default: asyncio's own loop doubled the driver's CPU per database round trip."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


class ServerThread:
    """A server on an event loop of its own thread, for synchronous callers (the tests)."""

    def __init__(self, address: str, database_url: str, **options: Any):
        self.loop = new_event_loop()()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self.running = self.call(create_server(address, database_url, **options))
        self.port = self.running.port

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        """Runs a coroutine on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float = 0) -> None:
        self.call(self.running.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


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
        "--max-concurrent-calls",
        type=int,
        default=int(_env("MAX_CONCURRENT_CALLS", "64")),
        help="identity calls in flight per process before RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=int(_env("MAX_STREAMS", "10000")),
        help="calls and streams (reflection, health watches) open per process",
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
        help="static keys, for development: key=workspace|workspace,key=* (shown by ps: prefer "
        "--api-keys-file or managed keys)",
    )
    p.add_argument(
        "--api-keys-file",
        default=_env("API_KEYS_FILE", ""),
        help="a file of static keys, one key=workspace|workspace or key=* per line (# comments); "
        "turns authentication on",
    )
    p.add_argument(
        "--require-api-keys",
        action="store_true",
        default=_env("REQUIRE_API_KEYS", "0") == "1",
        help="every call needs a key (managed keys: identity-service keys create --admin)",
    )
    p.add_argument(
        "--workspace-calls-per-second",
        type=int,
        default=int(_env("WORKSPACE_CALLS_PER_SECOND", "0")),
        help="fair share: each workspace's calls per second per process, unless its settings say (0: no limit)",
    )
    p.add_argument(
        "--workspace-concurrent-calls",
        type=int,
        default=int(_env("WORKSPACE_CONCURRENT_CALLS", "0")),
        help="fair share: each workspace's calls running at once per process, unless its settings say (0: no limit)",
    )
    p.add_argument("--tls-cert", default=_env("TLS_CERT", ""), help="PEM certificate chain: serve TLS (reloaded on SIGHUP)")
    p.add_argument("--tls-key", default=_env("TLS_KEY", ""), help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        default=_env("TLS_CLIENT_CA", ""),
        help="PEM CA: mutual TLS, clients without a certificate it signed are refused",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=_env("INSECURE", "0") == "1",
        help="allow serving without TLS on an address beyond loopback",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=_env("LOG_FORMAT", "text"),
        help="text: lines for people; json: one JSON object per line (time, level, logger, message, process, call fields)",
    )
    p.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default=_env("EVENT_LOOP", "uvloop"),
        help="the event loop of each worker process",
    )
    return p.parse_args(argv)


async def ensure_workspace(database_url: str, workspace_id: str) -> None:
    pool = create_pool(database_url, size=1)
    await pool.open()
    try:
        await IdentityService(UnitOfWork(pool)).create_workspace(Settings(workspace_id))
        log.info("created workspace %r", workspace_id)
    except AlreadyExists:
        pass
    finally:
        await pool.close()


def check_connection_budget(database_url: str, workers: int, pool_size: int) -> None:
    """Each worker opens at most pool_size connections (plus one for its monitor): say so at
    start if that does not fit under the database's limit."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
    needed = workers * (pool_size + 2)
    if needed > limit - reserved:
        log.warning(
            "%d workers x (pool size %d + 1 monitor + 1 control) = %d connections, over the database's limit of %d "
            "(max_connections %d - %d reserved): lower --workers or --pool-size",
            workers, pool_size, needed, limit - reserved, limit, reserved,
        )
    else:
        log.info("connections: %d workers x (pool %d + 2) = %d of %d available", workers, pool_size, needed, limit - reserved)


def serve(args: argparse.Namespace, database_url: str, worker: int = 0) -> int:
    """One server process: its own event loop, pool and server, created here (after any fork),
    and its tracing when the OTEL_* variables ask for it (service.runtime.telemetry)."""
    telemetry.setup_from_environment()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port + worker)
    with asyncio.Runner(loop_factory=new_event_loop(args.event_loop)) as runner:
        runner.run(_serve(args, database_url, worker))
    log.info("worker %d stopped", worker)
    return 0


async def _serve(args: argparse.Namespace, database_url: str, worker: int) -> None:
    loop = asyncio.get_running_loop()
    server_tls = tls_from_args(args.tls_cert, args.tls_key, args.tls_client_ca)

    def on_hangup() -> None:
        if server_tls is None:
            log.info("worker %d: SIGHUP, no TLS configured: nothing to reload", worker)
        else:
            server_tls.reload()

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    running = await create_server(
        args.listen,
        database_url,
        pool_size=args.pool_size,
        max_concurrent_calls=args.max_concurrent_calls,
        max_streams=args.max_streams,
        api_keys=args.api_keys,
        require_api_keys=args.require_api_keys,
        workspace_calls_per_second=args.workspace_calls_per_second,
        workspace_concurrent_calls=args.workspace_concurrent_calls,
        tls=server_tls,
        insecure=args.insecure,
    )
    log.info("worker %d (pid %d) serving on %s", worker, os.getpid(), args.listen)
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("worker %d: %s, draining for up to %.1fs", worker, signal.Signals(signum).name, args.grace)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stopping.wait()
    await running.stop(args.grace)


def supervise(args: argparse.Namespace, database_url: str) -> int:
    """Forks the workers (before any gRPC object exists in this process, as gRPC requires), each
    listening on the same port with SO_REUSEPORT; restarts a worker that dies; on SIGTERM or
    SIGINT, passes the signal on and waits for the workers to drain; passes SIGHUP (reload the
    TLS files) on to every worker."""
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(worker: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's own handler
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

    def on_hangup(signum: int, _frame: object) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
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


def log_start(args: argparse.Namespace, database_url: str, server_tls: ServerTls | None) -> None:
    """Where it listens, which database it uses (password hidden) and how to try it."""
    log.info(
        "identity service on %s (%s, %d worker%s), database %s",
        args.listen,
        "TLS" if server_tls else "plaintext",
        args.workers,
        "" if args.workers == 1 else "s",
        logs.redact_url(database_url),
    )
    host, _, port = args.listen.rpartition(":")
    address = f"{'localhost' if host in ('', '0.0.0.0', '[::]', '::') else host}:{port}"
    if server_tls is None:
        log.info("try it: grpcurl -plaintext %s list", address)
    else:
        client = " -cert client.pem -key client-key.pem" if server_tls.mutual else ""
        log.info("try it: grpcurl -cacert ca.pem%s %s list (ca.pem: the CA that signed %s)", client, address, args.tls_cert)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if args.api_keys_file:
        try:
            args.api_keys = ApiKeys({**args.api_keys.grants, **ApiKeys.from_file(args.api_keys_file).grants})
        except (OSError, ValueError) as e:
            # The file's path, never its content (it holds secrets).
            print(f"identity-server: error: cannot read --api-keys-file {args.api_keys_file}: {type(e).__name__}",
                  file=sys.stderr)
            return 2
        if not args.api_keys.enabled:
            args.require_api_keys = True  # an empty file still means keys are wanted
    try:
        server_tls = tls_from_args(args.tls_cert, args.tls_key, args.tls_client_ca)  # checked here, loaded per worker
    except TlsError as e:
        print(f"identity-server: error: {e}", file=sys.stderr)
        return 2
    if not args.migrate_only:
        refusal = check_listen(args.listen, server_tls is not None, args.insecure)
        if refusal:
            print(f"identity-server: error: {refusal}", file=sys.stderr)
            return 2
        if server_tls is None and not is_loopback(args.listen):
            log.warning(
                "INSECURE (--insecure): serving on %s WITHOUT TLS: API keys and data cross the network in clear text",
                args.listen,
            )
        elif server_tls is not None:
            log.info("TLS on%s", f", clients need a certificate signed by {args.tls_client_ca}" if server_tls.mutual else "")
    database_url = args.database_url
    if not database_url:
        from service.runtime import embedded

        database_url = embedded.start()
        args.migrate = True
    if args.migrate or args.migrate_only or args.default_workspace:
        if args.migrate or args.migrate_only:
            engine = create_engine(database_url)
            migrate(engine)
            engine.dispose()  # nothing pooled may cross the fork
            log.info("migrations applied")
        if args.default_workspace and not args.migrate_only:
            asyncio.run(ensure_workspace(database_url, args.default_workspace))
    if args.migrate_only:
        return 0
    check_connection_budget(database_url, args.workers, args.pool_size)
    if not args.api_keys.enabled and not args.require_api_keys:
        log.warning("no API keys required (REQUIRE_API_KEYS, API_KEYS_FILE, API_KEYS): every caller may use "
                    "every workspace (local development only)")
    elif args.api_keys.enabled:
        log.info("%d static API key%s (%s) and managed keys accepted", len(args.api_keys.grants),
                 "" if len(args.api_keys.grants) == 1 else "s",
                 ", ".join(sorted(g.key_id for g in args.api_keys.grants.values())))
    log_start(args, database_url, server_tls)
    if args.workers <= 1:
        return serve(args, database_url)
    return supervise(args, database_url)


if __name__ == "__main__":
    sys.exit(main())
