"""API keys: who is calling, and which workspaces it may use. Keys travel in the
`authorization` metadata as `Bearer <key>`. Health checks and reflection never need a key.

Two kinds of keys:
- managed keys (`idk_<key_id>_<secret>`), created, listed and revoked through ApiKeyService
  and stored as salted digests (service.api.key_secrets, service.db.api_keys); each process
  holds a copy (service.api.key_cache);
- static keys, given to the server at start (API_KEYS / --api-keys / --api-keys-file), for
  development and for the first admin key; `*` grants every workspace (an admin key).

Authentication is on when static keys are given or managed keys are required (REQUIRE_API_KEYS);
with neither, every caller may do everything (local development only: the server warns)."""

from __future__ import annotations

import contextvars
import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

from service.api import key_secrets
from service.api.key_cache import KeyCache, UnknownKeyId
from service.errors import PermissionDenied, Unauthenticated

EVERY_WORKSPACE = "*"


def _digest(key: str) -> bytes:
    # Static keys are kept and looked up as digests: no secret is compared character by character.
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Grant:
    """What the call's key allows. key_id names the key in logs (never its secret): a managed
    key's own id, or `static-` and 8 hex characters of a static key's digest."""

    key_id: str
    admin: bool
    workspaces: frozenset[str]

    def allows(self, workspace_id: str) -> bool:
        return self.admin or workspace_id in self.workspaces


# The grant of the call being served (None: authentication is off, everything is allowed). Set
# by the edge for each call's task; the servicer reads it for checks that depend on the request
# (changing fair-share limits needs an admin key).
current_grant: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("current_grant", default=None)


def is_admin() -> bool:
    grant = current_grant.get()
    return grant is None or grant.admin


def admin_required(what: str) -> PermissionDenied:
    return PermissionDenied("ADMIN_REQUIRED", f"{what} needs an admin API key", {})


@dataclass(frozen=True)
class ApiKeys:
    """Static keys: digest -> Grant."""

    grants: Mapping[bytes, Grant]

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        """`key=workspace|workspace,key=*`: each key with the workspaces it may use (`*`: every
        one, an admin key). Entries may also be separated by newlines (--api-keys-file), and a
        line starting with # is a comment."""
        grants: dict[bytes, Grant] = {}
        lines = (line for line in spec.splitlines() if not line.lstrip().startswith("#"))
        for entry in filter(None, (part.strip() for line in lines for part in line.split(","))):
            key, sep, workspaces = entry.partition("=")
            if not sep or not key or not workspaces:
                raise ValueError("API_KEYS entries are key=workspace|workspace or key=*")
            allowed = frozenset(w.strip() for w in workspaces.split("|") if w.strip())
            digest = _digest(key.strip())
            grants[digest] = Grant("static-" + digest[:4].hex(), EVERY_WORKSPACE in allowed, allowed - {EVERY_WORKSPACE})
        return cls(grants)

    @classmethod
    def from_file(cls, path: str) -> ApiKeys:
        with open(path, encoding="utf-8") as file:
            return cls.parse(file.read())

    @property
    def enabled(self) -> bool:
        return bool(self.grants)


class Authenticator:
    """Checks each call's key, from the metadata alone, before the request is decoded."""

    def __init__(self, static: ApiKeys | None = None, managed: KeyCache | None = None):
        self.static = static or ApiKeys({})
        self.managed = managed

    @property
    def enabled(self) -> bool:
        return self.static.enabled or self.managed is not None

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Grant | None:
        """The call's grant (None when authentication is off). Refuses a call without a known,
        live key (UNAUTHENTICATED)."""
        if not self.enabled:
            return None
        header = next((v for k, v in metadata or () if k == "authorization"), "")
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated(
                "API_KEY_MISSING", "send an API key as metadata 'authorization: Bearer <key>'", {}
            )
        managed = key_secrets.split(key) if self.managed is not None else None
        if managed is not None:
            loaded = self.managed.check(*managed)  # type: ignore[union-attr]
            return Grant(loaded.key_id, loaded.admin, loaded.workspace_ids)
        grant = self.static.grants.get(_digest(key))
        if grant is None:
            raise Unauthenticated("API_KEY_INVALID", "the API key is not known", {})
        return grant

    async def authenticate_waiting(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Grant | None:
        """authenticate(), but a managed key unknown to this process's copy is checked again
        after the copy's next poll (at most 0.25 s later): a key created a moment ago through
        another process, or by `identity-service keys create`, works at once."""
        try:
            return self.authenticate(metadata)
        except UnknownKeyId:
            assert self.managed is not None
            await self.managed.next_poll()
            return self.authenticate(metadata)

    @staticmethod
    def authorize(grant: Grant | None, workspace_id: str) -> None:
        """Refuses a workspace the key does not grant (PERMISSION_DENIED), whether or not it
        exists: a key learns nothing of other workspaces."""
        if grant is None or grant.allows(workspace_id):
            return
        raise PermissionDenied(
            "WORKSPACE_NOT_ALLOWED",
            "the API key does not grant the request's workspace",
            {"workspace_id": workspace_id[:64]},
        )
