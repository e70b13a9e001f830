"""The current call's deadline, set by the gRPC edge (service.api.handlers) and read by the unit of work,
so that a call's database work is bounded by what its client is still waiting for."""

from __future__ import annotations

import time
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("call_deadline", default=None)


def set_remaining(seconds: float | None) -> object:
    """Records that the current call must finish within `seconds` (None: no deadline)."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def reset(token: object) -> None:
    _deadline.reset(token)  # type: ignore[arg-type]


def remaining() -> float | None:
    """Seconds left for the current call, or None when it has no deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
