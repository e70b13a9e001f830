"""Which sessions wait on a lock, on plain Postgres and on Citus alike, for the tests that watch
lock waits instead of guessing them from sleeps.

On plain Postgres a session's waits show in pg_stat_activity (wait_event_type 'Lock') and its
blockers in pg_blocking_pids(). On a Citus coordinator they do not: a statement on distributed
tables takes its locks on the worker that holds the shard, and the coordinator's session only
waits for that worker's answer. Citus gathers the waits of every node in the view
citus_lock_waits (row locks and advisory locks alike), naming each session by its global pid
(citus_backend_gpid(): the coordinator's node id and the session's pid), which follows the session
to the workers. So a session is named by `backend_id` and looked up in whichever the database is.

The helpers take SQLAlchemy or psycopg connections; the `a`-prefixed ones psycopg's async
connections. All send the same SQL, in psycopg's parameter style."""

from __future__ import annotations

import time
from typing import Any, Callable

import sqlalchemy as sa

_IS_CITUS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
_BACKEND = {False: "SELECT pg_backend_pid()", True: "SELECT citus_backend_gpid()"}
_WAITING = {
    False: "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %(backend)s AND wait_event_type = 'Lock')",
    True: "SELECT EXISTS (SELECT 1 FROM citus_lock_waits WHERE waiting_gpid = %(backend)s)",
}
# Every session blocked by `backend`, or queued behind one that is (a row's waiters line up on its
# tuple lock behind the first), counted once.
_BLOCKED_BY = {
    False: "WITH RECURSIVE blocked(pid) AS ("
    " SELECT pid FROM pg_stat_activity WHERE %(backend)s = ANY(pg_blocking_pids(pid))"
    " UNION SELECT a.pid FROM pg_stat_activity a JOIN blocked b ON b.pid = ANY(pg_blocking_pids(a.pid))"
    ") SELECT count(*) FROM blocked",
    True: "WITH RECURSIVE waits AS (SELECT DISTINCT waiting_gpid, blocking_gpid FROM citus_lock_waits),"
    " blocked(gpid) AS ("
    " SELECT waiting_gpid FROM waits WHERE blocking_gpid = %(backend)s"
    " UNION SELECT w.waiting_gpid FROM waits w JOIN blocked b ON w.blocking_gpid = b.gpid"
    ") SELECT count(*) FROM blocked",
}


def _scalar(conn: Any, query: str, params: dict[str, Any] | None = None) -> Any:
    if isinstance(conn, sa.Connection):
        return conn.exec_driver_sql(query, params or {}).scalar_one()
    return conn.execute(query, params).fetchone()[0]  # a psycopg (sync) connection


def is_citus(conn: Any) -> bool:
    return bool(_scalar(conn, _IS_CITUS))


def backend_id(conn: Any) -> int:
    """The session's id in the views below: its pid, or on Citus its global pid."""
    return int(_scalar(conn, _BACKEND[is_citus(conn)]))


def waiting(observer: Any, backend: int) -> bool:
    """Whether the session `backend` waits on a lock now."""
    return bool(_scalar(observer, _WAITING[is_citus(observer)], {"backend": backend}))


def blocked_by(observer: Any, backend: int) -> int:
    """How many sessions wait, directly or in a queue, for a lock that `backend` holds."""
    return int(_scalar(observer, _BLOCKED_BY[is_citus(observer)], {"backend": backend}))


def until(condition: Callable[[], bool], within: float, interval: float = 0.02) -> bool:
    """Polls `condition` until it holds (True) or `within` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def ais_citus(conn) -> bool:  # type: ignore[no-untyped-def]
    return bool((await (await conn.execute(_IS_CITUS)).fetchone())[0])


async def abackend_id(conn) -> int:  # type: ignore[no-untyped-def]
    return int((await (await conn.execute(_BACKEND[await ais_citus(conn)])).fetchone())[0])


async def awaiting(observer, backend: int) -> bool:  # type: ignore[no-untyped-def]
    cur = await observer.execute(_WAITING[await ais_citus(observer)], {"backend": backend})
    return bool((await cur.fetchone())[0])
