"""The SQL of every hot statement, written as SQLAlchemy Core and compiled once to the driver's
SQL (psycopg's %(name)s parameters). Each call only binds values; psycopg prepares them
server-side after a few uses, and every prepared statement runs with a generic plan
(plan_cache_mode=force_generic_plan, service.db.engine): one plan per connection, made without
the values, so without knowing the workspace or how many people it holds.

Plans that cannot degrade
-------------------------
Every index of `people` leads with `workspace_id`, so `workspace_id = $1` alone is a usable
condition on every index: a plan may read the workspace's whole prefix of some index and filter
it. A generic plan does so whenever that looks cheap for an average workspace (the table's rows
over its distinct workspace_ids), whatever the workspace at hand. Measured on Postgres 15 with
the earlier statements:

- `key = ANY($array)` is costed as ten index descents (an array of unknown length), so once a
  workspace averaged about ten people or fewer (many small workspaces beside big ones) the
  prefix scan won: the load read a 5,000-person ID_ONLY workspace to find one person ("Rows
  Removed by Filter: 4999"), and the merge's DELETE did the same;
- a one-value equality on a unique index (`workspace_id = $1 AND cio_id = $2`, the UPDATE) ties
  with the prefix scan when the average workspace holds one person (a table of mostly
  one-person workspaces): both cost one index tuple and one heap tuple, and the tie went to the
  email index's prefix, in every statement.

So each lookup is written so that no plan reading a workspace's prefix can win, whatever the
statistics:

1. One value, one probe. Arrays are unnested and each value is looked up by a LATERAL subquery
   of its own, which Postgres never flattens into a join (it has ORDER BY and LIMIT): it runs
   as the inner side of a nested loop, once per value. No hash or merge join can replace the
   probes by one pass over the workspace.
2. A probe bounds the whole key of its unique index, in that index's order, first row only:
   `workspace_id = $ws AND key >= $v AND key <= $v ORDER BY key LIMIT 1`. Only the unique
   index (workspace_id, key) returns rows in that order; a prefix scan of another index needs a
   Sort of all it reads before the first row comes out, so it costs its whole prefix, never
   less than the probe (at the one-person tie, the order decides). Written as `key = $v`, the
   ORDER BY would be redundant (a constant) and the tie-break lost. The range's selectivity is
   a guess (half a percent of the workspace's estimated rows): LIMIT 1 keeps it out of the
   costs, which otherwise grow with the workspace until Postgres JIT-compiles the plan on every
   call (330 ms a call, seen with a million people in one workspace).
3. The writes find their row by such a probe and write it by its tuple id (ctid): a TID scan
   reads that one row and no index scan can compete with it. They write only people the call's
   load locked FOR UPDATE in the same transaction, so the ctid cannot change in between. The
   UPDATE also keeps its key conditions (a check of the one row); the DELETE cannot: a TID scan
   of an array of unknown length is costed as ten rows, and the workspace's prefix would win
   again. The only other plan left is a sequential scan, chosen only while the whole table
   holds a few hundred people (measured: up to ~100 for the UPDATE, ~300 for the DELETE; any
   statement reads a table of a page or two whole).

The load keeps one statement and one round trip: the settings and the gate as before, then the
people: the cio_ids given plus those the id and email probes find, deduplicated and sorted, each
fetched (and with Lock.SHARE locked FOR UPDATE) by its own primary-key probe, in cio_id order,
and re-matched against the whole lookup. A row locked after a concurrent change is its latest
version (READ COMMITTED), returned only if it still matches, as before; the rules core re-matches
the people it gets, and the unique indexes are the final guard.

tests/db/test_plans.py proves it: EXPLAIN ANALYZE of every statement of HOT_STATEMENTS, prepared
and generic, over workspaces of every shape (ids only, emails only, both, many small ones, and a
table the planner believes holds one person per workspace): no plan node reads more than a
handful of rows or buffers, and no plan's cost grows with the data."""

from __future__ import annotations

import enum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from service.db.schema import event_sequences, people, person_events, stored_responses, workspaces

_TEXT_ARRAY = ARRAY(sa.Text)
PERSON_COLUMNS = (
    people.c.cio_id,
    people.c.id,
    people.c.email,
    people.c.attributes,
    people.c.created_at,
    people.c.updated_at,
)
SETTINGS_COLUMNS = (
    workspaces.c.workspace_id,
    workspaces.c.identifier_mode,
    workspaces.c.email_updatable_by_id,
    workspaces.c.sole_identifier_updatable,
    workspaces.c.auto_merge,
    workspaces.c.event_retention_days,
    workspaces.c.max_calls_per_second,
    workspaces.c.max_concurrent_calls,
)


class Lock(enum.Enum):
    NONE = "NONE"
    # Writes to people hold the workspace's settings steady: FOR SHARE lets writes run together
    # but waits for (and blocks) a settings change, so R2's validation sees every write.
    SHARE = "SHARE"
    UPDATE = "UPDATE"


# The hot statements are built once: each call only binds values (and psycopg prepares them
# server-side after a few uses).
SETTINGS_QUERY = sa.select(*SETTINGS_COLUMNS).where(workspaces.c.workspace_id == sa.bindparam("workspace_id"))

# A settings change must not wait for ever behind a stream of writes: row locks let each new FOR
# SHARE pass a waiting FOR NO KEY UPDATE, but Postgres queues advisory locks in order. So writes
# also take the workspace's gate shared and a settings change takes it exclusively, first, in
# the same statement as the row lock (which, taken after the gate, sees the latest settings).
_GATE_CLASS = sa.literal_column("7242")  # the advisory lock namespace of workspace gates
_ONE = sa.literal_column("1")  # LIMIT 1 as a constant: a bound LIMIT is unknown to a generic plan


def _gated(query: sa.Select, lock_function: str) -> sa.Select:
    gate = sa.select(
        getattr(sa.func, lock_function)(_GATE_CLASS, sa.func.hashtext(sa.bindparam("workspace_id")))
    ).cte("gate")
    return query.where(sa.exists(sa.select(sa.literal_column("1")).select_from(gate)))


SETTINGS_QUERIES = {
    Lock.NONE: SETTINGS_QUERY,
    Lock.SHARE: _gated(SETTINGS_QUERY, "pg_advisory_xact_lock_shared").with_for_update(read=True),
    Lock.UPDATE: _gated(SETTINGS_QUERY, "pg_advisory_xact_lock").with_for_update(key_share=True),  # FOR NO KEY UPDATE
}


def _probe(
    table: sa.Table | sa.Alias, workspace_id: sa.ColumnElement, key: sa.ColumnElement, value: sa.ColumnElement,
    *columns: sa.ColumnElement,
) -> sa.Select:
    """The one row of a workspace whose `key` is `value`, by the unique index (workspace_id, key):
    a closed range on the whole key, in that index's order, first row only (see the module's
    docstring: the order is what no other index can give, the range what keeps the order
    meaningful, the limit what keeps the range's estimate out of the costs)."""
    return (
        sa.select(*columns)
        .where(table.c.workspace_id == workspace_id, key >= value, key <= value)
        .order_by(key)
        .limit(_ONE)
    )


def _unnested(name: str, alias: str) -> sa.TableValuedAlias:
    """The values of the text array parameter `name`, one row each: `unnest(:name) AS
    alias(value)`."""
    return sa.func.unnest(sa.bindparam(name, type_=_TEXT_ARRAY)).table_valued("value").render_derived(name=alias)


def _probed(param: str, alias: str, key_name: str, column: str) -> sa.Select:
    """`column` of the people whose `key_name` (cio_id, id_key or email_key) is one of the text
    array parameter `param`'s values: one probe per value."""
    values = _unnested(param, f"{alias}_value")
    table = people.alias(alias)
    column_of = sa.literal_column(f"{alias}.ctid") if column == "ctid" else table.c[column]
    probe = _probe(table, sa.bindparam("workspace_id"), table.c[key_name], values.c.value, column_of.label(column))
    found = probe.lateral(f"{alias}_probe")
    return sa.select(found.c[column]).select_from(values).join(found, sa.true())


def _load_statement(lock: Lock) -> sa.Select:
    settings = SETTINGS_QUERIES[lock].cte("ws")
    # Every cio_id the lookup names, once each, in order (the order people are locked in): one
    # sort of the few values found (UNION would hash them, then sort).
    named = sa.union_all(
        sa.select(_unnested("cio_ids", "given").c.value.label("cio_id")),
        _probed("id_keys", "by_id", "id_key", "cio_id"),
        _probed("email_keys", "by_email", "email_key", "cio_id"),
    ).subquery("named")
    wanted = sa.select(named.c.cio_id).distinct().order_by(named.c.cio_id).subquery("wanted")
    # Each of them fetched (and with Lock.SHARE locked) by its own probe of the primary key,
    # then re-matched against the whole lookup: a locked row is its latest version (READ
    # COMMITTED re-reads a row a concurrent transaction changed), which may no longer match.
    # The re-match stays outside the probe: inside, it would shrink the probe's row estimate to
    # one, and LIMIT 1 would no longer keep the range's estimate out of the costs.
    table = people.alias("person")
    fetch = _probe(
        table,
        sa.bindparam("workspace_id"),
        table.c.cio_id,
        wanted.c.cio_id,
        *(table.c[c.name] for c in PERSON_COLUMNS),
        table.c.id_key,
        table.c.email_key,
    )
    if lock != Lock.NONE:
        fetch = fetch.with_for_update()
    fetched = fetch.lateral("fetched")
    found = (
        sa.select(*(fetched.c[c.name] for c in PERSON_COLUMNS))
        .select_from(wanted)
        .join(fetched, sa.true())
        .where(
            sa.or_(
                fetched.c.cio_id == sa.any_(sa.bindparam("cio_ids", type_=_TEXT_ARRAY)),
                fetched.c.id_key == sa.any_(sa.bindparam("id_keys", type_=_TEXT_ARRAY)),
                fetched.c.email_key == sa.any_(sa.bindparam("email_keys", type_=_TEXT_ARRAY)),
            )
        )
        .order_by(wanted.c.cio_id)
        .lateral("p")
    )
    return sa.select(settings, found).select_from(settings.outerjoin(found, sa.true()))


_LOAD = {lock: _load_statement(lock) for lock in (Lock.NONE, Lock.SHARE)}


def _row_of(cio_id: sa.ColumnElement, workspace_param: str) -> sa.ScalarSelect:
    """The ctid of one person, found by a primary-key probe."""
    table = people.alias("target")
    ctid = sa.literal_column("target.ctid")
    return _probe(table, sa.bindparam(workspace_param), table.c.cio_id, cio_id, ctid).scalar_subquery()


_CTID = sa.literal_column("people.ctid")
# Executed with a dict of column values: SQLAlchemy binds each named column.
_INSERT_PERSON = people.insert()
# The person's row by its ctid (one TID scan), and still by its key: the key conditions cost one
# row's check and keep the statement meaning what it says.
_UPDATE_PERSON = people.update().where(
    _CTID == _row_of(sa.bindparam("key_cio_id"), "key_workspace_id"),
    people.c.workspace_id == sa.bindparam("key_workspace_id"),
    people.c.cio_id == sa.bindparam("key_cio_id"),
)
# The people's rows by their ctids, each found by its own probe joined to the target (one TID
# match per probe: no plan can prefer the workspace's prefix), and the workspace named on the
# target too, so that Citus routes the DELETE to the workspace's shard (it refuses a ctid
# condition it would have to plan recursively).
_doomed_values = _unnested("cio_ids", "doomed_value")
_doomed_table = people.alias("doomed")
_doomed = _probe(
    _doomed_table,
    sa.bindparam("workspace_id"),
    _doomed_table.c.cio_id,
    _doomed_values.c.value,
    sa.literal_column("doomed.ctid").label("ctid"),
).lateral("doomed_probe")
# SQLAlchemy orders a DELETE's USING list by itself (a LATERAL must follow what it reads), so
# the join is compiled as a SELECT's FROM and spliced in (see DELETE_PEOPLE_SQL).
_DOOMED_JOIN = sa.select(_doomed.c.ctid).select_from(_doomed_values.join(_doomed, sa.true()))

# The same statements as SQL for the driver (psycopg's %(name)s parameters), compiled once.
_DIALECT = psycopg_dialect.dialect()
PERSON_FIELDS = ["id", "email", "email_norm", "id_key", "email_key", "attributes", "updated_at"]


def _sql(statement: sa.Executable, column_keys: list[str] | None = None) -> str:
    return str(statement.compile(dialect=_DIALECT, column_keys=column_keys))


LOAD_SQL = {lock: _sql(statement) for lock, statement in _LOAD.items()}
INSERT_PERSON_SQL = _sql(_INSERT_PERSON, ["workspace_id", "cio_id", "created_at", *PERSON_FIELDS])
UPDATE_PERSON_SQL = _sql(_UPDATE_PERSON, PERSON_FIELDS)
DELETE_PEOPLE_SQL = (
    "DELETE FROM people USING "
    + _sql(_DOOMED_JOIN).split("\nFROM ", 1)[1]
    + "\nWHERE people.workspace_id = %(workspace_id)s::VARCHAR AND people.ctid = doomed_probe.ctid"
)
SET_TIMEOUTS_SQL = (
    "SELECT set_config('statement_timeout', %(ms)s, true), set_config('lock_timeout', %(ms)s, true)"
)
SETTINGS_SQL = _sql(SETTINGS_QUERIES[Lock.NONE])

# --- The change log (R50-R54) ---
#
# R51, sequence order is commit order: each appended event takes the workspace's next number
# from its counter row, an upsert whose row lock is held until the transaction ends. The appends
# travel with the COMMIT (the last round trip), so a concurrent appender to the same workspace
# waits only for that commit, and takes its number after the first one is visible. A number
# taken at insert time from a sequence would not do: a transaction that took 7 could commit
# after one that took 8, and a reader that saw 8 would never see 7.
# Two statements, each on the workspace's rows only (so that Citus routes each to one shard):
# the counter taken, with the time the transaction asked for it (in its last round trip, before
# any wait for the counter's row lock), then the event inserted with the counter's number and
# that time as its commit time.
_TAKE_SEQUENCE = (
    pg_insert(event_sequences)
    .values(workspace_id=sa.bindparam("workspace_id"), last_sequence=_ONE, last_time=sa.func.clock_timestamp())
    .on_conflict_do_update(
        index_elements=[event_sequences.c.workspace_id],
        # Citus allows only immutable expressions here: the time comes from the VALUES row.
        set_={"last_sequence": event_sequences.c.last_sequence + _ONE, "last_time": sa.literal_column("excluded.last_time")},
    )
)
TAKE_SEQUENCE_SQL = _sql(_TAKE_SEQUENCE)
_APPENDED = (
    "workspace_id", "sequence", "cio_id", "kind", "merged_cio_id", "undoes", "rpc", "request_id", "commit_time", "body"
)
_APPEND_EVENT = person_events.insert().from_select(
    _APPENDED,
    sa.select(
        event_sequences.c.workspace_id,
        event_sequences.c.last_sequence,
        sa.bindparam("cio_id", type_=sa.Text),
        sa.bindparam("kind", type_=sa.Text),
        sa.bindparam("merged_cio_id", type_=sa.Text),
        sa.bindparam("undoes", type_=sa.BigInteger),
        sa.bindparam("rpc", type_=sa.Text),
        sa.bindparam("request_id", type_=sa.Text),
        event_sequences.c.last_time,
        sa.bindparam("body", type_=JSONB),
    ).where(event_sequences.c.workspace_id == sa.bindparam("workspace_id")),
).returning(person_events.c.sequence)
APPEND_EVENT_SQL = _sql(_APPEND_EVENT)
# Delivered at COMMIT to each worker's LISTEN connection, which wakes the workspace's streams;
# they re-read by sequence, so the payload is only the workspace (a lost one loses nothing).
CHANGES_CHANNEL = "identity_changes"
NOTIFY_SQL = _sql(
    sa.select(sa.func.pg_notify(sa.literal_column(f"'{CHANGES_CHANNEL}'"), sa.bindparam("workspace_id", type_=sa.Text)))
)

EVENT_COLUMNS = (
    person_events.c.sequence,
    person_events.c.cio_id,
    person_events.c.kind,
    person_events.c.rpc,
    person_events.c.request_id,
    person_events.c.commit_time,
    person_events.c.body,
)
_IN_WORKSPACE = person_events.c.workspace_id == sa.bindparam("workspace_id")
EVENTS_AFTER_SQL = _sql(
    sa.select(*EVENT_COLUMNS)
    .where(_IN_WORKSPACE, person_events.c.sequence > sa.bindparam("after", type_=sa.BigInteger))
    .order_by(person_events.c.sequence)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
EVENT_SQL = _sql(
    sa.select(*EVENT_COLUMNS).where(_IN_WORKSPACE, person_events.c.sequence == sa.bindparam("sequence", type_=sa.BigInteger))
)
UNDONE_SQL = _sql(
    sa.select(person_events.c.sequence).where(_IN_WORKSPACE, person_events.c.undoes == sa.bindparam("sequence", type_=sa.BigInteger))
)
# The feed's bounds: the last number taken, and the oldest event kept (R52's OUT_OF_RANGE).
FEED_BOUNDS_SQL = _sql(
    sa.select(
        sa.select(event_sequences.c.last_sequence)
        .where(event_sequences.c.workspace_id == sa.bindparam("workspace_id"))
        .scalar_subquery(),
        sa.select(sa.func.min(person_events.c.sequence)).where(_IN_WORKSPACE).scalar_subquery(),
    )
)
_CIO_IDS = sa.bindparam("cio_ids", type_=_TEXT_ARRAY)
# R53: the people merged into any of `cio_ids`.
MERGED_INTO_SQL = _sql(
    sa.select(person_events.c.merged_cio_id).where(
        _IN_WORKSPACE, person_events.c.kind == sa.literal_column("'MERGED'"), person_events.c.cio_id == sa.any_(_CIO_IDS)
    )
)
_ABOUT = sa.or_(person_events.c.cio_id == sa.any_(_CIO_IDS), person_events.c.merged_cio_id == sa.any_(_CIO_IDS))
HISTORY_SQL = _sql(
    sa.select(*EVENT_COLUMNS)
    .where(_IN_WORKSPACE, _ABOUT, person_events.c.sequence < sa.bindparam("before", type_=sa.BigInteger))
    .order_by(person_events.c.sequence.desc())
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
# R54: the events of the erased people become tombstones (kind, cio_id and sequence remain), and
# the stored responses that show them go.
ERASE_EVENTS_SQL = _sql(
    person_events.update()
    .where(_IN_WORKSPACE, _ABOUT)
    .values(
        kind=sa.literal_column("'ERASED'"),
        merged_cio_id=sa.null(),
        undoes=sa.null(),
        rpc=sa.literal_column("''"),
        request_id=sa.literal_column("''"),
        body=sa.literal_column("'{}'::jsonb"),
    )
)
ERASE_RESPONSES_SQL = _sql(
    stored_responses.delete().where(
        stored_responses.c.workspace_id == sa.bindparam("workspace_id"), stored_responses.c.cio_ids.overlap(_CIO_IDS)
    )
)
# Retention (R52): a bounded batch of a workspace's oldest events, older than its setting.
PURGE_EVENTS_SQL = _sql(
    person_events.delete().where(
        _IN_WORKSPACE,
        person_events.c.sequence
        <= sa.select(sa.func.max(sa.literal_column("old.sequence")))
        .select_from(
            sa.select(person_events.c.sequence)
            .where(_IN_WORKSPACE, person_events.c.commit_time < sa.bindparam("cutoff", type_=sa.DateTime(timezone=True)))
            .order_by(person_events.c.sequence)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .subquery("old")
        )
        .scalar_subquery(),
    )
    .returning(person_events.c.sequence)
)

# Every statement a call of the hot path runs, by a short name: what tests/db/test_plans.py
# proves index-bound and what bench/floor.py replays under pgbench.
HOT_STATEMENTS: dict[str, str] = {
    "load": LOAD_SQL[Lock.NONE],
    "load_share": LOAD_SQL[Lock.SHARE],
    "insert_person": INSERT_PERSON_SQL,
    "update_person": UPDATE_PERSON_SQL,
    "delete_people": DELETE_PEOPLE_SQL,
    "set_timeouts": SET_TIMEOUTS_SQL,
    "settings": SETTINGS_SQL,
    "take_sequence": TAKE_SEQUENCE_SQL,
    "append_event": APPEND_EVENT_SQL,
    "notify": NOTIFY_SQL,
    "events_after": EVENTS_AFTER_SQL,
}

# --- Stored responses (R70) ---
_RESPONSE_KEY = (
    stored_responses.c.workspace_id == sa.bindparam("workspace_id"),
    stored_responses.c.request_id == sa.bindparam("request_id"),
)
# Twins (the same request_id at the same moment) queue on an advisory lock of their key, taken
# in the same statement as the read: the second reads after the first has committed (and finds
# its response) or rolled back (and finds nothing: a refusal stores nothing). The lock is the
# outer side of a left join, so it is taken whether a response is stored or not.
_TWINS_CLASS = sa.literal_column("7243")  # the advisory lock namespace of request ids
_twins = sa.select(
    sa.func.pg_advisory_xact_lock(
        _TWINS_CLASS,
        sa.func.hashtext(
            sa.bindparam("workspace_id", type_=sa.Text)
            .concat(sa.literal_column("'/'"))
            .concat(sa.bindparam("request_id", type_=sa.Text))
        ),
    )
).cte("twins")
STORED_RESPONSE_SQL = _sql(
    sa.select(stored_responses.c.method, stored_responses.c.fingerprint, stored_responses.c.response)
    .select_from(_twins)
    .join(stored_responses, sa.and_(*_RESPONSE_KEY), isouter=True)
)
STORE_RESPONSE_SQL = _sql(
    stored_responses.insert(),
    ["workspace_id", "request_id", "method", "fingerprint", "response", "cio_ids", "created_at"],
)
PURGE_RESPONSES_SQL = _sql(
    stored_responses.delete()
    .where(
        stored_responses.c.workspace_id == sa.bindparam("workspace_id"),
        stored_responses.c.request_id.in_(
            sa.select(stored_responses.c.request_id)
            .where(
                stored_responses.c.workspace_id == sa.bindparam("workspace_id"),
                stored_responses.c.created_at < sa.bindparam("cutoff", type_=sa.DateTime(timezone=True)),
            )
            .limit(sa.bindparam("limit", type_=sa.Integer))
        ),
    )
    .returning(stored_responses.c.request_id)
)

# --- Export (R82): a workspace's people in cio_id order (the primary key's order) ---
EXPORT_SQL = _sql(
    sa.select(*PERSON_COLUMNS).where(people.c.workspace_id == sa.bindparam("workspace_id")).order_by(people.c.cio_id)
)
