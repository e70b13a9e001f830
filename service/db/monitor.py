"""Watches the database from each server process: while it does not answer, calls fail fast
with UNAVAILABLE and the health service reports NOT_SERVING; service resumes by itself once it
answers again, on a fresh pool (connections pooled before an outage are dead)."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import psycopg

from service.db.engine import connection_options

log = logging.getLogger(__name__)


class DatabaseMonitor:
    """Pings on a connection of its own (never the call pool, which may be busy under load)."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[bool], Awaitable[None]],
        interval: float = 0.5,
    ):
        self.url = url
        self.on_change = on_change
        self.interval = interval
        self.available = True
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="db-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            await self._conn.close()

    async def check(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                options = {**connection_options("identity-service-monitor"), "connect_timeout": 2}
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **options)
            await asyncio.wait_for(self._conn.execute("SELECT 1"), timeout=2)
            return True
        except (psycopg.Error, OSError, asyncio.TimeoutError):
            if self._conn is not None:
                await self._conn.close()
            self._conn = None
            return False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            ok = await self.check()
            if ok != self.available:
                self.available = ok
                log.warning("database %s", "available again" if ok else "unavailable")
                await self.on_change(ok)
