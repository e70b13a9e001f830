"""Explicit merges (R60) and undoing any merge (R62), from the record every merge leaves (R61)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from service.domain import Field, JsonValue, Person, Ref, Settings
from service.errors import FailedPrecondition, NotFound, invalid
from service.rules.changes import apply_to_person, same_json
from service.rules.decisions import ABSENT, Decision, Lookup, Taken, Write
from service.rules.events import EventKind, Recorded
from service.rules.identifiers import current_value, find, lookup_for, resolve, shape
from service.rules.identify import taken_attributes
from service.rules.modes import is_identifier
from service.rules.validation import check_workspace_id, raise_if

_FIELDS = (Field.ID, Field.EMAIL)
_FIELD_NAMES = {f.value for f in _FIELDS}


def merge_lookup(workspace_id: str, primary: Ref, secondary: Ref) -> Lookup:
    """Both people; the shapes of the workspace id and both references checked together (R42).
    The same reference twice is INVALID_ARGUMENT (R60)."""
    raise_if(
        check_workspace_id(workspace_id)
        + shape(primary.field, primary.value, f"primary.{primary.field.value}")
        + shape(secondary.field, secondary.value, f"secondary.{secondary.field.value}")
    )
    if primary == secondary:
        raise invalid("secondary", "names the same person as primary", "SAME_PERSON")
    a, b = lookup_for(primary.field, primary.value), lookup_for(secondary.field, secondary.value)
    return Lookup(a.cio_ids + b.cio_ids, a.ids + b.ids, a.emails + b.emails)


def decide_merge(settings: Settings, primary_ref: Ref, secondary_ref: Ref, people: list[Person], now: datetime) -> Decision:
    """R60: the primary keeps its cio_id and identifiers and takes each one it lacks from the
    secondary; an attribute empty on the primary takes the secondary's value (as R13); the
    secondary is deleted. Whatever the mode and auto_merge."""
    primary = _resolve(settings, people, primary_ref, "primary")
    secondary = _resolve(settings, people, secondary_ref, "secondary")
    if primary.cio_id == secondary.cio_id:
        raise invalid("secondary", "names the same person as primary", "SAME_PERSON")
    took = taken_attributes(primary, secondary)
    lacking = [f for f in _FIELDS if current_value(primary, f) is None and current_value(secondary, f) is not None]
    # An identifier the primary lacks is taken (R60); id or email where it is an attribute of the
    # mode (R12) is taken as an attribute is (R13), and undone as one (R62).
    fields = tuple(f for f in lacking if is_identifier(settings.mode, f))
    took.update({f.value: (ABSENT, current_value(secondary, f)) for f in lacking if f not in fields})
    values = {f.value: current_value(secondary, f) for f in lacking}
    attributes = {n: v for n, (_, v) in took.items() if n not in values}
    person = apply_to_person(primary, now, attributes=attributes, **values)  # type: ignore[arg-type]
    if person is primary:
        person = replace(primary, updated_at=now)  # a merge always changes the primary
    return Decision(Write.UPDATE, person, deleted=(secondary.cio_id,), rule="R60", taken=Taken(fields, took))


def _resolve(settings: Settings, people: list[Person], ref: Ref, name: str) -> Person:
    try:
        return resolve(settings, people, ref)
    except NotFound as error:
        raise NotFound(error.reason, f"{name}: {error.message}", {**error.metadata, "field": name}) from None


def unmerge_lookup(merge: Recorded) -> Lookup:
    """The primary, the secondary's cio_id (to see it has not come back) and whoever now owns
    the secondary's identifiers."""
    event = merge.event
    assert event.merged is not None
    secondary = event.merged
    owners = [lookup_for(f, v) for f in _FIELDS if (v := current_value(secondary, f)) is not None]
    return Lookup(
        (event.cio_id, secondary.cio_id),
        tuple(v for o in owners for v in o.ids),
        tuple(v for o in owners for v in o.emails),
    )


def require_merge(found: Recorded | None, sequence: int) -> Recorded:
    if found is None or found.event.kind != EventKind.MERGED or found.event.merged is None:
        raise NotFound(
            "MERGE_NOT_FOUND",
            f"no merge with sequence {sequence} in the change log (or it is older than its retention)",
            {"field": "merge_sequence", "merge_sequence": str(sequence), "rule": "R62"},
        )
    return found


def decide_unmerge(
    settings: Settings, merge: Recorded, undone: bool, people: list[Person], now: datetime
) -> Decision:
    """R62: the secondary returns as it was (cio_id, identifiers, attributes, create time); the
    primary gives back the identifiers and attribute values it took, except attribute values
    changed since, which stay. Refused, changing nothing, when an identifier to give back now
    belongs to someone else or was changed on the primary (UNMERGE_CONFLICT), and the second
    time (ALREADY_UNMERGED)."""
    event = merge.event
    secondary, taken = event.merged, event.taken or Taken()
    assert secondary is not None
    mode = settings.mode
    if undone or find(mode, people, Field.CIO_ID, secondary.cio_id) is not None:
        raise FailedPrecondition(
            "ALREADY_UNMERGED",
            f"the merge {merge.sequence} was undone already",
            {"merge_sequence": str(merge.sequence), "cio_id": secondary.cio_id, "rule": "R62"},
        )
    primary = find(mode, people, Field.CIO_ID, event.cio_id)
    if primary is None:
        raise FailedPrecondition(
            "UNMERGE_CONFLICT",
            f"the merge's primary {event.cio_id!r} was deleted since",
            {"field": "cio_id", "cio_id": event.cio_id, "merge_sequence": str(merge.sequence), "rule": "R62"},
        )
    gives_back: dict[str, None] = {}
    for field in _FIELDS:
        value = current_value(secondary, field)
        if value is None or not is_identifier(mode, field):  # an attribute of the mode: no owner
            continue
        owner = find(mode, people, field, value)
        if field in taken.identifiers:
            if current_value(primary, field) != value:  # changed on the primary since
                _conflict(merge, field, value, owner.cio_id if owner else primary.cio_id, "was changed on the primary")
            gives_back[field.value] = None
        elif owner is not None:
            _conflict(merge, field, value, owner.cio_id, "belongs to another person")
    restore: dict[str, JsonValue] = {}
    for name, (was, took) in taken.attributes.items():
        if name in _FIELD_NAMES and not is_identifier(mode, Field(name)):
            if current_value(primary, Field(name)) == took:  # id or email as an attribute (R12)
                gives_back[name] = None
        elif same_json(primary.attributes.get(name, ABSENT), took):  # unchanged since the merge
            restore[name] = None if was is ABSENT else was
    after = apply_to_person(primary, now, attributes=restore, **gives_back)  # type: ignore[arg-type]
    if after is primary:
        after = replace(primary, updated_at=now)
    restored = replace(secondary, updated_at=now)
    return Decision(Write.UPDATE, after, rule="R62", restored=restored, undoes=merge.sequence)


def _conflict(merge: Recorded, field: Field, value: str, owner: str, why: str) -> None:
    raise FailedPrecondition(
        "UNMERGE_CONFLICT",
        f"the secondary's {field.value} {value!r} {why} since the merge",
        {"field": field.value, "owner_cio_id": owner, "merge_sequence": str(merge.sequence), "rule": "R62"},
    )
