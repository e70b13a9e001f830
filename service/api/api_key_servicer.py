"""identity.v1.ApiKeyService: CreateApiKey, ListApiKeys, RevokeApiKey. The edge lets only admin
keys through (service.api.handlers). The secret appears in CreateApiKey's response and nowhere
else: logs and refusals name the key_id."""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from identity.v1 import api_keys_pb2 as pb
from service.api import key_secrets
from service.db import api_keys as store
from service.errors import FieldViolation, InvalidArgument, NotFound, Unavailable, invalid
from service.rules.validation import check_workspace_id, require_workspace

log = logging.getLogger("identity.api_keys")

MAX_WORKSPACES = 100
MAX_DESCRIPTION = 200
PAGE_DEFAULT, PAGE_MAX = 100, 1000
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def key_to_pb(key: store.StoredKey) -> pb.ApiKey:
    return pb.ApiKey(
        key_id=key.key_id,
        admin=key.admin,
        workspace_ids=list(key.workspace_ids),
        description=key.description,
        create_time=_timestamp(key.created_at),
        expire_time=_timestamp(key.expires_at),
        revoke_time=_timestamp(key.revoked_at),
    )


def _check_create(request: pb.CreateApiKeyRequest, now: datetime) -> tuple[list[str], datetime | None]:
    """Every bad field at once (R42); the workspaces deduplicated, in order."""
    violations: list[FieldViolation] = []
    workspaces = list(dict.fromkeys(request.workspace_ids))
    if request.admin and workspaces:
        violations.append(FieldViolation("workspace_ids", "must be empty for an admin key", "CONFLICTING_VALUES"))
    elif not request.admin and not workspaces:
        violations.append(FieldViolation("workspace_ids", "is required unless admin is set", "WORKSPACE_ID_REQUIRED"))
    if len(workspaces) > MAX_WORKSPACES:
        violations.append(FieldViolation("workspace_ids", f"at most {MAX_WORKSPACES} workspaces", "TOO_MANY_WORKSPACES"))
    for i, workspace_id in enumerate(workspaces[:MAX_WORKSPACES]):
        violations += check_workspace_id(workspace_id, f"workspace_ids[{i}]")
    expires_at = None
    if request.HasField("expire_time"):
        try:
            expires_at = request.expire_time.ToDatetime(tzinfo=timezone.utc)
        except (ValueError, OverflowError):
            violations.append(FieldViolation("expire_time", "is not a valid timestamp", "INVALID_EXPIRE_TIME"))
        else:
            if expires_at <= now:
                violations.append(FieldViolation("expire_time", "must be in the future", "INVALID_EXPIRE_TIME"))
    if len(request.description) > MAX_DESCRIPTION:
        violations.append(
            FieldViolation("description", f"at most {MAX_DESCRIPTION} characters", "DESCRIPTION_TOO_LONG")
        )
    if violations:
        raise InvalidArgument(violations)
    return workspaces, expires_at


class ApiKeyApi:
    """The RPCs of ApiKeyService, on the process's pool (rare admin calls: one connection each)."""

    def __init__(self, uow: Any = None, on_change: Callable[[], Awaitable[None]] | None = None):
        self.uow = uow  # its pool (replaced after a database outage) serves these calls too
        self.on_change = on_change  # reloads this process's copy of the keys

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        assert self.uow is not None
        pool: AsyncConnectionPool = self.uow.pool
        try:
            async with pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise Unavailable("DATABASE_BUSY", "no database connection was free in time; retry later") from None
        except psycopg.OperationalError:
            raise Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later") from None

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest) -> pb.CreateApiKeyResponse:
        now = datetime.now(timezone.utc)
        workspaces, expires_at = _check_create(request, now)
        new = key_secrets.new_key()
        async with self._connection() as conn:
            stored, missing = await store.create(
                conn, new, admin=request.admin, workspace_ids=workspaces, description=request.description,
                now=now, expires_at=expires_at,
            )
        if missing:
            require_workspace(None, missing[0])  # NOT_FOUND WORKSPACE_NOT_FOUND (R8)
        await self._changed()
        log.info("created API key %s (%s)", stored.key_id, "admin" if stored.admin else f"{len(workspaces)} workspaces")
        return pb.CreateApiKeyResponse(api_key=key_to_pb(stored), secret=new.secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest) -> pb.ListApiKeysResponse:
        violations: list[FieldViolation] = []
        if request.workspace_id:
            violations += check_workspace_id(request.workspace_id)
        if not 0 <= request.page_size <= PAGE_MAX:
            violations.append(FieldViolation("page_size", f"must be 0 to {PAGE_MAX}", "INVALID_PAGE_SIZE"))
        if request.page_token and not _KEY_ID.fullmatch(request.page_token):
            violations.append(FieldViolation("page_token", "is not a token this call returned", "INVALID_PAGE_TOKEN"))
        if violations:
            raise InvalidArgument(violations)
        size = request.page_size or PAGE_DEFAULT
        async with self._connection() as conn:
            if request.workspace_id and await store.missing_workspaces(conn, [request.workspace_id]):
                require_workspace(None, request.workspace_id)
            keys = await store.page(
                conn, workspace_id=request.workspace_id, after=request.page_token, limit=size + 1,
                show_revoked=request.show_revoked,
            )
        token = keys[size - 1].key_id if len(keys) > size else ""
        return pb.ListApiKeysResponse(api_keys=[key_to_pb(k) for k in keys[:size]], next_page_token=token)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest) -> pb.RevokeApiKeyResponse:
        if not _KEY_ID.fullmatch(request.key_id):
            # Never echoed: a client may have sent the whole key here by mistake.
            raise invalid("key_id", "must be a key's 16-character key_id (not the key itself)", "INVALID_KEY_ID")
        async with self._connection() as conn:
            revoked = await store.revoke(conn, request.key_id, datetime.now(timezone.utc))
        if revoked is None:
            raise NotFound("API_KEY_NOT_FOUND", "no API key has this key_id", {"key_id": request.key_id})
        await self._changed()
        log.info("revoked API key %s", revoked.key_id)
        return pb.RevokeApiKeyResponse(api_key=key_to_pb(revoked))
