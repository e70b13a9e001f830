"""One LISTEN connection per server process, shared by every change-feed stream of the process
(R52): a NOTIFY from a committing transaction wakes the streams of its workspace, which then
re-read the log by sequence. A notification carries nothing a stream relies on, so one that is
lost (the connection broke, the process was busy) costs only latency: streams also re-read on
a timer, short while the connection is down."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import psycopg

from service.db.engine import connection_options
from service.db.statements import CHANGES_CHANNEL

log = logging.getLogger(__name__)

LISTENING_POLL_S = 5.0  # a safety net: a stream re-reads at least this often
DEAF_POLL_S = 0.5  # while the LISTEN connection is down


class Closing(Exception):
    """The process is stopping: streams end (UNAVAILABLE, so that clients resume elsewhere)."""


class Wakeup:
    """What one stream waits on."""

    def __init__(self, notifier: Notifier):
        self._notifier = notifier
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Returns when the workspace may have new events (or on the poll timer); raises
        Closing when the process stops. Clears itself first: a notification arriving while
        the caller reads is not lost, it wakes the next wait."""
        if self._notifier.closing:
            raise Closing()
        timeout = LISTENING_POLL_S if self._notifier.listening else DEAF_POLL_S
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._event.clear()
        if self._notifier.closing:
            raise Closing()


class Notifier:
    def __init__(self, url: str):
        self.url = url
        self.listening = False
        self.closing = False
        self._streams: dict[str, set[Wakeup]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection | None = None

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._streams.values())

    @contextmanager
    def subscribe(self, workspace_id: str) -> Iterator[Wakeup]:
        wakeup = Wakeup(self)
        self._streams[workspace_id].add(wakeup)
        try:
            yield wakeup
        finally:
            streams = self._streams.get(workspace_id)
            if streams is not None:
                streams.discard(wakeup)
                if not streams:
                    del self._streams[workspace_id]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-notifier")

    async def close(self) -> None:
        """Wakes every stream to end it, and stops listening."""
        self.closing = True
        for streams in list(self._streams.values()):
            for wakeup in list(streams):
                wakeup.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            await self._conn.close()

    def _wake(self, workspace_id: str) -> None:
        for wakeup in self._streams.get(workspace_id, ()):
            wakeup.set()

    def _wake_all(self) -> None:
        for workspace_id in list(self._streams):
            self._wake(workspace_id)

    async def _run(self) -> None:
        delay = 0.2
        while not self.closing:
            try:
                options = {**connection_options("identity-service-listen"), "connect_timeout": 2}
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **options)
                await self._conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                self.listening = True
                delay = 0.2
                self._wake_all()  # whatever committed while we were not listening
                async for notification in self._conn.notifies():
                    self._wake(notification.payload)
            except (psycopg.Error, OSError) as error:
                if self.listening:
                    log.warning("change notifications lost (%s); streams poll until they resume", type(error).__name__)
            finally:
                if self.listening:
                    # Streams waiting on a notification re-read now, then poll: what was lost
                    # costs no more than the poll, and a database outage ends them (UNAVAILABLE).
                    self.listening = False
                    self._wake_all()
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
