"""Identify: add or update a person (R9-R15), including the automatic merge (R13)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from service.domain import Field, IdentifyInput, JsonValue, Mode, Outcome, Person, Settings
from service.errors import AlreadyExists, FailedPrecondition, FieldViolation, NotFound
from service.rules.changes import UNSET, _Unset, apply_to_person
from service.rules.decisions import ABSENT, Decision, Lookup, MaybeValue, Taken, Write
from service.rules.identifiers import find, judge_identifier_change
from service.rules.modes import is_identifier, reserved_attribute_names
from service.rules.validation import (
    check_attributes,
    check_cio_id,
    check_email,
    check_id,
    check_reserved_names,
    check_workspace_id,
    email_key,
    raise_if,
)


@dataclass(frozen=True)
class _Parts:
    """A request split by the workspace's mode: identifier values, and the attribute changes
    (including id or email where they are attributes, R12)."""

    id: str | None  # the id, where id is an identifier
    email: str | None  # the email, where email is an identifier
    id_attribute: str | None | _Unset  # the id, where it is an attribute (None removes it)
    email_attribute: str | None | _Unset
    attributes: Mapping[str, JsonValue]


def _split(settings: Settings, req: IdentifyInput) -> _Parts:
    """Validates what depends on the mode (R6's reserved names, R9, R12) and splits the request
    by it (R1). The shapes (R3-R6) were checked by identify_lookup, and are not checked again."""
    mode = settings.mode
    violations = check_reserved_names(req.attributes, reserved_attribute_names(mode))

    attributes = dict(req.attributes)
    field_attrs: dict[Field, str | None | _Unset] = {Field.ID: UNSET, Field.EMAIL: UNSET}
    for field, given in ((Field.ID, req.id), (Field.EMAIL, req.email)):
        if is_identifier(mode, field):
            continue
        # R12: where id or email is not an identifier it is an ordinary attribute; the request
        # field and an attribute of the same name are the same attribute.
        value: str | None | _Unset = given if given is not None else UNSET
        if field.value in attributes:
            attr = attributes.pop(field.value)
            name = f"attributes.{field.value}"
            if attr is not None and not isinstance(attr, str):
                violations.append(FieldViolation(name, "must be a string or null", "INVALID_ATTRIBUTE_VALUE"))
            elif attr is not None:
                violations += (check_id if field == Field.ID else check_email)(attr, name)
            if given is not None and attr != given:
                violations.append(
                    FieldViolation(name, f"differs from the request's {field.value}", "CONFLICTING_VALUES")
                )
            value = attr
        field_attrs[field] = value

    id_ = req.id if is_identifier(mode, Field.ID) else None
    email = req.email if is_identifier(mode, Field.EMAIL) else None
    if req.cio_id is None and id_ is None and email is None:
        # R9/R12: at least one identifier of the workspace, or cio_id.
        names = " or ".join(sorted(f.value for f in (Field.CIO_ID, Field.ID, Field.EMAIL) if is_identifier(mode, f)))
        field = {Mode.ID_ONLY: "id", Mode.EMAIL_ONLY: "email"}.get(mode, "id")
        violations.append(
            FieldViolation(
                field,
                f"the request must carry {names} (identifier mode {mode.value})",
                "MISSING_IDENTIFIER",
            )
        )
    raise_if(violations)
    return _Parts(id_, email, field_attrs[Field.ID], field_attrs[Field.EMAIL], attributes)


def identify_lookup(req: IdentifyInput) -> Lookup:
    """The people the decision needs: the one with the cio_id (R10), the one whose id matches and
    the one whose email matches (R11). It does not depend on the mode: where id or email is not
    an identifier it names nobody (identifiers.found). The shapes are checked here, once, before
    any database work, every bad field named (R42): the workspace id (R8), cio_id, id and email
    (R3-R5, whatever the mode) and the attributes (R6 but for the reserved names, which depend
    on the mode: decide_identify)."""
    violations = check_workspace_id(req.workspace_id)
    if req.cio_id is not None:
        violations += check_cio_id(req.cio_id)
    if req.id is not None:
        violations += check_id(req.id)
    if req.email is not None:
        violations += check_email(req.email)
    raise_if(violations + check_attributes(req.attributes))
    return Lookup(
        cio_ids=(req.cio_id,) if req.cio_id is not None else (),
        ids=(req.id,) if req.id is not None else (),
        emails=(req.email,) if req.email is not None else (),
    )


def decide_identify(
    settings: Settings,
    req: IdentifyInput,
    people: list[Person],
    now: datetime,
    new_cio_id: str,
) -> Decision:
    """R10-R15: what Identify does, given the people found by identify_lookup (which the request
    must have passed: it checks the shapes, R3-R6, and they are not checked again here)."""
    parts = _split(settings, req)
    if req.cio_id is not None:
        return _identify_by_cio_id(settings, req, parts, people, now)

    mode = settings.mode
    a = find(mode, people, Field.ID, parts.id)  # R11: the person whose id matches
    b = find(mode, people, Field.EMAIL, parts.email)  # R11: the person whose email matches

    if a is None:
        if b is None:
            # R11 row "none, none": create (unless update_only).
            if req.update_only:
                raise NotFound(
                    "PERSON_NOT_FOUND", "no person matches and update_only is set", {"update_only": "true", "rule": "R11"}
                )
            new = Person(new_cio_id, None, None, {}, now, now)
            person = _update(new, parts, now, set_id=parts.id, set_email=parts.email)
            return Decision(Write.INSERT, person, outcome=Outcome.CREATED, rule="R11")
        # R11 row "none, found": update B; a new id is set through an email reference (R21).
        new_id = None
        if parts.id is not None:
            if judge_identifier_change(settings, b, Field.ID, parts.id, Field.EMAIL, None):
                new_id = parts.id
        return _updated(b, _update(b, parts, now, set_id=new_id), "R11")

    if b is None or b.cio_id == a.cio_id:
        # R11 rows "found, none" and "found, found same": update A. A new email is a change of
        # email through an id reference (R20).
        new_email = None
        if parts.email is not None and b is None:
            if judge_identifier_change(settings, a, Field.EMAIL, parts.email, Field.ID, None):
                new_email = parts.email
        return _updated(a, _update(a, parts, now, set_email=new_email), "R11")

    # R11 row "found, found, different".
    if settings.auto_merge and mode == Mode.EMAIL_OR_ID and a.email is None and b.id is None:
        return _merge(a, b, parts, now)  # R13
    # R11 last row without R13: the email the request gives to A belongs to B.
    raise AlreadyExists(
        "IDENTIFIER_ALREADY_EXISTS",
        f"id {parts.id!r} and email {parts.email!r} belong to two different people who cannot be "
        "merged automatically",
        {"field": "email", "owner_cio_id": b.cio_id, "id_owner_cio_id": a.cio_id, "rule": "R11"},
    )


def _identify_by_cio_id(
    settings: Settings, req: IdentifyInput, parts: _Parts, people: list[Person], now: datetime
) -> Decision:
    """R10: the person must exist; id and email are changes through a cio_id reference,
    judged by R20-R23, and R24 for values owned by someone else."""
    mode = settings.mode
    person = find(mode, people, Field.CIO_ID, req.cio_id)
    if person is None:
        raise NotFound("PERSON_NOT_FOUND", f"no person with cio_id {req.cio_id!r}", {"field": "cio_id", "rule": "R10"})
    new_id = new_email = None
    if req.from_import and parts.id is not None and person.id is not None and parts.id != person.id:
        # R25: only a cio_id reference outside an import can change an id (this is the only
        # way Identify could, R11 refusing it by email).
        raise FailedPrecondition(
            "ID_CHANGE_IN_IMPORT",
            "an import never changes an existing person's id; change it with UpdateIdentifier "
            "through a cio_id reference",
            {"field": "id", "cio_id": person.cio_id, "rule": "R25"},
        )
    if parts.id is not None:
        owner = find(mode, people, Field.ID, parts.id)
        if judge_identifier_change(settings, person, Field.ID, parts.id, Field.CIO_ID, owner):
            new_id = parts.id
    if parts.email is not None and not _same_email(person.email, parts.email):
        owner = find(mode, people, Field.EMAIL, parts.email)
        if judge_identifier_change(settings, person, Field.EMAIL, parts.email, Field.CIO_ID, owner):
            new_email = parts.email
    return _updated(person, _update(person, parts, now, set_id=new_id, set_email=new_email), "R10")


def _same_email(current: str | None, new: str) -> bool:
    """Identify matches emails by key: a case variant names the same address and does not
    rewrite it (UpdateIdentifier does, R24)."""
    return current is not None and email_key(current) == email_key(new)


def _merge(a: Person, b: Person, parts: _Parts, now: datetime) -> Decision:
    """R13: the older person (earlier creation, ties broken by cio_id) is the primary; it ends
    with A's id and B's email; an attribute empty (absent or "") on the primary takes the
    secondary's value; then the request's attributes apply. R6: the merged person has at most
    300 attributes (FAILED_PRECONDITION otherwise, as any change, apply_to_person). The
    secondary is deleted, in the same transaction."""
    primary, secondary = sorted((a, b), key=lambda p: (p.created_at, p.cio_id))
    took = taken_attributes(primary, secondary)
    changes: dict[str, JsonValue] = {name: value for name, (_, value) in took.items()}
    changes.update(parts.attributes)
    # The primary always gains an identifier (A has no email, B no id), so this is a change.
    person = apply_to_person(primary, now, id=a.id, email=b.email, attributes=changes)
    # R61: what it took, for an undo: the identifier the primary lacked, and the attributes the
    # request did not set itself.
    taken = Taken(
        (Field.EMAIL,) if primary is a else (Field.ID,),
        {name: value for name, value in took.items() if name not in parts.attributes},
    )
    return Decision(
        Write.UPDATE, person, deleted=(secondary.cio_id,), outcome=Outcome.MERGED, rule="R13", taken=taken
    )


def taken_attributes(primary: Person, secondary: Person) -> dict[str, tuple[MaybeValue, JsonValue]]:
    """R13: each attribute empty (absent or "") on the primary takes the secondary's value:
    name -> (the primary's value before, the value taken)."""
    return {
        name: (primary.attributes.get(name, ABSENT), value)
        for name, value in secondary.attributes.items()
        if primary.attributes.get(name) in (None, "")
    }


def _update(
    person: Person,
    parts: _Parts,
    now: datetime,
    *,
    set_id: str | None = None,
    set_email: str | None = None,
) -> Person:
    """Applies identifier values (already judged) and attributes (R14) to `person`."""
    id_: str | None | _Unset = set_id if set_id is not None else parts.id_attribute
    email: str | None | _Unset = set_email if set_email is not None else parts.email_attribute
    return apply_to_person(person, now, id=id_, email=email, attributes=parts.attributes)


def _updated(before: Person, after: Person, rule: str) -> Decision:
    """R15: UNCHANGED when nothing changed (nothing is written), else UPDATED."""
    if after is before:
        return Decision(Write.NONE, before, outcome=Outcome.UNCHANGED, rule=rule)
    return Decision(Write.UPDATE, after, outcome=Outcome.UPDATED, rule=rule)
