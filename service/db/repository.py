"""Reads and writes people and workspaces on one connection, inside the caller's transaction.
Stores and finds only: every decision is the rules core's."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert

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
from service.rules.changes import Lookup
from service.db.keys import Keys
from service.rules.modes import SAMPLE_SIZE, Check, CheckResult

def _settings(row: Sequence[Any]) -> Settings:
    """From the _SETTINGS_COLUMNS of a row (a SQLAlchemy row or a driver tuple)."""
    return Settings(row[0], Mode(row[1]), row[2], row[3], row[4])


def _settings_values(settings: Settings) -> dict[str, object]:
    return {
        "identifier_mode": settings.mode.value,
        "email_updatable_by_id": settings.email_updatable_by_id,
        "sole_identifier_updatable": settings.sole_identifier_updatable,
        "auto_merge": settings.auto_merge,
    }


class Repository:
    """On one SQLAlchemy connection. The hot statements (the load and the writes of every call)
    are SQLAlchemy Core statements compiled once and run on the psycopg connection underneath,
    in pipeline mode: BEGIN travels with the load, and the writes with COMMIT, so a write call
    costs two round trips, and none of SQLAlchemy's per-statement work. The rest runs through
    SQLAlchemy as usual."""

    def __init__(self, conn: sa.Connection, statement_timeout_ms: int | None = None):
        self.conn = conn
        self.driver: psycopg.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        # Sent with the first statement: caps this transaction's statements and lock waits.
        self.statement_timeout_ms = statement_timeout_ms

    # --- workspaces ---

    def settings(self, workspace_id: str, lock: Lock = Lock.NONE) -> Settings | None:
        row = self._execute(SETTINGS_QUERIES[lock], {"workspace_id": workspace_id}).first()
        return _settings(row) if row is not None else None

    def create_workspace(self, settings: Settings, now: datetime) -> bool:
        """False when the workspace exists already."""
        stmt = (
            pg_insert(workspaces)
            .values(workspace_id=settings.workspace_id, created_at=now, updated_at=now, **_settings_values(settings))
            .on_conflict_do_nothing(index_elements=[workspaces.c.workspace_id])
            .returning(workspaces.c.workspace_id)
        )
        return self._execute(stmt).first() is not None

    def update_settings(self, settings: Settings, now: datetime) -> None:
        self._execute(
            workspaces.update()
            .where(workspaces.c.workspace_id == settings.workspace_id)
            .values(updated_at=now, **_settings_values(settings))
        )

    def run_checks(self, workspace_id: str, checks: Iterable[Check]) -> dict[Check, CheckResult]:
        """Counts the people who break each check of R2, with a sample of their cio_ids."""
        return {check: self._run_check(workspace_id, check) for check in checks}

    def _run_check(self, workspace_id: str, check: Check) -> CheckResult:
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
        count = self._execute(sa.select(sa.func.count()).select_from(sub)).scalar_one()
        sample = self._execute(
            sa.select(sub.c.cio_id).order_by(sub.c.cio_id).limit(SAMPLE_SIZE)
        ).scalars().all() if count else []
        return CheckResult(count, tuple(sample))

    def rekey(self, workspace_id: str, id_is_identifier: bool, email_is_identifier: bool) -> None:
        """Sets the unique keys of every person for a new mode (R2, after its checks passed)."""
        self._execute(
            people.update()
            .where(people.c.workspace_id == workspace_id)
            .values(
                id_key=people.c.id if id_is_identifier else None,
                email_key=people.c.email_norm if email_is_identifier else None,
            )
        )

    # --- people ---

    def load(self, workspace_id: str, lookup: Lookup, lock: Lock) -> tuple[Settings | None, list[Person]]:
        """The workspace's settings and everyone the lookup names, in one statement (one round
        trip). With Lock.SHARE the settings row is locked FOR SHARE first (held steady against a
        settings change, R2), then the people FOR UPDATE in cio_id order, so that two calls
        locking the same people queue up instead of deadlocking."""
        params = {
            "workspace_id": workspace_id,
            "cio_ids": list(lookup.cio_ids),
            "id_keys": list(lookup.id_keys),
            "email_keys": list(lookup.email_keys),
        }
        with self.driver.cursor() as cur:
            if self.driver.autocommit and self.statement_timeout_ms is None:
                cur.execute(LOAD_SQL[lock], params)  # a single statement: nothing to pipeline
            else:
                with self.driver.pipeline():
                    self._send_timeouts(cur)
                    cur.execute(LOAD_SQL[lock], params)
            rows = cur.fetchall()
        if not rows:
            return None, []
        # Columns: the settings (5), then the person (6), absent when nobody matched.
        return _settings(rows[0]), [Person(*row[5:]) for row in rows if row[5] is not None]

    def _send_timeouts(self, cur: psycopg.Cursor) -> None:
        """Before the transaction's first statement (and with it, in a pipeline), if the call
        needs a cap other than the session's."""
        if self.statement_timeout_ms is not None:
            cur.execute(SET_TIMEOUTS_SQL, {"ms": str(self.statement_timeout_ms)})
            self.statement_timeout_ms = None

    def _execute(self, statement: sa.Executable, params: dict | None = None) -> sa.CursorResult:
        """A statement through SQLAlchemy (the rare calls)."""
        if self.statement_timeout_ms is not None:
            with self.driver.cursor() as cur:
                self._send_timeouts(cur)
        return self.conn.execute(statement, params)

    def write_and_commit(
        self, workspace_id: str, *, delete: Iterable[str] = (), insert: Iterable[tuple[Person, Keys]] = (),
        update: Iterable[tuple[Person, Keys]] = (),
    ) -> None:
        """The call's last step: its writes, in this order, and the COMMIT, sent together."""
        with self.driver.cursor() as cur, self.driver.pipeline():
            self._send_timeouts(cur)
            ids = list(delete)
            if ids:
                cur.execute(DELETE_PEOPLE_SQL, {"workspace_id": workspace_id, "cio_ids": ids})
            for person, keys in insert:
                values = _person_values(person, keys)
                cur.execute(
                    INSERT_PERSON_SQL,
                    {"workspace_id": workspace_id, "cio_id": person.cio_id, "created_at": person.created_at, **values},
                )
            for person, keys in update:
                values = _person_values(person, keys)
                cur.execute(
                    UPDATE_PERSON_SQL, {"key_workspace_id": workspace_id, "key_cio_id": person.cio_id, **values}
                )
            self.driver.commit()


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


