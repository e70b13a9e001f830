"""Fair shares between workspaces (issue 11), per server process: each workspace's calls per
second (a token bucket holding one second's worth) and its calls running at once (each holds a
database connection for most of its life). Past the rate, or with as many calls again already
waiting for a running slot, a call is refused at once with RESOURCE_EXHAUSTED and a RetryInfo
(AIP-193), before it touches the database, so a flooding tenant costs the others little more
than the refusals' CPU.

Limits are per process: with N worker processes a workspace may get up to N times its limit
(connections spread over the workers by SO_REUSEPORT); a single client channel stays on one
worker. A workspace's own limits (its settings, 0: the server's default) are polled by
service.db.control; the server's defaults come from its flags (0: no limit)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Mapping

from service.errors import ResourceExhausted

_PRUNE_ABOVE = 10_000  # workspaces tracked before idle ones are forgotten
CONCURRENCY_RETRY_S = 0.05  # a running call of the workspace usually ends within this


class WorkspaceLimits:
    """The server's defaults and the workspaces that override them."""

    def __init__(self, calls_per_second: int = 0, concurrent_calls: int = 0):
        self.default_rate = calls_per_second
        self.default_concurrency = concurrent_calls
        self.overrides: Mapping[str, tuple[int, int]] = {}

    def replace(self, overrides: Mapping[str, tuple[int, int]]) -> None:
        self.overrides = overrides

    def of(self, workspace_id: str) -> tuple[int, int]:
        """(calls per second, calls at once); 0: no limit."""
        rate, concurrency = self.overrides.get(workspace_id, (0, 0))
        return rate or self.default_rate, concurrency or self.default_concurrency


@dataclass
class _Share:
    tokens: float
    stamp: float
    admitted: int = 0  # running and waiting
    limit: int = 0
    slots: asyncio.Semaphore | None = None
    idle_since: float = field(default_factory=time.monotonic)


Ticket = tuple[_Share, asyncio.Semaphore]


class FairShare:
    def __init__(self, limits: WorkspaceLimits):
        self.limits = limits
        self.shares: dict[str, _Share] = {}

    def _share(self, workspace_id: str, now: float) -> _Share:
        share = self.shares.get(workspace_id)
        if share is None:
            if len(self.shares) >= _PRUNE_ABOVE:
                self._prune(now)
            share = self.shares[workspace_id] = _Share(tokens=float("inf"), stamp=now)  # a full bucket
        return share

    def _prune(self, now: float) -> None:
        """Forgets workspaces idle for a minute (a bucket refills in a second anyway)."""
        for workspace_id, share in list(self.shares.items()):
            if share.admitted == 0 and now - share.idle_since > 60:
                del self.shares[workspace_id]

    def check_rate(self, workspace_id: str) -> None:
        """Takes one of the workspace's calls per second, or refuses (WORKSPACE_RATE_LIMITED)."""
        rate = self.limits.of(workspace_id)[0]
        if not rate:
            return
        now = time.monotonic()
        share = self._share(workspace_id, now)
        share.tokens = min(float(rate), share.tokens + (now - share.stamp) * rate)
        share.stamp = now
        if share.tokens < 1:
            raise ResourceExhausted(
                "WORKSPACE_RATE_LIMITED",
                "the workspace is over its calls per second; retry after the RetryInfo's delay",
                {"workspace_id": workspace_id[:64], "limit": str(rate), "per": "second, per server process"},
                retry_after=(1 - share.tokens) / rate,
            )
        share.tokens -= 1

    async def enter(self, workspace_id: str) -> Ticket | None:
        """Admits a unary call of the workspace to run, waiting for one of its running slots if
        need be; pass the result to leave() once the call ends. With as many calls already
        waiting as may run, refuses (WORKSPACE_CONCURRENCY_LIMITED)."""
        concurrency = self.limits.of(workspace_id)[1]
        if not concurrency:
            return None
        now = time.monotonic()
        share = self._share(workspace_id, now)
        if share.slots is None or share.limit != concurrency:
            share.slots, share.limit = asyncio.Semaphore(concurrency), concurrency  # holders release the old one
        if share.admitted >= 2 * concurrency:
            raise ResourceExhausted(
                "WORKSPACE_CONCURRENCY_LIMITED",
                "the workspace has too many calls running and waiting; retry after the RetryInfo's delay",
                {"workspace_id": workspace_id[:64], "limit": str(concurrency), "per": "server process"},
                retry_after=CONCURRENCY_RETRY_S,
            )
        share.admitted += 1
        slots = share.slots
        try:
            await slots.acquire()
        except BaseException:
            share.admitted -= 1
            raise
        return share, slots

    def leave(self, ticket: Ticket | None) -> None:
        if ticket is None:
            return
        share, slots = ticket
        share.admitted -= 1
        slots.release()
        if share.admitted == 0:
            share.idle_since = time.monotonic()
