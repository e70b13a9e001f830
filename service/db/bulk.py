"""The set-based writes of an import batch (R80): a batch's net writes (service.db.overlay) and
its events as a few statements over arrays, instead of statements per row. They apply what the
rules core decided; they decide nothing. Every statement names one workspace (Citus).

The order avoids a unique key held for a moment by two people (the indexes check each row at
once): the deleted first, then the keys of the people whose keys change cleared, then every
changed person written, then the new people inserted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.db.keys import Keys
from service.db.overlay import NetWrites
from service.domain import Call, Person
from service.db.event_rows import event_params
from service.rules.events import Event

# The rows travel as one JSON document per statement: encoded by json's C encoder and decoded
# by Postgres (on its own core), where arrays of text would be escaped element by element in
# Python by the driver.
_PERSON_ROWS = """jsonb_to_recordset(%(people)s::jsonb) AS u(
    cio_id text, id text, email text, email_norm text, id_key text, email_key text, attributes jsonb,
    created_at timestamptz, updated_at timestamptz)"""

DELETE_SQL = "DELETE FROM people WHERE workspace_id = %(workspace_id)s AND cio_id = ANY(%(cio_ids)s::text[])"
CLEAR_KEYS_SQL = (
    "UPDATE people SET id_key = NULL, email_key = NULL"
    " WHERE workspace_id = %(workspace_id)s AND cio_id = ANY(%(cio_ids)s::text[])"
)
UPDATE_SQL = f"""UPDATE people AS p SET
    id = u.id, email = u.email, email_norm = u.email_norm, id_key = u.id_key, email_key = u.email_key,
    attributes = u.attributes, updated_at = u.updated_at
FROM {_PERSON_ROWS}
WHERE p.workspace_id = %(workspace_id)s AND p.cio_id = u.cio_id"""
# The rows are joined to their workspace's row (which the batch holds FOR SHARE): an INSERT ...
# SELECT that reads a colocated table by the workspace is sent whole to the workspace's worker on
# Citus, where one reading only a function would be run through the coordinator (its rows copied
# to the shard, and a unique violation reported as an internal error, not retried as a race).
INSERT_SQL = f"""INSERT INTO people
    (workspace_id, cio_id, id, email, email_norm, id_key, email_key, attributes, created_at, updated_at)
SELECT w.workspace_id, u.cio_id, u.id, u.email, u.email_norm, u.id_key, u.email_key, u.attributes,
    u.created_at, u.updated_at
FROM workspaces AS w, {_PERSON_ROWS}
WHERE w.workspace_id = %(workspace_id)s"""

# R51 for many events at once: the counter advanced by their number (its row lock held to the
# COMMIT, as for one event), then the events numbered after its previous value, in order.
TAKE_SEQUENCES_SQL = """INSERT INTO event_sequences AS c (workspace_id, last_sequence, last_time)
VALUES (%(workspace_id)s, %(count)s, clock_timestamp())
ON CONFLICT (workspace_id) DO UPDATE SET
    last_sequence = c.last_sequence + excluded.last_sequence, last_time = excluded.last_time"""
APPEND_EVENTS_SQL = """INSERT INTO person_events
    (workspace_id, sequence, cio_id, kind, merged_cio_id, undoes, rpc, request_id, commit_time, body)
SELECT c.workspace_id, c.last_sequence - %(count)s + e.n, e.cio_id, e.kind, e.merged_cio_id, e.undoes,
    %(rpc)s, %(request_id)s, c.last_time, e.body
FROM event_sequences AS c,
    jsonb_to_recordset(%(events)s::jsonb) AS e(n bigint, cio_id text, kind text, merged_cio_id text, undoes bigint, body jsonb)
WHERE c.workspace_id = %(workspace_id)s"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _people_params(workspace_id: str, people: list[tuple[Person, Keys]]) -> dict[str, Any]:
    rows = [
        {
            "cio_id": p.cio_id, "id": p.id, "email": p.email, "email_norm": k.email_norm, "id_key": k.id_key,
            "email_key": k.email_key, "attributes": p.attributes, "created_at": p.created_at.isoformat(),
            "updated_at": p.updated_at.isoformat(),
        }  # fmt: skip
        for p, k in people
    ]
    return {"workspace_id": workspace_id, "people": _dumps(rows)}


def people_statements(workspace_id: str, writes: NetWrites) -> list[tuple[str, dict[str, Any]]]:
    statements: list[tuple[str, dict[str, Any]]] = []
    if writes.deleted:
        statements.append((DELETE_SQL, {"workspace_id": workspace_id, "cio_ids": writes.deleted}))
    if writes.rekeyed:
        statements.append((CLEAR_KEYS_SQL, {"workspace_id": workspace_id, "cio_ids": writes.rekeyed}))
    if writes.updated:
        statements.append((UPDATE_SQL, _people_params(workspace_id, writes.updated)))
    if writes.inserted:
        statements.append((INSERT_SQL, _people_params(workspace_id, writes.inserted)))
    return statements


def event_statements(workspace_id: str, events: list[Event], call: Call) -> list[tuple[str, dict[str, Any]]]:
    if not events:
        return []
    rows = [{"n": n, **event_params(event)} for n, event in enumerate(events, 1)]
    count = len(rows)
    return [
        (TAKE_SEQUENCES_SQL, {"workspace_id": workspace_id, "count": count}),
        (
            APPEND_EVENTS_SQL,
            {
                "workspace_id": workspace_id,
                "count": count,
                "rpc": call.method,
                "request_id": call.request_id,
                "events": _dumps(rows),
            },
        ),
    ]


# --- An import's progress (R81), committed with each batch ---
START_IMPORT_SQL = """INSERT INTO imports (workspace_id, import_id, fingerprint, created_at, updated_at)
VALUES (%(workspace_id)s, %(import_id)s, %(fingerprint)s, clock_timestamp(), clock_timestamp())
ON CONFLICT (workspace_id, import_id) DO NOTHING"""
IMPORT_SQL = """SELECT fingerprint, rows_done, applied, refused, finished FROM imports
WHERE workspace_id = %(workspace_id)s AND import_id = %(import_id)s"""
# Taken first in each batch's transaction: two streams of one import queue here, and the second
# finds that the first moved on.
LOCK_IMPORT_SQL = IMPORT_SQL + " FOR UPDATE"
# statement_timestamp(), not clock_timestamp(): Citus refuses a VOLATILE function in an UPDATE of
# a distributed table (every streamed import failed INTERNAL there), a STABLE one it evaluates.
ADVANCE_IMPORT_SQL = """UPDATE imports SET rows_done = %(rows_done)s, applied = applied + %(applied)s,
    refused = refused + %(refused)s, finished = %(finished)s, updated_at = statement_timestamp()
WHERE workspace_id = %(workspace_id)s AND import_id = %(import_id)s"""
# Joined to the import's row (locked by the batch), for the same reason as INSERT_SQL.
STORE_REFUSALS_SQL = """INSERT INTO import_refusals (workspace_id, import_id, row_number, status)
SELECT i.workspace_id, i.import_id, r.row_number, r.status
FROM imports AS i, unnest(%(rows)s::bigint[], %(statuses)s::bytea[]) AS r(row_number, status)
WHERE i.workspace_id = %(workspace_id)s AND i.import_id = %(import_id)s"""
REFUSALS_SQL = """SELECT row_number, status FROM import_refusals
WHERE workspace_id = %(workspace_id)s AND import_id = %(import_id)s AND row_number > %(after)s
ORDER BY row_number LIMIT %(limit)s"""
# Imports are kept a week after their last batch (long enough to resume), then purged by the
# retention clean-up, refusals first, a bounded batch per transaction.
PURGE_IMPORT_REFUSALS_SQL = """DELETE FROM import_refusals AS r USING (
    SELECT r2.import_id, r2.row_number FROM import_refusals AS r2 JOIN imports AS i
        ON i.workspace_id = r2.workspace_id AND i.import_id = r2.import_id
    WHERE r2.workspace_id = %(workspace_id)s AND i.workspace_id = %(workspace_id)s AND i.updated_at < %(cutoff)s
    LIMIT %(limit)s) AS old
WHERE r.workspace_id = %(workspace_id)s AND r.import_id = old.import_id AND r.row_number = old.row_number
RETURNING 1"""
PURGE_IMPORTS_SQL = """DELETE FROM imports AS i USING (
    SELECT import_id FROM imports AS i2 WHERE i2.workspace_id = %(workspace_id)s AND i2.updated_at < %(cutoff)s
        AND NOT EXISTS (SELECT 1 FROM import_refusals AS r
                        WHERE r.workspace_id = %(workspace_id)s AND r.import_id = i2.import_id)
    LIMIT %(limit)s) AS old
WHERE i.workspace_id = %(workspace_id)s AND i.import_id = old.import_id
RETURNING 1"""


@dataclass(frozen=True)
class ImportState:
    """How far an import got: rows 1..rows_done have their results committed."""

    fingerprint: bytes
    rows_done: int
    applied: int
    refused: int
    finished: bool


def import_state(row: Any) -> ImportState:
    return ImportState(bytes(row[0]), row[1], row[2], row[3], row[4])
