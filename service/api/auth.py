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

    def check(self, metadata: Iterable[tuple[str, str | bytes]], workspace_id: str) -> None:
        """Refuses a call without a known key (UNAUTHENTICATED) or for a workspace its key does
        not grant (PERMISSION_DENIED)."""
        if not self.enabled:
            return
        header = next((str(v) for k, v in metadata if k == "authorization"), "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "API_KEY_MISSING", "send an API key as metadata 'authorization: Bearer <key>'", {}
            )
        allowed = self.grants.get(_digest(key.strip()))
        if allowed is None:
            raise Unauthenticated("API_KEY_INVALID", "the API key is not known", {})
        if EVERY_WORKSPACE not in allowed and workspace_id not in allowed:
            raise PermissionDenied(
                "WORKSPACE_NOT_ALLOWED",
                f"the API key does not grant workspace {workspace_id!r}",
                {"workspace_id": workspace_id},
            )
