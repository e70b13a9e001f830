"""One function per call: validate the request (the rules' lookup functions check every shape,
once, R42), load what the rules core needs, ask it, and stage what it decided, in one
transaction owned by the unit of work (R40). The rules core decides; this module only wires."""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from service.db.repository import Lock, Repository
from service.db.unit_of_work import Snapshot, UnitOfWork, Work
from service import metrics
from service.db.notifier import Closing, Notifier
from service.domain import (
    Call,
    Changed,
    Explanation,
    Field,
    IdentifyInput,
    IdentifyResult,
    Match,
    Merged,
    Person,
    Ref,
    Replayed,
    Settings,
    Unmerged,
)
from service.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    OutOfRange,
    Unavailable,
    invalid,
)
from service.rules import events, identifiers, identify, merges, modes
from service.rules.decisions import Decision, Lookup
from service.rules.events import Recorded
from service.rules.validation import (
    check_request_id,
    check_workspace_id,
    new_cio_id,
    raise_if,
    request_key,
    require_workspace,
)

MODE_CHANGE_STATEMENT_CAP_S = 600.0
FEED_PAGE = 500  # events read per query by a change-feed stream: its memory bound (R52)
HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX = 100, 1000
MAX_MERGE_DEPTH = 100  # merges followed from a person, for its history (R53) and erasure (R54)
PURGE_BATCH = 1000
EXPORT_BATCH = 1000
_FIRST_PAGE = 2**62  # "before" of the first page of a history: above every sequence


def _now() -> datetime:
    return datetime.now(timezone.utc)


Decide = Callable[[Settings, list[Person]], Decision]
T = TypeVar("T")
Present = Callable[[Settings, Decision, Explanation], T]
IMPORT_RETENTION = timedelta(days=7)  # an import can be resumed for a week after its last batch
RESPONSE_RETENTION = timedelta(hours=24)  # R70: a repeat within this returns the stored response


class _DryRunDone(Exception):
    """Ends a dry run's transaction (the unit of work rolls back what it sent) with its results."""

    def __init__(self, results: list[Any]):
        super().__init__("dry run")
        self.results = results


def _row_key(request_id: str, row: int) -> str:
    """The key an import row's result is stored under: a UUID of the import's request_id and
    the row's number."""
    return str(uuid.uuid5(uuid.UUID(request_id), f"row {row}"))


def _changed(settings: Settings, decision: Decision, why: Explanation) -> Changed:
    return Changed(modes.presented(settings.mode, decision.person), why)


def _once(call: Call, workspace_id: str, work: Work[T]) -> Work[T | Replayed]:
    """R70: `work`, unless a response to this request_id is stored: then that response (the same
    request) or REQUEST_ID_REUSED (another one). The response is stored with the call's writes;
    two identical calls at once both miss, and the second's insert fails at its COMMIT (the
    stored response's primary key): it is rolled back whole and retried (R41), and the retry
    finds the first's response."""
    if not call.request_id or call.validate_only or call.encode is None:
        return work  # type: ignore[return-value]
    key, encode = request_key(call.store_as or call.request_id), call.encode

    async def stored(repo: Repository) -> Replayed | None:
        found = await repo.stored_response(workspace_id, key)
        if found is None:
            return None
        method, fingerprint, response = found
        if method != call.method or fingerprint != call.fingerprint:
            raise FailedPrecondition(
                "REQUEST_ID_REUSED",
                f"request_id {call.request_id!r} was used by another request ({method}) in the last 24 hours",
                {"field": "request_id", "request_id": call.request_id, "method": method},
            )
        return Replayed(response)

    async def once(repo: Repository) -> T | Replayed:
        replay = await stored(repo)
        if replay is not None:
            return replay
        try:
            result = await work(repo)
        except DomainError:
            # A twin sent at the same moment may have committed while this call waited on its
            # locks, and this call's refusal may be the twin's doing (a person it deleted):
            # then the twin's answer is this call's too.
            replay = await stored(repo)
            if replay is not None:
                return replay
            raise
        data, cio_ids = encode(result)
        repo.stage_response(workspace_id, key, call.method, call.fingerprint, data, cio_ids, _now())
        return result

    return once


class IdentityService:
    """The calls of identity.v1, in domain terms."""

    def __init__(self, uow: UnitOfWork, after_commit: Callable[[Call], Awaitable[None]] | None = None):
        self.uow = uow
        self.snapshots = Snapshot(uow)
        # A test hook (service.runtime.server's IDENTITY_TEST_PAUSE_AFTER_COMMIT): runs after a
        # call that writes has committed, before its answer is sent, to prove R70 when a process
        # dies in between.
        self.after_commit = after_commit

    async def _run_call(self, call: Call, workspace_id: str, work: Work[T], **options: Any) -> T | Replayed:
        """Runs a call that writes in its transaction (R40), at most once per request_id (R70):
        a stored response to the same request is returned instead of applying anything again,
        and the first call's response is stored with its writes. A refused call, and a dry run
        (R71), store nothing."""
        raise_if(check_request_id(call.request_id))
        result = await self.uow.run(call.method, _once(call, workspace_id, work), **options)
        if self.after_commit is not None and not isinstance(result, Replayed):
            await self.after_commit(call)
        return result

    async def _write_person(
        self, call: Call, workspace_id: str, lookup: Lookup, decide: Decide, present: Present[T]
    ) -> T | Replayed:
        """The shape shared by every write to people: in one statement the settings are read and
        held steady and the people of the lookup found and locked; then the decision and its
        events (R50) are staged, to be sent with the COMMIT. A dry run (R71) stages nothing."""

        async def work(repo: Repository) -> T:
            found, people = await repo.load(workspace_id, lookup, Lock.SHARE)
            settings = require_workspace(found, workspace_id)
            decision = decide(settings, people)
            if not call.validate_only:
                repo.stage(settings, decision)
                if decision.erase:
                    repo.stage_erasure(workspace_id, await _merged_closure(repo, workspace_id, [decision.person.cio_id]))
                repo.stage_events(workspace_id, events.events_for(settings, decision, people), call)
            why = Explanation(decision.rule, identifiers.matches_of(settings, lookup, people))
            return present(settings, decision, why)

        return await self._run_call(call, workspace_id, work)

    async def identify(self, req: IdentifyInput, call: Call = Call("Identify")) -> IdentifyResult | Replayed:
        lookup = identify.identify_lookup(req)

        def present(settings: Settings, decision: Decision, why: Explanation) -> IdentifyResult:
            assert decision.outcome is not None
            return IdentifyResult(modes.presented(settings.mode, decision.person), decision.outcome, decision.deleted, why)

        return await self._write_person(
            call,
            req.workspace_id,
            lookup,
            lambda s, people: identify.decide_identify(s, req, people, _now(), new_cio_id()),
            present,
        )

    async def update_identifier(
        self, workspace_id: str, ref: Ref, field: Field, value: str, call: Call = Call("UpdateIdentifier")
    ) -> Changed | Replayed:
        lookup = identifiers.update_identifier_lookup(workspace_id, ref, field, value)
        return await self._write_person(
            call,
            workspace_id,
            lookup,
            lambda s, people: identifiers.decide_update_identifier(s, ref, field, value, people, _now()),
            _changed,
        )

    async def delete_identifier(
        self, workspace_id: str, ref: Ref, field: Field, call: Call = Call("DeleteIdentifier")
    ) -> Changed | Replayed:
        lookup = identifiers.delete_identifier_lookup(workspace_id, ref, field)
        return await self._write_person(
            call,
            workspace_id,
            lookup,
            lambda s, people: identifiers.decide_delete_identifier(s, ref, field, people, _now()),
            _changed,
        )

    async def delete_person(
        self, workspace_id: str, ref: Ref, erase: bool = False, call: Call = Call("DeletePerson")
    ) -> str | Replayed:
        lookup = identifiers.ref_lookup(workspace_id, ref)
        return await self._write_person(
            call,
            workspace_id,
            lookup,
            lambda s, people: identifiers.decide_delete_person(s, ref, people, erase),
            lambda settings, decision, why: decision.person.cio_id,
        )

    async def merge_people(
        self, workspace_id: str, primary: Ref, secondary: Ref, call: Call = Call("MergePeople")
    ) -> Merged | Replayed:
        """R60: one transaction; the MERGED event's sequence is the response's, so it is
        appended before the COMMIT rather than with it."""
        lookup = merges.merge_lookup(workspace_id, primary, secondary)

        async def work(repo: Repository) -> Merged:
            found, people = await repo.load(workspace_id, lookup, Lock.SHARE)
            settings = require_workspace(found, workspace_id)
            decision = merges.decide_merge(settings, primary, secondary, people, _now())
            sequence = 0
            if not call.validate_only:
                repo.stage(settings, decision)
                (sequence,) = await repo.append_events_now(
                    workspace_id, events.events_for(settings, decision, people), call
                )
            why = Explanation(decision.rule, identifiers.matches_of(settings, lookup, people))
            return Merged(modes.presented(settings.mode, decision.person), decision.deleted[0], sequence, why)

        return await self._run_call(call, workspace_id, work)

    async def unmerge_people(self, workspace_id: str, merge_sequence: int, call: Call = Call("UnmergePeople")) -> Unmerged | Replayed:
        """R62: the merge's record read, then its people locked and judged, in one transaction."""
        raise_if(check_workspace_id(workspace_id))
        if merge_sequence <= 0:
            raise invalid("merge_sequence", "must be the positive sequence of a MERGED event", "INVALID_SEQUENCE")

        async def work(repo: Repository) -> Unmerged:
            merge = await repo.event(workspace_id, merge_sequence)
            if merge is None:
                require_workspace(await repo.settings(workspace_id), workspace_id)
            merge = merges.require_merge(merge, merge_sequence)
            found, people = await repo.load(workspace_id, merges.unmerge_lookup(merge), Lock.SHARE)
            settings = require_workspace(found, workspace_id)
            undone = await repo.undone(workspace_id, merge_sequence)
            decision = merges.decide_unmerge(settings, merge, undone, people, _now())
            if not call.validate_only:
                repo.stage(settings, decision)
                repo.stage_events(workspace_id, events.events_for(settings, decision, people), call)
            assert decision.restored is not None
            return Unmerged(
                modes.presented(settings.mode, decision.person), modes.presented(settings.mode, decision.restored)
            )

        return await self._run_call(call, workspace_id, work)

    async def import_rows(
        self,
        workspace_id: str,
        rows: list[tuple[int, IdentifyInput | DomainError]],
        call: Call = Call("ImportPeople"),
    ) -> list[tuple[int, IdentifyResult | Replayed | DomainError]]:
        """Each row as an Identify in its own transaction (R25 applies: the rows are marked as
        an import); a refused row is reported and the others still apply. An unknown workspace
        refuses the whole import; so does the database going away (rows applied so far stay).
        With a request_id, each row's result is stored under a key of its own (R70); a dry run
        decides the whole file in one transaction and rolls it back (R71)."""
        raise_if(check_request_id(call.request_id))
        await self.get_settings(workspace_id)  # R8, before any row
        if call.validate_only:
            return await self._import_dry_run(workspace_id, rows)
        results: list[tuple[int, IdentifyResult | Replayed | DomainError]] = []
        for number, row in rows:
            if isinstance(row, DomainError):  # refused while reading the file
                results.append((number, row))
                continue
            row_call = replace(call, store_as=_row_key(call.request_id, number) if call.request_id else "")
            try:
                results.append((number, await self.identify(row, row_call)))
            except (Unavailable, DeadlineExceeded):
                raise
            except DomainError as refusal:
                if refusal.reason == "REQUEST_ID_REUSED":
                    raise  # another import under this request_id: the whole call is refused
                results.append((number, refusal))
        return results

    async def _import_dry_run(
        self, workspace_id: str, rows: list[tuple[int, IdentifyInput | DomainError]]
    ) -> list[tuple[int, IdentifyResult | Replayed | DomainError]]:
        """R71 for an import: every row decided as the real import would decide it, each seeing
        the rows before it (their writes are sent, not committed), then all rolled back."""

        async def work(repo: Repository) -> None:
            results: list[tuple[int, IdentifyResult | Replayed | DomainError]] = []
            for number, row in rows:
                if isinstance(row, DomainError):
                    results.append((number, row))
                    continue
                try:
                    lookup = identify.identify_lookup(row)
                    found, people = await repo.load(workspace_id, lookup, Lock.SHARE)
                    settings = require_workspace(found, workspace_id)
                    decision = identify.decide_identify(settings, row, people, _now(), new_cio_id())
                    repo.stage(settings, decision)
                    await repo.send_staged()
                    assert decision.outcome is not None
                    why = Explanation(decision.rule, identifiers.matches_of(settings, lookup, people))
                    person = modes.presented(settings.mode, decision.person)
                    results.append((number, IdentifyResult(person, decision.outcome, decision.deleted, why)))
                except DomainError as refusal:
                    results.append((number, refusal))
            raise _DryRunDone(results)

        try:
            await self.uow.run("ImportPeople", work)
        except _DryRunDone as done:
            return done.results
        raise AssertionError("a dry run always ends in _DryRunDone")

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

    async def create_workspace(self, settings: Settings, call: Call = Call("CreateWorkspace")) -> Settings | Replayed:
        raise_if(check_workspace_id(settings.workspace_id))

        async def work(repo: Repository) -> Settings:
            if call.validate_only:
                created = await repo.settings(settings.workspace_id) is None
            else:
                created = await repo.create_workspace(settings, _now())
            if not created:
                raise AlreadyExists(
                    "WORKSPACE_ALREADY_EXISTS",
                    f"workspace {settings.workspace_id!r} exists already",
                    {"workspace_id": settings.workspace_id},
                )
            return settings

        return await self._run_call(call, settings.workspace_id, work)

    async def update_settings(
        self, workspace_id: str, patch: Callable[[Settings], Settings], call: Call = Call("UpdateSettings")
    ) -> Settings | Replayed:
        """R2: the change is validated against the data in the same transaction that applies it;
        the workspace's gate and row are held exclusively so that no write to its people runs in
        between."""
        raise_if(check_workspace_id(workspace_id))

        async def work(repo: Repository) -> Settings:
            current = require_workspace(await repo.settings(workspace_id, Lock.UPDATE), workspace_id)
            requested = patch(current)
            checks = modes.mode_change_checks(current.mode, requested.mode)
            new = modes.decide_settings_change(current, requested, await repo.run_checks(workspace_id, checks))
            if call.validate_only or new == current:
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
        return await self._run_call(call, workspace_id, work, cap=MODE_CHANGE_STATEMENT_CAP_S)

    async def export_people(self, workspace_id: str, batch: int = EXPORT_BATCH) -> AsyncIterator[list[Person]]:
        """R82: every person of the workspace as of one snapshot (the settings read in it too),
        presented in its mode, `batch` at a time."""
        raise_if(check_workspace_id(workspace_id))
        async with self.snapshots.open() as repo:
            settings = require_workspace(await repo.settings(workspace_id), workspace_id)
            async for people in repo.export_people(workspace_id, batch):
                yield [modes.presented(settings.mode, person) for person in people]

    # --- the change log (R51-R54) ---

    async def list_person_history(
        self, workspace_id: str, ref: Ref, page_size: int, page_token: str
    ) -> tuple[list[Recorded], str]:
        """R53: newest first, the person's events and those of the people merged into it. A
        cio_id may name a person merged away or deleted; an id or email names one who exists."""
        lookup = identifiers.ref_lookup(workspace_id, ref)
        if page_size < 0 or page_size > HISTORY_PAGE_MAX:
            raise invalid("page_size", f"must be 0 (the default, {HISTORY_PAGE_DEFAULT}) to {HISTORY_PAGE_MAX}", "INVALID_PAGE_SIZE")
        limit = page_size or HISTORY_PAGE_DEFAULT
        before = _history_token_before(page_token, workspace_id, ref) if page_token else _FIRST_PAGE

        async def work(repo: Repository) -> tuple[list[Recorded], str]:
            found, people = await repo.load(workspace_id, lookup, Lock.NONE)
            settings = require_workspace(found, workspace_id)
            if ref.field == Field.CIO_ID:
                root = ref.value
            else:
                root = identifiers.resolve(settings, people, ref).cio_id
            closure = await _merged_closure(repo, workspace_id, [root])
            page = await repo.history(workspace_id, closure, before, limit + 1)
            if not page and not page_token and not people:
                identifiers.resolve(settings, people, ref)  # nobody, and no history: NOT_FOUND
            more = len(page) > limit
            page = page[:limit]
            token = _history_token(workspace_id, ref, page[-1].sequence) if more else ""
            return page, token

        return await self.uow.run("ListPersonHistory", work, read_only=True)

    async def _feed_cursor(self, workspace_id: str, after: int) -> int:
        """R52: where a stream starts. 0 is the oldest event kept; a cursor older than what is
        kept is OUT_OF_RANGE, naming the oldest sequence available."""
        raise_if(check_workspace_id(workspace_id))
        if after < 0:
            raise invalid("after_sequence", "must be 0 or a sequence received before", "INVALID_SEQUENCE")

        async def work(repo: Repository) -> int:
            require_workspace(await repo.settings(workspace_id), workspace_id)
            last, oldest = await repo.feed_bounds(workspace_id)
            first_kept = oldest if oldest is not None else last + 1
            if after == 0:
                return first_kept - 1
            if after < first_kept - 1:
                raise OutOfRange(
                    "CURSOR_TOO_OLD",
                    f"events after {after} are no longer kept (retention); the oldest available is {first_kept}",
                    {"field": "after_sequence", "oldest_sequence": str(first_kept)},
                )
            if after > last:
                raise OutOfRange(
                    "CURSOR_AHEAD",
                    f"no event {after} was ever appended; the last is {last}",
                    {"field": "after_sequence", "last_sequence": str(last)},
                )
            return after

        return await self.uow.run("WatchChanges", work, read_only=True)

    async def watch_changes(
        self, workspace_id: str, after: int, notifier: Notifier, end_when_caught_up: bool = False
    ) -> AsyncIterator[list[Recorded]]:
        """R52: every event after `after`, in order (in pages: what is there at once), then each
        new one as it commits, until the caller stops iterating. Live events come from the workspace's tail in this process (read
        once for all its streams); a stream behind the tail's window reads the log itself, at
        most FEED_PAGE events at a time, so a slow reader is paced by its stream's flow control
        and holds one page. Sequences have no gaps (each transaction takes the next number and
        a rolled-back one gives it back), so a gap means retention purged events the stream had
        not read yet: OUT_OF_RANGE, as for a resumed cursor."""
        cursor = await self._feed_cursor(workspace_id, after)
        if end_when_caught_up:
            while True:
                page = await self._events_after(workspace_id, cursor)
                if page:
                    yield page
                    cursor = page[-1].sequence
                if len(page) < FEED_PAGE:
                    return
        since = time.monotonic()
        with notifier.subscribe(workspace_id, cursor) as tail:
            while True:
                live = tail.after(cursor)
                page = live if live is not None else await self._events_after(workspace_id, cursor)
                if not page:
                    try:
                        await tail.wait(cursor, since)
                    except Closing:
                        raise Unavailable("SERVER_STOPPING", "the server is stopping; resume on another") from None
                    continue
                if live is not None:
                    now = _now()
                    for record in page:
                        metrics.FEED_LAG.observe(max(0.0, (now - record.commit_time).total_seconds()))
                yield page
                cursor = page[-1].sequence

    async def _events_after(self, workspace_id: str, cursor: int) -> list[Recorded]:
        """A page of the log after `cursor`, which must follow it without a gap."""
        page = await self.events_after(workspace_id, cursor, FEED_PAGE)
        if page and page[0].sequence != cursor + 1:
            raise OutOfRange(
                "CURSOR_TOO_OLD",
                f"events after {cursor} were purged (retention) before this stream read them",
                {"field": "after_sequence", "oldest_sequence": str(page[0].sequence)},
            )
        return page

    async def events_after(self, workspace_id: str, after: int, limit: int) -> list[Recorded]:
        """The log after a sequence (the change feed's tails read through this)."""
        return await self.uow.run(
            "WatchChanges", lambda repo: repo.events_after(workspace_id, after, limit), read_only=True
        )

    async def purge_expired_events(self, batch: int = PURGE_BATCH) -> int:
        """Retention: deletes each workspace's events older than its setting (R52), its
        stored responses older than 24 hours (R70) and its imports not advanced for a week
        (R81: long enough to resume), in bounded batches (one transaction each),
        and returns how many rows went."""
        workspaces = await self.uow.run("PurgeEvents", lambda repo: repo.retention_settings(), read_only=True)
        purged = 0
        for workspace_id, days in workspaces:
            for purge, cutoff in (
                (Repository.purge_events, _now() - timedelta(days=days)),
                (Repository.purge_responses, _now() - RESPONSE_RETENTION),
                (Repository.purge_imports, _now() - IMPORT_RETENTION),
            ):
                while True:
                    count = await self.uow.run(
                        "PurgeEvents", lambda repo: purge(repo, workspace_id, cutoff, batch)  # noqa: B023
                    )
                    purged += count
                    if count < batch:
                        break
        return purged


async def _merged_closure(repo: Repository, workspace_id: str, cio_ids: list[str]) -> list[str]:
    """The people given and everyone merged into them, transitively (R53, R54)."""
    seen = list(cio_ids)
    frontier = list(cio_ids)
    for _ in range(MAX_MERGE_DEPTH):
        frontier = [c for c in dict.fromkeys(await repo.merged_into(workspace_id, frontier)) if c not in seen]
        if not frontier:
            break
        seen += frontier
    return seen


def _history_token(workspace_id: str, ref: Ref, before: int) -> str:
    raw = json.dumps([workspace_id, ref.field.value, ref.value, before]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _history_token_before(token: str, workspace_id: str, ref: Ref) -> int:
    """AIP-158: a token is only valid for the request that produced it."""
    try:
        padded = token + "=" * (-len(token) % 4)
        ws, field, value, before = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        valid = [ws, field, value] == [workspace_id, ref.field.value, ref.value] and (
            type(before) is int and 0 < before <= _FIRST_PAGE  # a sequence, as a token of ours holds
        )
    except (ValueError, TypeError, binascii.Error, UnicodeError, RecursionError):
        valid = False
    if not valid:
        raise invalid("page_token", "is not a token of this request's previous page", "INVALID_PAGE_TOKEN")
    return before
