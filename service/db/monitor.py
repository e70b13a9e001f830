"""Watches the database from each server process: while it does not answer, calls fail fast
with UNAVAILABLE and the health service reports NOT_SERVING; service resumes by itself once it
answers again."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import psycopg
import sqlalchemy as sa

log = logging.getLogger(__name__)


class DatabaseMonitor:
    """Pings on a connection of its own (never the call pool, which may be busy under load)."""

    def __init__(self, engine: sa.Engine, on_change: Callable[[bool], None], interval: float = 0.5):
        self.engine = engine
        self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.on_change = on_change
        self.interval = interval
        self.available = True
        self._conn: psycopg.Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.close()

    def check(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            ok = self.check()
            if ok != self.available:
                self.available = ok
                # Connections pooled before the change are dead or about to be: start afresh.
                self.engine.dispose()
                log.warning("database %s", "available again" if ok else "unavailable")
                self.on_change(ok)
