"""Engines and migrations."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from service.db.transaction import SESSION_STATEMENT_TIMEOUT_S

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlalchemy_url(database_url: str) -> str:
    """DATABASE_URL as libpq spells it, with SQLAlchemy's psycopg 3 driver named."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def create_engine(
    database_url: str, *, pool_size: int = 8, pool_timeout: float = 2.0, application_name: str = "identity-service"
) -> sa.Engine:
    """One engine per process, created after any fork. The pool never grows past pool_size, so
    workers x pool_size bounds the connections the service opens."""
    return sa.create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={
            "application_name": application_name,
            "connect_timeout": 3,
            # Caps for calls without a deadline; shorter deadlines are set per transaction.
            "options": f"-c statement_timeout={int(SESSION_STATEMENT_TIMEOUT_S * 1000)}"
            f" -c lock_timeout={int(SESSION_STATEMENT_TIMEOUT_S * 1000)}"
            " -c idle_in_transaction_session_timeout=60000"
            # A generic plan for every prepared statement: the hot statements have the same
            # best plan for all values, and re-planning each call doubled Postgres CPU per call.
            " -c plan_cache_mode=force_generic_plan",
        },
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
