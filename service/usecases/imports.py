"""A streamed import (R80, R81): rows applied a batch at a time, each batch one transaction that
also records how far the import got, so that an import interrupted anywhere has applied a prefix
of its rows and resumes at the first row not applied, applying none twice.

Within a batch the rows are decided one by one, in file order, by the rules core, exactly as
Identify decides them (R25 included), against the batch's people loaded and locked once and
changed in memory by each decision (service.db.overlay): every row sees the rows before it. The
batch's net writes and its events then go to the database as a few set-based statements
(service.db.bulk)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from service.db.bulk import ImportState
from service.db.overlay import BatchPeople
from service.db.repository import Lock, Repository
from service.db.unit_of_work import UnitOfWork
from service.domain import Call, IdentifyInput
from service.errors import Aborted, DomainError, FailedPrecondition
from service.rules import events, identify
from service.rules.decisions import Lookup
from service.rules.validation import check_import_id, check_workspace_id, new_cio_id, raise_if, request_key, require_workspace

METHOD = "StreamImportPeople"
BATCH_ROWS = 1000  # rows per transaction: long enough to amortise, short enough to hold locks briefly
BATCH_STATEMENT_CAP_S = 60.0
REFUSALS_PAGE = 1000
YIELD_EVERY = 100  # rows decided between two turns of the event loop (about 3 ms)

Row = tuple[int, IdentifyInput | DomainError]
EncodeRefusal = Callable[[DomainError], bytes]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class BatchResult:
    applied: int = 0
    refused: list[tuple[int, DomainError]] = field(default_factory=list)


class StreamedImport:
    """One stream of an import: `start` it with the file's header, then `apply` its rows, in
    order, in batches; the last batch is applied with `final`."""

    def __init__(self, uow: UnitOfWork, workspace_id: str, import_id: str, encode_refusal: EncodeRefusal):
        raise_if(check_workspace_id(workspace_id) + check_import_id(import_id))
        self.uow = uow
        self.workspace_id = workspace_id
        self.import_id = request_key(import_id)
        self.encode_refusal = encode_refusal
        self.call = Call(METHOD, request_id=self.import_id)
        self.state = ImportState(b"", 0, 0, 0, False)

    async def start(self, fingerprint: bytes) -> ImportState:
        """Records the import (or finds it: a resume). Its fingerprint (the file's header) must
        be the one it started with."""

        async def work(repo: Repository) -> ImportState:
            require_workspace(await repo.settings(self.workspace_id), self.workspace_id)  # R8
            return await repo.start_import(self.workspace_id, self.import_id, fingerprint)

        state = await self.uow.run(METHOD, work)
        if state.fingerprint != fingerprint:
            raise FailedPrecondition(
                "IMPORT_ID_REUSED",
                "import_id names an import of a file with another header; use a new import_id",
                {"field": "import_id", "import_id": self.import_id},
            )
        self.state = state
        return state

    async def earlier_refusals(self, after: int) -> list[tuple[int, bytes]]:
        """The refused rows' results stored by earlier streams of this import, after row `after`."""

        async def work(repo: Repository) -> list[tuple[int, bytes]]:
            return await repo.import_refusals(self.workspace_id, self.import_id, after, REFUSALS_PAGE)

        return await self.uow.run(METHOD, work, read_only=True)

    async def apply(self, rows: list[Row], final: bool = False) -> BatchResult:
        """Applies rows (each numbered after the last applied) in one transaction, with the
        import's progress. `final` marks the import finished."""
        checked: list[tuple[int, IdentifyInput | DomainError, Lookup | None]] = []
        for number, row in rows:
            if isinstance(row, DomainError):
                checked.append((number, row, None))
                continue
            try:
                checked.append((number, row, identify.identify_lookup(row)))  # R42: shapes first
            except DomainError as refusal:
                checked.append((number, refusal, None))
        whole = Lookup(
            tuple(v for _, _, lk in checked if lk for v in lk.cio_ids),
            tuple(v for _, _, lk in checked if lk for v in lk.ids),
            tuple(v for _, _, lk in checked if lk for v in lk.emails),
        )
        rows_done = rows[-1][0] if rows else self.state.rows_done
        expected = self.state.rows_done

        async def work(repo: Repository) -> BatchResult:
            state = await repo.lock_import(self.workspace_id, self.import_id)
            if state is None or state.rows_done != expected:
                raise Aborted(
                    "IMPORT_MOVED_ON",
                    "another stream of this import applied rows meanwhile; resume the import to continue",
                    {"import_id": self.import_id},
                )
            found, people = await repo.load(self.workspace_id, whole, Lock.SHARE)
            settings = require_workspace(found, self.workspace_id)
            batch = BatchPeople(settings.mode, people)
            result = BatchResult()
            appended: list[events.Event] = []
            for n, (number, row, lookup) in enumerate(checked, 1):
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the other calls of this process are served meanwhile
                if lookup is None:
                    result.refused.append((number, row))  # type: ignore[arg-type]
                    continue
                assert isinstance(row, IdentifyInput)
                matched = batch.find(lookup)
                try:
                    decision = identify.decide_identify(settings, row, matched, _now(), new_cio_id())
                except DomainError as refusal:
                    result.refused.append((number, refusal))
                    continue
                appended.extend(events.events_for(settings, decision, matched))
                batch.apply(decision)
                result.applied += 1
            repo.stage_batch(
                self.workspace_id,
                batch.net_writes(),
                appended,
                self.call,
                import_id=self.import_id,
                rows_done=rows_done,
                applied=result.applied,
                refusals=[(number, self.encode_refusal(refusal)) for number, refusal in result.refused],
                finished=final,
            )
            return result

        result = await self.uow.run(METHOD, work, cap=BATCH_STATEMENT_CAP_S)
        s = self.state
        self.state = ImportState(s.fingerprint, rows_done, s.applied + result.applied, s.refused + len(result.refused), final)
        return result
