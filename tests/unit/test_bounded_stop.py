"""A stop step that hangs is logged and left behind, so that a server always stops."""

import asyncio
import logging
import time

from service.runtime.server import _bounded


def test_a_hanging_step_is_logged_and_the_stop_goes_on(caplog):
    async def hang_forever() -> None:
        await asyncio.Event().wait()

    async def stop() -> float:
        start = time.monotonic()
        await _bounded("stuck part", hang_forever(), 0.05)
        return time.monotonic() - start

    with caplog.at_level(logging.ERROR):
        took = asyncio.run(stop())
    assert took < 5
    assert "stopping the stuck part took over" in caplog.text


def test_a_step_that_finishes_logs_nothing(caplog):
    done = []

    async def quick() -> None:
        done.append(True)

    with caplog.at_level(logging.ERROR):
        asyncio.run(_bounded("quick part", quick(), 5))
    assert done == [True]
    assert caplog.text == ""
