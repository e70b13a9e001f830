"""What a decision needs and what it decides: the people to look up first (Lookup), and what to
write (Decision). One Decision type for every call that writes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from typing import Mapping

from service.domain import Field, JsonValue, Match, Outcome, Person  # noqa: F401 - Match re-exported


class Write(enum.Enum):
    """What the repository writes for `Decision.person`."""

    NONE = "NONE"
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


@dataclass(frozen=True)
class Lookup:
    """The people a decision needs, found (and locked) in one statement, in domain terms: raw
    values as the request gave them (emails not normalised). It names the people whose cio_id
    is in `cio_ids`, whose id (where id is an identifier of the workspace) is in `ids`, and whose
    email key (where email is an identifier) is the key of one of `emails`.
    identifiers.found is that definition over a list of people; the repository implements it
    with its unique keys (service.db.keys)."""

    cio_ids: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: _Absent = _Absent()  # an attribute a person did not have
MaybeValue = JsonValue | _Absent


@dataclass(frozen=True)
class Taken:
    """R61: what a merge's primary took from its secondary, so that the merge can be undone
    (R62): the identifier fields it lacked and took, and each attribute it took, with the value
    the primary had before (ABSENT or "", R13) and the value taken."""

    identifiers: tuple[Field, ...] = ()
    attributes: Mapping[str, tuple[MaybeValue, JsonValue]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """Write `person` as `write` says, after deleting the people whose cio_ids are in `deleted`
    (a merge's secondary, R13, deleted first so that its identifiers are free for the primary),
    then insert `restored` (an undone merge's secondary, R62, after the primary gave back its
    identifiers). `outcome` is Identify's (R15) and None for the other calls; `rule` names the
    rule that decided (e.g. "R13"), or is empty; `taken` is a merge's record (R61); `erase`
    makes a DELETE an erasure (R54)."""

    write: Write
    person: Person
    deleted: tuple[str, ...] = ()
    outcome: Outcome | None = None
    rule: str = ""
    taken: Taken | None = None
    restored: Person | None = None
    undoes: int = 0  # an unmerge's: the sequence of the merge's event (R62)
    erase: bool = False
