"""Applying changes to a person (R14), with R6's limit on the person as stored."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Mapping

from service.domain import JsonValue, Person
from service.errors import FailedPrecondition
from service.rules.validation import MAX_ATTRIBUTES


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: _Unset = _Unset()


def apply_to_person(
    person: Person,
    now: datetime,
    *,
    id: str | None | _Unset = UNSET,
    email: str | None | _Unset = UNSET,
    attributes: Mapping[str, JsonValue] = {},
) -> Person:
    """R14: names in `attributes` are set, a None value removes that name, names not given are
    untouched. `updated_at` moves only when something changed."""
    merged = dict(person.attributes)
    for name, value in attributes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    new_id = person.id if isinstance(id, _Unset) else id
    new_email = person.email if isinstance(email, _Unset) else email
    if new_id == person.id and new_email == person.email and same_json(merged, person.attributes):
        return person
    if len(merged) > MAX_ATTRIBUTES:
        # R6: the limit holds for the person as stored, not only for one request.
        raise FailedPrecondition(
            "PERSON_ATTRIBUTE_LIMIT",
            f"the person would have {len(merged)} attributes; at most {MAX_ATTRIBUTES} are allowed",
            {"field": "attributes", "limit": str(MAX_ATTRIBUTES), "rule": "R6"},
        )
    return replace(person, id=new_id, email=new_email, attributes=merged, updated_at=now)


def same_json(a: JsonValue, b: JsonValue) -> bool:
    """Equality of JSON values that keeps booleans and numbers apart (Python has True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # JSON has one number type: 1 and 1.0 are the same value
    return type(a) is type(b) and a == b
