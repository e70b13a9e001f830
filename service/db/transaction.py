"""The unit of work: one transaction per call, rolled back unless the work returns, and retried
a bounded number of times with jitter when it loses a race (R40, R41)."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

import psycopg.errors
import sqlalchemy as sa
import sqlalchemy.exc

from service import metrics
from service.db.repository import Repository
from service.errors import Aborted, Unavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

# Losing a race: a concurrent call took the identifier first, or Postgres chose us as the victim.
_RACE_ERRORS = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
DEFAULT_ATTEMPTS = 6
_BASE_DELAY = 0.002
_MAX_DELAY = 0.05


def is_race(error: BaseException) -> bool:
    return isinstance(getattr(error, "orig", None), _RACE_ERRORS)


def is_unavailable(error: BaseException) -> bool:
    """The database could not be reached or the connection broke (not a problem of the call)."""
    if isinstance(error, sqlalchemy.exc.TimeoutError):  # pool checkout timed out
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        orig = error.orig
        if isinstance(orig, psycopg.OperationalError):
            return True
    return False


def run_in_transaction(
    engine: sa.Engine,
    work: Callable[[Repository], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    method: str = "",
) -> T:
    """Runs `work` in a fresh transaction, committing only if it returns. A DomainError raised by
    the work rolls everything back and propagates: a refused call changes nothing."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                return work(Repository(conn))
        except sqlalchemy.exc.DBAPIError as error:
            if is_race(error):
                metrics.RETRIES.labels(method).inc()
                if attempt < attempts:
                    delay = min(_MAX_DELAY, _BASE_DELAY * 2 ** (attempt - 1))
                    time.sleep(random.uniform(0, delay))  # full jitter
                    continue
                raise Aborted(
                    "CONCURRENT_UPDATE",
                    f"the call lost a race with concurrent calls {attempts} times; retry it",
                    {"attempts": str(attempts)},
                ) from error
            if is_unavailable(error):
                raise Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later") from error
            raise
        except sqlalchemy.exc.TimeoutError as error:
            raise Unavailable("DATABASE_UNAVAILABLE", "no database connection was free in time; retry later") from error
    raise AssertionError("unreachable")
