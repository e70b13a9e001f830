"""Each server process's copy of the managed API keys, so that checking a call costs a dict
lookup and one HMAC: service.db.control reloads it whenever api_key_versions moves (polled
every 0.25 s, so a revocation reaches every process within a second)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Iterable

from service.api.key_secrets import matches
from service.db.api_keys import LoadedKey
from service.errors import Unauthenticated, Unavailable

# Past this without a successful poll, the copy may miss a revocation: managed keys are refused
# (UNAVAILABLE) rather than trusted.
STALE_AFTER_S = 5.0


class UnknownKeyId(Unauthenticated):
    """A well-formed managed key whose key_id this copy does not hold (yet)."""


class KeyCache:
    def __init__(self) -> None:
        self.keys: dict[str, LoadedKey] = {}
        self.version = -1
        self.checked_at = 0.0  # time.monotonic() of the last successful poll; 0: never
        self._next_poll: list[asyncio.Future[None]] = []

    def replace(self, version: int, keys: Iterable[LoadedKey]) -> None:
        self.keys = {key.key_id: key for key in keys}
        self.version = version

    def polled(self) -> None:
        self.checked_at = time.monotonic()
        waiters, self._next_poll = self._next_poll, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def next_poll(self, timeout: float = 1.0) -> None:
        """Returns after the next poll (or `timeout`): a key made a moment ago on another
        process is then known. A miss costs its caller this wait, never a query of its own."""
        waiter = asyncio.get_running_loop().create_future()
        self._next_poll.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass

    def check(self, key_id: str, secret_part: str) -> LoadedKey:
        """The key, if the secret is its own and it is neither revoked nor expired. Revoked and
        expired are told apart only to the key's holder (the secret matched)."""
        if time.monotonic() - self.checked_at > STALE_AFTER_S:
            raise Unavailable("API_KEYS_UNAVAILABLE", "the API keys could not be read from the database; retry later")
        key = self.keys.get(key_id)
        if key is None:
            raise UnknownKeyId("API_KEY_INVALID", "the API key is not known", {})
        if not matches(key.salt, key.digest, secret_part):
            raise Unauthenticated("API_KEY_INVALID", "the API key is not known", {})
        if key.revoked_at is not None:
            raise Unauthenticated("API_KEY_REVOKED", "the API key was revoked", {"key_id": key_id})
        if key.expires_at is not None and key.expires_at <= datetime.now(timezone.utc):
            raise Unauthenticated("API_KEY_EXPIRED", "the API key has expired", {"key_id": key_id})
        return key
