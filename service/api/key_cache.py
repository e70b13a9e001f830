"""Each server process's copy of the managed API keys, so that checking a call costs a dict
lookup and one HMAC: service.db.control reloads it whenever api_key_versions moves (polled
every 0.25 s, so a revocation reaches every process within a second)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Iterable

from service.api.key_secrets import matches
from service.db.api_keys import LoadedKey
from service.errors import Unauthenticated, Unavailable

# Past this without a successful poll, the copy may miss a revocation: managed keys are refused
# (UNAVAILABLE) rather than trusted.
STALE_AFTER_S = 5.0


class KeyCache:
    def __init__(self) -> None:
        self.keys: dict[str, LoadedKey] = {}
        self.version = -1
        self.checked_at = 0.0  # time.monotonic() of the last successful poll; 0: never

    def replace(self, version: int, keys: Iterable[LoadedKey]) -> None:
        self.keys = {key.key_id: key for key in keys}
        self.version = version

    def polled(self) -> None:
        self.checked_at = time.monotonic()

    def check(self, key_id: str, secret_part: str) -> LoadedKey:
        """The key, if the secret is its own and it is neither revoked nor expired. Revoked and
        expired are told apart only to the key's holder (the secret matched)."""
        if time.monotonic() - self.checked_at > STALE_AFTER_S:
            raise Unavailable("API_KEYS_UNAVAILABLE", "the API keys could not be read from the database; retry later")
        key = self.keys.get(key_id)
        if key is None or not matches(key.salt, key.digest, secret_part):
            raise Unauthenticated("API_KEY_INVALID", "the API key is not known", {})
        if key.revoked_at is not None:
            raise Unauthenticated("API_KEY_REVOKED", "the API key was revoked", {"key_id": key_id})
        if key.expires_at is not None and key.expires_at <= datetime.now(timezone.utc):
            raise Unauthenticated("API_KEY_EXPIRED", "the API key has expired", {"key_id": key_id})
        return key
