"""The managed API keys' table (migration 0005): create, revoke, list, and what each server
process loads. Every change bumps api_key_versions in its own transaction (the row lock orders
concurrent changes), which is the one cheap row the processes poll (service.api.key_cache).
Rare statements: SQLAlchemy Core, compiled per call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from service.api.key_secrets import NewKey
from service.db.schema import api_key_versions, api_keys, workspaces

_DIALECT = postgresql.dialect(paramstyle="pyformat")  # type: ignore[call-arg]

_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.admin,
    api_keys.c.workspace_ids,
    api_keys.c.description,
    api_keys.c.created_at,
    api_keys.c.expires_at,
    api_keys.c.revoked_at,
)


@dataclass(frozen=True)
class StoredKey:
    """A key as listed (never its secret or digest)."""

    key_id: str
    admin: bool
    workspace_ids: tuple[str, ...]
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class LoadedKey:
    """A key as each process holds it to check calls."""

    key_id: str
    salt: bytes
    digest: bytes
    admin: bool
    workspace_ids: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None


def _sql(statement: sa.Executable) -> tuple[str, dict[str, Any]]:
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    return str(compiled), dict(compiled.params)


async def _rows(conn: psycopg.AsyncConnection, statement: sa.Executable) -> list[Sequence[Any]]:
    sql, params = _sql(statement)
    cursor = await conn.execute(sql, params)
    return await cursor.fetchall() if cursor.description else []


def _stored(row: Sequence[Any]) -> StoredKey:
    return StoredKey(row[0], row[1], tuple(row[2]), row[3], row[4], row[5], row[6])


_BUMP = api_key_versions.update().values(version=api_key_versions.c.version + 1)


async def missing_workspaces(conn: psycopg.AsyncConnection, workspace_ids: Sequence[str]) -> list[str]:
    rows = await _rows(
        conn, sa.select(workspaces.c.workspace_id).where(workspaces.c.workspace_id.in_(list(workspace_ids)))
    )
    found = {row[0] for row in rows}
    return [w for w in workspace_ids if w not in found]


async def create(
    conn: psycopg.AsyncConnection,
    key: NewKey,
    *,
    admin: bool,
    workspace_ids: Sequence[str],
    description: str,
    now: datetime,
    expires_at: datetime | None,
) -> tuple[StoredKey, list[str]]:
    """Stores the key unless a workspace it names does not exist; returns it and the missing
    workspaces (nothing stored when there are any). The workspaces are checked in the same
    transaction (FOR KEY SHARE: none can be removed until it commits)."""
    async with conn.transaction():
        if workspace_ids:
            # One statement per workspace, in order: on Citus each locks rows of one shard (a
            # locking read over several shards is refused there: CreateApiKey was INTERNAL).
            found: set[str] = set()
            for workspace_id in sorted(set(workspace_ids)):
                locked = await _rows(
                    conn,
                    sa.select(workspaces.c.workspace_id)
                    .where(workspaces.c.workspace_id == workspace_id)
                    .with_for_update(read=True, key_share=True),
                )
                found.update(row[0] for row in locked)
            missing = [w for w in workspace_ids if w not in found]
            if missing:
                return StoredKey(key.key_id, admin, tuple(workspace_ids), description, now, expires_at, None), missing
        rows = await _rows(
            conn,
            api_keys.insert()
            .values(
                key_id=key.key_id,
                salt=key.salt,
                digest=key.digest,
                admin=admin,
                workspace_ids=list(workspace_ids),
                description=description,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(*_COLUMNS),
        )
        await _rows(conn, _BUMP)
    return _stored(rows[0]), []


async def revoke(conn: psycopg.AsyncConnection, key_id: str, now: datetime) -> StoredKey | None:
    """Revokes the key (a revoked key keeps its first revocation time); None when unknown."""
    async with conn.transaction():
        rows = await _rows(
            conn,
            api_keys.update()
            .where(api_keys.c.key_id == key_id)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, now))
            .returning(*_COLUMNS),
        )
        if not rows:
            return None
        await _rows(conn, _BUMP)
    return _stored(rows[0])


async def page(
    conn: psycopg.AsyncConnection, *, workspace_id: str, after: str, limit: int, show_revoked: bool
) -> list[StoredKey]:
    """Keys in key_id order after `after`, at most `limit`."""
    query = sa.select(*_COLUMNS).where(api_keys.c.key_id > after).order_by(api_keys.c.key_id).limit(limit)
    if workspace_id:
        query = query.where(sa.literal(workspace_id) == sa.any_(api_keys.c.workspace_ids))
    if not show_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_stored(row) for row in await _rows(conn, query)]


async def version(conn: psycopg.AsyncConnection) -> int:
    rows = await _rows(conn, sa.select(api_key_versions.c.version))
    return int(rows[0][0]) if rows else 0


async def load_all(conn: psycopg.AsyncConnection) -> tuple[int, list[LoadedKey]]:
    """The version and every key, read in one snapshot."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        current = await version(conn)
        rows = await _rows(
            conn,
            sa.select(
                api_keys.c.key_id,
                api_keys.c.salt,
                api_keys.c.digest,
                api_keys.c.admin,
                api_keys.c.workspace_ids,
                api_keys.c.expires_at,
                api_keys.c.revoked_at,
            ),
        )
    keys = [LoadedKey(r[0], bytes(r[1]), bytes(r[2]), r[3], frozenset(r[4]), r[5], r[6]) for r in rows]
    return current, keys
