"""Keeps each server process's copy of the control data current, on a connection of its own
(never the call pool, which a flooding tenant may keep busy): every 0.25 s it reads the API
keys' version and reloads the keys when it moved (a revocation reaches every process within a
second); every second it reads the workspaces that override the fair-share limits (a partial
index finds them)."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from service.api.fair_share import WorkspaceLimits
from service.api.key_cache import KeyCache
from service.db import api_keys
from service.db.engine import connection_options

log = logging.getLogger(__name__)

KEYS_INTERVAL_S = 0.25
LIMITS_EVERY = 4  # key polls per limits poll
_LIMITS_SQL = (
    "SELECT workspace_id, max_calls_per_second, max_concurrent_calls FROM workspaces"
    " WHERE max_calls_per_second <> 0 OR max_concurrent_calls <> 0"
)


class ControlWatcher:
    def __init__(self, url: str, keys: KeyCache | None, limits: WorkspaceLimits, interval: float = KEYS_INTERVAL_S):
        self.url = url
        self.keys = keys
        self.limits = limits
        self.interval = interval
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._lock = asyncio.Lock()  # one poll at a time on the connection
        self._stopping = asyncio.Event()

    async def refresh_keys(self) -> None:
        """Polls now (after this process changed a key: the change applies here at once)."""
        await self.poll(limits=False)

    async def start(self) -> None:
        """One poll now (keys ready before the first call, when the database answers), then
        one every interval."""
        await self.poll(limits=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="control-watcher")

    async def stop(self) -> None:
        """Ends the loop between polls: cancelling a query in flight makes psycopg cancel it on
        the server and wait for that (seconds, on a busy server), which a draining worker cannot
        afford. Bounded either way."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=2 * self.interval + 2)
            if not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1)
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), timeout=1)
            except asyncio.TimeoutError:
                log.warning("the keys-and-limits connection did not close in time")

    async def poll(self, limits: bool) -> bool:
        async with self._lock:
            return await self._poll_once(limits)

    async def _poll_once(self, limits: bool) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                options = {**connection_options("identity-service-control"), "connect_timeout": 2}
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **options)
            await asyncio.wait_for(self._poll(self._conn, limits), timeout=2)
        except (psycopg.Error, OSError, asyncio.TimeoutError):
            if not self._failing:
                log.warning("could not read the API keys and limits; retrying", exc_info=True)
            self._failing = True
            if self._conn is not None:
                await self._conn.close()
            self._conn = None
            return False
        if self._failing:
            log.info("API keys and limits read again")
        self._failing = False
        return True

    async def _poll(self, conn: psycopg.AsyncConnection, limits: bool) -> None:
        if self.keys is not None:
            if await api_keys.version(conn) != self.keys.version:
                version, loaded = await api_keys.load_all(conn)
                self.keys.replace(version, loaded)
            self.keys.polled()
        if limits:
            rows = await (await conn.execute(_LIMITS_SQL)).fetchall()
            self.limits.replace({row[0]: (row[1], row[2]) for row in rows})

    async def _run(self) -> None:
        tick = 0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)
                return  # stopping
            except asyncio.TimeoutError:
                pass
            tick += 1
            await self.poll(limits=tick % LIMITS_EVERY == 0)
