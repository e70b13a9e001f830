"""The shape of a managed API key and its digest.

A key is `idk_<key_id>_<secret>`: key_id is 16 hex characters (the row to look up, so no scan),
secret 43 URL-safe base64 characters (256 random bits). Only HMAC-SHA256(salt, secret) is
stored, with a per-key 16-byte salt: a fast hash suits a random 256-bit secret (nothing to
brute-force), and the salt keeps equal secrets from having equal digests."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "idk_"
_KEY = re.compile(r"idk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str  # the whole key the client sends; shown once, never stored
    salt: bytes
    digest: bytes


def digest(salt: bytes, secret_part: str) -> bytes:
    return hmac.new(salt, secret_part.encode(), hashlib.sha256).digest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret_part = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return NewKey(key_id, f"{PREFIX}{key_id}_{secret_part}", salt, digest(salt, secret_part))


def split(key: str) -> tuple[str, str] | None:
    """(key_id, secret part) of a well-formed managed key, else None (a static key, or junk)."""
    match = _KEY.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def matches(salt: bytes, stored: bytes, secret_part: str) -> bool:
    return hmac.compare_digest(digest(salt, secret_part), stored)
