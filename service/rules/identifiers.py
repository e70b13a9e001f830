"""References (R5, R7) and who a lookup finds, and changes to one identifier: update (R20-R24)
and delete (R30-R32)."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from service.domain import Field, Mode, Person, Ref, Settings
from service.errors import AlreadyExists, FailedPrecondition, FieldViolation, NotFound
from service.rules.changes import apply_to_person
from service.rules.decisions import Decision, Lookup, Match, Write
from service.rules.modes import is_identifier, sole_identifier
from service.rules.validation import check_cio_id, check_email, check_id, check_workspace_id, email_key, raise_if


def matches(mode: Mode, person: Person, field: Field, value: str) -> bool:
    """Whether `field` = `value` names `person` in a workspace of `mode`: cio_id always; id
    (case-sensitively) and email (by its key, R4) only where they are identifiers (R1, R7): an
    attribute never names anyone."""
    if not is_identifier(mode, field):
        return False
    if field == Field.CIO_ID:
        return person.cio_id == value
    if field == Field.ID:
        return person.id == value
    return person.email is not None and email_key(person.email) == email_key(value)


def find(mode: Mode, people: Iterable[Person], field: Field, value: str | None) -> Person | None:
    """The person `field` = `value` names among `people` (per `matches`), if any."""
    if value is None:
        return None
    for p in people:
        if matches(mode, p, field, value):
            return p
    return None


def found(mode: Mode, lookup: Lookup, people: Iterable[Person]) -> list[Person]:
    """Who `lookup` finds among `people`: the meaning of a Lookup, which the repository
    implements with its unique keys."""
    wanted = ((Field.CIO_ID, lookup.cio_ids), (Field.ID, lookup.ids), (Field.EMAIL, lookup.emails))
    return [p for p in people if any(matches(mode, p, field, v) for field, values in wanted for v in values)]


def lookup_for(field: Field, value: str) -> Lookup:
    """The lookup of the person `field` = `value` names."""
    if field == Field.CIO_ID:
        return Lookup(cio_ids=(value,))
    if field == Field.ID:
        return Lookup(ids=(value,))
    return Lookup(emails=(value,))


def shape(field: Field, value: str, name: str) -> list[FieldViolation]:
    """R5/R3/R4: the shape of a cio_id, id or email."""
    check = {Field.CIO_ID: check_cio_id, Field.ID: check_id, Field.EMAIL: check_email}[field]
    return check(value, name)


def ref_lookup(workspace_id: str, ref: Ref) -> Lookup:
    """The person a reference names. The shapes (R8's workspace id; R5/R3/R4 for the reference)
    are checked here, once, before any database work, every bad field named (R42); whether the
    field may reference at all (R7) depends on the settings: resolve."""
    raise_if(check_workspace_id(workspace_id) + shape(ref.field, ref.value, f"person.{ref.field.value}"))
    return lookup_for(ref.field, ref.value)


def require_identifier(settings: Settings, field: Field, what: str, rule: str = "R23") -> None:
    """R7/R23: only identifiers of the workspace can reference or be changed as identifiers."""
    if not is_identifier(settings.mode, field):
        raise FailedPrecondition(
            "NOT_AN_IDENTIFIER",
            f"{field.value} is not an identifier in this workspace "
            f"(identifier mode {settings.mode.value}); {what}",
            {"field": field.value, "identifier_mode": settings.mode.value, "rule": rule},
        )


def check_ref_allowed(settings: Settings, ref: Ref) -> None:
    """R7: a reference uses an identifier of the workspace."""
    require_identifier(settings, ref.field, "it cannot reference a person", "R7")


def resolve(settings: Settings, people: Iterable[Person], ref: Ref) -> Person:
    """R7, then the referenced person among those ref_lookup found, or NOT_FOUND (R5, R22)."""
    check_ref_allowed(settings, ref)
    person = find(settings.mode, people, ref.field, ref.value)
    if person is None:
        raise NotFound(
            "PERSON_NOT_FOUND",
            f"no person with {ref.field.value} {ref.value!r} in this workspace",
            {"field": ref.field.value, "rule": "R7"},
        )
    return person


def current_value(person: Person, field: Field) -> str | None:
    return person.id if field == Field.ID else person.email


def judge_identifier_change(
    settings: Settings, person: Person, field: Field, new: str, via: Field, owner: Person | None
) -> bool:
    """Whether `person`'s `field` may become `new` when the person was referenced by `via`;
    True if it is a change, False if `new` equals the current value. Refuses by R20-R24.
    `owner` is whoever holds `new` already (by id, or by email key), if anyone. `field` is an
    identifier of the workspace (R23 is the caller's)."""
    mode = settings.mode
    current = current_value(person, field)
    if current == new:  # R24, second sentence: equal (for email: exactly equal) changes nothing
        return False
    if field == sole_identifier(mode):
        # R22: the sole identifier changes only through cio_id, and only when allowed.
        if not settings.sole_identifier_updatable:
            raise FailedPrecondition(
                "SOLE_IDENTIFIER_NOT_UPDATABLE",
                f"{field.value} is the only identifier in this workspace and the setting "
                "sole_identifier_updatable is off, so it cannot be changed",
                {"field": field.value, "identifier_mode": mode.value, "rule": "R22"},
            )
        if via != Field.CIO_ID:
            raise FailedPrecondition(
                "SOLE_IDENTIFIER_CHANGE_REQUIRES_CIO_ID",
                f"{field.value} is the only identifier in this workspace; only a cio_id "
                "reference can change it",
                {"field": field.value, "reference": via.value, "rule": "R22"},
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
                 "allowed_references": ",".join(sorted(f.value for f in allowed)), "rule": "R20"},
            )
    else:
        # R21 (EMAIL_OR_ID): an unset id can be set through email or cio_id; a set one can be
        # changed only through cio_id.
        if current is not None and via != Field.CIO_ID:
            raise FailedPrecondition(
                "ID_CHANGE_REQUIRES_CIO_ID",
                "the person already has an id; only a cio_id reference can change it",
                {"field": "id", "reference": via.value, "rule": "R21"},
            )
    if owner is not None and owner.cio_id != person.cio_id:
        # R24: owned by someone else (for email: case-insensitively).
        raise AlreadyExists(
            "IDENTIFIER_ALREADY_EXISTS",
            f"{field.value} {new!r} belongs to another person",
            {"field": field.value, "owner_cio_id": owner.cio_id, "rule": "R24"},
        )
    return True


def update_identifier_lookup(workspace_id: str, ref: Ref, field: Field, value: str) -> Lookup:
    """The person referenced and whoever owns the new value, in one lookup. Checked here, once,
    before any database work: the shapes of the workspace id, the reference and the new value,
    all reported together (R42); then that a cio_id is immutable (section 1)."""
    violations = check_workspace_id(workspace_id) + shape(ref.field, ref.value, f"person.{ref.field.value}")
    if field != Field.CIO_ID:
        violations += shape(field, value, "value")
    raise_if(violations)
    if field == Field.CIO_ID:
        raise FailedPrecondition(
            "CIO_ID_IMMUTABLE",
            "a cio_id is generated by the service and never changes",
            {"field": "cio_id", "rule": "R30"},
        )
    person, owner = lookup_for(ref.field, ref.value), lookup_for(field, value)
    return Lookup(person.cio_ids, person.ids + owner.ids, person.emails + owner.emails)


def decide_update_identifier(
    settings: Settings, ref: Ref, field: Field, value: str, people: list[Person], now: datetime
) -> Decision:
    """R20-R24: the person with `field` set to `value`, or a refusal. The request is as
    update_identifier_lookup validated it (shapes, and `field` is id or email); `people` are
    those its lookup found."""
    assert field != Field.CIO_ID  # update_identifier_lookup refused it (CIO_ID_IMMUTABLE)
    require_identifier(settings, field, "it is an attribute, changed through Identify")  # R23
    person = resolve(settings, people, ref)  # R22: no match is NOT_FOUND
    owner = find(settings.mode, people, field, value)
    if not judge_identifier_change(settings, person, field, value, ref.field, owner):
        return Decision(Write.NONE, person, rule="R24")
    rule = "R22" if field == sole_identifier(settings.mode) else "R20" if field == Field.EMAIL else "R21"
    if field == Field.ID:
        return Decision(Write.UPDATE, apply_to_person(person, now, id=value), rule=rule)
    return Decision(Write.UPDATE, apply_to_person(person, now, email=value), rule=rule)


def delete_identifier_lookup(workspace_id: str, ref: Ref, field: Field) -> Lookup:
    """The person referenced. Checked here, once: the shapes of the workspace id and the
    reference (R42), then that a cio_id is never deleted (R30)."""
    lookup = ref_lookup(workspace_id, ref)
    if field == Field.CIO_ID:  # R30
        raise FailedPrecondition(
            "CIO_ID_NOT_DELETABLE", "a person's cio_id can never be deleted", {"field": "cio_id", "rule": "R30"}
        )
    return lookup


def decide_delete_identifier(
    settings: Settings, ref: Ref, field: Field, people: list[Person], now: datetime
) -> Decision:
    """R31-R32: the person without `field`, or a refusal. The request is as
    delete_identifier_lookup validated it (`field` is id or email)."""
    assert field != Field.CIO_ID  # delete_identifier_lookup refused it (R30)
    require_identifier(settings, field, "it is an attribute, removed through Identify")  # R32/R23
    person = resolve(settings, people, ref)
    mode = settings.mode
    if field == sole_identifier(mode):  # R32
        raise FailedPrecondition(
            "SOLE_IDENTIFIER_NOT_DELETABLE",
            f"{field.value} is the only identifier in this workspace; every person keeps one",
            {"field": field.value, "identifier_mode": mode.value, "rule": "R32"},
        )
    if current_value(person, field) is None:  # R31: nothing to remove
        return Decision(Write.NONE, person, rule="R31")
    other = Field.EMAIL if field == Field.ID else Field.ID
    if current_value(person, other) is None:  # R31 (EMAIL_OR_ID: the only mode left here)
        raise FailedPrecondition(
            "LAST_IDENTIFIER",
            f"{field.value} is the person's last identifier besides cio_id; a person keeps an id "
            "or an email",
            {"field": field.value, "rule": "R31"},
        )
    if field == Field.ID:
        return Decision(Write.UPDATE, apply_to_person(person, now, id=None), rule="R31")
    return Decision(Write.UPDATE, apply_to_person(person, now, email=None), rule="R31")


def decide_delete_person(settings: Settings, ref: Ref, people: list[Person], erase: bool = False) -> Decision:
    """DeletePerson: the referenced person (R7), deleted; NOT_FOUND if nobody matches. With
    `erase`, a data-subject erasure (R54)."""
    return Decision(Write.DELETE, resolve(settings, people, ref), rule="R54" if erase else "", erase=erase)


def matches_of(settings: Settings, lookup: Lookup, people: Iterable[Person]) -> tuple[Match, ...]:
    """R72: each identifier a request gave (its lookup), and the stored person it matched. An
    id or email that is not an identifier in the mode matches nobody and is left out."""
    mode = settings.mode
    given = ((Field.CIO_ID, lookup.cio_ids), (Field.ID, lookup.ids), (Field.EMAIL, lookup.emails))
    result = []
    for field, values in given:
        if field != Field.CIO_ID and not is_identifier(mode, field):
            continue
        for value in values:
            person = find(mode, people, field, value)
            result.append(Match(field, value, person.cio_id if person else None))
    return tuple(result)
