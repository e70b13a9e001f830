"""The SQL of every hot statement, written as SQLAlchemy Core and compiled once to the driver's
SQL (psycopg's %(name)s parameters). Each call only binds values; psycopg prepares them
server-side after a few uses."""

from __future__ import annotations

import enum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from service.db.schema import people, workspaces

_TEXT_ARRAY = ARRAY(sa.Text)
PERSON_COLUMNS = (
    people.c.cio_id,
    people.c.id,
    people.c.email,
    people.c.attributes,
    people.c.created_at,
    people.c.updated_at,
)
SETTINGS_COLUMNS = (
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


# The hot statements are built once: each call only binds values (and psycopg prepares them
# server-side after a few uses).
SETTINGS_QUERY = sa.select(*SETTINGS_COLUMNS).where(workspaces.c.workspace_id == sa.bindparam("workspace_id"))

# A settings change must not wait for ever behind a stream of writes: row locks let each new FOR
# SHARE pass a waiting FOR NO KEY UPDATE, but Postgres queues advisory locks in order. So writes
# also take the workspace's gate shared and a settings change takes it exclusively, first, in
# the same statement as the row lock (which, taken after the gate, sees the latest settings).
_GATE_CLASS = sa.literal_column("7242")  # the advisory lock namespace of workspace gates


def _gated(query: sa.Select, lock_function: str) -> sa.Select:
    gate = sa.select(
        getattr(sa.func, lock_function)(_GATE_CLASS, sa.func.hashtext(sa.bindparam("workspace_id")))
    ).cte("gate")
    return query.where(sa.exists(sa.select(sa.literal_column("1")).select_from(gate)))


SETTINGS_QUERIES = {
    Lock.NONE: SETTINGS_QUERY,
    Lock.SHARE: _gated(SETTINGS_QUERY, "pg_advisory_xact_lock_shared").with_for_update(read=True),
    Lock.UPDATE: _gated(SETTINGS_QUERY, "pg_advisory_xact_lock").with_for_update(key_share=True),  # FOR NO KEY UPDATE
}
_FIND_PEOPLE = (
    sa.select(*PERSON_COLUMNS)
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
    settings = SETTINGS_QUERIES[lock].cte("ws")
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

# The same statements as SQL for the driver (psycopg's %(name)s parameters), compiled once.
_DIALECT = psycopg_dialect.dialect()
PERSON_FIELDS = ["id", "email", "email_norm", "id_key", "email_key", "attributes", "updated_at"]


def _sql(statement: sa.Executable, column_keys: list[str] | None = None) -> str:
    return str(statement.compile(dialect=_DIALECT, column_keys=column_keys))


LOAD_SQL = {lock: _sql(statement) for lock, statement in _LOAD.items()}
INSERT_PERSON_SQL = _sql(_INSERT_PERSON, ["workspace_id", "cio_id", "created_at", *PERSON_FIELDS])
UPDATE_PERSON_SQL = _sql(_UPDATE_PERSON, PERSON_FIELDS)
DELETE_PEOPLE_SQL = _sql(_DELETE_PEOPLE)
SET_TIMEOUTS_SQL = (
    "SELECT set_config('statement_timeout', %(ms)s, true), set_config('lock_timeout', %(ms)s, true)"
)
