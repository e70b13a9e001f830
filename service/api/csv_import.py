"""Reads the CSV of ImportPeople into Identify requests. Shapes only: each row is then decided
by the rules core like an Identify, as a row of an import (R25)."""

from __future__ import annotations

import csv
import io

from service.domain import IdentifyInput
from service.errors import invalid

MAX_ROWS = 10_000
FIELD = "csv"


def identify_input(workspace_id: str, header: list[str], cells: list[str]) -> IdentifyInput:
    """A data row as the Identify it is (R25: marked as a row of an import). The columns cio_id,
    id and email are the identifiers; every other column an attribute; an empty cell is absent."""
    values = {name: cell for name, cell in zip(header, cells) if cell != ""}
    return IdentifyInput(
        workspace_id,
        cio_id=values.pop("cio_id", None),
        id=values.pop("id", None),
        email=values.pop("email", None),
        attributes=values,
        from_import=True,
    )


def check_header(header: list[str]) -> None:
    if "" in header or len(set(header)) != len(header):
        raise invalid(FIELD, "header names must be non-empty and distinct", "INVALID_CSV")


def parse(workspace_id: str, data: bytes) -> list[tuple[int, IdentifyInput]]:
    """The data rows as (row number, request); a malformed file is refused whole."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise invalid(FIELD, f"must be UTF-8 ({error.reason} at byte {error.start})", "INVALID_CSV") from error
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
        rows = []
        number = 0
        for cells in reader:
            if not cells or cells == [""]:
                continue  # a blank line is not a row
            number += 1
            if number > MAX_ROWS:
                raise invalid(FIELD, f"must have at most {MAX_ROWS} data rows", "TOO_MANY_ROWS")
            if len(cells) != len(header):
                raise invalid(
                    FIELD, f"row {number} has {len(cells)} cells; the header has {len(header)}", "INVALID_CSV"
                )
            rows.append((number, identify_input(workspace_id, header, cells)))
    except StopIteration:
        raise invalid(FIELD, "must start with a header row", "INVALID_CSV") from None
    except csv.Error as error:
        raise invalid(FIELD, f"is not valid CSV: {error}", "INVALID_CSV") from error
    check_header(header)
    return rows
