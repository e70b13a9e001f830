"""R2 under a stream of writes: a settings change is queued fairly. Writes hold the workspace
FOR SHARE, and Postgres lets each new FOR SHARE pass a waiting FOR NO KEY UPDATE, so without the
workspace gate (an advisory lock taken shared by writes and exclusively by a settings change) a
settings change could wait for ever behind overlapping writes."""

from __future__ import annotations

import threading
import time

from service.db.repository import Lock, Repository
from service.rules.changes import Lookup


def _hold_write_lock(engine, workspace_id, started: threading.Event, release: threading.Event, done: list):
    with engine.begin() as conn:
        Repository(conn).load(workspace_id, Lookup(id_keys=("nobody",)), Lock.SHARE)
        started.set()
        release.wait(10)
    done.append(time.monotonic())


def test_r2_a_settings_change_is_not_overtaken_by_later_writes(engine, workspace):
    first_started, first_release, first_done = threading.Event(), threading.Event(), []
    first = threading.Thread(target=_hold_write_lock, args=(engine, workspace, first_started, first_release, first_done))
    first.start()
    assert first_started.wait(5)

    settings_done: list[float] = []

    def change_settings():
        with engine.begin() as conn:
            Repository(conn).settings(workspace, Lock.UPDATE)
        settings_done.append(time.monotonic())

    changer = threading.Thread(target=change_settings)
    changer.start()
    time.sleep(0.3)  # the settings change now waits for the first write
    assert not settings_done

    second_started, second_release, second_done = threading.Event(), threading.Event(), []
    second = threading.Thread(
        target=_hold_write_lock, args=(engine, workspace, second_started, second_release, second_done)
    )
    second.start()
    # A write that comes after the waiting settings change queues behind it.
    assert not second_started.wait(0.5), "a later write overtook the waiting settings change"

    first_release.set()
    changer.join(5)
    assert settings_done, "the settings change did not get its turn"
    assert second_started.wait(5)
    second_release.set()
    for t in (first, second):
        t.join(5)
    assert first_done[0] <= settings_done[0] <= second_done[0]
