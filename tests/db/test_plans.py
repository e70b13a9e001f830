"""The hot statements' generic plans are index-bound for every shape of data.

Each statement of service.db.statements.HOT_STATEMENTS is prepared as the service prepares it
(a server-side prepared statement, plan_cache_mode=force_generic_plan: one plan made without
the values) and run with EXPLAIN (ANALYZE, BUFFERS) over workspaces of every shape, with values
that hit and values that miss: no plan node may read more than a handful of rows or buffers per
loop, however many people the workspace holds. The earlier load statement read a whole ID_ONLY
workspace to find one person (5,000 rows here) as soon as the table held many small workspaces,
and so did the merge's DELETE.

The shapes are loaded one at a time into a database of the module's own, since the planner's
statistics are the table's: one workspace of ids only (every ID_ONLY workspace), of emails only,
of both; those three beside many small workspaces; and those three beside many one-person
workspaces with the statistics saying every workspace holds one person (where a unique-index
probe and a scan of the workspace's prefix cost the same)."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Jsonb

from service.db.engine import connection_options, create_engine, migrate
from service.db.keys import keys_for
from service.db.statements import HOT_STATEMENTS, SETTINGS_COLUMNS
from service.domain import Mode, Person
from service.rules.validation import email_key, new_cio_id

_P = len(SETTINGS_COLUMNS)  # a load row: the settings columns, then the person's

# "A handful": what one probe of a unique index reads (one row; an index path of 2-4 pages and
# the heap page), times the few values a lookup carries. A scan of a workspace's prefix reads
# thousands here.
MAX_ROWS_PER_LOOP = 10
MAX_BUFFERS_PER_LOOP = 12
# The estimated cost of a whole plan stays small whatever the data: Postgres JIT-compiles a plan
# costed over jit_above_cost (100,000) on every call (330 ms), which a cost growing with the
# workspace reaches at a million people.
MAX_PLAN_COST = 1_000
BIG = 10_000  # people in a workspace of its own
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)

# The SQL type psycopg sends for each parameter (str: text, list of str: text[], Jsonb: jsonb).
PARAM_TYPES = {
    "cio_ids": "text[]",
    "id_keys": "text[]",
    "email_keys": "text[]",
    "attributes": "jsonb",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}


@dataclass(frozen=True)
class Workspace:
    name: str
    mode: Mode
    people: int
    ids: bool  # its people have ids
    emails: bool  # its people have emails

    def person(self, k: int) -> Person:
        return Person(
            _cio_id(self.name, k),
            f"{self.name}-u{k}" if self.ids else None,
            f"{self.name}-u{k}@Example.com" if self.emails else None,
            {"plan": "pro", "k": k},
            NOW + timedelta(milliseconds=k),
            NOW + timedelta(milliseconds=k),
        )


_CIO_IDS: dict[tuple[str, int], str] = {}


def _cio_id(workspace: str, k: int) -> str:
    return _CIO_IDS.setdefault((workspace, k), new_cio_id())


def _big(scale: float = 1.0) -> list[Workspace]:
    n = int(BIG * scale)
    return [
        Workspace("ids", Mode.ID_ONLY, n, ids=True, emails=False),
        Workspace("emails", Mode.EMAIL_ONLY, n, ids=False, emails=True),
        Workspace("both", Mode.EMAIL_OR_ID, n, ids=True, emails=True),
    ]


def _small(count: int, people: int) -> list[Workspace]:
    """`count` workspaces of `people` people each, of the three shapes in turn."""
    shapes = [(Mode.ID_ONLY, True, False), (Mode.EMAIL_ONLY, False, True), (Mode.EMAIL_OR_ID, True, True)]
    out = []
    for i in range(count):
        mode, ids, emails = shapes[i % 3]
        out.append(Workspace(f"s{i}", mode, people, ids, emails))
    return out


@dataclass(frozen=True)
class Shape:
    name: str
    workspaces: list[Workspace]
    probed: list[str]  # the workspaces whose lookups are explained
    one_person_per_workspace: bool = False  # the statistics say so


SHAPES = [
    Shape("ids_only", [_big()[0]], ["ids"]),
    Shape("emails_only", [_big()[1]], ["emails"]),
    Shape("both", [_big()[2]], ["both"]),
    Shape("many_workspaces", _big(0.5) + _small(2_000, 3), ["ids", "emails", "both", "s1"]),
    Shape("one_person_workspaces", _big(0.5) + _small(5_000, 1), ["ids", "emails", "both", "s2"], True),
]


# --- the database ---


@pytest.fixture(scope="module")
def plans_url(admin_url: str) -> Iterator[str]:
    """A database of this module's own (its statistics are the shapes', nobody else's)."""
    name = f"identity_plans_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _connect(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True, **connection_options("identity-plans-test"))
    conn.execute("SET plan_cache_mode = force_generic_plan")
    return conn


def load_shape(url: str, shape: Shape) -> None:
    """Empties the tables, loads the shape's workspaces and people (keys as the service stores
    them, service.db.keys) with COPY, and refreshes the statistics."""
    with _connect(url) as conn:
        conn.execute("TRUNCATE workspaces, people")
        conn.execute("ALTER TABLE people ALTER COLUMN workspace_id RESET (n_distinct)")
        with conn.cursor() as cur:
            with cur.copy(
                "COPY workspaces (workspace_id, identifier_mode, email_updatable_by_id, sole_identifier_updatable,"
                " auto_merge, created_at, updated_at) FROM STDIN"
            ) as copy:
                for ws in shape.workspaces:
                    copy.write_row((ws.name, ws.mode.value, True, False, True, NOW, NOW))
            with cur.copy(
                "COPY people (workspace_id, cio_id, id, email, email_norm, id_key, email_key, attributes,"
                " created_at, updated_at) FROM STDIN"
            ) as copy:
                for ws in shape.workspaces:
                    for k in range(1, ws.people + 1):
                        p = ws.person(k)
                        keys = keys_for(ws.mode, p)
                        copy.write_row(
                            (ws.name, p.cio_id, p.id, p.email, keys.email_norm, keys.id_key, keys.email_key,
                             json.dumps(p.attributes), p.created_at, p.updated_at)
                        )  # fmt: skip
        if shape.one_person_per_workspace:
            # What ANALYZE concludes of a table of (almost only) one-person workspaces.
            conn.execute("ALTER TABLE people ALTER COLUMN workspace_id SET (n_distinct = -1)")
        conn.execute("VACUUM (ANALYZE) workspaces, people")


# --- preparing and explaining ---


def _positional(statement: str) -> tuple[str, list[str]]:
    """psycopg's %(name)s parameters as $n, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, statement), names


class Prepared:
    """The hot statements prepared on one connection, as psycopg prepares them."""

    def __init__(self, conn: psycopg.Connection, statements: dict[str, str]):
        self.conn = conn
        self.params: dict[str, list[str]] = {}
        for name, statement in statements.items():
            text, params = _positional(statement)
            types = ", ".join(PARAM_TYPES.get(p, "text") for p in params)
            conn.execute(f"PREPARE {name} ({types}) AS {text}")
            self.params[name] = params

    def explain(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        args = sql.SQL(", ").join(sql.Literal(values[p]) for p in self.params[name])
        query = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) EXECUTE {} ({})").format(
            sql.Identifier(name), args
        )
        (result,) = self.conn.execute(query).fetchone()  # type: ignore[misc]
        return (json.loads(result) if isinstance(result, str) else result)[0]

    def execute(self, name: str, values: dict[str, Any]) -> list[tuple]:
        args = sql.SQL(", ").join(sql.Literal(values[p]) for p in self.params[name])
        cur = self.conn.execute(sql.SQL("EXECUTE {} ({})").format(sql.Identifier(name), args))
        return cur.fetchall() if cur.description else []

    def plans(self, name: str) -> tuple[int, int]:
        """(generic plans, custom plans) made for the statement so far."""
        row = self.conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = %s", (name,)
        ).fetchone()
        assert row is not None
        return row[0], row[1]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _blocks(node: dict[str, Any]) -> int:
    return node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)


def _label(node: dict[str, Any]) -> str:
    on = node.get("Index Name") or node.get("Relation Name") or node.get("Function Name") or ""
    return f"{node['Node Type']}{' on ' + on if on else ''}"


def reads(plan: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(node, rows it read per loop, buffers it read itself per loop) of every node that ran.
    Rows read: those it returned plus those its conditions removed (Postgres reports both per
    loop). Buffers: its own, without its children's (a table's modification, which maintains
    every index, is left out)."""
    out = []
    for node in _nodes(plan):
        loops = node.get("Actual Loops", 0)
        if not loops:
            continue
        rows = node["Actual Rows"] + sum(
            node.get(f"Rows Removed by {what}", 0) for what in ("Filter", "Index Recheck", "Join Filter")
        )
        own = _blocks(node) - sum(_blocks(child) for child in node.get("Plans", []))
        buffers = 0.0 if node["Node Type"] == "ModifyTable" else max(0, own) / loops
        out.append((_label(node), rows, buffers))
    return out


# --- the cases: every hot statement, with values that hit and values that miss ---


@dataclass(frozen=True)
class Case:
    statement: str
    title: str
    values: dict[str, Any]
    lock_first: dict[str, Any] | None = None  # a write runs after the load that locks its people


def _lookup(
    workspace_id: str, cio_ids: tuple[str, ...] = (), ids: tuple[str, ...] = (), emails: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The load's parameters, as the repository binds them (emails as their keys)."""
    return {
        "workspace_id": workspace_id,
        "cio_ids": list(cio_ids),
        "id_keys": list(ids),
        "email_keys": [email_key(e) for e in emails],
    }


def cases(ws: Workspace) -> list[Case]:
    p, q = ws.person(7), ws.person(ws.people)
    # Where the workspace's people have no id (or email), the same lookups miss.
    pid, qid = p.id or f"{ws.name}-u7", q.id or f"{ws.name}-u{ws.people}"
    pem, qem = p.email or f"{ws.name}-u7@example.com", q.email or f"{ws.name}-u{ws.people}@example.com"
    lookups = {
        "nothing": _lookup(ws.name),
        "cio_id hit": _lookup(ws.name, (p.cio_id,)),
        "cio_id miss": _lookup(ws.name, (new_cio_id(),)),
        "id hit": _lookup(ws.name, ids=(pid,)),
        "id miss": _lookup(ws.name, ids=("nobody-has-this-id",)),
        "email hit": _lookup(ws.name, emails=(pem,)),
        "email miss": _lookup(ws.name, emails=("nobody@example.com",)),
        "id of one, email of another": _lookup(ws.name, ids=(pid,), emails=(qem,)),
        "every kind, twice the same": _lookup(ws.name, (p.cio_id, q.cio_id), (pid, qid), (pem, qem)),
        "unknown workspace": _lookup("no-such-workspace", (p.cio_id,), (pid,), (pem,)),
    }
    out = [Case(statement, title, values) for statement in ("load", "load_share") for title, values in lookups.items()]
    out.append(Case("settings", "hit", {"workspace_id": ws.name}))
    out.append(Case("settings", "miss", {"workspace_id": "no-such-workspace"}))
    out.append(Case("set_timeouts", "-", {"ms": "1500"}))
    changed = keys_for(ws.mode, p)
    row = {
        "id": p.id, "email": p.email, "email_norm": changed.email_norm, "id_key": changed.id_key,
        "email_key": changed.email_key, "attributes": Jsonb({"plan": "team"}), "updated_at": NOW,
    }  # fmt: skip
    locks = _lookup(ws.name, (p.cio_id, q.cio_id))
    out.append(Case("update_person", "hit", {"key_workspace_id": ws.name, "key_cio_id": p.cio_id, **row}, locks))
    out.append(Case("delete_people", "one", {"workspace_id": ws.name, "cio_ids": [p.cio_id]}, locks))
    out.append(Case("delete_people", "two", {"workspace_id": ws.name, "cio_ids": [p.cio_id, q.cio_id]}, locks))
    out.append(Case("delete_people", "miss", {"workspace_id": ws.name, "cio_ids": [new_cio_id()]}, locks))
    new = Person(new_cio_id(), "new-person", None, {}, NOW, NOW)
    new_keys = keys_for(ws.mode, new)
    out.append(
        Case(
            "insert_person",
            "new person",
            {"workspace_id": ws.name, "cio_id": new.cio_id, "created_at": NOW, **row, "id": new.id, "email": None,
             "email_norm": None, "id_key": new_keys.id_key, "email_key": None},
        )  # fmt: skip
    )
    event = {
        "workspace_id": ws.name, "cio_id": p.cio_id, "kind": "UPDATED", "merged_cio_id": None, "undoes": None,
        "rpc": "Identify", "request_id": "", "body": Jsonb({}),
    }  # fmt: skip
    out.append(Case("take_sequence", "next", {"workspace_id": ws.name}))
    out.append(Case("append_event", "next", event))
    out.append(Case("notify", "-", {"workspace_id": ws.name}))
    out.append(Case("events_after", "from the start", {"workspace_id": ws.name, "after": 0, "limit": 3}))
    out.append(Case("events_after", "past the end", {"workspace_id": ws.name, "after": 10**12, "limit": 3}))
    return out


@dataclass(frozen=True)
class Reading:
    shape: str
    workspace: str
    case: Case
    node: str
    rows: float
    buffers: float


@dataclass(frozen=True)
class Costs:
    case: Case
    workspace: str
    cost: float  # the plan's estimated total cost
    jit: bool  # whether Postgres compiled it


def measure(
    url: str, shape: Shape, statements: dict[str, str]
) -> tuple[list[Reading], list[Costs], dict[str, tuple[int, int]]]:
    """Every node of every case's plan, every plan's cost, and each statement's (generic, custom)
    plan counts."""
    readings, costs = [], []
    with _connect(url) as conn:
        prepared = Prepared(conn, statements)
        by_name = {ws.name: ws for ws in shape.workspaces}
        for name in shape.probed:
            for case in cases(by_name[name]):
                if case.statement not in statements:
                    continue
                write = case.statement in ("update_person", "delete_people", "insert_person")
                if write:
                    conn.execute("BEGIN")
                    if case.lock_first is not None:
                        prepared.execute("load_share", case.lock_first)
                try:
                    explained = prepared.explain(case.statement, case.values)
                finally:
                    if write:
                        conn.execute("ROLLBACK")
                readings += [Reading(shape.name, name, case, *node) for node in reads(explained["Plan"])]
                costs.append(Costs(case, name, explained["Plan"]["Total Cost"], "JIT" in explained))
        counts = {statement: prepared.plans(statement) for statement in statements}
    return readings, costs, counts


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_every_hot_statement_reads_a_handful_of_rows_whatever_the_shape(plans_url: str, shape: Shape) -> None:
    load_shape(plans_url, shape)
    readings, costs, counts = measure(plans_url, shape, HOT_STATEMENTS)

    too_many = [
        f"{r.case.statement} [{r.workspace}: {r.case.title}] {r.node}: {r.rows:g} rows, {r.buffers:g} buffers per loop"
        for r in readings
        if r.rows > MAX_ROWS_PER_LOOP or r.buffers > MAX_BUFFERS_PER_LOOP
    ]
    shown = too_many[:40] + ([f"... and {len(too_many) - 40} more"] if len(too_many) > 40 else [])
    assert not too_many, f"plans reading more than a handful in shape {shape.name}:\n" + "\n".join(shown)
    costly = [
        f"{c.case.statement} [{c.workspace}: {c.case.title}] cost {c.cost:g}{', JIT' if c.jit else ''}"
        for c in costs
        if c.cost > MAX_PLAN_COST or c.jit
    ]
    assert not costly, f"plans whose cost grows with the data in shape {shape.name}:\n" + "\n".join(costly)
    # Every statement ran, always with its one generic plan.
    assert {r.case.statement for r in readings} == set(HOT_STATEMENTS)
    for statement, (generic, custom) in counts.items():
        assert generic > 0 and custom == 0, (statement, generic, custom)


# --- what the load returns, and how it behaves under a concurrent change ---


@pytest.fixture
def both_loaded(plans_url: str) -> Workspace:
    ws = _big(0.1)[2]
    load_shape(plans_url, Shape("small_both", [ws], [ws.name]))
    return ws


def test_the_load_returns_the_settings_then_each_person_found_once_in_cio_id_order(
    plans_url: str, both_loaded: Workspace
) -> None:
    ws = both_loaded
    p, q, r = ws.person(1), ws.person(2), ws.person(3)
    with _connect(plans_url) as conn:
        prepared = Prepared(conn, {"load": HOT_STATEMENTS["load"], "load_share": HOT_STATEMENTS["load_share"]})
        for statement in ("load", "load_share"):
            for _ in range(2):  # the second time from the cached generic plan
                ids, emails = (q.id, p.id, "nobody"), (r.email, q.email)
                lookup = _lookup(ws.name, (p.cio_id, "0" * 20), ids, emails)  # type: ignore[arg-type]
                rows = prepared.execute(statement, lookup)
                settings = ("both", "EMAIL_OR_ID", True, False, True)
                assert [row[:5] for row in rows] == [settings] * 3
                assert [row[_P] for row in rows] == sorted([p.cio_id, q.cio_id, r.cio_id])
                assert {row[_P]: row[_P + 1:_P + 4] for row in rows}[q.cio_id] == (q.id, q.email, q.attributes)
                # Nobody found: the settings alone, the person's columns NULL.
                assert prepared.execute(statement, _lookup(ws.name, ids=("nobody",))) == [settings + (30, 0, 0) + (None,) * 6]
                elsewhere = _lookup("no-such-workspace", ids=(p.id,))  # type: ignore[arg-type]
                assert prepared.execute(statement, elsewhere) == []


def _wait_until_blocked(conn: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError("the second load never waited for the first transaction's lock")


@pytest.mark.parametrize(
    "change, found",
    [
        ("UPDATE people SET attributes = '{\"plan\": \"team\"}' WHERE workspace_id = %s AND cio_id = %s", "new version"),
        ("UPDATE people SET id = 'moved', id_key = 'moved' WHERE workspace_id = %s AND cio_id = %s", "nobody"),
        ("DELETE FROM people WHERE workspace_id = %s AND cio_id = %s", "nobody"),
    ],
    ids=["attributes changed", "id changed", "deleted"],
)
def test_a_locked_load_waits_for_a_concurrent_change_and_sees_its_outcome(
    plans_url: str, both_loaded: Workspace, change: str, found: str
) -> None:
    """READ COMMITTED: the load finds the person by id, waits for the transaction that holds its
    row, then re-checks the row's new version against the lookup."""
    ws = both_loaded
    p = ws.person(11)
    lookup = _lookup(ws.name, ids=(p.id,))  # type: ignore[arg-type]
    load_only = {"load_share": HOT_STATEMENTS["load_share"]}
    with _connect(plans_url) as first, _connect(plans_url) as second, _connect(plans_url) as watcher:
        mine, theirs = Prepared(first, load_only), Prepared(second, load_only)
        first.execute("BEGIN")
        assert [row[_P] for row in mine.execute("load_share", lookup)] == [p.cio_id]
        first.execute(change, (ws.name, p.cio_id))
        result: list[Any] = []

        def load() -> None:
            second.execute("BEGIN")
            result.extend(theirs.execute("load_share", lookup))
            second.execute("ROLLBACK")

        thread = threading.Thread(target=load)
        thread.start()
        try:
            _wait_until_blocked(watcher, second.info.backend_pid)
        finally:
            first.execute("COMMIT")
            thread.join(10)
        assert len(result) == 1
        if found == "nobody":
            assert result[0][_P] is None
        else:
            assert result[0][_P] == p.cio_id and result[0][_P + 3] == {"plan": "team"}


def test_a_locked_load_locks_its_people_in_cio_id_order_whatever_the_lookup_order(
    plans_url: str, both_loaded: Workspace
) -> None:
    """Two calls that lock the same people queue up instead of deadlocking: a load waiting for
    the first of its people (in cio_id order) holds none of the others."""
    ws = both_loaded
    first_person, second_person = sorted((ws.person(21), ws.person(22)), key=lambda p: p.cio_id)
    load_only = {"load_share": HOT_STATEMENTS["load_share"]}
    with _connect(plans_url) as mine_conn, _connect(plans_url) as theirs_conn, _connect(plans_url) as watcher:
        mine, theirs = Prepared(mine_conn, load_only), Prepared(theirs_conn, load_only)
        mine_conn.execute("BEGIN")
        mine_conn.execute("SET LOCAL lock_timeout = '3s'")
        mine.execute("load_share", _lookup(ws.name, (first_person.cio_id,)))
        result: list[Any] = []
        failure: list[BaseException] = []

        def load() -> None:
            theirs_conn.execute("BEGIN")
            try:
                lookup = _lookup(ws.name, (first_person.cio_id,), (second_person.id,))  # type: ignore[arg-type]
                result.extend(theirs.execute("load_share", lookup))
                theirs_conn.execute("COMMIT")
            except psycopg.Error as error:  # a deadlock: it held the second person while waiting
                failure.append(error)
                theirs_conn.execute("ROLLBACK")

        thread = threading.Thread(target=load)
        thread.start()
        try:
            _wait_until_blocked(watcher, theirs_conn.info.backend_pid)
            # It waits for the first person and holds nothing else: the second is free.
            rows = mine.execute("load_share", _lookup(ws.name, (second_person.cio_id,)))
            assert [row[_P] for row in rows] == [second_person.cio_id]
        finally:
            mine_conn.execute("COMMIT")
            thread.join(10)
        assert not failure, failure
        assert [row[_P] for row in result] == [first_person.cio_id, second_person.cio_id]
