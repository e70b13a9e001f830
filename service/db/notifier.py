"""The change feed's shared side in each server process (R52): one LISTEN connection for every
stream of the process, and per workspace with streams one tail of its recent events, read once
for all of them.

A NOTIFY from a committing transaction (its payload: the workspace) makes that workspace's tail
read the events after the last it holds, once, and wakes its streams, which take them from the
tail: a hundred watchers of a workspace cost one query per commit, not a hundred. A stream
behind the tail's window (catching up, or slow) reads the log itself, a page at a time. A
notification carries nothing a stream relies on, so one that is lost costs latency only: each
tail also re-reads on a timer, short while the LISTEN connection is down."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator

import psycopg

from service.db.engine import connection_options
from service.db.statements import CHANGES_CHANNEL
from service.errors import DomainError
from service.rules.events import Recorded

log = logging.getLogger(__name__)

LISTENING_POLL_S = 5.0  # a safety net: a tail re-reads at least this often
DEAF_POLL_S = 0.5  # while the LISTEN connection is down
TAIL_EVENTS = 1024  # the recent events a tail keeps: its memory bound
READ_PAGE = 500
COALESCE_S = 0.02

ReadAfter = Callable[[str, int, int], Awaitable[list[Recorded]]]


class Closing(Exception):
    """The process is stopping: streams end (UNAVAILABLE, so that clients resume elsewhere)."""


class Tail:
    """The recent events of one workspace, shared by its streams in this process."""

    def __init__(self, notifier: Notifier, workspace_id: str, last: int):
        self.notifier = notifier
        self.workspace_id = workspace_id
        self.events: list[Recorded] = []  # contiguous sequences (the log has no gaps)
        self.last = last  # the highest sequence read (or known to exist) so far
        self.error: DomainError | None = None
        self.error_at = 0.0  # when (monotonic) the last read failed
        self.streams = 0
        self._grown = asyncio.Event()  # replaced at each growth: every waiter sees it set
        self._poke = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tail-{workspace_id[:16]}")
        self.poke()  # read at once: the first stream catches up through it

    def after(self, cursor: int) -> list[Recorded] | None:
        """The events after `cursor` this tail holds; None when its window starts later (the
        stream reads the log itself)."""
        if cursor >= self.last:
            return []
        if self.events and self.events[0].sequence <= cursor + 1:
            return self.events[cursor + 1 - self.events[0].sequence :]
        return None

    async def wait(self, seen: int, since: float) -> None:
        """Returns once the tail holds events after `seen` (or re-read on its timer); raises
        Closing when the process stops, and the read's refusal when a read since `since` (the
        stream's start, monotonic) failed: the database is unavailable."""
        while True:
            if self.notifier.closing:
                raise Closing()
            if self.error is not None and self.error_at >= since:
                raise self.error
            if self.last > seen:
                return
            grown = self._grown
            timeout = LISTENING_POLL_S if self.notifier.listening else DEAF_POLL_S
            try:
                await asyncio.wait_for(grown.wait(), timeout * 2)
            except asyncio.TimeoutError:
                return  # the stream re-checks by itself

    def poke(self) -> None:
        self._poke.set()

    def _announce(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()

    def close(self) -> None:
        self._task.cancel()
        self._announce()

    async def _run(self) -> None:
        while True:
            timeout = LISTENING_POLL_S if self.notifier.listening else DEAF_POLL_S
            try:
                await asyncio.wait_for(self._poke.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._poke.clear()
            try:
                while True:
                    page = await self.notifier.read_after(self.workspace_id, self.last, READ_PAGE)
                    if page and page[0].sequence != self.last + 1:
                        self.events.clear()  # retention purged events: streams behind it find out
                    self.events.extend(page)
                    if len(self.events) > 2 * TAIL_EVENTS:  # trimmed now and then: amortised O(1)
                        del self.events[: len(self.events) - TAIL_EVENTS]
                    if page:
                        self.last = page[-1].sequence
                    self.error = None
                    if len(page) < READ_PAGE:
                        break
            except DomainError as error:  # the database is unavailable: the streams end
                self.error, self.error_at = error, time.monotonic()
            except Exception:  # noqa: BLE001 - a bug: logged; the streams fall back to their own reads
                log.exception("the change feed's tail of a workspace failed to read")
            self._announce()
            # Commits closer together than this are read and sent together: under load a stream
            # sends one message per interval, not one per commit (the first commit after a
            # quiet spell is read at once).
            await asyncio.sleep(COALESCE_S)


class Notifier:
    def __init__(self, url: str, read_after: ReadAfter):
        self.url = url
        self.read_after = read_after
        self.listening = False
        self.closing = False
        self._tails: dict[str, Tail] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection | None = None

    @contextmanager
    def subscribe(self, workspace_id: str, cursor: int) -> Iterator[Tail]:
        """The workspace's tail for one stream (made on its first stream, from its cursor;
        gone with its last)."""
        tail = self._tails.get(workspace_id)
        if tail is None:
            tail = self._tails[workspace_id] = Tail(self, workspace_id, cursor)
        tail.streams += 1
        try:
            yield tail
        finally:
            tail.streams -= 1
            if tail.streams == 0 and self._tails.get(workspace_id) is tail:
                del self._tails[workspace_id]
                tail.close()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-notifier")

    async def close(self) -> None:
        """Wakes every stream to end it, and stops listening."""
        self.closing = True
        for tail in list(self._tails.values()):
            tail.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            await self._conn.close()

    def _poke_all(self) -> None:
        for tail in list(self._tails.values()):
            tail.poke()

    async def _run(self) -> None:
        delay = 0.2
        while not self.closing:
            try:
                options = {**connection_options("identity-service-listen"), "connect_timeout": 2}
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **options)
                await self._conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                self.listening = True
                delay = 0.2
                self._poke_all()  # whatever committed while we were not listening
                async for notification in self._conn.notifies():
                    tail = self._tails.get(notification.payload)
                    if tail is not None:
                        tail.poke()
            except (psycopg.Error, OSError) as error:
                if self.listening:
                    log.warning("change notifications lost (%s); streams poll until they resume", type(error).__name__)
            finally:
                if self.listening:
                    # Tails re-read now, then poll: what was lost costs no more than the poll,
                    # and a database outage ends the streams (UNAVAILABLE).
                    self.listening = False
                    self._poke_all()
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

