"""One function per call: validate the request (the rules' lookup functions check every shape,
once, R42), load what the rules core needs, ask it, and stage what it decided, in one
transaction owned by the unit of work (R40). The rules core decides; this module only wires."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from service.db.repository import Lock, Repository
from service.db.unit_of_work import UnitOfWork
from service.domain import Field, IdentifyInput, IdentifyResult, Person, Ref, Settings
from service.errors import AlreadyExists, DeadlineExceeded, DomainError, Unavailable
from service.rules import identifiers, identify, modes
from service.rules.decisions import Decision, Lookup
from service.rules.validation import check_workspace_id, new_cio_id, raise_if, require_workspace

MODE_CHANGE_STATEMENT_CAP_S = 600.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


Decide = Callable[[Settings, list[Person]], Decision]


class IdentityService:
    """The calls of identity.v1, in domain terms."""

    def __init__(self, uow: UnitOfWork):
        self.uow = uow

    async def _write_person(
        self, method: str, workspace_id: str, lookup: Lookup, decide: Decide
    ) -> tuple[Settings, Decision]:
        """The shape shared by every write to people: in one statement the settings are read and
        held steady and the people of the lookup found and locked; then the decision is staged,
        to be sent with the COMMIT."""

        async def work(repo: Repository) -> tuple[Settings, Decision]:
            found, people = await repo.load(workspace_id, lookup, Lock.SHARE)
            settings = require_workspace(found, workspace_id)
            decision = decide(settings, people)
            repo.stage(settings, decision)
            return settings, decision

        return await self.uow.run(method, work)

    async def identify(self, req: IdentifyInput) -> IdentifyResult:
        lookup = identify.identify_lookup(req)
        settings, decision = await self._write_person(
            "Identify",
            req.workspace_id,
            lookup,
            lambda s, people: identify.decide_identify(s, req, people, _now(), new_cio_id()),
        )
        assert decision.outcome is not None
        return IdentifyResult(modes.presented(settings.mode, decision.person), decision.outcome, decision.deleted)

    async def update_identifier(self, workspace_id: str, ref: Ref, field: Field, value: str) -> Person:
        lookup = identifiers.update_identifier_lookup(workspace_id, ref, field, value)
        settings, decision = await self._write_person(
            "UpdateIdentifier",
            workspace_id,
            lookup,
            lambda s, people: identifiers.decide_update_identifier(s, ref, field, value, people, _now()),
        )
        return modes.presented(settings.mode, decision.person)

    async def delete_identifier(self, workspace_id: str, ref: Ref, field: Field) -> Person:
        lookup = identifiers.delete_identifier_lookup(workspace_id, ref, field)
        settings, decision = await self._write_person(
            "DeleteIdentifier",
            workspace_id,
            lookup,
            lambda s, people: identifiers.decide_delete_identifier(s, ref, field, people, _now()),
        )
        return modes.presented(settings.mode, decision.person)

    async def delete_person(self, workspace_id: str, ref: Ref) -> str:
        lookup = identifiers.ref_lookup(workspace_id, ref)
        _, decision = await self._write_person(
            "DeletePerson",
            workspace_id,
            lookup,
            lambda s, people: identifiers.decide_delete_person(s, ref, people),
        )
        return decision.person.cio_id

    async def import_rows(
        self, workspace_id: str, rows: list[tuple[int, IdentifyInput | DomainError]]
    ) -> list[tuple[int, IdentifyResult | DomainError]]:
        """Each row as an Identify in its own transaction (R25 applies: the rows are marked as
        an import); a refused row is reported and the others still apply. An unknown workspace
        refuses the whole import; so does the database going away (rows applied so far stay)."""
        await self.get_settings(workspace_id)  # R8, before any row
        results: list[tuple[int, IdentifyResult | DomainError]] = []
        for number, row in rows:
            if isinstance(row, DomainError):  # refused while reading the file
                results.append((number, row))
                continue
            try:
                results.append((number, await self.identify(row)))
            except (Unavailable, DeadlineExceeded):
                raise
            except DomainError as refusal:
                results.append((number, refusal))
        return results

    async def get_person(self, workspace_id: str, ref: Ref) -> Person:
        lookup = identifiers.ref_lookup(workspace_id, ref)

        async def work(repo: Repository) -> Person:
            found, people = await repo.load(workspace_id, lookup, Lock.NONE)
            settings = require_workspace(found, workspace_id)
            return modes.presented(settings.mode, identifiers.resolve(settings, people, ref))

        return await self.uow.run("GetPerson", work, read_only=True)

    async def get_settings(self, workspace_id: str) -> Settings:
        raise_if(check_workspace_id(workspace_id))

        async def work(repo: Repository) -> Settings:
            return require_workspace(await repo.settings(workspace_id), workspace_id)

        return await self.uow.run("GetSettings", work, read_only=True)

    async def create_workspace(self, settings: Settings) -> Settings:
        raise_if(check_workspace_id(settings.workspace_id))

        async def work(repo: Repository) -> Settings:
            if not await repo.create_workspace(settings, _now()):
                raise AlreadyExists(
                    "WORKSPACE_ALREADY_EXISTS",
                    f"workspace {settings.workspace_id!r} exists already",
                    {"workspace_id": settings.workspace_id},
                )
            return settings

        return await self.uow.run("CreateWorkspace", work)

    async def update_settings(
        self, workspace_id: str, patch: Callable[[Settings], Settings], validate_only: bool
    ) -> Settings:
        """R2: the change is validated against the data in the same transaction that applies it;
        the workspace's gate and row are held exclusively so that no write to its people runs in
        between."""
        raise_if(check_workspace_id(workspace_id))

        async def work(repo: Repository) -> Settings:
            current = require_workspace(await repo.settings(workspace_id, Lock.UPDATE), workspace_id)
            requested = patch(current)
            checks = modes.mode_change_checks(current.mode, requested.mode)
            new = modes.decide_settings_change(current, requested, await repo.run_checks(workspace_id, checks))
            if validate_only or new == current:
                return new
            if new.mode != current.mode:
                await repo.rekey(
                    workspace_id,
                    modes.is_identifier(new.mode, Field.ID),
                    modes.is_identifier(new.mode, Field.EMAIL),
                )
            await repo.update_settings(new, _now())
            return new

        # A mode change checks and rekeys every person of the workspace: allow it more than the
        # session's cap per statement (the client's deadline still bounds it).
        return await self.uow.run("UpdateSettings", work, cap=MODE_CHANGE_STATEMENT_CAP_S)
