"""Connections: the pool each server process serves calls from (psycopg, async), and the
SQLAlchemy engine that migrations run on."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from psycopg_pool import AsyncConnectionPool

from service.db.unit_of_work import SESSION_STATEMENT_TIMEOUT_S

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlalchemy_url(database_url: str) -> str:
    """DATABASE_URL as libpq spells it, with SQLAlchemy's psycopg 3 driver named."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


# The plan-cache mode of every connection (DB_PLAN_CACHE_MODE). On plain Postgres the default,
# force_generic_plan: see connection_options. On Citus it must be `auto`: the coordinator cannot
# route a generic plan of a statement more complex than a single-table lookup (the workspace is a
# parameter when the plan is made), and force_generic_plan leaves it no other plan, so it refuses
# ("could not create distributed plan"); with `auto`, Citus steers those statements to custom plans
# (routed by the bound workspace) and keeps generic plans for the single-table ones it can route at
# execution time (tests/citus/test_routing.py). service/db/citus.py distributes the tables.
PLAN_CACHE_MODES = ("force_generic_plan", "auto", "force_custom_plan")
DEFAULT_PLAN_CACHE_MODE = "force_generic_plan"


def plan_cache_mode() -> str:
    mode = os.environ.get("DB_PLAN_CACHE_MODE", "") or DEFAULT_PLAN_CACHE_MODE
    if mode not in PLAN_CACHE_MODES:
        raise ValueError(f"DB_PLAN_CACHE_MODE must be one of {', '.join(PLAN_CACHE_MODES)}, not {mode!r}")
    return mode


def connection_options(application_name: str = "identity-service") -> dict[str, object]:
    """libpq connection parameters of every connection the service opens."""
    return {
        "application_name": application_name,
        "connect_timeout": 3,
        # Caps for calls without a deadline; shorter deadlines are set per transaction.
        "options": f"-c statement_timeout={int(SESSION_STATEMENT_TIMEOUT_S * 1000)}"
        f" -c lock_timeout={int(SESSION_STATEMENT_TIMEOUT_S * 1000)}"
        " -c idle_in_transaction_session_timeout=60000"
        # A generic plan for every prepared statement: the hot statements are written so that
        # their generic plans are index-bound (tests/db/test_plans.py), and re-planning each
        # call doubled Postgres CPU per call. (Citus: DB_PLAN_CACHE_MODE=auto, see plan_cache_mode.)
        f" -c plan_cache_mode={plan_cache_mode()}",
    }


def create_pool(database_url: str, *, size: int = 8, timeout: float = 2.0) -> AsyncConnectionPool:
    """One pool per server process, created (and opened) in its event loop, after any fork.
    It never grows past `size`, so workers x size bounds the connections the service opens.
    Connections are in autocommit: the unit of work opens each transaction itself."""
    return AsyncConnectionPool(
        libpq_url(database_url),
        min_size=size,
        max_size=size,
        timeout=timeout,
        max_lifetime=1800,
        kwargs={"autocommit": True, **connection_options()},
        open=False,
        name="identity",
    )


def libpq_url(database_url: str) -> str:
    """DATABASE_URL as libpq takes it (no SQLAlchemy driver name)."""
    return "postgresql://" + sqlalchemy_url(database_url)[len("postgresql+psycopg://"):]


def create_engine(database_url: str, pool_size: int = 1) -> sa.Engine:
    """A small synchronous engine for migrations and start-up work (never shared over a fork),
    and for tests that read the tables themselves."""
    return sa.create_engine(
        sqlalchemy_url(database_url), pool_size=pool_size, max_overflow=0, connect_args=connection_options()
    )


def migrate(engine: sa.Engine) -> None:
    """Applies every migration not yet applied (alembic upgrade head). Safe to run from several
    processes at once: an advisory lock serialises them."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7242001)"))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
