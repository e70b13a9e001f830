"""What the unique indexes of R41 hold for a person (service/db/keys.py): a storage shape computed
from the rules (which fields are identifiers, R1; the email key, R4)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.db.keys import Keys, keys_for
from service.domain import Mode, Person

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
E, I, O = Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY


def person(id=None, email=None, cio_id: str = "a" * 20) -> Person:
    return Person(cio_id, id, email, {}, T0, T0)


def test_r1_email_or_id_keys_hold_id_and_email_key():
    keys = keys_for(E, person(id="AB100", email="Person@Example.com"))
    assert keys == Keys(id_key="AB100", email_norm="person@example.com", email_key="person@example.com")


def test_r1_id_only_email_is_not_a_key_but_its_norm_is_kept():
    keys = keys_for(I, person(id="ab100", email="Person@Example.com"))
    assert keys == Keys(id_key="ab100", email_norm="person@example.com", email_key=None)


def test_r1_email_only_id_is_not_a_key():
    keys = keys_for(O, person(id="ab100", email="Person@Example.com"))
    assert keys == Keys(id_key=None, email_norm="person@example.com", email_key="person@example.com")


def test_r1_keys_id_is_case_sensitive_email_is_not():
    lower = keys_for(E, person(id="ab100", email="person@example.com"))
    upper = keys_for(E, person(id="AB100", email="PERSON@Example.COM"))
    assert lower.id_key != upper.id_key
    assert lower.email_key == upper.email_key


@pytest.mark.parametrize("mode", list(Mode))
def test_r1_keys_of_a_person_without_id_or_email_are_empty(mode):
    assert keys_for(mode, person()) == Keys(None, None, None)
