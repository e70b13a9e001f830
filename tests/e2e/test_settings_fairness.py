"""R2 under a stream of writes: a settings change is queued fairly. Writes hold the workspace
FOR SHARE, and Postgres lets each new FOR SHARE pass a waiting FOR NO KEY UPDATE, so without the
workspace gate (an advisory lock taken shared by writes and exclusively by a settings change) a
settings change could wait for ever behind overlapping writes. The waits are observed in
pg_stat_activity (on Citus: citus_lock_waits, tests/lock_waits.py), not guessed from sleeps."""

from __future__ import annotations

import asyncio
import time

import psycopg

from service.db.engine import libpq_url
from service.db.repository import Lock, Repository
from service.rules.decisions import Lookup
from tests.lock_waits import abackend_id, awaiting


async def _waiting_on_a_lock(observer: psycopg.AsyncConnection, backend: int, within: float = 10.0) -> bool:
    """Whether the session `backend` (tests/lock_waits.py: its pid, or its global pid on Citus,
    where the waits are on the workers) waits on a lock within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await awaiting(observer, backend):
            return True
        await asyncio.sleep(0.01)
    return False


async def _scenario(url: str, workspace: str) -> list[str]:
    """The three transactions in the order the database let them through: each reads the
    database's clock once it holds its locks (a write just before its COMMIT), so the order
    is the server's, not the order in which this client's tasks happened to resume."""
    connect = lambda: psycopg.AsyncConnection.connect(url, autocommit=True)  # noqa: E731
    first, changer, second, observer = [await connect() for _ in range(4)]
    changer_id, second_id = await abackend_id(changer), await abackend_id(second)
    through: dict[str, object] = {}
    nobody = Lookup(ids=("nobody",))
    first_holds = asyncio.Event()

    async def now(conn: psycopg.AsyncConnection) -> object:
        return (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]  # type: ignore[index]

    async def write(conn: psycopg.AsyncConnection, name: str, release: asyncio.Event, holds: asyncio.Event | None) -> None:
        async with conn.transaction():
            await Repository(conn).load(workspace, nobody, Lock.SHARE)
            if holds is not None:
                holds.set()
            await release.wait()
            through[name] = await now(conn)

    async def change_settings() -> None:
        async with changer.transaction():
            await Repository(changer).settings(workspace, Lock.UPDATE)
            through["settings"] = await now(changer)

    release_first, release_second = asyncio.Event(), asyncio.Event()
    try:
        first_task = asyncio.create_task(write(first, "first", release_first, first_holds))
        await asyncio.wait_for(first_holds.wait(), timeout=30)  # its locks are held
        changer_task = asyncio.create_task(change_settings())
        assert await _waiting_on_a_lock(observer, changer_id), "the settings change did not wait"
        second_task = asyncio.create_task(write(second, "second", release_second, None))
        # A write that comes after the waiting settings change queues behind it.
        assert await _waiting_on_a_lock(observer, second_id), "a later write overtook the settings change"
        assert not through
        release_first.set()
        release_second.set()
        await asyncio.wait_for(asyncio.gather(first_task, changer_task, second_task), timeout=30)
    finally:
        for conn in (first, changer, second, observer):
            await conn.close()
    return sorted(through, key=through.__getitem__)  # type: ignore[arg-type]


def test_r2_a_settings_change_is_not_overtaken_by_later_writes(database_url, engine, workspace):
    assert asyncio.run(_scenario(libpq_url(database_url), workspace)) == ["first", "settings", "second"]
