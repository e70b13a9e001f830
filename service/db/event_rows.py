"""The change log's rows: an Event as the columns and JSON body of person_events, and back."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from service.domain import Field, Person
from service.rules.decisions import ABSENT, MaybeValue, Taken
from service.rules.events import AttributeChange, Event, EventKind, Identifiers, Recorded


def _identifiers(value: Identifiers | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {k: v for k, v in (("id", value.id), ("email", value.email)) if v is not None}


def _identifiers_from(body: dict[str, Any] | None) -> Identifiers | None:
    return None if body is None else Identifiers(body.get("id"), body.get("email"))


def _maybe(name: str, value: MaybeValue) -> dict[str, Any]:
    return {} if value is ABSENT else {name: value}


def _person(person: Person) -> dict[str, Any]:
    return {
        "cio_id": person.cio_id,
        "id": person.id,
        "email": person.email,
        "attributes": dict(person.attributes),
        "created_at": person.created_at.isoformat(),
        "updated_at": person.updated_at.isoformat(),
    }


def _person_from(body: dict[str, Any]) -> Person:
    return Person(
        body["cio_id"],
        body["id"],
        body["email"],
        body["attributes"],
        datetime.fromisoformat(body["created_at"]),
        datetime.fromisoformat(body["updated_at"]),
    )


def _attribute_change(change: AttributeChange) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": change.name}
    if change.old is not ABSENT:
        entry["old"] = change.old
    if change.new is not ABSENT:
        entry["new"] = change.new
    return entry


def event_body(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {
        "before": _identifiers(event.before),
        "after": _identifiers(event.after),
        "changes": [_attribute_change(c) for c in event.changes],
    }
    if event.merged is not None:
        body["merged"] = _person(event.merged)
    if event.taken is not None:
        body["taken"] = {
            "identifiers": [f.value for f in event.taken.identifiers],
            "attributes": {n: {**_maybe("was", was), "took": took} for n, (was, took) in event.taken.attributes.items()},
        }
    if event.unmerged_sequence:
        body["unmerged_sequence"] = event.unmerged_sequence
    return body


def event_params(event: Event) -> dict[str, Any]:
    """The columns of an appended event but its workspace, sequence, call and commit time."""
    return {
        "cio_id": event.cio_id,
        "kind": event.kind.value,
        "merged_cio_id": event.merged.cio_id if event.merged is not None else None,
        "undoes": event.unmerged_sequence if event.undoes else None,
        "body": event_body(event),
    }


def recorded(row: Sequence[Any]) -> Recorded:
    """From EVENT_COLUMNS: sequence, cio_id, kind, rpc, request_id, commit_time, body."""
    sequence, cio_id, kind, rpc, request_id, commit_time, body = row
    taken = body.get("taken")
    event = Event(
        EventKind(kind),
        cio_id,
        _identifiers_from(body.get("before")),
        _identifiers_from(body.get("after")),
        tuple(AttributeChange(c["name"], c.get("old", ABSENT), c.get("new", ABSENT)) for c in body.get("changes", ())),
        _person_from(body["merged"]) if "merged" in body else None,
        Taken(
            tuple(Field(f) for f in taken["identifiers"]),
            {n: (v.get("was", ABSENT), v["took"]) for n, v in taken["attributes"].items()},
        )
        if taken is not None
        else None,
        body.get("unmerged_sequence", 0),
    )
    return Recorded(sequence, event, rpc, request_id, commit_time)
