"""Reads and writes people and workspaces on one connection, inside the unit of work's
transaction. Stores and finds only: every decision is the rules core's. It never begins,
commits or rolls back: the unit of work (service.db.unit_of_work) owns the transaction.

Writes to people are staged and sent by the unit of work together with its COMMIT (one round
trip); the rare statements (a settings change, R2's checks) run when called."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from service.db.keys import Keys, keys_for
from service.db.schema import people, workspaces
from service.db.statements import (
    DELETE_PEOPLE_SQL,
    INSERT_PERSON_SQL,
    LOAD_SQL,
    SET_TIMEOUTS_SQL,
    SETTINGS_QUERIES,
    UPDATE_PERSON_SQL,
    Lock,
)
from service.domain import Mode, Person, Settings
from service.rules.decisions import Decision, Lookup, Write
from service.rules.modes import SAMPLE_SIZE, Check, CheckResult
from service.rules.validation import email_key

_DIALECT = psycopg_dialect.dialect()

__all__ = ["Lock", "Repository"]


def _settings(row: Sequence[Any]) -> Settings:
    """From the SETTINGS_COLUMNS of a driver row."""
    return Settings(row[0], Mode(row[1]), row[2], row[3], row[4])


def _settings_values(settings: Settings) -> dict[str, object]:
    return {
        "identifier_mode": settings.mode.value,
        "email_updatable_by_id": settings.email_updatable_by_id,
        "sole_identifier_updatable": settings.sole_identifier_updatable,
        "auto_merge": settings.auto_merge,
    }


def _compiled(statement: sa.Executable) -> tuple[str, dict[str, Any]]:
    """A rare statement as the driver's SQL and its bound values."""
    compiled = statement.compile(dialect=_DIALECT)
    return str(compiled), dict(compiled.params)


def _person_values(person: Person, keys: Keys) -> dict[str, object]:
    """The columns that an insert sets and an update may change."""
    return {
        "id": person.id,
        "email": person.email,
        "email_norm": keys.email_norm,
        "id_key": keys.id_key,
        "email_key": keys.email_key,
        "attributes": Jsonb(dict(person.attributes)),
        "updated_at": person.updated_at,
    }


class Repository:
    def __init__(self, conn: psycopg.AsyncConnection, statement_timeout_ms: int | None = None):
        self.conn = conn
        # Sent with the first statement: caps this transaction's statements and lock waits.
        self._timeout_ms = statement_timeout_ms
        self.staged: list[tuple[str, dict[str, Any]]] = []
        self.wrote = False  # whether a statement that writes has run (staged ones are not sent yet)

    async def _send_timeouts(self, cur: psycopg.AsyncCursor) -> None:
        if self._timeout_ms is not None:
            await cur.execute(SET_TIMEOUTS_SQL, {"ms": str(self._timeout_ms)})
            self._timeout_ms = None

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        await cur.execute(sql, params)
        return await cur.fetchall()

    async def _run(self, statement: sa.Executable, *, returns_rows: bool = True, writes: bool = False) -> list[tuple]:
        sql, params = _compiled(statement)
        self.wrote |= writes
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        await cur.execute(sql, params)
        return await cur.fetchall() if returns_rows else []

    # --- people ---

    async def load(self, workspace_id: str, lookup: Lookup, lock: Lock) -> tuple[Settings | None, list[Person]]:
        """The workspace's settings and everyone the lookup names, in one statement (one round
        trip, with BEGIN in a pipeline). With Lock.SHARE the workspace's gate and settings row
        are held shared (R2), then the people locked FOR UPDATE in cio_id order, so that two
        calls locking the same people queue up instead of deadlocking."""
        rows = await self._fetch(
            LOAD_SQL[lock],
            {
                "workspace_id": workspace_id,
                "cio_ids": list(lookup.cio_ids),
                "id_keys": list(lookup.ids),
                "email_keys": [email_key(email) for email in lookup.emails],
            },
        )
        if not rows:
            return None, []
        # Columns: the settings (5), then the person (6), absent when nobody matched.
        return _settings(rows[0]), [Person(*row[5:]) for row in rows if row[5] is not None]

    def stage(self, settings: Settings, decision: Decision) -> None:
        """Stages what a decision says, sent with the COMMIT: a merge's secondaries are deleted
        first, freeing their identifiers for the primary (R13)."""
        ws = settings.workspace_id
        deleted = list(decision.deleted)
        if decision.write == Write.DELETE:
            deleted.append(decision.person.cio_id)
        if deleted:
            self.staged.append((DELETE_PEOPLE_SQL, {"workspace_id": ws, "cio_ids": deleted}))
        person = decision.person
        if decision.write == Write.INSERT:
            values = _person_values(person, keys_for(settings.mode, person))
            self.staged.append(
                (INSERT_PERSON_SQL, {"workspace_id": ws, "cio_id": person.cio_id, "created_at": person.created_at, **values})
            )
        elif decision.write == Write.UPDATE:
            values = _person_values(person, keys_for(settings.mode, person))
            self.staged.append((UPDATE_PERSON_SQL, {"key_workspace_id": ws, "key_cio_id": person.cio_id, **values}))

    async def send_staged(self) -> None:
        """Queues the staged writes (the unit of work sends them with its COMMIT)."""
        if not self.staged:
            return
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        for sql, params in self.staged:
            await cur.execute(sql, params)
        self.staged.clear()

    # --- workspaces ---

    async def settings(self, workspace_id: str, lock: Lock = Lock.NONE) -> Settings | None:
        rows = await self._run(SETTINGS_QUERIES[lock].params(workspace_id=workspace_id))
        return _settings(rows[0]) if rows else None

    async def create_workspace(self, settings: Settings, now: datetime) -> bool:
        """False when the workspace exists already."""
        statement = (
            pg_insert(workspaces)
            .values(workspace_id=settings.workspace_id, created_at=now, updated_at=now, **_settings_values(settings))
            .on_conflict_do_nothing(index_elements=[workspaces.c.workspace_id])
            .returning(workspaces.c.workspace_id)
        )
        return bool(await self._run(statement, writes=True))

    async def update_settings(self, settings: Settings, now: datetime) -> None:
        await self._run(
            workspaces.update()
            .where(workspaces.c.workspace_id == settings.workspace_id)
            .values(updated_at=now, **_settings_values(settings)),
            returns_rows=False,
            writes=True,
        )

    async def run_checks(self, workspace_id: str, checks: Iterable[Check]) -> dict[Check, CheckResult]:
        """Counts the people who break each check of R2, with a sample of their cio_ids."""
        return {check: await self._run_check(workspace_id, check) for check in checks}

    async def _run_check(self, workspace_id: str, check: Check) -> CheckResult:
        in_ws = people.c.workspace_id == workspace_id
        if check == Check.EVERY_PERSON_HAS_ID:
            offending = sa.select(people.c.cio_id).where(in_ws, people.c.id.is_(None))
        elif check == Check.EVERY_PERSON_HAS_EMAIL:
            offending = sa.select(people.c.cio_id).where(in_ws, people.c.email.is_(None))
        else:
            column = people.c.id if check == Check.IDS_UNIQUE else people.c.email_norm
            shared = (
                sa.select(column).where(in_ws, column.is_not(None)).group_by(column).having(sa.func.count() > 1)
            )
            offending = sa.select(people.c.cio_id).where(in_ws, column.in_(shared))
        sub = offending.subquery()
        (count,), = await self._run(sa.select(sa.func.count()).select_from(sub))
        if not count:
            return CheckResult(0)
        sample = await self._run(sa.select(sub.c.cio_id).order_by(sub.c.cio_id).limit(SAMPLE_SIZE))
        return CheckResult(count, tuple(row[0] for row in sample))

    async def rekey(self, workspace_id: str, id_is_identifier: bool, email_is_identifier: bool) -> None:
        """Sets the unique keys of every person for a new mode (R2, after its checks passed)."""
        await self._run(
            people.update()
            .where(people.c.workspace_id == workspace_id)
            .values(
                id_key=people.c.id if id_is_identifier else None,
                email_key=people.c.email_norm if email_is_identifier else None,
            ),
            returns_rows=False,
            writes=True,
        )
