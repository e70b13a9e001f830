"""What the unique indexes of R41 hold for a person: a storage shape, computed from the rules
(which fields are identifiers in the mode, R1; the email key, R4)."""

from __future__ import annotations

from dataclasses import dataclass

from service.domain import Field, Mode, Person
from service.rules.modes import is_identifier
from service.rules.validation import email_key


@dataclass(frozen=True)
class Keys:
    """What the unique indexes of R41 hold for one person: `id_key` and `email_key` are set only
    where that field is an identifier, so an attribute never collides; `email_norm` is always
    kept so that R2 can check a future mode in SQL."""

    id_key: str | None
    email_norm: str | None
    email_key: str | None


def keys_for(mode: Mode, person: Person) -> Keys:
    norm = email_key(person.email) if person.email is not None else None
    return Keys(
        id_key=person.id if is_identifier(mode, Field.ID) else None,
        email_norm=norm,
        email_key=norm if is_identifier(mode, Field.EMAIL) else None,
    )
