"""The unit of work: the one owner of each call's transaction. It opens it, runs the call's work
on a repository, sends the staged writes with the COMMIT (one round trip, in a pipeline), and
rolls back whenever the work or the commit fails: a refused call changes nothing (R40). A call
that loses a race is retried whole, a bounded number of times with jitter (R41). The call's
deadline bounds its database work."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service import metrics
from service.db import deadlines
from service.db.repository import Repository
from service.errors import Aborted, DeadlineExceeded, Unavailable

T = TypeVar("T")
Work = Callable[[Repository], Awaitable[T]]

# Losing a race: a concurrent call took the identifier first, or Postgres chose us as the victim.
_RACE_ERRORS = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
# On Citus, a worker node lost in the middle of a transaction (stopped, crashed, unreachable) is
# reported by the coordinator as an internal error (SQLSTATE XX000) with one of these messages,
# not as a connection error: the statement's or the COMMIT's outcome on that worker is unknown,
# exactly as when a plain Postgres's connection breaks, so it is answered the same way
# (UNAVAILABLE: the client retries, with its request_id where the outcome matters).
_NODE_LOST_MESSAGES = (
    "could not commit transaction for shard",  # the worker went away during COMMIT
    "failure on connection marked as essential",
    "server closed the connection unexpectedly",
    "connection to server was lost",
    "terminating connection due to",
)


def _node_lost(error: psycopg.errors.InternalError_) -> bool:
    message = error.diag.message_primary or ""
    return any(m in message for m in _NODE_LOST_MESSAGES)


# statement_timeout or lock_timeout fired.
_TIMEOUT_ERRORS = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)
DEFAULT_ATTEMPTS = 6
_BASE_DELAY = 0.002
_MAX_DELAY = 0.05
# The connection's own statement_timeout and lock_timeout (service.db.engine): the cap for calls
# without a deadline, or with a longer one. Calls with a shorter deadline, and calls that may
# legitimately run long (a mode change rekeys a whole workspace), set their own per transaction.
SESSION_STATEMENT_TIMEOUT_S = 5.0


def _deadline_exceeded() -> DeadlineExceeded:
    return DeadlineExceeded("DEADLINE_EXCEEDED", "the call's deadline passed before the database answered")


def _unavailable() -> Unavailable:
    return Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later")


def _timeout_ms(budget: float | None, cap: float) -> int | None:
    """The per-transaction cap to set (the call's cap, bounded by its deadline), or None when
    the session's own cap applies."""
    limit = cap if budget is None else min(budget, cap)
    return None if limit == SESSION_STATEMENT_TIMEOUT_S else max(1, int(limit * 1000))


class UnitOfWork:
    """Runs calls' work on a pool of connections (autocommit, so that a read is one statement
    and a write's BEGIN travels with its first statement)."""

    def __init__(self, pool: AsyncConnectionPool, available: Callable[[], bool] = lambda: True):
        self.pool = pool
        self.available = available

    async def run(
        self,
        method: str,
        work: Work[T],
        *,
        read_only: bool = False,
        cap: float = SESSION_STATEMENT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> T:
        """Runs `work` in a fresh transaction, committing only if it returns; a DomainError it
        raises rolls everything back and propagates. `read_only` work of a single statement runs
        without a transaction block (the statement is its own transaction). `cap` bounds each
        statement when the client's deadline does not bound it more."""
        if not self.available():  # fail fast while the monitor sees the database down
            raise _unavailable()
        for attempt in range(1, attempts + 1):
            budget = deadlines.remaining()
            if budget is not None and budget <= 0:
                raise _deadline_exceeded()
            try:
                return await self._run_once(work, _timeout_ms(budget, cap), read_only)
            except _RACE_ERRORS as error:
                metrics.RETRIES.labels(method).inc()
                if attempt == attempts:
                    raise Aborted(
                        "CONCURRENT_UPDATE",
                        f"the call lost a race with concurrent calls {attempts} times; retry it",
                        {"attempts": str(attempts)},
                    ) from error
                delay = random.uniform(0, min(_MAX_DELAY, _BASE_DELAY * 2 ** (attempt - 1)))  # full jitter
                left = deadlines.remaining()
                if left is not None and left <= delay:
                    raise _deadline_exceeded() from error
                await asyncio.sleep(delay)
            except _TIMEOUT_ERRORS as error:
                raise _deadline_exceeded() from error
            except PoolTimeout as error:  # (an OperationalError too: caught first)
                raise Unavailable(
                    "DATABASE_BUSY", "no database connection was free in time; retry later"
                ) from error
            except psycopg.OperationalError as error:  # unreachable, or the connection broke
                raise _unavailable() from error
            except psycopg.errors.InternalError_ as error:
                if _node_lost(error):  # Citus: a worker node went away
                    raise _unavailable() from error
                raise
        raise AssertionError("unreachable")

    async def _run_once(self, work: Work[T], timeout_ms: int | None, read_only: bool) -> T:
        async with self.pool.connection() as conn:
            if read_only and timeout_ms is None:
                return await work(Repository(conn))
            repo = Repository(conn, timeout_ms)
            try:
                # BEGIN travels with the work's first statement, the staged writes with COMMIT:
                # two round trips for a write call. Leaving the pipeline sends what is queued
                # and raises the first error of that round trip.
                async with conn.pipeline():
                    cur = conn.cursor()
                    await cur.execute("BEGIN")
                    result = await work(repo)
                    await repo.send_staged()
                    await cur.execute("COMMIT")
                for kind in repo.appended:
                    metrics.EVENTS_APPENDED.labels(kind).inc()
                return result
            except BaseException:
                await _end_failed(conn, repo.wrote)
                raise


class Snapshot:
    """A read-only REPEATABLE READ transaction on a pooled connection, held while a stream reads
    one consistent snapshot (R82). At most `limit` per process at a time, so that long reads
    never take the pool from the calls."""

    def __init__(self, uow: UnitOfWork, limit: int = 2):
        self.uow = uow
        self.slots = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Repository]:
        if not self.uow.available():
            raise _unavailable()
        async with self.slots:
            try:
                async with self.uow.pool.connection() as conn:
                    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    try:
                        yield Repository(conn)
                    finally:
                        # Read only: COMMIT ends it as ROLLBACK would, and keeps psycopg's
                        # prepared statements (see _end_failed). A connection still busy (the
                        # stream was cancelled mid-fetch) is left to the pool, which discards it.
                        status = conn.info.transaction_status
                        if status == TransactionStatus.INTRANS:
                            await conn.execute("COMMIT")
                        elif status == TransactionStatus.INERROR:
                            await conn.rollback()
            except _TIMEOUT_ERRORS as error:
                raise _deadline_exceeded() from error
            except PoolTimeout as error:
                raise Unavailable("DATABASE_BUSY", "no database connection was free in time; retry later") from error
            except psycopg.OperationalError as error:
                raise _unavailable() from error
            except psycopg.errors.InternalError_ as error:
                if _node_lost(error):
                    raise _unavailable() from error
                raise


async def _end_failed(conn: psycopg.AsyncConnection, wrote: bool) -> None:
    """Ends a transaction that failed, or whose work refused: nothing of it stays. A connection
    still busy (the call was cancelled mid-statement) is left to the pool, which discards it."""
    if conn.closed:
        return
    status = conn.info.transaction_status
    try:
        if status == TransactionStatus.INTRANS and not wrote:
            # Every statement succeeded and none wrote (a refusal of the rules core after the
            # load; staged writes were never sent): COMMIT ends it exactly as a rollback would,
            # and psycopg keeps its prepared statements, which any ROLLBACK makes it deallocate
            # (the next calls would pay a re-plan each).
            await conn.execute("COMMIT")
        elif status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await conn.rollback()
    except psycopg.Error:
        await conn.close()
