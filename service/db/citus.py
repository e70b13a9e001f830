"""Citus (distributed PostgreSQL) as a deployment: every table distributed by `workspace_id`,
colocated with `workspaces`, so that all of a workspace's rows live in one shard group on one
worker and each statement that names one workspace is routed to that worker.

    python -m service.db.citus distribute   # after the migrations (make migrate), on the coordinator
    python -m service.db.citus migrate      # the migrations, then distribute (the two steps in one)
    python -m service.db.citus check        # exits 1 unless every table is distributed as above

The database is DATABASE_URL (or --database-url): the coordinator's. The citus extension must
already exist in that database on the coordinator and on every worker, and the workers must be
registered (citus_add_node); this module does not manage the cluster.

Tables that are not per workspace (REFERENCE_TABLES: the API keys and their version counter)
become Citus reference tables
instead: one copy on every node, so that any worker can join them and the coordinator reads them
locally. Such a table is tolerated missing (the migration that adds it may not have run yet).

`distribute` is idempotent: a table already distributed by workspace_id and colocated with
`workspaces` (or already a reference table) is left alone, so it can run after every migration (a migration that adds a table
leaves it local until then). A table distributed any other way is an error, never changed.
Citus requires every unique index and primary key of a distributed table to include the
distribution column: each of ours leads with workspace_id, which `unique_keys_without_workspace`
checks before anything is distributed.

The service itself needs one more setting on Citus: DB_PLAN_CACHE_MODE=auto (service.db.engine).
"""

from __future__ import annotations

import argparse
import os
import sys

import sqlalchemy as sa

from service.db.engine import create_engine, migrate
from service.db.schema import metadata

DISTRIBUTION_COLUMN = "workspace_id"
ANCHOR = "workspaces"  # the table every other one is colocated with
# Tables that are not per workspace: a copy on every node (create_reference_table). Their keys need
# not include workspace_id. Each may be missing (not yet migrated): skipped until it exists.
REFERENCE_TABLES: tuple[str, ...] = ("api_keys", "api_key_versions")
# Every other table the service queries, the anchor first (people's foreign key references it, and
# Citus distributes a referenced table before the tables that reference it).
TABLES: tuple[str, ...] = (
    ANCHOR,
    *(t.name for t in metadata.sorted_tables if t.name != ANCHOR and t.name not in REFERENCE_TABLES),
)
_LOCK = 7242002  # the advisory lock that serialises concurrent runs (migrate takes 7242001)


class CitusError(RuntimeError):
    pass


def citus_version(conn: sa.Connection) -> str | None:
    """The citus extension's version in this database, or None."""
    return conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")).scalar()


def unique_keys_without_workspace(conn: sa.Connection) -> list[str]:
    """Every primary key or unique index of TABLES that does not include workspace_id: Citus
    cannot enforce those per shard, and refuses to distribute such a table."""
    rows = conn.execute(
        sa.text(
            """
            SELECT c.relname, i.relname
            FROM pg_index x
            JOIN pg_class c ON c.oid = x.indrelid
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
            WHERE c.relname = ANY(:tables) AND (x.indisunique OR x.indisprimary)
              AND NOT EXISTS (
                SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = :column AND a.attnum = ANY(x.indkey::int2[]))
            ORDER BY 1, 2
            """
        ),
        {"tables": list(TABLES), "column": DISTRIBUTION_COLUMN},
    )
    return [f"{table}.{index}" for table, index in rows]


def distribution(conn: sa.Connection) -> dict[str, tuple[str, str, int] | None]:
    """For each of TABLES: None while it is a local table, else (method, column, colocation id)
    as Citus records it ('h' is hash distribution)."""
    out: dict[str, tuple[str, str, int] | None] = {}
    for table in TABLES:
        row = conn.execute(
            sa.text(
                "SELECT p.partmethod, column_to_column_name(p.logicalrelid, p.partkey), p.colocationid"
                " FROM pg_dist_partition p WHERE p.logicalrelid = to_regclass(:t)"
            ),
            {"t": table},
        ).first()
        out[table] = (row[0], row[1], row[2]) if row else None
    return out


def existing_reference_tables(conn: sa.Connection) -> list[str]:
    """The tables of REFERENCE_TABLES that exist in this database."""
    return [t for t in REFERENCE_TABLES if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": t}).scalar() is not None]


def reference_problems(conn: sa.Connection) -> list[str]:
    """Each existing table of REFERENCE_TABLES that is not (yet) a Citus reference table."""
    out = []
    for table in existing_reference_tables(conn):
        method = conn.execute(
            sa.text("SELECT partmethod FROM pg_dist_partition WHERE logicalrelid = to_regclass(:t)"), {"t": table}
        ).scalar()
        if method is None:
            out.append(f"{table}: not a reference table")
        elif method != "n":  # a reference table has no distribution column ('n')
            out.append(f"{table}: distributed (method {method!r}), not a reference table")
    return out


def problems(conn: sa.Connection) -> list[str]:
    """What keeps the database from being distributed as this module wants: empty when done."""
    if citus_version(conn) is None:
        return ["the citus extension is not installed in this database (CREATE EXTENSION citus)"]
    found = distribution(conn)
    anchor = found[ANCHOR]
    out = []
    for table, dist in found.items():
        if dist is None:
            out.append(f"{table}: not distributed")
        elif dist[0] != "h" or dist[1] != DISTRIBUTION_COLUMN:
            out.append(f"{table}: distributed by {dist[1]!r} (method {dist[0]!r}), not hash by {DISTRIBUTION_COLUMN}")
        elif anchor is not None and dist[2] != anchor[2]:
            out.append(f"{table}: not colocated with {ANCHOR}")
    return out + reference_problems(conn)


def distribute(engine: sa.Engine, shard_count: int | None = None) -> list[str]:
    """Distributes every table of TABLES not yet distributed (by workspace_id, colocated with
    workspaces) and makes every existing table of REFERENCE_TABLES a reference table; returns
    the tables it changed. Raises CitusError when a table cannot be: no citus extension, a
    unique key without workspace_id, a table distributed otherwise."""
    done: list[str] = []
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if citus_version(conn) is None:
            raise CitusError("the citus extension is not installed in this database (CREATE EXTENSION citus)")
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK})
        try:
            missing = [t for t in TABLES if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": t}).scalar() is None]
            if missing:
                raise CitusError(f"tables missing (run the migrations first): {', '.join(missing)}")
            bad_keys = unique_keys_without_workspace(conn)
            if bad_keys:
                raise CitusError(f"unique keys without {DISTRIBUTION_COLUMN}: {', '.join(bad_keys)}")
            # Reference tables first: Citus lets a distributed table's foreign key reference a
            # reference table (which must then exist as one), never a reference table reference
            # a distributed one (so api_keys must not reference workspaces).
            for table in existing_reference_tables(conn):
                if conn.execute(
                    sa.text("SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass(:t)"), {"t": table}
                ).first() is not None:
                    continue  # already Citus's: reference_problems reports it if not as a reference table
                conn.execute(sa.text("SELECT create_reference_table(:t)"), {"t": table})
                done.append(table)
            for table in TABLES:
                current = distribution(conn)
                if current[table] is not None:
                    continue
                colocate = "none" if table == ANCHOR else ANCHOR
                params: dict[str, object] = {"t": table, "c": DISTRIBUTION_COLUMN, "with": colocate}
                count = ""
                if table == ANCHOR and shard_count is not None:
                    count, params["n"] = ", shard_count => :n", shard_count
                conn.execute(
                    sa.text(f"SELECT create_distributed_table(:t, :c, colocate_with => :with{count})"), params
                )
                done.append(table)
            # Rows a table held before were copied into its shards; the local copies go, once
            # no local table references them (the referencing tables first).
            for table in reversed(done):
                conn.execute(sa.text("SELECT truncate_local_data_after_distributing_table(:t)"), {"t": table})
            left = problems(conn)
            if left:
                raise CitusError("; ".join(left))
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK})
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.db.citus", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["distribute", "migrate", "check"])
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="the coordinator (DATABASE_URL)")
    p.add_argument("--shard-count", type=int, default=None, help="shards of a new colocation group (Citus's default: 32)")
    args = p.parse_args(argv)
    if not args.database_url:
        p.error("--database-url or DATABASE_URL is required (the Citus coordinator)")
    engine = create_engine(args.database_url)
    try:
        if args.command == "check":
            with engine.connect() as conn:
                left = problems(conn)
            for line in left:
                print(f"citus: {line}", file=sys.stderr)
            print(
                "citus: every table distributed by workspace_id, colocated (reference tables replicated)"
                if not left
                else "citus: not distributed"
            )
            return 1 if left else 0
        if args.command == "migrate":
            migrate(engine)
            print("citus: migrations applied")
        try:
            done = distribute(engine, args.shard_count)
        except CitusError as e:
            print(f"citus: error: {e}", file=sys.stderr)
            return 1
        print(f"citus: distributed {', '.join(done)}" if done else "citus: every table was already distributed")
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
