"""The unit of work: one transaction per call, rolled back unless the work returns, and retried
a bounded number of times with jitter when it loses a race (R40, R41). The call's deadline
bounds its database work."""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

import psycopg.errors
import sqlalchemy as sa
import sqlalchemy.exc

from service import metrics
from service.db import deadlines
from service.db.repository import Repository
from service.errors import Aborted, DeadlineExceeded, Unavailable

T = TypeVar("T")

# Losing a race: a concurrent call took the identifier first, or Postgres chose us as the victim.
_RACE_ERRORS = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
# statement_timeout or lock_timeout fired.
_TIMEOUT_ERRORS = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)
DEFAULT_ATTEMPTS = 6
_BASE_DELAY = 0.002
_MAX_DELAY = 0.05
# The connection's own statement_timeout and lock_timeout (service.db.engine): the cap for calls
# without a deadline, or with a longer one. Calls with a shorter deadline, and calls that may
# legitimately run long (a mode change rekeys a whole workspace), set their own per transaction.
SESSION_STATEMENT_TIMEOUT_S = 5.0


def _driver_error(error: BaseException) -> BaseException:
    """The psycopg error, whether raised by the driver (hot path) or wrapped by SQLAlchemy."""
    return getattr(error, "orig", None) or error


def is_race(error: BaseException) -> bool:
    return isinstance(_driver_error(error), _RACE_ERRORS)


def is_timeout(error: BaseException) -> bool:
    return isinstance(_driver_error(error), _TIMEOUT_ERRORS)


def is_unavailable(error: BaseException) -> bool:
    """The database could not be reached or the connection broke (not a problem of the call)."""
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(_driver_error(error), psycopg.OperationalError)


def _deadline_exceeded() -> DeadlineExceeded:
    return DeadlineExceeded("DEADLINE_EXCEEDED", "the call's deadline passed before the database answered")


def _statement_cap(budget: float | None, cap: float) -> float:
    """The time one statement (or lock wait) may take: the call's cap, bounded by its deadline."""
    return cap if budget is None else min(budget, cap)


def _timeout_ms(limit: float) -> int | None:
    """The per-transaction cap to set, or None when the session's own cap applies."""
    return None if limit == SESSION_STATEMENT_TIMEOUT_S else max(1, int(limit * 1000))


def _run_once(engine: sa.Engine, work: Callable[[Repository], T], limit: float, read_only: bool) -> T:
    timeout_ms = _timeout_ms(limit)
    autocommit = read_only and timeout_ms is None
    with engine.connect() if autocommit else engine.begin() as conn:
        try:
            if autocommit:
                return work(Repository(conn.execution_options(isolation_level="AUTOCOMMIT")))
            return work(Repository(conn, timeout_ms))
        except psycopg.OperationalError:
            conn.invalidate()  # a connection broken under the driver must not go back to the pool
            raise


def run_in_transaction(
    engine: sa.Engine,
    work: Callable[[Repository], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    method: str = "",
    read_only: bool = False,
    cap: float = SESSION_STATEMENT_TIMEOUT_S,
) -> T:
    """Runs `work` in a fresh transaction, committing only if it returns. A DomainError raised by
    the work rolls everything back and propagates: a refused call changes nothing. `read_only`
    work of a single statement runs in autocommit: the statement is its own transaction, which
    saves the BEGIN and COMMIT round trips. `cap` bounds each statement when the client's
    deadline does not bound it more."""
    for attempt in range(1, attempts + 1):
        budget = deadlines.remaining()
        if budget is not None and budget <= 0:
            raise _deadline_exceeded()
        try:
            return _run_once(engine, work, _statement_cap(budget, cap), read_only)
        except (sqlalchemy.exc.DBAPIError, psycopg.Error) as error:
            if is_race(error):
                metrics.RETRIES.labels(method).inc()
                if attempt < attempts:
                    delay = random.uniform(0, min(_MAX_DELAY, _BASE_DELAY * 2 ** (attempt - 1)))  # full jitter
                    left = deadlines.remaining()
                    if left is not None and left <= delay:
                        raise _deadline_exceeded() from error
                    time.sleep(delay)
                    continue
                raise Aborted(
                    "CONCURRENT_UPDATE",
                    f"the call lost a race with concurrent calls {attempts} times; retry it",
                    {"attempts": str(attempts)},
                ) from error
            if is_timeout(error):
                raise _deadline_exceeded() from error
            if is_unavailable(error):
                raise Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later") from error
            raise
        except sqlalchemy.exc.TimeoutError as error:  # pool checkout waited pool_timeout
            raise Unavailable(
                "DATABASE_BUSY", "no database connection was free in time; retry later"
            ) from error
    raise AssertionError("unreachable")
