"""What the database-layer tests share: running a scenario on a unit of work of its own pool."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from service.db.engine import create_pool
from service.db.unit_of_work import UnitOfWork


def run_on_unit_of_work(database_url: str, scenario: Callable[[UnitOfWork], Awaitable[Any]], **pool: Any) -> Any:
    """Runs `scenario` on a fresh pool (2 connections unless `pool` says otherwise), then closes it."""

    async def go() -> Any:
        connections = create_pool(database_url, **{"size": 2, **pool})
        await connections.open()
        try:
            return await scenario(UnitOfWork(connections))
        finally:
            await connections.close()

    return asyncio.run(go())
