"""One function per call: load what the rules core needs, ask it, write what it decided, all in
one transaction (R40). No rule is decided here."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from service.db.repository import Lock, Repository
from service.db.transaction import run_in_transaction
from service.domain import Field, IdentifyInput, IdentifyResult, Person, Ref, Settings
from service.errors import AlreadyExists, DeadlineExceeded, DomainError, NotFound, Unavailable
from service.db.keys import keys_for
from service.rules import identifiers, identify, modes
from service.rules.changes import Change, Lookup, Write
from service.rules.validation import check_workspace_id, new_cio_id, raise_if

T = TypeVar("T")
D = TypeVar("D")
MODE_CHANGE_STATEMENT_CAP_S = 600.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _require(settings: Settings | None, workspace_id: str) -> Settings:
    if settings is None:  # R8
        raise NotFound(
            "WORKSPACE_NOT_FOUND", f"workspace {workspace_id!r} does not exist", {"workspace_id": workspace_id}
        )
    return settings


def _apply(repo: Repository, settings: Settings, change: Change) -> None:
    """Writes what the decision says, and commits: a merge's secondary is deleted first, freeing
    its identifiers for the primary (R13)."""
    ws = settings.workspace_id
    deleted = list(change.deleted)
    person = [(change.person, keys_for(settings.mode, change.person))]
    if change.write == Write.INSERT:
        repo.write_and_commit(ws, delete=deleted, insert=person)
    elif change.write == Write.UPDATE:
        repo.write_and_commit(ws, delete=deleted, update=person)
    elif change.write == Write.DELETE:
        repo.write_and_commit(ws, delete=[*deleted, change.person.cio_id])


class IdentityService:
    """The calls of identity.v1, in domain terms."""

    def __init__(self, engine: sa.Engine, database_available: Callable[[], bool] = lambda: True):
        self.engine = engine
        self.database_available = database_available

    def _run(self, method: str, work: Callable[[Repository], T], **options: Any) -> T:
        if not self.database_available():  # fail fast while the monitor sees the database down
            raise Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later")
        return run_in_transaction(self.engine, work, method=method, **options)

    def _write_person(
        self,
        method: str,
        workspace_id: str,
        lookup: Lookup,
        decide: Callable[[Settings, list[Person]], D],
        change_of: Callable[[D], Change] = lambda decision: decision,  # type: ignore[assignment,return-value]
    ) -> tuple[Settings, D]:
        """The shape shared by every write to people: in one statement the settings are read and
        held steady and the people of the lookup found and locked; then the decision is applied."""
        raise_if(check_workspace_id(workspace_id))

        def work(repo: Repository) -> tuple[Settings, D]:
            found, people = repo.load(workspace_id, lookup, Lock.SHARE)
            settings = _require(found, workspace_id)
            decision = decide(settings, people)
            _apply(repo, settings, change_of(decision))
            return settings, decision

        return self._run(method, work)

    def identify(self, req: IdentifyInput) -> IdentifyResult:
        settings, (change, outcome) = self._write_person(
            "Identify",
            req.workspace_id,
            identify.identify_lookup(req),
            lambda s, people: identify.decide_identify(s, req, people, _now(), new_cio_id()),
            change_of=lambda decision: decision[0],
        )
        return IdentifyResult(modes.presented(settings.mode, change.person), outcome, change.deleted)

    def update_identifier(self, workspace_id: str, ref: Ref, field: Field, value: str) -> Person:
        settings, change = self._write_person(
            "UpdateIdentifier",
            workspace_id,
            identifiers.update_identifier_lookup(ref, field, value),
            lambda s, people: identifiers.decide_update_identifier(s, ref, field, value, people, _now()),
        )
        return modes.presented(settings.mode, change.person)

    def delete_identifier(self, workspace_id: str, ref: Ref, field: Field) -> Person:
        settings, change = self._write_person(
            "DeleteIdentifier",
            workspace_id,
            identifiers.delete_identifier_lookup(ref, field),
            lambda s, people: identifiers.decide_delete_identifier(s, ref, field, people, _now()),
        )
        return modes.presented(settings.mode, change.person)

    def delete_person(self, workspace_id: str, ref: Ref) -> str:
        _, change = self._write_person(
            "DeletePerson",
            workspace_id,
            identifiers.ref_lookup(ref),
            lambda s, people: identifiers.decide_delete_person(s, ref, people),
        )
        return change.person.cio_id

    def import_people(
        self, workspace_id: str, rows: list[tuple[int, IdentifyInput]]
    ) -> list[tuple[int, IdentifyResult | DomainError]]:
        """Each row as an Identify in its own transaction (R25 applies: the rows are marked as
        an import); a refused row is reported and the others still apply. An unknown workspace
        refuses the whole import; so does the database going away (rows applied so far stay)."""
        self.get_settings(workspace_id)  # R8, before any row
        results: list[tuple[int, IdentifyResult | DomainError]] = []
        for number, row in rows:
            try:
                results.append((number, self.identify(row)))
            except (Unavailable, DeadlineExceeded):
                raise
            except DomainError as refusal:
                results.append((number, refusal))
        return results

    def get_person(self, workspace_id: str, ref: Ref) -> Person:
        raise_if(check_workspace_id(workspace_id))
        lookup = identifiers.ref_lookup(ref)

        def work(repo: Repository) -> Person:
            found, people = repo.load(workspace_id, lookup, Lock.NONE)
            settings = _require(found, workspace_id)
            return modes.presented(settings.mode, identifiers.resolve(settings, people, ref))

        return self._run("GetPerson", work, read_only=True)

    def get_settings(self, workspace_id: str) -> Settings:
        raise_if(check_workspace_id(workspace_id))
        return self._run(
            "GetSettings", lambda repo: _require(repo.settings(workspace_id), workspace_id), read_only=True
        )

    def create_workspace(self, settings: Settings) -> Settings:
        raise_if(check_workspace_id(settings.workspace_id))

        def work(repo: Repository) -> Settings:
            if not repo.create_workspace(settings, _now()):
                raise AlreadyExists(
                    "WORKSPACE_ALREADY_EXISTS",
                    f"workspace {settings.workspace_id!r} exists already",
                    {"workspace_id": settings.workspace_id},
                )
            return settings

        return self._run("CreateWorkspace", work)

    def update_settings(
        self, workspace_id: str, patch: Callable[[Settings], Settings], validate_only: bool
    ) -> Settings:
        """R2: the change is validated against the data in the same transaction that applies it;
        the workspace row is locked so that no write to its people runs in between."""
        raise_if(check_workspace_id(workspace_id))

        def work(repo: Repository) -> Settings:
            current = _require(repo.settings(workspace_id, Lock.UPDATE), workspace_id)
            requested = patch(current)
            checks = modes.mode_change_checks(current.mode, requested.mode)
            new = modes.decide_settings_change(current, requested, repo.run_checks(workspace_id, checks))
            if validate_only or new == current:
                return new
            if new.mode != current.mode:
                repo.rekey(
                    workspace_id,
                    modes.is_identifier(new.mode, Field.ID),
                    modes.is_identifier(new.mode, Field.EMAIL),
                )
            repo.update_settings(new, _now())
            return new

        # A mode change checks and rekeys every person of the workspace: allow it more than the
        # session's cap per statement (the client's deadline still bounds it).
        return self._run("UpdateSettings", work, cap=MODE_CHANGE_STATEMENT_CAP_S)

