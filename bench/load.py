"""The benchmark's data: a workspace of its own per shape (bench.ids.SHAPES: ids only, emails
only, both), N people in each, and merge pairs in the "both" one, written in bulk with COPY (never
call by call). The keys are computed by the service's own function (service.db.keys.keys_for),
so the rows are exactly what the service would have stored."""

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
from service.db.keys import keys_for
from service.domain import Mode, Person, Settings
from service.rules.validation import check_cio_id

MERGE_SHAPE = "both"  # both id and email identify: what R13's merges need
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


def new_workspace_id(shape: str = MERGE_SHAPE) -> str:
    """'bench-<shape>-<random>': never one of the tests' ('t-...') nor a real one."""
    return f"bench-{shape}-" + secrets.token_hex(4)


def mode(shape: str) -> Mode:
    return Mode(ids.SHAPES[shape][0])


def prepare(url: str, workspaces: dict[str, str]) -> None:
    """Applies the migrations (the database may be brand new) and creates each shape's workspace
    (shape -> workspace id) with the spec's default settings in the shape's mode."""
    engine = create_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    now = datetime.now(timezone.utc)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for shape, workspace_id in workspaces.items():
            s = Settings(workspace_id, mode(shape))
            conn.execute(
                "INSERT INTO workspaces (workspace_id, identifier_mode, email_updatable_by_id,"
                " sole_identifier_updatable, auto_merge, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (workspace_id, s.mode.value, s.email_updatable_by_id, s.sole_identifier_updatable, s.auto_merge,
                 now, now),
            )  # fmt: skip


def _row(workspace_id: str, shape: str, person: Person) -> tuple:
    keys = keys_for(mode(shape), person)
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


def _people_rows(workspace_id: str, shape: str, first: int, last: int, base: datetime) -> Iterator[tuple]:
    _, with_id, with_email = ids.SHAPES[shape]
    for k in range(first, last + 1):
        created = base + timedelta(milliseconds=k)
        attributes = {"plan": _PLANS[k % 3], "visits": k % 97, "city": _CITIES[k % len(_CITIES)]}
        person = Person(
            ids.person_cio_id(workspace_id, k),
            ids.person_id(k) if with_id else None,
            ids.person_email(k) if with_email else None,
            attributes,
            created,
            created,
        )
        yield _row(workspace_id, shape, person)


def _pair_rows(workspace_id: str, first: int, count: int, base: datetime) -> Iterator[tuple]:
    for j in range(first, first + count):
        cio_a, cio_b = ids.pair_cio_ids(workspace_id, j)
        created = base + timedelta(milliseconds=j)
        # A is the older (the merge's primary); B brings an attribute A lacks.
        a = Person(cio_a, ids.pair_a_id(j), None, {"plan": "free"}, created, created)
        later = created + timedelta(seconds=1)
        b = Person(cio_b, None, ids.pair_b_email(j), {"city": _CITIES[j % len(_CITIES)]}, later, later)
        yield _row(workspace_id, MERGE_SHAPE, a)
        yield _row(workspace_id, MERGE_SHAPE, b)


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


def load_people(
    url: str, workspace_id: str, shape: str, people: int, progress: Callable[[int], None] | None = None
) -> float:
    """People 1..`people` of a shape's workspace, in one COPY; returns the seconds it took."""
    assert not check_cio_id(ids.person_cio_id(workspace_id, 1)), "bench cio_ids must have the service's shape"
    start = time.perf_counter()
    base = datetime.now(timezone.utc) - timedelta(days=30)
    _copy(url, _people_rows(workspace_id, shape, 1, people, base), progress)
    return time.perf_counter() - start


def analyze(url: str) -> float:
    """Statistics and visibility, as an aged table has; returns the seconds it took."""
    start = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) workspaces, people")
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


def drop_workspaces(url: str, workspace_ids: list[str]) -> None:
    """Deletes the workspaces and, by the foreign key's cascade, their people."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("DELETE FROM workspaces WHERE workspace_id = ANY(%s)", (workspace_ids,))


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
