"""API keys: which workspaces a caller may use. Keys travel in the `authorization` metadata as
`Bearer <key>`. With no key configured the check is off (local development, tests); in
production, configure API_KEYS. Health checks and reflection never need a key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

from service.errors import PermissionDenied, Unauthenticated

EVERY_WORKSPACE = "*"


def _digest(key: str) -> bytes:
    # Keys are kept and looked up as digests: no secret is compared character by character.
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    grants: Mapping[bytes, frozenset[str]]  # key digest -> workspace ids, or EVERY_WORKSPACE

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        """`key=workspace|workspace,key=*`: each key with the workspaces it may use."""
        grants: dict[bytes, frozenset[str]] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, workspaces = entry.partition("=")
            if not sep or not key or not workspaces:
                raise ValueError("API_KEYS entries are key=workspace|workspace or key=*")
            grants[_digest(key)] = frozenset(w.strip() for w in workspaces.split("|") if w.strip())
        return cls(grants)

    @property
    def enabled(self) -> bool:
        return bool(self.grants)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> frozenset[str] | None:
        """The workspaces the call's key grants (None when no key is configured: every one).
        Refuses a call without a known key (UNAUTHENTICATED); read from the metadata alone,
        before the request is decoded."""
        if not self.enabled:
            return None
        header = next((v for k, v in metadata or () if k == "authorization"), "")
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "API_KEY_MISSING", "send an API key as metadata 'authorization: Bearer <key>'", {}
            )
        allowed = self.grants.get(_digest(key.strip()))
        if allowed is None:
            raise Unauthenticated("API_KEY_INVALID", "the API key is not known", {})
        return allowed

    @staticmethod
    def authorize(allowed: frozenset[str] | None, workspace_id: str) -> None:
        """Refuses a workspace the key does not grant (PERMISSION_DENIED)."""
        if allowed is None or EVERY_WORKSPACE in allowed or workspace_id in allowed:
            return
        raise PermissionDenied(
            "WORKSPACE_NOT_ALLOWED",
            "the API key does not grant the request's workspace",
            {"workspace_id": workspace_id[:64]},
        )
