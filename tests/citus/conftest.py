"""Fixtures of the Citus suite: a database of this run's own on a running Citus cluster, with the
citus extension on the coordinator and on every worker, the workers registered, the migrations
applied and every table distributed by workspace_id (service.db.citus).

The cluster is CITUS_URL, the coordinator's URL (`make citus-test` builds Citus if needed, starts
a coordinator and two workers in a temporary folder, sets it and stops the cluster afterwards).
`make test` does not collect this folder (pyproject: norecursedirs); without CITUS_URL the suite
fails rather than skips.

These fixtures override tests/conftest.py's `admin_url`, `database_url` and `engine` for every
test under tests/citus/, so that the end-to-end tests re-collected here (test_e2e.py) run
unchanged against the coordinator. The service's connections use DB_PLAN_CACHE_MODE=auto, the
setting a Citus deployment needs (service.db.engine.plan_cache_mode), unless the environment
says otherwise."""

from __future__ import annotations

import os
import secrets
from typing import Iterator

import psycopg
import pytest
import sqlalchemy as sa

# Before any pool or engine exists: every connection the service opens reads it.
os.environ.setdefault("DB_PLAN_CACHE_MODE", "auto")

from service.db.citus import distribute, problems  # noqa: E402
from service.db.engine import create_engine, migrate  # noqa: E402
from tests.races.conftest import pytest_terminal_summary  # noqa: E402,F401  (the fault tests' figures, summed up)


def _with_database(url: str, database: str, host: str | None = None, port: int | None = None) -> str:
    u = sa.engine.make_url(url).set(database=database)
    if host is not None:
        u = u.set(host=host, port=port)
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def citus_url() -> str:
    url = os.environ.get("CITUS_URL")
    if not url:
        pytest.fail("CITUS_URL is not set: run `make citus-test` (it starts a Citus cluster and sets it)")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()
        assert row is not None, f"{url}: no citus extension"
    return url


@pytest.fixture(scope="session")
def citus_workers(citus_url: str) -> list[tuple[str, int]]:
    """(host, port) of every active worker, as the coordinator's own database registered them."""
    with psycopg.connect(citus_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive AND noderole = 'primary'"
            " AND groupid <> 0 ORDER BY nodeport"
        ).fetchall()
    assert rows, "the cluster has no worker"
    return [(host, port) for host, port in rows]


@pytest.fixture(scope="session")
def admin_url(citus_url: str) -> str:
    return citus_url


def create_citus_database(citus_url: str, workers: list[tuple[str, int]], name: str) -> str:
    """A new database `name` on the coordinator and on every worker, with the citus extension in
    each, and the workers registered in the coordinator's copy (Citus keeps its node list per
    database). Returns the coordinator's URL of it."""
    coordinator = sa.engine.make_url(citus_url)
    nodes = [_with_database(citus_url, "postgres", host, port) for host, port in workers]
    for admin in [citus_url, *nodes]:
        with psycopg.connect(admin, autocommit=True) as conn:
            # Citus would propagate a CREATE DATABASE from the coordinator only with
            # citus.enable_create_database_propagation; each node gets its own here.
            conn.execute("SET citus.enable_create_database_propagation = off")
            conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(_with_database(admin, name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION citus")
    url = _with_database(citus_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (coordinator.host or "127.0.0.1", coordinator.port or 5432))
        for host, port in workers:
            conn.execute("SELECT citus_add_node(%s, %s)", (host, port))
    return url


def drop_citus_database(citus_url: str, workers: list[tuple[str, int]], name: str) -> None:
    nodes = [_with_database(citus_url, "postgres", host, port) for host, port in workers]
    for admin in [citus_url, *nodes]:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SET citus.enable_create_database_propagation = off")
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(citus_url: str, citus_workers: list[tuple[str, int]]) -> Iterator[str]:
    """A database of this run's own on every node of the cluster, dropped at the end."""
    name = f"identity_citus_{os.getpid()}_{secrets.token_hex(4)}"
    url = create_citus_database(citus_url, citus_workers, name)
    try:
        yield url
    finally:
        drop_citus_database(citus_url, citus_workers, name)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    """The run's database, migrated and distributed, as an operator would: the migrations, then
    `python -m service.db.citus distribute`."""
    engine = create_engine(database_url, pool_size=4)
    migrate(engine)
    distribute(engine)
    with engine.connect() as conn:
        assert problems(conn) == []
    yield engine
    engine.dispose()
