"""Reads and writes people and workspaces on one connection, inside the caller's transaction.
Stores and finds only: every decision is the rules core's."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from service.db.schema import people, workspaces
from service.domain import Mode, Person, Settings
from service.rules.changes import Lookup
from service.rules.modes import SAMPLE_SIZE, Check, CheckResult, Keys

_TEXT_ARRAY = ARRAY(sa.Text)
_PERSON_COLUMNS = (
    people.c.cio_id,
    people.c.id,
    people.c.email,
    people.c.attributes,
    people.c.created_at,
    people.c.updated_at,
)
_SETTINGS_COLUMNS = (
    workspaces.c.workspace_id,
    workspaces.c.identifier_mode,
    workspaces.c.email_updatable_by_id,
    workspaces.c.sole_identifier_updatable,
    workspaces.c.auto_merge,
)


class Lock(enum.Enum):
    NONE = "NONE"
    # Writes to people hold the workspace's settings steady: FOR SHARE lets writes run together
    # but waits for (and blocks) a settings change, so R2's validation sees every write.
    SHARE = "SHARE"
    UPDATE = "UPDATE"


def _person(row: sa.Row) -> Person:
    return Person(row.cio_id, row.id, row.email, row.attributes, row.created_at, row.updated_at)


def _settings(row: sa.Row) -> Settings:
    return Settings(
        workspace_id=row.workspace_id,
        mode=Mode(row.identifier_mode),
        email_updatable_by_id=row.email_updatable_by_id,
        sole_identifier_updatable=row.sole_identifier_updatable,
        auto_merge=row.auto_merge,
    )


def _settings_values(settings: Settings) -> dict[str, object]:
    return {
        "identifier_mode": settings.mode.value,
        "email_updatable_by_id": settings.email_updatable_by_id,
        "sole_identifier_updatable": settings.sole_identifier_updatable,
        "auto_merge": settings.auto_merge,
    }


class Repository:
    def __init__(self, conn: sa.Connection):
        self.conn = conn

    # --- workspaces ---

    def settings(self, workspace_id: str, lock: Lock = Lock.NONE) -> Settings | None:
        row = self.conn.execute(_SETTINGS_QUERIES[lock], {"workspace_id": workspace_id}).first()
        return _settings(row) if row is not None else None

    def create_workspace(self, settings: Settings, now: datetime) -> bool:
        """False when the workspace exists already."""
        stmt = (
            pg_insert(workspaces)
            .values(workspace_id=settings.workspace_id, created_at=now, updated_at=now, **_settings_values(settings))
            .on_conflict_do_nothing(index_elements=[workspaces.c.workspace_id])
            .returning(workspaces.c.workspace_id)
        )
        return self.conn.execute(stmt).first() is not None

    def update_settings(self, settings: Settings, now: datetime) -> None:
        self.conn.execute(
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
        count = self.conn.execute(sa.select(sa.func.count()).select_from(sub)).scalar_one()
        sample = self.conn.execute(
            sa.select(sub.c.cio_id).order_by(sub.c.cio_id).limit(SAMPLE_SIZE)
        ).scalars().all() if count else []
        return CheckResult(count, tuple(sample))

    def rekey(self, workspace_id: str, id_is_identifier: bool, email_is_identifier: bool) -> None:
        """Sets the unique keys of every person for a new mode (R2, after its checks passed)."""
        self.conn.execute(
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
        rows = self.conn.execute(_LOAD[lock], params).all()
        if not rows:
            return None, []
        return _settings(rows[0]), [_person(row) for row in rows if row.cio_id is not None]

    def insert_person(self, workspace_id: str, person: Person, keys: Keys) -> None:
        values = _person_values(person, keys)
        self.conn.execute(
            _INSERT_PERSON,
            {"workspace_id": workspace_id, "cio_id": person.cio_id, "created_at": person.created_at, **values},
        )

    def update_person(self, workspace_id: str, person: Person, keys: Keys) -> None:
        values = _person_values(person, keys)
        self.conn.execute(_UPDATE_PERSON, {"key_workspace_id": workspace_id, "key_cio_id": person.cio_id, **values})

    def delete_people(self, workspace_id: str, cio_ids: Iterable[str]) -> None:
        ids = list(cio_ids)
        if ids:
            self.conn.execute(_DELETE_PEOPLE, {"workspace_id": workspace_id, "cio_ids": ids})


# The hot statements are built once: each call only binds values (and psycopg prepares them
# server-side after a few uses).
_SETTINGS_QUERY = sa.select(*_SETTINGS_COLUMNS).where(workspaces.c.workspace_id == sa.bindparam("workspace_id"))
_SETTINGS_QUERIES = {
    Lock.NONE: _SETTINGS_QUERY,
    Lock.SHARE: _SETTINGS_QUERY.with_for_update(read=True),
    Lock.UPDATE: _SETTINGS_QUERY.with_for_update(key_share=True),  # FOR NO KEY UPDATE
}
_FIND_PEOPLE = (
    sa.select(*_PERSON_COLUMNS)
    .where(
        people.c.workspace_id == sa.bindparam("workspace_id"),
        sa.or_(
            people.c.cio_id == sa.any_(sa.bindparam("cio_ids", type_=_TEXT_ARRAY)),
            people.c.id_key == sa.any_(sa.bindparam("id_keys", type_=_TEXT_ARRAY)),
            people.c.email_key == sa.any_(sa.bindparam("email_keys", type_=_TEXT_ARRAY)),
        ),
    )
    .order_by(people.c.cio_id)
)

def _load_statement(lock: Lock) -> sa.Select:
    settings = _SETTINGS_QUERIES[lock].cte("ws")
    found = (_FIND_PEOPLE.with_for_update() if lock != Lock.NONE else _FIND_PEOPLE).lateral("p")
    return sa.select(settings, found).select_from(settings.outerjoin(found, sa.true()))


_LOAD = {lock: _load_statement(lock) for lock in (Lock.NONE, Lock.SHARE)}
# Executed with a dict of column values: SQLAlchemy binds each named column.
_INSERT_PERSON = people.insert()
_UPDATE_PERSON = people.update().where(
    people.c.workspace_id == sa.bindparam("key_workspace_id"), people.c.cio_id == sa.bindparam("key_cio_id")
)
_DELETE_PEOPLE = people.delete().where(
    people.c.workspace_id == sa.bindparam("workspace_id"),
    people.c.cio_id == sa.any_(sa.bindparam("cio_ids", type_=_TEXT_ARRAY)),
)


def _person_values(person: Person, keys: Keys) -> dict[str, object]:
    """The columns that an insert sets and an update may change."""
    return {
        "id": person.id,
        "email": person.email,
        "email_norm": keys.email_norm,
        "id_key": keys.id_key,
        "email_key": keys.email_key,
        "attributes": dict(person.attributes),
        "updated_at": person.updated_at,
    }
