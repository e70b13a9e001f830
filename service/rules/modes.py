"""Identifier modes: which fields are identifiers (R1), and settings changes validated against
the data (R2)."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from service.domain import Field, Mode, Person, Settings
from service.errors import FailedPrecondition
from service.rules.validation import email_key

# R1: cio_id is always an identifier; id and/or email depending on the mode.
_IDENTIFIERS: dict[Mode, frozenset[Field]] = {
    Mode.EMAIL_OR_ID: frozenset({Field.CIO_ID, Field.ID, Field.EMAIL}),
    Mode.ID_ONLY: frozenset({Field.CIO_ID, Field.ID}),
    Mode.EMAIL_ONLY: frozenset({Field.CIO_ID, Field.EMAIL}),
}

# R1: in ID_ONLY every person has an id; in EMAIL_ONLY every person has an email.
_SOLE_IDENTIFIER: dict[Mode, Field] = {Mode.ID_ONLY: Field.ID, Mode.EMAIL_ONLY: Field.EMAIL}

SAMPLE_SIZE = 10


def identifiers(mode: Mode) -> frozenset[Field]:
    """R1: the fields that identify a person in this mode."""
    return _IDENTIFIERS[mode]


def is_identifier(mode: Mode, field: Field) -> bool:
    return field in _IDENTIFIERS[mode]


def sole_identifier(mode: Mode) -> Field | None:
    """R1/R22: the one identifier every person has in ID_ONLY / EMAIL_ONLY; None in EMAIL_OR_ID."""
    return _SOLE_IDENTIFIER.get(mode)


def reserved_attribute_names(mode: Mode) -> frozenset[str]:
    """R6: id, email and cio_id are reserved attribute names where they are identifiers."""
    return _RESERVED[mode]


_RESERVED = {mode: frozenset(f.value for f in fields) for mode, fields in _IDENTIFIERS.items()}


def presented(mode: Mode, person: Person) -> Person:
    """R12/R1: where id or email is not an identifier it is an ordinary attribute, so a client
    sees it among the attributes, not as Person.id or Person.email."""
    if mode == Mode.EMAIL_OR_ID:
        return person
    attributes = dict(person.attributes)
    id_, email = person.id, person.email
    if not is_identifier(mode, Field.ID):
        if id_ is not None:
            attributes[Field.ID.value] = id_
        id_ = None
    if not is_identifier(mode, Field.EMAIL):
        if email is not None:
            attributes[Field.EMAIL.value] = email
        email = None
    return replace(person, id=id_, email=email, attributes=attributes)


class Check(enum.Enum):
    """A fact about a workspace's people that a mode change needs (R2)."""

    EVERY_PERSON_HAS_ID = "EVERY_PERSON_HAS_ID"
    EVERY_PERSON_HAS_EMAIL = "EVERY_PERSON_HAS_EMAIL"
    IDS_UNIQUE = "IDS_UNIQUE"
    EMAILS_UNIQUE = "EMAILS_UNIQUE"


@dataclass(frozen=True)
class CheckResult:
    """How many people break a check, and a sample of their cio_ids."""

    offending: int
    sample: tuple[str, ...] = ()


_CHECK_REASON = {
    Check.EVERY_PERSON_HAS_ID: ("PEOPLE_WITHOUT_ID", "{n} people have no id"),
    Check.EVERY_PERSON_HAS_EMAIL: ("PEOPLE_WITHOUT_EMAIL", "{n} people have no email"),
    Check.IDS_UNIQUE: ("DUPLICATE_IDS", "{n} people share an id with someone else"),
    Check.EMAILS_UNIQUE: (
        "DUPLICATE_EMAILS",
        "{n} people share an email (case-insensitively) with someone else",
    ),
}


def mode_change_checks(current: Mode, new: Mode) -> list[Check]:
    """R2: what must hold of the data before `current` may become `new`."""
    if current == new:
        return []
    checks = []
    if new == Mode.ID_ONLY:
        checks.append(Check.EVERY_PERSON_HAS_ID)
    if new == Mode.EMAIL_ONLY:
        checks.append(Check.EVERY_PERSON_HAS_EMAIL)
    if is_identifier(new, Field.ID) and not is_identifier(current, Field.ID):
        checks.append(Check.IDS_UNIQUE)
    if is_identifier(new, Field.EMAIL) and not is_identifier(current, Field.EMAIL):
        checks.append(Check.EMAILS_UNIQUE)
    return checks


def check_people(check: Check, people: Iterable[Person]) -> CheckResult:
    """R2: who among `people` breaks `check`, and a sample of their cio_ids (the first
    SAMPLE_SIZE in cio_id order). The definition the repository implements in SQL over a whole
    workspace. The facts are about the stored fields, whatever the current mode: a person "has
    an id" when Person.id is set, even where id is an attribute."""
    people = list(people)
    if check == Check.EVERY_PERSON_HAS_ID:
        bad = [p for p in people if p.id is None]
    elif check == Check.EVERY_PERSON_HAS_EMAIL:
        bad = [p for p in people if p.email is None]
    else:
        if check == Check.IDS_UNIQUE:
            keys = [p.id for p in people]
        else:  # EMAILS_UNIQUE: case-insensitively, by the email key
            keys = [email_key(p.email) if p.email is not None else None for p in people]
        counts = Counter(keys)
        bad = [p for p, k in zip(people, keys) if k is not None and counts[k] > 1]
    sample = sorted(p.cio_id for p in bad)[:SAMPLE_SIZE]
    return CheckResult(len(bad), tuple(sample))


def decide_settings_change(
    current: Settings, new: Settings, results: Mapping[Check, CheckResult]
) -> Settings:
    """R2: the new settings, or FAILED_PRECONDITION naming the offending people (the first
    failing check, in the order given); nothing changes on refusal. `results` are the outcomes
    of exactly mode_change_checks(current.mode, new.mode), as the caller ran them."""
    for check, result in results.items():
        if result.offending:
            reason, message = _CHECK_REASON[check]
            raise FailedPrecondition(
                reason,
                f"cannot change identifier mode to {new.mode.value}: "
                + message.format(n=result.offending),
                {
                    "identifier_mode": new.mode.value,
                    "offending_count": str(result.offending),
                    "rule": "R2",
                    "sample_cio_ids": ",".join(result.sample[:SAMPLE_SIZE]),
                },
            )
    return replace(new, workspace_id=current.workspace_id)
