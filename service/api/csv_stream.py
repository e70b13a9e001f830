"""Reads a streamed import's CSV (R81) from chunks of bytes split anywhere, even inside a row or
a character, holding no more than the incomplete row at the end of the last chunk. Shapes only:
each row is then decided by the rules core as an Identify of an import (R25).

A record ends at a line break outside quotes: with quotes doubled inside quoted fields (RFC
4180), a line break is outside quotes exactly when the record so far holds an even number of
quote characters, so records are found by counting quotes, and each is then read by the csv
module."""

from __future__ import annotations

import codecs
import csv
from typing import Iterator

from service.api.csv_import import check_header, identify_input
from service.domain import IdentifyInput
from service.errors import DomainError, invalid

FIELD = "chunk"
MAX_RECORD_CHARS = 1 << 20  # one row; longer is most likely a quote never closed


class CsvStream:
    def __init__(self, workspace_id: str):
        self.workspace_id = workspace_id
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._bytes = 0  # bytes fed so far, for error messages
        self._line = ""  # the text after the last line break
        self._record: list[str] = []  # the lines of a record whose quotes are still open
        self._record_chars = 0
        self._quotes = 0
        self.header: list[str] | None = None
        self.header_text = ""
        self.rows = 0  # data rows read

    def feed(self, chunk: bytes, final: bool = False) -> list[tuple[int, IdentifyInput | DomainError]]:
        """The data rows completed by `chunk` (all the rest when `final`), numbered from 1 after
        the header; a row with the wrong number of cells is refused on its own."""
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as error:
            raise invalid(
                FIELD, f"must be UTF-8 ({error.reason} at byte {self._bytes + error.start})", "INVALID_CSV"
            ) from error
        self._bytes += len(chunk)
        lines = (self._line + text).split("\n")
        self._line = lines.pop()
        if final and self._line:
            lines.append(self._line)
            self._line = ""
        records = self._records(lines, final)
        return list(self._rows(records))

    def _records(self, lines: list[str], final: bool) -> list[str]:
        records = []
        for line in lines:
            quotes = line.count('"')
            if not self._record and not quotes & 1:
                records.append(line)  # the common case: a whole record on one line
                continue
            self._record.append(line)
            self._record_chars += len(line)
            self._quotes += quotes
            if self._quotes & 1:
                if self._record_chars > MAX_RECORD_CHARS:
                    raise invalid(
                        FIELD, f"row {self.rows + 1} is over {MAX_RECORD_CHARS} characters (a quote never closed?)",
                        "INVALID_CSV",
                    )  # fmt: skip
                continue
            records.append("\n".join(self._record))
            self._record, self._record_chars, self._quotes = [], 0, 0
        if final and self._record:
            raise invalid(FIELD, f"row {self.rows + 1} has a quote that is never closed", "INVALID_CSV")
        if len(self._line) > MAX_RECORD_CHARS:
            raise invalid(FIELD, f"row {self.rows + 1} is over {MAX_RECORD_CHARS} characters", "INVALID_CSV")
        return records

    def _rows(self, records: list[str]) -> Iterator[tuple[int, IdentifyInput | DomainError]]:
        try:
            for cells in csv.reader(records):
                if not cells or cells == [""]:
                    continue  # a blank line is not a row
                if self.header is None:
                    self.header = [name.strip() for name in cells]
                    self.header_text = ",".join(self.header)
                    check_header(self.header)
                    continue
                self.rows += 1
                if len(cells) != len(self.header):
                    yield self.rows, invalid(
                        "csv", f"row {self.rows} has {len(cells)} cells; the header has {len(self.header)}", "INVALID_CSV"
                    )
                    continue
                yield self.rows, identify_input(self.workspace_id, self.header, cells)
        except csv.Error as error:
            raise invalid(FIELD, f"row {self.rows + 1} is not valid CSV: {error}", "INVALID_CSV") from error
