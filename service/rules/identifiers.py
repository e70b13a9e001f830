"""References (R5, R7) and changes to one identifier: update (R20-R24) and delete (R30-R32)."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from service.domain import Field, Mode, Person, Ref, Settings
from service.errors import AlreadyExists, FailedPrecondition, NotFound
from service.rules.changes import Change, Lookup, Write, apply_to_person
from service.rules.modes import is_identifier, sole_identifier
from service.rules.validation import check_cio_id, check_email, check_id, email_key, raise_if


def check_ref(ref: Ref, field: str = "person") -> None:
    """R5/R3/R4: the referenced value is well formed (INVALID_ARGUMENT otherwise)."""
    name = f"{field}.{ref.field.value}"
    if ref.field == Field.CIO_ID:
        raise_if(check_cio_id(ref.value, name))
    elif ref.field == Field.ID:
        raise_if(check_id(ref.value, name))
    else:
        raise_if(check_email(ref.value, name))


def require_identifier(settings: Settings, field: Field, what: str) -> None:
    """R7/R23: only identifiers of the workspace can reference or be changed as identifiers."""
    if not is_identifier(settings.mode, field):
        raise FailedPrecondition(
            "NOT_AN_IDENTIFIER",
            f"{field.value} is not an identifier in this workspace "
            f"(identifier mode {settings.mode.value}); {what}",
            {"field": field.value, "identifier_mode": settings.mode.value},
        )


def ref_lookup(ref: Ref) -> Lookup:
    """The person a well-formed reference names (R5/R3/R4 checked here, before any database work;
    whether the field may reference at all, R7, depends on the settings: check_ref_allowed)."""
    check_ref(ref)
    return lookup_for(ref.field, ref.value)


def check_ref_allowed(settings: Settings, ref: Ref) -> None:
    """R7: a reference uses an identifier of the workspace."""
    require_identifier(settings, ref.field, "it cannot reference a person")


def lookup_for(field: Field, value: str) -> Lookup:
    if field == Field.CIO_ID:
        return Lookup(cio_ids=(value,))
    if field == Field.ID:
        return Lookup(id_keys=(value,))
    return Lookup(email_keys=(email_key(value),))


def matches(person: Person, field: Field, value: str) -> bool:
    """Whether `person` is the one `field`=`value` names: id case-sensitively, email by key."""
    if field == Field.CIO_ID:
        return person.cio_id == value
    if field == Field.ID:
        return person.id == value
    return person.email is not None and email_key(person.email) == email_key(value)


def find(people: Iterable[Person], field: Field, value: str | None) -> Person | None:
    if value is None:
        return None
    for p in people:
        if matches(p, field, value):
            return p
    return None


def resolve(settings: Settings, people: Iterable[Person], ref: Ref) -> Person:
    """R7, then R5/R8: the referenced person, or NOT_FOUND."""
    check_ref_allowed(settings, ref)
    person = find(people, ref.field, ref.value)
    if person is None:
        raise NotFound(
            "PERSON_NOT_FOUND",
            f"no person with {ref.field.value} {ref.value!r} in this workspace",
            {"field": ref.field.value},
        )
    return person


def current_value(person: Person, field: Field) -> str | None:
    return person.id if field == Field.ID else person.email


def is_same_value(field: Field, current: str | None, new: str) -> bool:
    """R24: a new value equal to the current one changes nothing (for email: exactly equal)."""
    return current == new


def judge_identifier_change(
    settings: Settings, person: Person, field: Field, new: str, via: Field, owner: Person | None
) -> bool:
    """Whether `person`'s `field` may become `new` when the person was referenced by `via`;
    True if it is a change, False if `new` equals the current value. Refuses by R20-R24.
    `owner` is whoever holds `new` already (by id, or by email key), if anyone."""
    mode = settings.mode
    require_identifier(settings, field, "it is an attribute, changed through Identify")  # R23
    current = current_value(person, field)
    if is_same_value(field, current, new):  # R24, second sentence
        return False
    if field == sole_identifier(mode):
        # R22: the sole identifier changes only through cio_id, and only when allowed.
        if not settings.sole_identifier_updatable:
            raise FailedPrecondition(
                "SOLE_IDENTIFIER_NOT_UPDATABLE",
                f"{field.value} is the only identifier in this workspace and the setting "
                "sole_identifier_updatable is off, so it cannot be changed",
                {"field": field.value, "identifier_mode": mode.value},
            )
        if via != Field.CIO_ID:
            raise FailedPrecondition(
                "SOLE_IDENTIFIER_CHANGE_REQUIRES_CIO_ID",
                f"{field.value} is the only identifier in this workspace; only a cio_id "
                "reference can change it",
                {"field": field.value, "reference": via.value},
            )
    elif field == Field.EMAIL:
        # R20 (EMAIL_OR_ID): an unset email can be set through id or cio_id; a set one can be
        # changed through cio_id, or through id when email_updatable_by_id is on.
        allowed = {Field.CIO_ID, Field.ID} if current is None or settings.email_updatable_by_id else {Field.CIO_ID}
        if via not in allowed:
            raise FailedPrecondition(
                "EMAIL_CHANGE_REQUIRES_CIO_ID",
                "the person already has an email; only a "
                + " or ".join(sorted(f.value for f in allowed))
                + " reference can change it",
                {"field": "email", "reference": via.value,
                 "allowed_references": ",".join(sorted(f.value for f in allowed))},
            )
    else:
        # R21 (EMAIL_OR_ID): an unset id can be set through email or cio_id; a set one can be
        # changed only through cio_id.
        if current is not None and via != Field.CIO_ID:
            raise FailedPrecondition(
                "ID_CHANGE_REQUIRES_CIO_ID",
                "the person already has an id; only a cio_id reference can change it",
                {"field": "id", "reference": via.value},
            )
    if owner is not None and owner.cio_id != person.cio_id:
        # R24: owned by someone else (for email: case-insensitively).
        raise AlreadyExists(
            "IDENTIFIER_ALREADY_EXISTS",
            f"{field.value} {new!r} belongs to another person",
            {"field": field.value, "owner_cio_id": owner.cio_id},
        )
    return True


def check_new_value(field: Field, value: str) -> None:
    """R3/R4 for the value of UpdateIdentifier."""
    raise_if(check_id(value, "value") if field == Field.ID else check_email(value, "value"))


def _refuse_cio_id_update(field: Field) -> None:
    """Section 1: a cio_id is immutable."""
    if field == Field.CIO_ID:
        raise FailedPrecondition(
            "CIO_ID_IMMUTABLE", "a cio_id is generated by the service and never changes", {"field": "cio_id"}
        )


def _refuse_cio_id_delete(field: Field) -> None:
    """R30: a cio_id can never be deleted."""
    if field == Field.CIO_ID:
        raise FailedPrecondition(
            "CIO_ID_NOT_DELETABLE", "a person's cio_id can never be deleted", {"field": "cio_id"}
        )


def update_identifier_lookup(ref: Ref, field: Field, value: str) -> Lookup:
    """The person referenced and whoever owns the new value, in one lookup."""
    _refuse_cio_id_update(field)
    check_new_value(field, value)
    ref_keys = ref_lookup(ref)
    owner = lookup_for(field, value)
    return Lookup(
        cio_ids=ref_keys.cio_ids,
        id_keys=ref_keys.id_keys + owner.id_keys,
        email_keys=ref_keys.email_keys + owner.email_keys,
    )


def decide_update_identifier(
    settings: Settings, ref: Ref, field: Field, value: str, people: list[Person], now: datetime
) -> Change:
    """R20-R24: the person with `field` set to `value`, or a refusal."""
    _refuse_cio_id_update(field)
    require_identifier(settings, field, "it is an attribute, changed through Identify")  # R23
    person = resolve(settings, people, ref)  # R22: no match is NOT_FOUND
    owner = find(people, field, value)
    if not judge_identifier_change(settings, person, field, value, ref.field, owner):
        return Change(Write.NONE, person)
    if field == Field.ID:
        return Change(Write.UPDATE, apply_to_person(person, now, id=value))
    return Change(Write.UPDATE, apply_to_person(person, now, email=value))


def delete_identifier_lookup(ref: Ref, field: Field) -> Lookup:
    _refuse_cio_id_delete(field)
    return ref_lookup(ref)


def decide_delete_identifier(
    settings: Settings, ref: Ref, field: Field, people: list[Person], now: datetime
) -> Change:
    """R31-R32: the person without `field`, or a refusal."""
    _refuse_cio_id_delete(field)
    require_identifier(settings, field, "it is an attribute, removed through Identify")  # R32/R23
    person = resolve(settings, people, ref)
    mode = settings.mode
    if field == sole_identifier(mode):  # R32
        raise FailedPrecondition(
            "SOLE_IDENTIFIER_NOT_DELETABLE",
            f"{field.value} is the only identifier in this workspace; every person keeps one",
            {"field": field.value, "identifier_mode": mode.value},
        )
    if current_value(person, field) is None:  # R31: nothing to remove
        return Change(Write.NONE, person)
    other = Field.EMAIL if field == Field.ID else Field.ID
    if mode == Mode.EMAIL_OR_ID and current_value(person, other) is None:  # R31
        raise FailedPrecondition(
            "LAST_IDENTIFIER",
            f"{field.value} is the person's last identifier besides cio_id; a person keeps an id "
            "or an email",
            {"field": field.value},
        )
    if field == Field.ID:
        return Change(Write.UPDATE, apply_to_person(person, now, id=None))
    return Change(Write.UPDATE, apply_to_person(person, now, email=None))


def decide_delete_person(settings: Settings, ref: Ref, people: list[Person]) -> Change:
    return Change(Write.DELETE, resolve(settings, people, ref))
