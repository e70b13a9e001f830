"""What a decision needs and what it decides: the people to look up first (Lookup), and what to
write (Decision). One Decision type for every call that writes."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from service.domain import Outcome, Person


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


@dataclass(frozen=True)
class Decision:
    """Write `person` as `write` says, after deleting the people whose cio_ids are in `deleted`
    (a merge's secondary, R13, deleted first so that its identifiers are free for the primary).
    `outcome` is Identify's (R15) and None for the other calls; `rule` names the rule that
    decided (e.g. "R13"), or is empty."""

    write: Write
    person: Person
    deleted: tuple[str, ...] = ()
    outcome: Outcome | None = None
    rule: str = ""
