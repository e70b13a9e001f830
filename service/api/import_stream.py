"""StreamImportPeople (R80, R81) at the edge: the file's chunks read into rows (service.api.
csv_stream), the rows an earlier stream of the import applied skipped, the others applied in
batches (service.usecases.imports), and after each batch the progress and the refused rows
sent back. Memory holds one chunk and one batch: the client's flow control waits while a batch
is applied."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import AsyncIterator

from google.rpc import status_pb2

from identity.v1 import identity_pb2 as pb
from service.api.csv_stream import CsvStream
from service.api.status import to_status_proto
from service.db.unit_of_work import UnitOfWork
from service.errors import DomainError, invalid
from service.usecases.imports import BATCH_ROWS, Row, StreamedImport


PIECE_BYTES = 1 << 16


def _encode(refusal: DomainError) -> bytes:
    return to_status_proto(refusal).SerializeToString()


class _Progress:
    def __init__(self, run: StreamedImport):
        self.run = run
        self.started = time.monotonic()
        self.read = self.skipped = self.done_here = 0

    def message(self, refused: list[pb.ImportRowResult] | None = None, done: bool = False) -> pb.StreamImportPeopleResponse:
        state = self.run.state
        elapsed = max(time.monotonic() - self.started, 1e-6)
        progress = pb.ImportProgress(
            rows_read=self.read,
            rows_applied=state.applied,
            rows_refused=state.refused,
            rows_skipped=self.skipped,
            rows_per_second=round(self.done_here / elapsed, 1),
            done=done,
        )
        return pb.StreamImportPeopleResponse(progress=progress, refused_rows=refused or [])


async def stream_import(
    uow: UnitOfWork,
    first: pb.StreamImportPeopleRequest,
    rest: AsyncIterator[pb.StreamImportPeopleRequest],
    batch_rows: int = BATCH_ROWS,
) -> AsyncIterator[pb.StreamImportPeopleResponse]:
    run = StreamedImport(uow, first.workspace_id, first.import_id, _encode)
    reader = CsvStream(first.workspace_id)
    progress = _Progress(run)
    pending: list[Row] = []
    started = False

    async def apply(rows: list[Row], final: bool = False) -> pb.StreamImportPeopleResponse:
        result = await run.apply(rows, final)
        progress.done_here += len(rows)
        refused = [pb.ImportRowResult(row=n, error=to_status_proto(e)) for n, e in result.refused]
        return progress.message(refused, done=final)

    async def chunks() -> AsyncIterator[tuple[bytes, bool]]:
        yield first.chunk, False
        async for request in rest:
            if request.import_id and request.import_id != first.import_id:
                raise invalid("import_id", "must be empty or the first message's", "IMPORT_ID_CHANGED")
            yield request.chunk, False
        yield b"", True

    async def pieces() -> AsyncIterator[tuple[bytes, bool]]:
        """The chunks cut into pieces read one at a time, the other calls of this process
        served between two (a 4 MiB chunk read at once would hold them about 100 ms)."""
        async for chunk, final in chunks():
            for start in range(0, len(chunk), PIECE_BYTES):
                yield chunk[start : start + PIECE_BYTES], False
                await asyncio.sleep(0)
            if final:
                yield b"", True

    async for piece, final in pieces():
        rows = reader.feed(piece, final)
        if not started and reader.header is not None:
            started = True
            state = await run.start(hashlib.sha256(reader.header_text.encode()).digest())
            after = 0
            while earlier := await run.earlier_refusals(after):  # a resume: their results again
                after = earlier[-1][0]
                refused = [pb.ImportRowResult(row=n, error=status_pb2.Status.FromString(s)) for n, s in earlier]
                yield progress.message(refused)
        for number, row in rows:
            progress.read += 1
            if number <= run.state.rows_done:
                progress.skipped += 1
                continue
            pending.append((number, row))
            if len(pending) >= batch_rows:
                yield await apply(pending)
                pending = []
    if not started:
        raise invalid("chunk", "the file must start with a header row", "INVALID_CSV")
    if run.state.finished and not pending:
        yield progress.message(done=True)  # a finished import streamed again: nothing to apply
    else:
        yield await apply(pending, final=True)
