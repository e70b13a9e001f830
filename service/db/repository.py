"""Reads and writes people and workspaces on one connection, inside the unit of work's
transaction. Stores and finds only: every decision is the rules core's. It never begins,
commits or rolls back: the unit of work (service.db.unit_of_work) owns the transaction.

Writes to people are staged and sent by the unit of work together with its COMMIT (one round
trip); the rare statements (a settings change, R2's checks) run when called."""

from __future__ import annotations

from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Sequence

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from service.db import bulk
from service.db import statements as sql
from service.db.event_rows import event_params, recorded
from service.db.keys import Keys, keys_for
from service.db.overlay import NetWrites
from service.db.schema import people, workspaces
from service.db.statements import (
    DELETE_PEOPLE_SQL,
    INSERT_PERSON_SQL,
    LOAD_SQL,
    SETTINGS_COLUMNS,
    SET_TIMEOUTS_SQL,
    SETTINGS_QUERIES,
    UPDATE_PERSON_SQL,
    Lock,
)
from service.domain import Call, Mode, Person, Settings
from service.rules.decisions import Decision, Lookup, Write
from service.rules.events import Event, Recorded
from service.rules.modes import SAMPLE_SIZE, Check, CheckResult
from service.rules.validation import email_key

_DIALECT = psycopg_dialect.dialect()

__all__ = ["Lock", "Repository"]


def _settings(row: Sequence[Any]) -> Settings:
    """From the SETTINGS_COLUMNS of a driver row."""
    return Settings(row[0], Mode(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])


def _settings_values(settings: Settings) -> dict[str, object]:
    return {
        "identifier_mode": settings.mode.value,
        "email_updatable_by_id": settings.email_updatable_by_id,
        "sole_identifier_updatable": settings.sole_identifier_updatable,
        "auto_merge": settings.auto_merge,
        "event_retention_days": settings.event_retention_days,
        "max_calls_per_second": settings.max_calls_per_second,
        "max_concurrent_calls": settings.max_concurrent_calls,
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
        self.appended: list[str] = []  # the kinds of the events staged or sent (for the metrics)

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
        # Columns: the settings (6), then the person (6), absent when nobody matched.
        n = len(SETTINGS_COLUMNS)  # the people columns follow the settings columns
        return _settings(rows[0]), [Person(*row[n:]) for row in rows if row[n] is not None]

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
        if decision.restored is not None:  # an undone merge's secondary, after the primary (R62)
            restored = decision.restored
            values = _person_values(restored, keys_for(settings.mode, restored))
            self.staged.append(
                (INSERT_PERSON_SQL, {"workspace_id": ws, "cio_id": restored.cio_id, "created_at": restored.created_at, **values})
            )

    def stage_events(self, workspace_id: str, events: list[Event], call: Call) -> None:
        """Stages the call's events (R50), after its writes: each takes the workspace's next
        sequence number with the last round trip, whose COMMIT releases the counter (R51).
        The NOTIFY is delivered at that COMMIT."""
        for event in events:
            self.staged.append((sql.TAKE_SEQUENCE_SQL, {"workspace_id": workspace_id}))
            self.staged.append((sql.APPEND_EVENT_SQL, self._event_values(workspace_id, event, call)))
            self.appended.append(event.kind.value)
        if events:
            self.staged.append((sql.NOTIFY_SQL, {"workspace_id": workspace_id}))

    async def append_events_now(self, workspace_id: str, events: list[Event], call: Call) -> list[int]:
        """As stage_events, but sent now, with the writes staged so far, returning the events'
        sequence numbers (a response that names its event). The counter is then held from
        here to the COMMIT, one more round trip."""
        await self.send_staged()
        cur = self.conn.cursor()
        sequences = []
        for event in events:
            await cur.execute(sql.TAKE_SEQUENCE_SQL, {"workspace_id": workspace_id})
            await cur.execute(sql.APPEND_EVENT_SQL, self._event_values(workspace_id, event, call))
            sequences.append((await cur.fetchone())[0])  # type: ignore[index]
            self.appended.append(event.kind.value)
        if events:
            await cur.execute(sql.NOTIFY_SQL, {"workspace_id": workspace_id})
        self.wrote = True
        return sequences

    @staticmethod
    def _event_values(workspace_id: str, event: Event, call: Call) -> dict[str, Any]:
        params = event_params(event)
        params["body"] = Jsonb(params["body"])
        return {"workspace_id": workspace_id, "rpc": call.method, "request_id": call.request_id, **params}

    # --- the change log ---

    async def events_after(self, workspace_id: str, after: int, limit: int) -> list[Recorded]:
        rows = await self._fetch(sql.EVENTS_AFTER_SQL, {"workspace_id": workspace_id, "after": after, "limit": limit})
        return [recorded(row) for row in rows]

    async def feed_bounds(self, workspace_id: str) -> tuple[int, int | None]:
        """The last sequence number taken (0: none yet) and the oldest event kept (None: none)."""
        ((last, oldest),) = await self._fetch(sql.FEED_BOUNDS_SQL, {"workspace_id": workspace_id})
        return last or 0, oldest

    async def event(self, workspace_id: str, sequence: int) -> Recorded | None:
        rows = await self._fetch(sql.EVENT_SQL, {"workspace_id": workspace_id, "sequence": sequence})
        return recorded(rows[0]) if rows else None

    async def undone(self, workspace_id: str, sequence: int) -> bool:
        """Whether the merge with this sequence was undone (R62)."""
        return bool(await self._fetch(sql.UNDONE_SQL, {"workspace_id": workspace_id, "sequence": sequence}))

    async def merged_into(self, workspace_id: str, cio_ids: list[str]) -> list[str]:
        """The cio_ids of the people merged into any of `cio_ids`."""
        rows = await self._fetch(sql.MERGED_INTO_SQL, {"workspace_id": workspace_id, "cio_ids": cio_ids})
        return [row[0] for row in rows]

    async def history(self, workspace_id: str, cio_ids: list[str], before: int, limit: int) -> list[Recorded]:
        """The events about any of `cio_ids` (theirs, and the merges that took them) with a
        sequence below `before`, newest first."""
        rows = await self._fetch(
            sql.HISTORY_SQL, {"workspace_id": workspace_id, "cio_ids": cio_ids, "before": before, "limit": limit}
        )
        return [recorded(row) for row in rows]

    def stage_erasure(self, workspace_id: str, cio_ids: list[str]) -> None:
        """R54: every event about these people becomes a tombstone, and the stored responses
        that show them are deleted, with the call's other writes."""
        params = {"workspace_id": workspace_id, "cio_ids": cio_ids}
        self.staged.append((sql.ERASE_EVENTS_SQL, params))
        self.staged.append((sql.ERASE_RESPONSES_SQL, params))

    # --- export (R82) ---

    async def export_people(self, workspace_id: str, batch: int) -> AsyncIterator[list[Person]]:
        """The workspace's people in cio_id order, `batch` at a time, through a server-side
        cursor: memory holds one batch, whatever the workspace's size."""
        async with self.conn.cursor(name="export") as cur:
            await cur.execute(sql.EXPORT_SQL, {"workspace_id": workspace_id})
            while rows := await cur.fetchmany(batch):
                yield [Person(*row) for row in rows]

    # --- imports (R80, R81) ---

    async def start_import(self, workspace_id: str, import_id: str, fingerprint: bytes) -> bulk.ImportState:
        """The import's state, recorded as new (nothing done) if it was not known."""
        params = {"workspace_id": workspace_id, "import_id": import_id, "fingerprint": fingerprint}
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        await cur.execute(bulk.START_IMPORT_SQL, params)
        await cur.execute(bulk.IMPORT_SQL, params)
        self.wrote = True
        return bulk.import_state(await cur.fetchone())

    async def lock_import(self, workspace_id: str, import_id: str) -> bulk.ImportState | None:
        rows = await self._fetch(bulk.LOCK_IMPORT_SQL, {"workspace_id": workspace_id, "import_id": import_id})
        return bulk.import_state(rows[0]) if rows else None

    def stage_batch(
        self, workspace_id: str, writes: NetWrites, events: list[Event], call: Call, *, import_id: str,
        rows_done: int, applied: int, refusals: list[tuple[int, bytes]], finished: bool,
    ) -> None:  # fmt: skip
        """An import batch's writes, events and progress, sent with the COMMIT (R80, R81)."""
        self.staged.extend(bulk.people_statements(workspace_id, writes))
        key = {"workspace_id": workspace_id, "import_id": import_id}
        if refusals:
            rows, statuses = [r for r, _ in refusals], [s for _, s in refusals]
            self.staged.append((bulk.STORE_REFUSALS_SQL, {**key, "rows": rows, "statuses": statuses}))
        progress = {"rows_done": rows_done, "applied": applied, "refused": len(refusals), "finished": finished}
        self.staged.append((bulk.ADVANCE_IMPORT_SQL, {**key, **progress}))
        self.staged.extend(bulk.event_statements(workspace_id, events, call))
        for event in events:
            self.appended.append(event.kind.value)
        if events:
            self.staged.append((sql.NOTIFY_SQL, {"workspace_id": workspace_id}))

    async def purge_imports(self, workspace_id: str, cutoff: datetime, limit: int) -> int:
        """Deletes at most `limit` rows of the imports last advanced before `cutoff`: their
        refusals first; an import once it has none left."""
        params = {"workspace_id": workspace_id, "cutoff": cutoff, "limit": limit}
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        await cur.execute(bulk.PURGE_IMPORT_REFUSALS_SQL, params)
        count = len(await cur.fetchall())
        if count < limit:
            await cur.execute(bulk.PURGE_IMPORTS_SQL, {**params, "limit": limit - count})
            count += len(await cur.fetchall())
        self.wrote = True
        return count

    async def import_refusals(self, workspace_id: str, import_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await self._fetch(
            bulk.REFUSALS_SQL, {"workspace_id": workspace_id, "import_id": import_id, "after": after, "limit": limit}
        )
        return [(row[0], bytes(row[1])) for row in rows]

    # --- stored responses (R70) ---

    async def stored_response(self, workspace_id: str, request_id: str) -> tuple[str, bytes, bytes] | None:
        """The method, request fingerprint and response stored under a request_id."""
        rows = await self._fetch(sql.STORED_RESPONSE_SQL, {"workspace_id": workspace_id, "request_id": request_id})
        if not rows or rows[0][0] is None:  # one row, NULLs when nothing is stored
            return None
        return rows[0][0], bytes(rows[0][1]), bytes(rows[0][2])

    def stage_response(
        self, workspace_id: str, request_id: str, method: str, fingerprint: bytes, response: bytes,
        cio_ids: list[str], now: datetime,
    ) -> None:  # fmt: skip
        """Stored with the call's writes: a concurrent first call with the same request_id
        makes this insert fail at COMMIT, the whole call rolls back and is retried (R41),
        and the retry finds the stored response."""
        self.staged.append(
            (
                sql.STORE_RESPONSE_SQL,
                {
                    "workspace_id": workspace_id, "request_id": request_id, "method": method,
                    "fingerprint": fingerprint, "response": response, "cio_ids": cio_ids, "created_at": now,
                },  # fmt: skip
            )
        )

    async def purge_responses(self, workspace_id: str, cutoff: datetime, limit: int) -> int:
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        await cur.execute(sql.PURGE_RESPONSES_SQL, {"workspace_id": workspace_id, "cutoff": cutoff, "limit": limit})
        self.wrote = True
        return len(await cur.fetchall())

    async def retention_settings(self) -> list[tuple[str, int]]:
        """Every workspace and its retention in days (the background clean-up's, not a call's)."""
        rows = await self._run(sa.select(workspaces.c.workspace_id, workspaces.c.event_retention_days))
        return [(row[0], row[1]) for row in rows]

    async def purge_events(self, workspace_id: str, cutoff: datetime, limit: int) -> int:
        """Deletes at most `limit` of the workspace's oldest events committed before `cutoff`."""
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        await cur.execute(sql.PURGE_EVENTS_SQL, {"workspace_id": workspace_id, "cutoff": cutoff, "limit": limit})
        self.wrote = True
        return len(await cur.fetchall())

    async def send_staged(self) -> None:
        """Queues the staged writes (the unit of work sends them with its COMMIT)."""
        if not self.staged:
            return
        cur = self.conn.cursor()
        await self._send_timeouts(cur)
        for sql, params in self.staged:
            await cur.execute(sql, params)
        self.staged.clear()
        self.wrote = True  # sent: a failure from here on must roll back

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
