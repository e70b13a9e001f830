"""The unit of work on a real Postgres: it alone commits; a row written after the decision is
rolled back with the call when a later step fails (R40); losing races past the bounded retries
is ABORTED CONCURRENT_UPDATE (R41); the staged writes travel with the COMMIT."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from service.db.repository import Lock, Repository
from service.db.unit_of_work import UnitOfWork
from service.domain import Person, Settings
from service.errors import Aborted, DomainError, NotFound
from service.rules.decisions import Decision, Lookup, Write
from service.rules.validation import new_cio_id
from tests.db.support import run_on_unit_of_work as _run

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _person(id_: str) -> Person:
    return Person(new_cio_id(), id_, None, {}, NOW, NOW)


def _count(engine: sa.Engine, workspace: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM people WHERE workspace_id = :w"), {"w": workspace}).scalar_one()


@pytest.fixture
def settings(make_workspace) -> Settings:
    return Settings(make_workspace())


def test_r40_the_unit_of_work_commits_what_the_work_staged(database_url, engine, settings):
    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            await repo.load(settings.workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)
            repo.stage(settings, Decision(Write.INSERT, _person("ab100")))

        await uow.run("test", work)

    _run(database_url, scenario)
    assert _count(engine, settings.workspace_id) == 1


def test_r40_a_row_written_after_the_decision_is_rolled_back_when_a_later_step_fails(database_url, engine, settings):
    """The first insert reaches the database (it is sent); the second breaks a unique index in
    the same round trip as the COMMIT: the first is rolled back with it."""

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            await repo.load(settings.workspace_id, Lookup(ids=("ab100",)), Lock.SHARE)
            repo.stage(settings, Decision(Write.INSERT, _person("ab100")))
            repo.stage(settings, Decision(Write.INSERT, _person("ab100")))  # the same id: unique violation

        await uow.run("test", work, attempts=1)

    with pytest.raises(Aborted):
        _run(database_url, scenario)
    assert _count(engine, settings.workspace_id) == 0


def test_r40_a_refusal_after_a_rare_statement_rolls_it_back(database_url, engine, settings):
    """A statement that ran at once (not staged), then a refusal: nothing stays."""

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            changed = Settings(settings.workspace_id, auto_merge=False)
            await repo.update_settings(changed, NOW)
            assert await repo.settings(settings.workspace_id) == changed  # written, in the transaction
            raise NotFound("PERSON_NOT_FOUND", "refused after the write", {})

        await uow.run("test", work)

    with pytest.raises(NotFound):
        _run(database_url, scenario)
    with engine.connect() as conn:
        auto_merge = conn.execute(
            sa.text("SELECT auto_merge FROM workspaces WHERE workspace_id = :w"), {"w": settings.workspace_id}
        ).scalar_one()
    assert auto_merge is True


def test_r41_a_call_that_keeps_losing_races_is_aborted_after_its_attempts(database_url, engine, settings):
    """Each attempt really loses: it inserts an id that a committed row already holds."""
    taken = _person("taken")
    attempts_made: list[int] = []

    async def scenario(uow: UnitOfWork) -> None:
        async def first(repo: Repository) -> None:
            repo.stage(settings, Decision(Write.INSERT, taken))

        await uow.run("test", first)

        async def loser(repo: Repository) -> None:
            attempts_made.append(1)
            repo.stage(settings, Decision(Write.INSERT, _person("taken")))

        await uow.run("test", loser, attempts=3)

    with pytest.raises(Aborted) as caught:
        _run(database_url, scenario)
    assert caught.value.reason == "CONCURRENT_UPDATE"
    assert caught.value.metadata == {"attempts": "3"}
    assert len(attempts_made) == 3
    assert _count(engine, settings.workspace_id) == 1


def test_r41_a_race_lost_once_is_retried_and_succeeds(database_url, engine, settings):
    attempts_made: list[int] = []

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            attempts_made.append(1)
            # The first attempt collides with a row committed meanwhile; the retry takes another id.
            repo.stage(settings, Decision(Write.INSERT, _person("race" if len(attempts_made) == 1 else "other")))

        async def first(repo: Repository) -> None:
            repo.stage(settings, Decision(Write.INSERT, _person("race")))

        await uow.run("test", first)
        await uow.run("test", work)

    _run(database_url, scenario)
    assert len(attempts_made) == 2
    assert _count(engine, settings.workspace_id) == 2


def test_a_domain_refusal_is_not_retried(database_url, settings):
    attempts_made: list[int] = []

    async def scenario(uow: UnitOfWork) -> None:
        async def work(repo: Repository) -> None:
            attempts_made.append(1)
            raise NotFound("PERSON_NOT_FOUND", "no", {})

        await uow.run("test", work)

    with pytest.raises(DomainError):
        _run(database_url, scenario)
    assert attempts_made == [1]


def test_an_unknown_workspace_loads_no_settings(database_url):
    async def scenario(uow: UnitOfWork) -> Any:
        async def work(repo: Repository) -> Any:
            return await repo.load("ws-" + secrets.token_hex(4), Lookup(ids=("x",)), Lock.SHARE)

        return await uow.run("test", work)

    assert _run(database_url, scenario) == (None, [])
