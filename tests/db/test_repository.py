"""The repository and the unit of work on a real Postgres, for what the other suites do not
observe: the call's deadline capping each statement of its transaction (and failing at once
when a backoff would outlast it), the backoff itself, the refusals of an unavailable or busy
database, the unit of work's own rollback, and the rare statements (R2's checks against the
rules core's definition, the rekeying of a mode change, the settings' timestamps).

Written from the survivors of a mutation run over service/db (repository.py, unit_of_work.py,
keys.py, statements.py): each test here fails on at least one mutant that every other suite let
through."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import psycopg
import psycopg.errors
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from psycopg.pq import PipelineStatus, TransactionStatus

from service.db import deadlines, unit_of_work
from service.db.engine import create_pool
from service.db.keys import keys_for
from service.db.repository import Lock, Repository
from service.db.unit_of_work import UnitOfWork
from service.domain import Field, Mode, Person, Settings
from service.errors import Aborted, DeadlineExceeded, NotFound, Unavailable
from service.rules import modes
from service.rules.decisions import Decision, Lookup, Write
from service.rules.modes import SAMPLE_SIZE, Check, CheckResult
from service.rules.validation import new_cio_id
from tests.db.support import run_on_unit_of_work as _run

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = T0 + timedelta(hours=1)
DEADLINE_MESSAGE = "the call's deadline passed before the database answered"


async def _with_deadline(seconds: float, call: Awaitable[Any]) -> Any:
    """Runs `call` as the gRPC edge runs a call whose client gave it `seconds`."""
    token = deadlines.set_remaining(seconds)
    try:
        return await call
    finally:
        deadlines.reset(token)


def _person(id_: str | None = None, email: str | None = None, cio_id: str | None = None) -> Person:
    return Person(cio_id or new_cio_id(), id_, email, {}, T0, T0)


async def _create(uow: UnitOfWork, settings: Settings, now: datetime = T0) -> None:
    async def work(repo: Repository) -> bool:
        return await repo.create_workspace(settings, now)

    assert await uow.run("test", work)


async def _insert(uow: UnitOfWork, settings: Settings, people: list[Person]) -> None:
    """Stores `people` in that order, keyed for `settings.mode`, in one transaction."""

    async def work(repo: Repository) -> None:
        for person in people:
            repo.stage(settings, Decision(Write.INSERT, person))

    await uow.run("test", work)


async def _timeouts_ms(repo: Repository) -> tuple[int, int]:
    """The statement_timeout and lock_timeout in force for the repository's statements (run one
    of its statements first: the per-transaction caps travel with the first one)."""
    cur = repo.conn.cursor()
    await cur.execute(
        "SELECT (SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'),"
        " (SELECT setting::int FROM pg_settings WHERE name = 'lock_timeout')"
    )
    row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


def _workspace_id() -> str:
    return "r-" + secrets.token_hex(6)


@pytest.fixture
def settings(database_url: str, engine: sa.Engine) -> Settings:
    """A fresh workspace (EMAIL_OR_ID), created through the repository."""
    created = Settings(_workspace_id())
    _run(database_url, lambda uow: _create(uow, created))
    return created


# --- the call's deadline ---


def test_a_write_waiting_on_a_lock_is_cut_off_at_its_deadline_not_at_the_session_cap(database_url, engine, settings):
    """The session caps lock waits at 5 s; a call with 0.4 s left must give up after about 0.4 s
    with DEADLINE_EXCEEDED (the cap travels with the transaction's first statement)."""

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            await repo.load(settings.workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)

        await _with_deadline(0.4, uow.run("test", work))

    with engine.connect() as holder:  # holds the workspace's settings row, as a settings change would
        holder.execute(
            sa.text("SELECT 1 FROM workspaces WHERE workspace_id = :w FOR UPDATE"), {"w": settings.workspace_id}
        )
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            _run(database_url, scenario)
        elapsed = time.monotonic() - started
        holder.rollback()
    assert (caught.value.reason, caught.value.message) == ("DEADLINE_EXCEEDED", DEADLINE_MESSAGE)
    assert isinstance(caught.value.__cause__, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled))
    assert elapsed < 2.5, f"waited {elapsed:.1f} s: the session's 5 s cap applied, not the deadline"


@pytest.mark.parametrize("read_only", [False, True], ids=["write", "read"])
@pytest.mark.parametrize("deadline", [0.9, 2.0])
def test_the_deadline_caps_every_statement_of_the_call(database_url, settings, read_only, deadline):
    """statement_timeout and lock_timeout are the time left (never more), for reads and writes
    alike; a call with less than a second left still runs."""

    async def scenario(uow: UnitOfWork) -> tuple[int, int]:
        async def work(repo: Repository) -> tuple[int, int]:
            assert await repo.settings(settings.workspace_id) == settings
            return await _timeouts_ms(repo)

        return await _with_deadline(deadline, uow.run("test", work, read_only=read_only))

    statement_ms, lock_ms = _run(database_url, scenario)
    assert statement_ms == lock_ms
    assert deadline * 1000 * 0.5 < statement_ms <= deadline * 1000


def test_a_cap_longer_than_the_sessions_applies_to_a_call_without_a_deadline(database_url, settings):
    """A mode change may run its statements for 10 minutes (cap=600), bounded by the deadline
    when there is one."""

    async def scenario(uow: UnitOfWork) -> tuple[tuple[int, int], tuple[int, int]]:
        async def work(repo: Repository) -> tuple[int, int]:
            await repo.settings(settings.workspace_id, Lock.UPDATE)
            return await _timeouts_ms(repo)

        without = await uow.run("test", work, cap=600.0)
        within = await _with_deadline(2.0, uow.run("test", work, cap=600.0))
        return without, within

    without, within = _run(database_url, scenario)
    assert without == (600_000, 600_000)
    assert 1000 < within[0] <= 2000 and within[0] == within[1]


def test_staged_writes_alone_carry_the_deadline(database_url, engine, settings):
    """A work that only stages (no statement before the COMMIT) still sends the cap, with the
    writes."""
    person = _person("ab100")

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            repo.stage(settings, Decision(Write.INSERT, person))

        await _with_deadline(2.0, uow.run("test", work))

    _run(database_url, scenario)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT id FROM people WHERE workspace_id = :w AND cio_id = :c"),
            {"w": settings.workspace_id, "c": person.cio_id},
        ).scalar_one()
    assert stored == "ab100"


def test_a_read_without_a_deadline_is_one_statement_in_autocommit(database_url, settings):
    """No transaction block, no pipeline, no per-transaction caps: the read is its own
    transaction under the session's caps."""

    async def scenario(uow: UnitOfWork) -> tuple[Any, ...]:
        async def work(repo: Repository) -> tuple[Any, ...]:
            before = (repo.conn.info.transaction_status, repo.conn.info.pipeline_status)
            found = await repo.settings(settings.workspace_id)
            return before, found, await _timeouts_ms(repo)

        return await uow.run("test", work, read_only=True)

    before, found, caps = _run(database_url, scenario)
    assert before == (TransactionStatus.IDLE, PipelineStatus.OFF)
    assert found == settings
    assert caps == (5000, 5000)


# --- what a call locks, and for how long ---


async def _outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the refusal it raised."""
    try:
        return await call
    except Exception as error:  # noqa: BLE001 - the test looks at it
        return error


BLOCKED_S = 0.5  # how long a call expected to wait is given (it ends DEADLINE_EXCEEDED)
FREE_S = 3.0  # how long a call expected not to wait is given (it needs a few milliseconds)


def _while_holding(
    database_url: str,
    hold: Callable[[Repository], Awaitable[Any]],
    other: Callable[[UnitOfWork], Awaitable[Any]],
    seconds: float,
) -> Any:
    """Runs `other` (with `seconds` to live) while a first call's transaction holds what `hold`
    took, and returns what `other` came to."""

    async def scenario(uow: UnitOfWork) -> Any:
        async def first(repo: Repository) -> Any:
            await hold(repo)
            return await _outcome(_with_deadline(seconds, other(uow)))

        return await uow.run("holder", first)

    return _run(database_url, scenario, size=2)


def _write_by_id(settings: Settings, id_: str) -> Callable[[UnitOfWork], Awaitable[Any]]:
    """A write to the person whose id is `id_` (or a new one): load it, then update (or insert)."""

    async def call(uow: UnitOfWork) -> str:
        async def work(repo: Repository) -> str:
            _, found = await repo.load(settings.workspace_id, Lookup(ids=(id_,)), Lock.SHARE)
            person = found[0] if found else _person(id_)
            changed = Person(person.cio_id, id_, person.email, {"seen": True}, person.created_at, T1)
            repo.stage(settings, Decision(Write.UPDATE if found else Write.INSERT, changed))
            return "written"

        return await uow.run("other", work)

    return call


def test_a_write_holds_the_people_it_loaded_until_it_commits(database_url, settings):
    async def seed(uow: UnitOfWork) -> None:
        await _insert(uow, settings, [_person("ab200")])

    _run(database_url, seed)

    async def hold(repo: Repository) -> None:
        _, found = await repo.load(settings.workspace_id, Lookup(ids=("ab200",)), Lock.SHARE)
        assert [p.id for p in found] == ["ab200"]

    async def read(uow: UnitOfWork) -> list[str | None]:
        async def work(repo: Repository) -> list[str | None]:
            _, found = await repo.load(settings.workspace_id, Lookup(ids=("ab200",)), Lock.NONE)
            return [p.id for p in found]

        return await uow.run("other", work, read_only=True)

    blocked = _while_holding(database_url, hold, _write_by_id(settings, "ab200"), BLOCKED_S)
    assert isinstance(blocked, DeadlineExceeded)
    assert _while_holding(database_url, hold, read, FREE_S) == ["ab200"]  # a read waits for nobody


@pytest.mark.parametrize(
    "lookup",
    [Lookup(ids=("ab150",)), Lookup(emails=("b@example.com",)), Lookup(cio_ids=("0" * 20,))],
    ids=["id", "email", "cio_id"],
)
def test_a_lookup_locks_only_the_people_it_names(database_url, settings, lookup):
    """Nobody matches the lookup; the person whose keys sort right after its values (id ab200,
    email c@example.com, any cio_id) stays free for other calls."""

    async def seed(uow: UnitOfWork) -> None:
        await _insert(uow, settings, [_person("ab200", "c@example.com")])

    _run(database_url, seed)

    async def hold(repo: Repository) -> None:
        assert await repo.load(settings.workspace_id, lookup, Lock.SHARE) == (settings, [])

    assert _while_holding(database_url, hold, _write_by_id(settings, "ab200"), FREE_S) == "written"


def test_a_settings_change_holds_up_writes_to_its_workspace_only(database_url, settings):
    other = Settings(_workspace_id())
    _run(database_url, lambda uow: _create(uow, other))

    async def hold(repo: Repository) -> None:
        assert await repo.settings(settings.workspace_id, Lock.UPDATE) == settings

    blocked = _while_holding(database_url, hold, _write_by_id(settings, "ab100"), BLOCKED_S)
    assert isinstance(blocked, DeadlineExceeded)
    assert _while_holding(database_url, hold, _write_by_id(other, "ab100"), FREE_S) == "written"


# --- losing races: the backoff, the deadline, the count ---


def _taken(settings: Settings) -> Callable[[Repository], Awaitable[None]]:
    """A call that loses a race on every attempt: it inserts an id a committed row holds."""

    async def loser(repo: Repository) -> None:
        repo.stage(settings, Decision(Write.INSERT, _person("taken")))

    return loser


def test_the_backoff_is_full_jitter_doubling_from_2_ms_to_at_most_50_ms(database_url, settings, monkeypatch):
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(unit_of_work.random, "uniform", uniform)

    async def scenario(uow: UnitOfWork) -> None:
        await _insert(uow, settings, [_person("taken")])
        await uow.run("test", _taken(settings), attempts=8)

    with pytest.raises(Aborted) as caught:
        _run(database_url, scenario)
    assert drawn == [(0, 0.002), (0, 0.004), (0, 0.008), (0, 0.016), (0, 0.032), (0, 0.05), (0, 0.05)]
    assert caught.value.reason == "CONCURRENT_UPDATE"
    assert caught.value.message == "the call lost a race with concurrent calls 8 times; retry it"
    assert caught.value.metadata == {"attempts": "8"}


def test_every_lost_race_is_counted_as_a_retry_of_its_method(database_url, settings):
    method = "test-" + secrets.token_hex(4)

    async def scenario(uow: UnitOfWork) -> None:
        await _insert(uow, settings, [_person("taken")])
        await uow.run(method, _taken(settings), attempts=3)

    with pytest.raises(Aborted):
        _run(database_url, scenario)
    assert REGISTRY.get_sample_value("identity_transaction_retries_total", {"method": method}) == 3


def test_a_backoff_that_would_outlast_the_deadline_fails_at_once(database_url, settings, monkeypatch):
    """With 1 s left and a 5 s delay drawn, the call is DEADLINE_EXCEEDED now, not after
    sleeping."""
    monkeypatch.setattr(unit_of_work.random, "uniform", lambda low, high: 5.0)

    async def scenario(uow: UnitOfWork) -> None:
        await _insert(uow, settings, [_person("taken")])
        await _with_deadline(1.0, uow.run("test", _taken(settings)))

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        _run(database_url, scenario)
    assert time.monotonic() - started < 3.0  # not after the 5 s drawn
    assert (caught.value.reason, caught.value.message) == ("DEADLINE_EXCEEDED", DEADLINE_MESSAGE)
    assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)


# --- an unavailable or busy database ---


def test_a_database_seen_down_fails_fast_without_running_the_work(database_url):
    ran: list[int] = []

    async def go() -> None:
        pool = create_pool(database_url, size=1)
        await pool.open()
        try:

            async def work(repo: Repository) -> None:
                ran.append(1)

            await UnitOfWork(pool, available=lambda: False).run("test", work)
        finally:
            await pool.close()

    with pytest.raises(Unavailable) as caught:
        asyncio.run(go())
    assert (caught.value.reason, caught.value.message) == (
        "DATABASE_UNAVAILABLE",
        "the database is unavailable; retry later",
    )
    assert ran == []


def test_a_connection_lost_mid_call_is_unavailable(database_url, admin_url, settings):
    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            await repo.load(settings.workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [repo.conn.info.backend_pid])
            await repo.update_settings(settings, T1)

        await uow.run("test", work)

    with pytest.raises(Unavailable) as caught:
        _run(database_url, scenario)
    assert (caught.value.reason, caught.value.message) == (
        "DATABASE_UNAVAILABLE",
        "the database is unavailable; retry later",
    )
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_no_free_connection_in_time_is_unavailable_database_busy(database_url, settings):
    """Not DATABASE_UNAVAILABLE: psycopg_pool's PoolTimeout is an OperationalError too."""

    async def go() -> None:
        pool = create_pool(database_url, size=1, timeout=0.2)
        await pool.open()
        try:

            async def work(repo: Repository) -> Settings | None:
                return await repo.settings(settings.workspace_id)

            async with pool.connection():  # the only one
                await UnitOfWork(pool).run("test", work, read_only=True)
        finally:
            await pool.close()

    with pytest.raises(Unavailable) as caught:
        asyncio.run(go())
    assert (caught.value.reason, caught.value.message) == (
        "DATABASE_BUSY",
        "no database connection was free in time; retry later",
    )


# --- the unit of work's own rollback ---


@pytest.mark.parametrize("failure", ["refusal", "database error"])
def test_the_unit_of_work_itself_rolls_back_a_failed_call(database_url, engine, settings, caplog, failure):
    """The failed call left nothing, and its connection goes back to the pool idle and whole:
    the pool neither rolls it back nor discards it (it warns when it does either)."""

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            await repo.load(settings.workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)
            await repo.update_settings(Settings(settings.workspace_id, auto_merge=False), T1)
            if failure == "refusal":
                raise NotFound("PERSON_NOT_FOUND", "refused after the write", {})
            repo.stage(settings, Decision(Write.INSERT, _person("twice")))
            repo.stage(settings, Decision(Write.INSERT, _person("twice")))  # a unique violation at COMMIT

        await uow.run("test", work, attempts=1)

    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        with pytest.raises((NotFound, Aborted)):
            _run(database_url, scenario, size=1)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg.pool")] == []
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT auto_merge FROM workspaces WHERE workspace_id = :w"), {"w": settings.workspace_id}
        ).scalar_one() is True


async def _refused_after_loading(repo: Repository, workspace_id: str) -> None:
    await repo.load(workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)
    raise NotFound("PERSON_NOT_FOUND", "refused", {})


async def _refused_after_checking(repo: Repository, workspace_id: str) -> None:
    """A mode change refused by R2's checks: the rare statements that only read."""
    await repo.settings(workspace_id, Lock.UPDATE)
    await repo.run_checks(workspace_id, [Check.EVERY_PERSON_HAS_ID])
    raise NotFound("PERSON_NOT_FOUND", "refused", {})


@pytest.mark.parametrize("refused", [_refused_after_loading, _refused_after_checking], ids=["load", "checks"])
def test_a_refusal_keeps_the_connections_prepared_statements(database_url, settings, refused):
    """What the unit of work promises: a refusal after reads only ends its transaction with a
    COMMIT (nothing was written), which keeps psycopg's prepared statements; any ROLLBACK makes
    psycopg deallocate them all (PrepareManager._should_discard), costing the next calls a
    re-plan each."""

    async def scenario(uow: UnitOfWork) -> tuple[tuple[int, int], tuple[int, int]]:
        async def write(repo: Repository) -> None:
            await repo.load(settings.workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)

        async def prepared(repo: Repository) -> tuple[int, int]:
            cur = repo.conn.cursor()
            await cur.execute("SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements)")
            row = await cur.fetchone()
            assert row is not None
            return row[0], row[1]

        for _ in range(6):  # psycopg prepares a statement on its 5th execution
            await uow.run("test", write)
        before = await uow.run("test", prepared, read_only=True)
        with pytest.raises(NotFound):
            await uow.run("test", lambda repo: refused(repo, settings.workspace_id))
        return before, await uow.run("test", prepared, read_only=True)

    (pid, count), after = _run(database_url, scenario, size=1)
    assert count > 0
    assert after == (pid, count)


@pytest.mark.parametrize("statement", ["create_workspace", "update_settings", "rekey"])
def test_r40_a_refusal_after_a_rare_write_rolls_it_back(database_url, engine, settings, statement):
    """The rare statements run at once (not staged): one that wrote, then a refusal, and nothing
    of the call stays."""
    new_workspace = Settings(_workspace_id())
    _run(database_url, lambda uow: _insert(uow, settings, [_person("ab1", "one@example.com")]))
    rows_before = _stored(engine, settings.workspace_id)

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            if statement == "create_workspace":
                assert await repo.create_workspace(new_workspace, T1)
            elif statement == "update_settings":
                await repo.update_settings(Settings(settings.workspace_id, auto_merge=False), T1)
            else:
                await repo.rekey(settings.workspace_id, False, True)
            raise NotFound("PERSON_NOT_FOUND", "refused after the write", {})

        await uow.run("test", work)

    with pytest.raises(NotFound):
        _run(database_url, scenario)
    with engine.connect() as conn:
        workspaces = conn.execute(
            sa.text("SELECT workspace_id, auto_merge FROM workspaces WHERE workspace_id IN (:a, :b)"),
            {"a": settings.workspace_id, "b": new_workspace.workspace_id},
        ).all()
    assert [tuple(w) for w in workspaces] == [(settings.workspace_id, True)]
    assert _stored(engine, settings.workspace_id) == rows_before


# --- the rare statements ---


def test_update_settings_stamps_updated_at_and_keeps_created_at(database_url, engine, settings):
    changed = Settings(settings.workspace_id, Mode.EMAIL_OR_ID, False, True, False)

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            await repo.update_settings(changed, T1)

        await uow.run("test", work)

    _run(database_url, scenario)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT email_updatable_by_id, sole_identifier_updatable, auto_merge, created_at, updated_at"
                " FROM workspaces WHERE workspace_id = :w"
            ),
            {"w": settings.workspace_id},
        ).one()
    assert tuple(row) == (False, True, False, T0, T1)


def _stored(engine: sa.Engine, workspace_id: str) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT cio_id, id, email, email_norm, id_key, email_key FROM people"
                    " WHERE workspace_id = :w ORDER BY cio_id"
                ),
                {"w": workspace_id},
            )
        ]


def _people_with_every_kind_of_offender() -> dict[Mode, list[Person]]:
    """For an EMAIL_ONLY workspace: more people without an id than a sample holds, ids shared
    by two or three people, one without an email. For an ID_ONLY one: the same with emails
    (shared in other cases). Stored in descending cio_id order, so that rows come back in
    cio_id order only when the statement asks for it."""
    cio_ids = sorted((new_cio_id() for _ in range(60)), reverse=True)
    email_only = (
        [_person(None, f"p{i}@example.com") for i in range(SAMPLE_SIZE + 3)]
        + [_person(f"shared{i // 3}", f"s{i}@example.com") for i in range(7)]
        + [_person(f"own{i}", f"o{i}@example.com") for i in range(5)]
        + [_person("lonely", None)]
    )
    id_only = (
        [_person(f"p{i}", None) for i in range(SAMPLE_SIZE + 3)]
        + [_person(f"s{i}", f"Shared{i // 3}@Example.com" if i % 2 else f"shared{i // 3}@example.com") for i in range(7)]
        + [_person(f"o{i}", f"own{i}@example.com") for i in range(5)]
        + [_person(None, "lonely@example.com")]
    )
    return {
        Mode.EMAIL_ONLY: [Person(c, p.id, p.email, {}, T0, T0) for c, p in zip(cio_ids, email_only)],
        Mode.ID_ONLY: [Person(c, p.id, p.email, {}, T0, T0) for c, p in zip(cio_ids[30:], id_only)],
    }


@pytest.mark.parametrize("mode", [Mode.EMAIL_ONLY, Mode.ID_ONLY])
def test_r2_checks_in_sql_agree_with_the_rules_definition(database_url, engine, mode):
    """Every check of R2 over a whole workspace: the same count and sample (the first
    SAMPLE_SIZE cio_ids in order) as modes.check_people over the stored people."""
    ws = Settings(_workspace_id(), mode)
    people = _people_with_every_kind_of_offender()[mode]

    async def scenario(uow: UnitOfWork) -> dict[Check, CheckResult]:
        await _create(uow, ws)
        await _insert(uow, ws, people)

        async def work(repo: Repository) -> dict[Check, CheckResult]:
            return await repo.run_checks(ws.workspace_id, list(Check))

        return await uow.run("test", work)

    results = _run(database_url, scenario)
    stored = [Person(c, i, e, {}, T0, T0) for c, i, e, *_ in _stored(engine, ws.workspace_id)]
    expected = {check: modes.check_people(check, stored) for check in Check}
    assert results == expected
    # the data is what the docstring says: every check has offenders but one, and samples are cut
    assert sorted(r.offending for r in results.values()) == [0, 1, 6, SAMPLE_SIZE + 3]


@pytest.mark.parametrize("target", [Mode.EMAIL_ONLY, Mode.ID_ONLY, Mode.EMAIL_OR_ID])
@pytest.mark.parametrize("current", [Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY])
def test_r2_rekey_sets_the_keys_of_the_new_mode_for_everyone(database_url, engine, current, target):
    ws = Settings(_workspace_id(), current)
    people = [
        _person("ab1", "One@Example.com"),
        _person("ab2", None),
        _person(None, "three@example.com"),
        _person("ab4", "FOUR@example.com"),
    ]

    async def scenario(uow: UnitOfWork) -> None:
        await _create(uow, ws)
        await _insert(uow, ws, people)

        async def work(repo: Repository) -> None:
            await repo.rekey(
                ws.workspace_id, modes.is_identifier(target, Field.ID), modes.is_identifier(target, Field.EMAIL)
            )

        await uow.run("test", work)

    _run(database_url, scenario)
    expected = sorted(
        (p.cio_id, p.id, p.email, keys_for(target, p).email_norm, keys_for(target, p).id_key, keys_for(target, p).email_key)
        for p in people
    )
    assert _stored(engine, ws.workspace_id) == expected
