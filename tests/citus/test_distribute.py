"""The distribute step (service.db.citus): every table distributed by workspace_id, colocated
with workspaces, idempotently, from a fresh database or from one that already holds data, and
the plan-cache setting a Citus deployment needs (service.db.engine.plan_cache_mode)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Iterator

import pytest
import sqlalchemy as sa

from service.db import citus
from service.db.engine import connection_options, create_engine, migrate, plan_cache_mode
from tests.citus.conftest import create_citus_database, drop_citus_database

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_table_is_distributed_by_workspace_id_and_colocated(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        found = citus.distribution(conn)
        assert citus.problems(conn) == []
    assert set(found) == {
        "workspaces", "people", "event_sequences", "person_events", "stored_responses", "imports", "import_refusals",
    }
    assert {(method, column) for method, column, _ in found.values()} == {("h", "workspace_id")}  # type: ignore[misc]
    assert len({colocation for _, _, colocation in found.values()}) == 1  # type: ignore[misc]


def test_every_unique_key_includes_workspace_id(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert citus.unique_keys_without_workspace(conn) == []
        # and there are unique keys to check: the primary keys and R41's unique indexes
        count = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid"
                " WHERE c.relname = ANY(:t) AND x.indisunique"
            ),
            {"t": list(citus.TABLES)},
        ).scalar()
    assert count >= 8


def test_distribute_again_changes_nothing(engine: sa.Engine) -> None:
    assert citus.distribute(engine) == []


@pytest.fixture
def spare_database(citus_url: str, citus_workers: list[tuple[str, int]]) -> Iterator[str]:
    name = f"identity_citus_spare_{secrets.token_hex(4)}"
    url = create_citus_database(citus_url, citus_workers, name)
    try:
        yield url
    finally:
        drop_citus_database(citus_url, citus_workers, name)


def test_a_database_with_data_is_distributed_with_its_rows(spare_database: str) -> None:
    """An existing deployment moved to Citus: the migrations, rows, then the distribute step
    (the command line, as an operator runs it); the rows are then read through the shards."""
    engine = create_engine(spare_database)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO workspaces (workspace_id, identifier_mode, email_updatable_by_id,"
                    " sole_identifier_updatable, auto_merge, created_at, updated_at)"
                    " SELECT 'w' || i, 'EMAIL_OR_ID', true, false, true, now(), now() FROM generate_series(1, 20) i"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO people (workspace_id, cio_id, id, id_key, attributes, created_at, updated_at)"
                    " SELECT 'w' || (i % 20 + 1), 'c' || i, 'u' || i, 'u' || i, '{}', now(), now()"
                    " FROM generate_series(1, 200) i"
                )
            )
        env = {**os.environ, "DATABASE_URL": spare_database}
        check = [sys.executable, "-m", "service.db.citus", "check"]
        assert subprocess.run(check, cwd=REPO, env=env, capture_output=True).returncode == 1
        run = subprocess.run(
            [sys.executable, "-m", "service.db.citus", "distribute"], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("citus: distributed ") and "workspaces" in run.stdout and "api_keys" in run.stdout
        assert subprocess.run(check, cwd=REPO, env=env, capture_output=True).returncode == 0
        again = subprocess.run(
            [sys.executable, "-m", "service.db.citus", "migrate"], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert again.returncode == 0 and "already distributed" in again.stdout, again.stdout + again.stderr
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM people")).scalar() == 200
            assert conn.execute(sa.text("SELECT count(*) FROM workspaces")).scalar() == 20
            # the shards hold them, spread over both workers
            nodes = conn.execute(
                sa.text(
                    "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'people'::regclass"
                )
            ).scalar()
            assert nodes == 2
    finally:
        engine.dispose()


def test_the_key_tables_become_reference_tables_and_may_be_missing(spare_database: str) -> None:
    """REFERENCE_TABLES (api_keys and api_key_versions: not per workspace, added by migration
    0005) are tolerated missing (a database migrated to 0004 distributes); once the migration has
    made them, distribute makes them reference tables (a copy on every node, their rows kept),
    leaves them alone the next time, and check reports them until then."""
    from alembic import command
    from alembic.config import Config

    from service.db.engine import MIGRATIONS

    assert set(citus.REFERENCE_TABLES) == {"api_keys", "api_key_versions"}
    assert not set(citus.REFERENCE_TABLES) & set(citus.TABLES)
    engine = create_engine(spare_database)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0004")
        assert "workspaces" in citus.distribute(engine)  # no key tables yet: nothing to say about them
        with engine.connect() as conn:
            assert citus.existing_reference_tables(conn) == []
        migrate(engine)  # 0005 adds the key tables (and one version row) on the coordinator
        with engine.connect() as conn:
            assert sorted(citus.problems(conn)) == ["api_key_versions: not a reference table", "api_keys: not a reference table"]
        assert sorted(citus.distribute(engine)) == ["api_key_versions", "api_keys"]
        assert citus.distribute(engine) == []
        with engine.connect() as conn:
            assert citus.problems(conn) == []
            assert conn.execute(sa.text("SELECT count(*) FROM api_key_versions")).scalar() == 1
            nodes = conn.execute(sa.text("SELECT count(*) FROM pg_dist_node WHERE isactive")).scalar()
            for table in citus.REFERENCE_TABLES:
                placements = conn.execute(
                    sa.text("SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = CAST(:t AS regclass)"),
                    {"t": table},
                ).scalar()
                assert placements == nodes, table  # every node, the coordinator included, holds a copy
    finally:
        engine.dispose()


def test_distribute_refuses_a_database_without_citus(citus_url: str) -> None:
    name = f"identity_citus_plain_{secrets.token_hex(4)}"
    admin = create_engine(citus_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(citus_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        migrate(engine)
        with pytest.raises(citus.CitusError, match="citus extension is not installed"):
            citus.distribute(engine)
    finally:
        engine.dispose()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_plan_cache_mode_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_PLAN_CACHE_MODE", raising=False)
    assert plan_cache_mode() == "force_generic_plan"  # plain Postgres: unchanged
    assert "plan_cache_mode=force_generic_plan" in str(connection_options()["options"])
    monkeypatch.setenv("DB_PLAN_CACHE_MODE", "auto")
    assert "plan_cache_mode=auto" in str(connection_options()["options"])
    monkeypatch.setenv("DB_PLAN_CACHE_MODE", "generic")
    with pytest.raises(ValueError, match="DB_PLAN_CACHE_MODE"):
        connection_options()
