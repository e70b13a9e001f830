"""The benchmark's data: a workspace of its own, N people and merge pairs, written in bulk with
COPY (never call by call). The keys are computed by the service's own rules (modes.keys_for), so
the rows are exactly what the service would have stored."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

import psycopg
import psycopg.errors

from bench import ids
from service.db.engine import create_engine, migrate
from service.domain import Mode, Person, Settings
from service.db.keys import keys_for
from service.rules.validation import check_cio_id
from service.usecases import IdentityService

MODE = Mode.EMAIL_OR_ID  # both id and email identify: what R13's merges need
_COLUMNS = (
    "workspace_id, cio_id, id, email, email_norm, id_key, email_key, attributes, created_at, updated_at"
)
_PLANS = ("free", "pro", "team")
_CITIES = ("Lisbon", "Oslo", "Austin", "Nairobi", "Osaka", "Lima", "Perth")


def libpq_url(url: str) -> str:
    """A URL psycopg and pgbench accept (no SQLAlchemy driver name)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def new_workspace_id() -> str:
    """'bench-<random>': never one of the tests' ('t-...') nor a real one."""
    return "bench-" + secrets.token_hex(5)


def prepare(url: str, workspace_id: str) -> None:
    """Applies the migrations (the database may be brand new) and creates the workspace with the
    default settings (EMAIL_OR_ID, auto merge on)."""
    engine = create_engine(url, pool_size=1, application_name="identity-bench")
    try:
        migrate(engine)
        IdentityService(engine).create_workspace(Settings(workspace_id, MODE))
    finally:
        engine.dispose()


def _row(workspace_id: str, person: Person) -> tuple:
    keys = keys_for(MODE, person)
    return (
        workspace_id,
        person.cio_id,
        person.id,
        person.email,
        keys.email_norm,
        keys.id_key,
        keys.email_key,
        json.dumps(person.attributes, separators=(",", ":")),
        person.created_at,
        person.updated_at,
    )


def _people_rows(workspace_id: str, first: int, last: int, base: datetime) -> Iterator[tuple]:
    for k in range(first, last + 1):
        created = base + timedelta(milliseconds=k)
        attributes = {"plan": _PLANS[k % 3], "visits": k % 97, "city": _CITIES[k % len(_CITIES)]}
        person = Person(
            ids.person_cio_id(workspace_id, k), ids.person_id(k), ids.person_email(k), attributes, created, created
        )
        yield _row(workspace_id, person)


def _pair_rows(workspace_id: str, first: int, count: int, base: datetime) -> Iterator[tuple]:
    for j in range(first, first + count):
        cio_a, cio_b = ids.pair_cio_ids(workspace_id, j)
        created = base + timedelta(milliseconds=j)
        # A is the older (the merge's primary); B brings an attribute A lacks.
        a = Person(cio_a, ids.pair_a_id(j), None, {"plan": "free"}, created, created)
        later = created + timedelta(seconds=1)
        b = Person(cio_b, None, ids.pair_b_email(j), {"city": _CITIES[j % len(_CITIES)]}, later, later)
        yield _row(workspace_id, a)
        yield _row(workspace_id, b)


def _copy(url: str, rows: Iterator[tuple], progress: Callable[[int], None] | None = None) -> int:
    n = 0
    with psycopg.connect(libpq_url(url)) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY people ({_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    n += 1
                    if progress is not None and n % 50_000 == 0:
                        progress(n)
    return n


def load_people(url: str, workspace_id: str, people: int, progress: Callable[[int], None] | None = None) -> float:
    """People 1..`people`, in one COPY; returns the seconds it took (COPY and ANALYZE)."""
    assert not check_cio_id(ids.person_cio_id(workspace_id, 1)), "bench cio_ids must have the service's shape"
    start = time.perf_counter()
    base = datetime.now(timezone.utc) - timedelta(days=30)
    _copy(url, _people_rows(workspace_id, 1, people, base), progress)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) people")  # statistics and visibility, as an aged table has
    return time.perf_counter() - start


def load_pairs(url: str, workspace_id: str, first: int, count: int) -> None:
    """Merge pairs first..first+count-1 (2 people each), in one COPY."""
    if count > 0:
        base = datetime.now(timezone.utc) - timedelta(days=1)
        _copy(url, _pair_rows(workspace_id, first, count, base))


def settle(url: str) -> None:
    """Writes out what earlier steps left dirty (the bulk load, pgbench's transactions): a
    CHECKPOINT (if this role may), then the kernel's dirty pages (sync). Without it, the kernel
    flushes them ~30 s later, in the middle of a measured run, and the WAL fsyncs of every commit
    wait behind that writeback for hundreds of milliseconds."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass
    os.sync()


def drop_workspace(url: str, workspace_id: str) -> None:
    """Deletes the workspace and, by the foreign key's cascade, its people."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("DELETE FROM workspaces WHERE workspace_id = %s", (workspace_id,))


def database_facts(url: str) -> dict[str, object]:
    """The Postgres version and the postmaster's pid (when it runs on this machine), for the
    report and for CPU accounting."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        backend_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
        postmaster = None
        try:
            import psutil

            proc = psutil.Process(backend_pid)
            if proc.name().startswith("postgres"):
                postmaster = proc.ppid()
        except Exception:  # a remote database, or no permission: no CPU accounting for it
            postmaster = None
    return {"server_version": version, "postmaster_pid": postmaster, "max_connections": max_connections}
