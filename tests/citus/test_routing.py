"""Every statement of the service is routed by the Citus coordinator to one worker.

Each statement of service.db.statements (HOT_STATEMENTS, the change log's, the stored
responses', and any other `*_SQL` the module defines) is run as the service runs it: through
psycopg, with its parameters as psycopg sends them (str and None untyped, lists as arrays, ints
by size, Jsonb as jsonb), prepared server-side, on a connection with the service's session
settings (service.db.engine.connection_options, so DB_PLAN_CACHE_MODE=auto here), in a
transaction rolled back afterwards. It is executed EXECUTIONS times first, so that Postgres's
plan cache has made its choice between a generic and a custom plan (it decides after five custom
plans), then explained with EXPLAIN EXECUTE of that very prepared statement: the plan must be a
Citus router plan, one task on one worker, with no subplan run first on the coordinator (what
Citus does with a part it cannot push down) and no second job.

Statements that touch no distributed table (SET_TIMEOUTS_SQL, NOTIFY_SQL) run on the coordinator
only, which is what they are for: their plans must not contain a Citus node at all.

`test_force_generic_plan_report` records, for the same statements, what happens with the
plain-Postgres setting (plan_cache_mode=force_generic_plan): which statements Citus can route as
a generic plan (deferred pruning of single-table statements) and which it refuses."""

from __future__ import annotations

import itertools
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Jsonb

from service.db import statements as st
from service.db.engine import connection_options
from service.db.statements import HOT_STATEMENTS, SETTINGS_QUERIES, Lock

EXECUTIONS = 7  # psycopg prepares on the first (prepare=True); Postgres chooses its plan after 5

# Statements that name no distributed table: they run on the coordinator itself.
COORDINATOR_ONLY = {"set_timeouts", "notify"}


def _compiled(statement: sa.Executable) -> str:
    return str(statement.compile(dialect=st._DIALECT))


def all_statements() -> dict[str, str]:
    """Every statement the service sends on a call's path, by a short name: HOT_STATEMENTS, then
    every other `*_SQL` of service.db.statements (lower-cased, without _SQL), then the settings
    change's locking read."""
    out = dict(HOT_STATEMENTS)
    known = set(out.values())
    for name in sorted(dir(st)):
        value = getattr(st, name)
        if not name.endswith("_SQL"):
            continue
        if isinstance(value, dict):  # LOAD_SQL: by lock
            for key, text in value.items():
                if text not in known:
                    out[f"{name[:-4].lower()}_{getattr(key, 'name', key).lower()}"] = text
                    known.add(text)
        elif isinstance(value, str) and value not in known:
            out[name[:-4].lower()] = value
            known.add(value)
    settings_update = _compiled(SETTINGS_QUERIES[Lock.UPDATE])
    if settings_update not in known:
        out["settings_for_update"] = settings_update
    return out


STATEMENTS = all_statements()
NOW = datetime.now(timezone.utc)


@dataclass
class Sample:
    """One workspace with two people and a few events, and the values each parameter name gets.
    Values that a unique key holds are fresh on every execution."""

    workspace_id: str
    cio_ids: list[str]
    counter: Iterator[int]

    def value(self, name: str) -> Any:
        fixed: dict[str, Any] = {
            "workspace_id": self.workspace_id,
            "key_workspace_id": self.workspace_id,
            "key_cio_id": self.cio_ids[0],
            "cio_ids": self.cio_ids,
            "id_keys": ["ada"],
            "email_keys": ["ada@example.com"],
            "email": None,
            "email_norm": None,
            "email_key": None,
            "attributes": Jsonb({"plan": "pro"}),
            "created_at": NOW,
            "updated_at": NOW,
            "ms": "5000",
            "kind": "UPDATED",
            "merged_cio_id": None,
            "undoes": None,
            "rpc": "Identify",
            "body": Jsonb({}),
            "after": 0,
            "before": 1_000_000,
            "limit": 500,
            "sequence": 1,
            "cutoff": NOW - timedelta(days=30),
            "method": "Identify",
            "fingerprint": b"\x01\x02",
            "response": b"\x03\x04",
        }
        if name in fixed:
            return fixed[name]
        k = next(self.counter)
        fresh: dict[str, Callable[[], Any]] = {
            "cio_id": lambda: f"c{secrets.token_hex(9)}",
            "id": lambda: f"new-{k}",
            "id_key": lambda: f"new-{k}",
            "request_id": lambda: f"00000000-0000-4000-8000-{k:012d}",
        }
        if name not in fresh:
            raise KeyError(f"no sample value for the parameter {name!r}: add one to tests/citus/test_routing.py")
        return fresh[name]()

    def params(self, statement: str) -> dict[str, Any]:
        names = dict.fromkeys(re.findall(r"%\((\w+)\)s", statement))
        values = {name: self.value(name) for name in names}
        if "id" in values and "id_key" in values:
            values["id_key"] = values["id"]  # people_id_key_is_id
        return values


@pytest.fixture(scope="module")
def sample(engine: sa.Engine) -> Sample:
    ws = "route-" + secrets.token_hex(4)
    cio_ids = sorted(f"c{secrets.token_hex(9)}" for _ in range(2))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workspaces (workspace_id, identifier_mode, email_updatable_by_id,"
                " sole_identifier_updatable, auto_merge, event_retention_days, created_at, updated_at)"
                " VALUES (:w, 'EMAIL_OR_ID', true, false, true, 30, now(), now())"
            ),
            {"w": ws},
        )
        conn.execute(sa.text("INSERT INTO event_sequences (workspace_id, last_sequence, last_time) VALUES (:w, 2, now())"), {"w": ws})
        for i, (cio_id, (pid, email)) in enumerate(zip(cio_ids, [("ada", "Ada@Example.com"), ("bob", None)])):
            conn.execute(
                sa.text(
                    "INSERT INTO people (workspace_id, cio_id, id, email, email_norm, id_key, email_key, attributes,"
                    " created_at, updated_at) VALUES (:w, :c, :i, :e, lower(:e), :i, lower(:e), '{}', now(), now())"
                ),
                {"w": ws, "c": cio_id, "i": pid, "e": email},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO person_events (workspace_id, sequence, cio_id, kind, rpc, request_id, commit_time, body)"
                    " VALUES (:w, :s, :c, 'CREATED', 'Identify', '', now(), '{}')"
                ),
                {"w": ws, "s": i + 1, "c": cio_id},
            )
    return Sample(ws, cio_ids, itertools.count(1))


@dataclass
class Outcome:
    error: str | None = None  # the error of an execution that failed
    commands: list[tuple[str, str]] | None = None  # (node, statement) sent to workers by the last execution
    local: list[str] | None = None  # statements the last execution ran on the coordinator itself
    plan: dict[str, Any] | None = None  # EXPLAIN EXECUTE of the prepared statement
    explain_error: str | None = None
    generic_plans: int = 0
    custom_plans: int = 0


# Transaction control that Citus sends along (not a task of the statement).
_CONTROL = re.compile(r"^(BEGIN|COMMIT|ROLLBACK|PREPARE TRANSACTION|SAVEPOINT|RELEASE|SELECT assign_distributed_transaction_id)")


def _citus_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if plan.get("Custom Plan Provider", "").startswith("Citus"):
        yield plan
    for child in plan.get("Plans", []):
        yield from _citus_nodes(child)


# A statement the service always sends right after another one, in the same transaction.
RUNS_AFTER = {"append_event": "take_sequence"}


def _same_statement(prepared: str, text: str, order: list[str]) -> bool:
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${order.index(m.group(1)) + 1}", text)
    return prepared.strip() == numbered.strip()


def run(url: str, name: str, sample: Sample, plan_cache_mode: str | None = None) -> Outcome:
    """Executes the statement as the service would, prepared, EXECUTIONS times and once more
    with Citus logging every command it sends to a worker (citus.log_remote_commands) or runs
    on the coordinator (citus.log_local_commands), in a transaction rolled back at the end; then
    explains the prepared statement (EXPLAIN EXECUTE)."""
    text = STATEMENTS[name]
    out = Outcome()
    order = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", text)))  # psycopg's $n: by first appearance
    notices: list[tuple[str, str]] = []  # (message, detail): a Diagnostic is valid only in the handler
    with psycopg.connect(url, autocommit=True, **connection_options("identity-citus-routing")) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.message_primary or "", d.message_detail or "")))
        if plan_cache_mode:
            conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        conn.execute("BEGIN")
        before = STATEMENTS.get(RUNS_AFTER.get(name, ""))
        try:
            for _ in range(EXECUTIONS):
                if before:
                    conn.execute(before, sample.params(before), prepare=True)
                conn.execute(text, sample.params(text), prepare=True)
            if before:
                conn.execute(before, sample.params(before), prepare=True)
            conn.execute("SET LOCAL citus.log_remote_commands = on")
            conn.execute("SET LOCAL citus.log_local_commands = on")
            del notices[:]
            params = sample.params(text)
            conn.execute(text, params, prepare=True)
            conn.execute("SET LOCAL citus.log_remote_commands = off")
            conn.execute("SET LOCAL citus.log_local_commands = off")
        except psycopg.Error as e:
            out.error = f"{type(e).__name__}: {e}".strip()
            conn.execute("ROLLBACK")
            return out
        out.commands = [
            (detail.removeprefix("on server ").split(" connectionId")[0], message[len("issuing "):])
            for message, detail in notices
            if message.startswith("issuing ") and not _CONTROL.match(message[len("issuing "):])
        ]
        out.local = [message for message, _ in notices if message.startswith("executing the command locally")]
        rows = conn.execute(
            "SELECT name, parameter_types::text[], statement, generic_plans, custom_plans FROM pg_prepared_statements"
        ).fetchall()
        prepared_name, types, _, out.generic_plans, out.custom_plans = next(
            r for r in rows if _same_statement(r[2], text, order)
        )
        args = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Literal(params[p]), sql.SQL(t)) for p, t in zip(order, types))
        explain = sql.SQL("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE {}").format(sql.Identifier(prepared_name))
        try:
            conn.execute("SAVEPOINT explain")
            (explained,) = conn.execute(explain + (sql.SQL(" ({})").format(args) if order else sql.SQL(""))).fetchone()  # type: ignore[misc]
            out.plan = (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]
        except psycopg.Error as e:
            out.explain_error = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
            conn.execute("ROLLBACK TO SAVEPOINT explain")
        conn.execute("ROLLBACK")
    return out


def _explained(plan: dict[str, Any]) -> str:
    """What EXPLAIN says of the distributed part: '1 task', or why it is not one task."""
    nodes = list(_citus_nodes(plan))
    if not nodes:
        return "no Citus node"
    if len(nodes) > 1:
        return f"{len(nodes)} Citus scans"
    queries = nodes[0].get("Distributed Query", {})
    subplans = queries.get("Subplans", [])
    count = queries.get("Job", {}).get("Task Count")
    if subplans:
        return f"{len(subplans)} subplan(s) first, then {count} task(s)"
    return "1 task" if count == 1 else f"{count} tasks"


def routing(outcome: Outcome) -> str:
    """'router (...)', 'coordinator only', or what keeps the statement from being a router plan:
    one command sent to one worker, nothing run on the coordinator, and, where Citus can explain
    the prepared statement, a plan of one task with no subplan."""
    if outcome.error is not None:
        return f"error: {outcome.error}"
    assert outcome.commands is not None and outcome.local is not None
    commands, local = outcome.commands, outcome.local
    explained = _explained(outcome.plan) if outcome.plan is not None else None
    if not commands and not local:
        return "coordinator only" if explained in (None, "no Citus node") else f"no command sent, yet EXPLAIN: {explained}"
    nodes = sorted({node for node, _ in commands})
    if len(commands) == 1 and not local and explained in (None, "1 task"):
        how = "EXPLAIN: 1 task" if explained else f"EXPLAIN EXECUTE unsupported ({outcome.explain_error})"
        return f"router (1 command to {nodes[0]}; {how})"
    return (
        f"not routed: {len(commands)} command(s) to {', '.join(nodes) or 'no worker'}"
        f" and {len(local)} run on the coordinator; EXPLAIN: {explained or outcome.explain_error}; commands: "
        + " | ".join(c[:160] for _, c in commands)
    )


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_every_statement_is_a_single_task_router_plan(database_url: str, sample: Sample, name: str) -> None:
    outcome = run(database_url, name, sample)
    result = routing(outcome)
    print(f"\n{name}: {result} [plans so far: {outcome.generic_plans} generic, {outcome.custom_plans} custom]")
    if name in COORDINATOR_ONLY:
        assert result == "coordinator only", result
    else:
        assert result.startswith("router ("), f"{name}: {result}\n{STATEMENTS[name]}"


def test_force_generic_plan_report(database_url: str, sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    """With the plain-Postgres setting (force_generic_plan): which statements Citus routes as a
    generic plan, which it refuses. Printed (run with -s); asserts only that the single-table
    lookups by primary key, which Citus prunes at execution time, keep working, so that this
    report stays true."""
    lines = []
    results = {}
    for name in STATEMENTS:
        outcome = run(database_url, name, sample, "force_generic_plan")
        results[name] = routing(outcome)
        lines.append(f"{name}: {results[name]}")
    with capsys.disabled():
        print("\nforce_generic_plan on Citus:\n  " + "\n  ".join(lines))
    assert results["settings"].startswith("router"), results["settings"]
