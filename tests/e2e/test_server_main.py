"""The server's entry point, in process: migrations on demand and the connection budget."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from service.runtime import server


def test_migrate_only_applies_migrations_and_creates_no_workspace(database_url, engine):
    assert server.main(["--migrate-only", "--database-url", database_url, "--log-level", "WARNING"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0005"


def test_connection_budget_warns_when_workers_times_pool_exceeds_the_limit(database_url, caplog):
    with caplog.at_level(logging.INFO, logger="identity.server"):
        server.check_connection_budget(database_url, workers=2, pool_size=8)
        assert "connections: 2 workers" in caplog.text
        caplog.clear()
        server.check_connection_budget(database_url, workers=100, pool_size=50)
    assert any(r.levelno == logging.WARNING and "over the database's limit" in r.getMessage() for r in caplog.records)


def test_flags_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("LISTEN_ADDRESS", "127.0.0.1:6000")
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    monkeypatch.setenv("WORKERS", "5")
    args = server.parse_args([])
    assert (args.listen, args.pool_size, args.workers) == ("127.0.0.1:6000", 3, 5)
    assert server.parse_args(["--workers", "1"]).workers == 1
