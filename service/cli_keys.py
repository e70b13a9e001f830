"""`identity-service keys`: managed API keys, straight in the database (DATABASE_URL), so that
the first admin key can be made before any key exists. The secret is printed once, alone on
stdout (`KEY=$(identity-service keys create --admin)`); it is stored only as a salted digest.
With a running server and an admin key, ApiKeyService does the same over gRPC."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import click
import psycopg

from service.api import key_secrets
from service.db import api_keys as store
from service.db.engine import libpq_url

EXIT_REFUSED = 2


def _database_option(function: Any) -> Any:
    return click.option("--database-url", envvar="DATABASE_URL", required=True, show_envvar=True,
                        help="postgresql:// URL of the service's (migrated) database")(function)


async def _connect(database_url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True, connect_timeout=5)


def _describe(key: store.StoredKey) -> dict[str, Any]:
    stamp = lambda value: value.isoformat() if value else None  # noqa: E731
    return {
        "key_id": key.key_id,
        "admin": key.admin,
        "workspace_ids": list(key.workspace_ids),
        "description": key.description,
        "created": stamp(key.created_at),
        "expires": stamp(key.expires_at),
        "revoked": stamp(key.revoked_at),
    }


@click.group()
def keys() -> None:
    """Managed API keys, in the database (DATABASE_URL): create, list, revoke."""


@keys.command("create")
@click.option("--admin", is_flag=True, help="an admin key: every workspace, keys and limits")
@click.option("--workspace", "-w", "workspaces", multiple=True, help="a workspace the key may use (repeat)")
@click.option("--expires-in-days", type=float, default=None, help="the key stops working after this many days")
@click.option("--description", default="", help="who holds the key, for operators")
@click.option("--json", "as_json", is_flag=True, help="print JSON (key_id, secret, ...) instead of the secret alone")
@_database_option
def keys_create(admin: bool, workspaces: tuple[str, ...], expires_in_days: float | None, description: str,
                as_json: bool, database_url: str) -> None:
    """Create a key and print its secret, the only time it is shown."""
    if admin == bool(workspaces):
        raise click.UsageError("give --admin or at least one --workspace (not both)")
    if expires_in_days is not None and expires_in_days <= 0:
        raise click.BadParameter("must be positive", param_hint="--expires-in-days")
    now = datetime.now(timezone.utc)
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days is not None else None
    new = key_secrets.new_key()

    async def create() -> tuple[store.StoredKey, list[str]]:
        async with await _connect(database_url) as conn:
            return await store.create(conn, new, admin=admin, workspace_ids=list(dict.fromkeys(workspaces)),
                                      description=description, now=now, expires_at=expires_at)

    stored, missing = asyncio.run(create())
    if missing:
        click.echo(f"error: no workspace {missing[0]!r}: create it first", err=True)
        sys.exit(EXIT_REFUSED)
    if as_json:
        click.echo(json.dumps({**_describe(stored), "secret": new.secret}))
    else:
        click.echo(new.secret)
    click.echo(f"created {'admin ' if admin else ''}API key {stored.key_id}; its secret is shown only now", err=True)


@keys.command("list")
@click.option("--revoked", is_flag=True, help="list revoked keys too")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per key")
@_database_option
def keys_list(revoked: bool, as_json: bool, database_url: str) -> None:
    """One line per key, in key_id order (never a secret)."""

    async def listed() -> list[store.StoredKey]:
        found: list[store.StoredKey] = []
        async with await _connect(database_url) as conn:
            while True:
                page = await store.page(conn, workspace_id="", after=found[-1].key_id if found else "",
                                        limit=1000, show_revoked=revoked)
                found += page
                if len(page) < 1000:
                    return found

    for key in asyncio.run(listed()):
        shown = _describe(key)
        if as_json:
            click.echo(json.dumps(shown))
            continue
        grant = "admin" if key.admin else "workspaces=" + ",".join(key.workspace_ids)
        click.echo(f"{key.key_id} {grant} created={shown['created']} expires={shown['expires'] or '-'} "
                   f"revoked={shown['revoked'] or '-'} description={json.dumps(key.description)}")


@keys.command("revoke")
@click.argument("key_id")
@_database_option
def keys_revoke(key_id: str, database_url: str) -> None:
    """Revoke a key by its key_id: every server refuses it within a second."""

    async def revoke() -> store.StoredKey | None:
        async with await _connect(database_url) as conn:
            return await store.revoke(conn, key_id, datetime.now(timezone.utc))

    revoked = asyncio.run(revoke()) if len(key_id) == 16 else None
    if revoked is None:
        click.echo("error: no API key has this key_id", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"revoked API key {revoked.key_id}")
