"""The change log's events (R50, R54, R61): what a decision changed, one event per person, as
the client sees people (R12's presentation in the workspace's mode). Pure: the unit of work
appends them in the call's own transaction (service.db.repository)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from service.domain import Person, Settings
from service.rules.changes import same_json
from service.rules.decisions import ABSENT, Decision, MaybeValue, Taken, Write
from service.rules.modes import presented


class EventKind(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    MERGED = "MERGED"
    UNMERGED = "UNMERGED"
    DELETED = "DELETED"
    ERASED = "ERASED"


@dataclass(frozen=True)
class Identifiers:
    id: str | None
    email: str | None


@dataclass(frozen=True)
class AttributeChange:
    """One attribute's change; ABSENT: the attribute did not exist on that side."""

    name: str
    old: MaybeValue
    new: MaybeValue


@dataclass(frozen=True)
class Event:
    """What happened to one person. A MERGED event carries the secondary as it was stored
    (`merged`, R61) and what the primary took from it (`taken`); an UNMERGED event the sequence
    of the merge it undid (`unmerged_sequence`), on the primary's event only (`undoes`: the log
    holds one undo per merge); an ERASED event only its kind and cio_id (R54)."""

    kind: EventKind
    cio_id: str
    before: Identifiers | None = None
    after: Identifiers | None = None
    changes: tuple[AttributeChange, ...] = ()
    merged: Person | None = None
    taken: Taken | None = None
    unmerged_sequence: int = 0
    undoes: bool = False


@dataclass(frozen=True)
class Recorded:
    """An event as the log holds it (R51: `sequence` increases in commit order)."""

    sequence: int
    event: Event
    rpc: str
    request_id: str
    commit_time: datetime


def _identifiers(person: Person) -> Identifiers:
    return Identifiers(person.id, person.email)


def attribute_changes(before: Person | None, after: Person | None) -> tuple[AttributeChange, ...]:
    """Every attribute that differs between two states of a person, by name."""
    old = dict(before.attributes) if before else {}
    new = dict(after.attributes) if after else {}
    changes = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name, ABSENT), new.get(name, ABSENT)
        if a is ABSENT or b is ABSENT or not same_json(a, b):
            changes.append(AttributeChange(name, a, b))
    return tuple(changes)


def _change(kind: EventKind, before: Person | None, after: Person | None, **extra: object) -> Event:
    cio_id = (after or before).cio_id  # type: ignore[union-attr]
    return Event(
        kind,
        cio_id,
        _identifiers(before) if before else None,
        _identifiers(after) if after else None,
        attribute_changes(before, after),
        **extra,  # type: ignore[arg-type]
    )


def events_for(settings: Settings, decision: Decision, people: list[Person]) -> list[Event]:
    """R50: the events of a decision, given the people its lookup found (their state before).
    A decision that writes nothing has none."""
    if decision.write == Write.NONE:
        return []
    mode = settings.mode
    before = {p.cio_id: p for p in people}
    person = decision.person
    if decision.write == Write.INSERT:
        return [_change(EventKind.CREATED, None, presented(mode, person))]
    old = presented(mode, before[person.cio_id])
    if decision.write == Write.DELETE:
        if decision.erase:  # R54: a tombstone; the older events are redacted with it
            return [Event(EventKind.ERASED, person.cio_id)]
        return [_change(EventKind.DELETED, old, None)]
    new = presented(mode, person)
    if decision.restored is not None:  # R62: an undone merge, both people
        return [
            _change(EventKind.UNMERGED, old, new, unmerged_sequence=decision.undoes, undoes=True),
            _change(EventKind.UNMERGED, None, presented(mode, decision.restored), unmerged_sequence=decision.undoes),
        ]
    if decision.deleted:  # R13 or R60: one secondary, carried whole (R61)
        (secondary,) = (before[cio_id] for cio_id in decision.deleted)
        return [_change(EventKind.MERGED, old, new, merged=secondary, taken=decision.taken)]
    return [_change(EventKind.UPDATED, old, new)]
