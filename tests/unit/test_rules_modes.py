"""Identifier modes: which fields identify a person (R1), the index keys per mode, and settings
changes validated against the data (R2)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.domain import Field, Mode, Person, Settings
from service.errors import FailedPrecondition
from service.rules import modes
from service.db.keys import Keys, keys_for
from service.rules.modes import Check, CheckResult, decide_settings_change, mode_change_checks

# --------------------------------------------------------------------------- builders

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
WS = "ws-1"


def ws(mode: Mode = Mode.EMAIL_OR_ID, workspace_id: str = WS, **kw) -> Settings:
    return Settings(workspace_id, mode, **kw)


def person(id=None, email=None, cio_id: str = "a" * 20) -> Person:
    return Person(cio_id, id, email, {}, T0, T0)


def cio(n: int) -> str:
    return f"c{n:019d}"


def all_clear(current: Mode, new: Mode) -> dict[Check, CheckResult]:
    return {check: CheckResult(0) for check in mode_change_checks(current, new)}


E, I, O = Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY

# --------------------------------------------------------------------------- R1


@pytest.mark.parametrize(
    "mode, expected",
    [
        (E, {Field.CIO_ID, Field.ID, Field.EMAIL}),
        (I, {Field.CIO_ID, Field.ID}),
        (O, {Field.CIO_ID, Field.EMAIL}),
    ],
)
def test_r1_identifiers_per_mode(mode, expected):
    assert modes.identifiers(mode) == frozenset(expected)
    for field in Field:
        assert modes.is_identifier(mode, field) is (field in expected)


def test_r1_cio_id_is_an_identifier_in_every_mode():
    assert all(modes.is_identifier(mode, Field.CIO_ID) for mode in Mode)


@pytest.mark.parametrize("mode, sole", [(E, None), (I, Field.ID), (O, Field.EMAIL)])
def test_r1_sole_identifier_per_mode(mode, sole):
    assert modes.sole_identifier(mode) is sole


def test_r1_default_settings_match_section_2():
    s = Settings("ws")
    assert s.mode is Mode.EMAIL_OR_ID
    assert s.email_updatable_by_id is True
    assert s.sole_identifier_updatable is False
    assert s.auto_merge is True


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


# --------------------------------------------------------------------------- R2: which checks


@pytest.mark.parametrize(
    "current, new, expected",
    [
        (E, E, []),
        (I, I, []),
        (O, O, []),
        (E, I, [Check.EVERY_PERSON_HAS_ID]),
        (E, O, [Check.EVERY_PERSON_HAS_EMAIL]),
        (I, E, [Check.EMAILS_UNIQUE]),
        (O, E, [Check.IDS_UNIQUE]),
        (I, O, [Check.EVERY_PERSON_HAS_EMAIL, Check.EMAILS_UNIQUE]),
        (O, I, [Check.EVERY_PERSON_HAS_ID, Check.IDS_UNIQUE]),
    ],
)
def test_r2_mode_change_checks(current, new, expected):
    assert sorted(mode_change_checks(current, new), key=lambda c: c.value) == sorted(
        expected, key=lambda c: c.value
    )


# --------------------------------------------------------------------------- R2: deciding


@pytest.mark.parametrize("current, new", [(E, I), (E, O), (I, E), (O, E), (I, O), (O, I)])
def test_r2_mode_change_accepted_when_data_complies(current, new):
    requested = ws(new, auto_merge=False)
    result = decide_settings_change(ws(current), requested, all_clear(current, new))
    assert result == requested


@pytest.mark.parametrize(
    "current, new, check, reason",
    [
        (E, I, Check.EVERY_PERSON_HAS_ID, "PEOPLE_WITHOUT_ID"),
        (E, O, Check.EVERY_PERSON_HAS_EMAIL, "PEOPLE_WITHOUT_EMAIL"),
        (I, E, Check.EMAILS_UNIQUE, "DUPLICATE_EMAILS"),
        (O, E, Check.IDS_UNIQUE, "DUPLICATE_IDS"),
        (I, O, Check.EVERY_PERSON_HAS_EMAIL, "PEOPLE_WITHOUT_EMAIL"),
        (I, O, Check.EMAILS_UNIQUE, "DUPLICATE_EMAILS"),
        (O, I, Check.EVERY_PERSON_HAS_ID, "PEOPLE_WITHOUT_ID"),
        (O, I, Check.IDS_UNIQUE, "DUPLICATE_IDS"),
    ],
)
def test_r2_mode_change_refused_with_count_and_sample(current, new, check, reason):
    results = all_clear(current, new)
    results[check] = CheckResult(3, (cio(1), cio(2), cio(3)))
    with pytest.raises(FailedPrecondition) as info:
        decide_settings_change(ws(current), ws(new), results)
    err = info.value
    assert err.reason == reason
    assert err.metadata == {
        "identifier_mode": new.value,
        "offending_count": "3",
        "sample_cio_ids": f"{cio(1)},{cio(2)},{cio(3)}",
    }
    assert "3" in err.message and new.value in err.message


def test_r2_sample_is_limited_to_10_cio_ids_but_count_is_complete():
    sample = tuple(cio(n) for n in range(25))
    results = {Check.EVERY_PERSON_HAS_ID: CheckResult(1234, sample)}
    with pytest.raises(FailedPrecondition) as info:
        decide_settings_change(ws(E), ws(I), results)
    assert info.value.metadata["offending_count"] == "1234"
    assert info.value.metadata["sample_cio_ids"].split(",") == list(sample[:10])
    assert modes.SAMPLE_SIZE == 10


def test_r2_unchanged_mode_needs_no_checks_and_updates_other_settings():
    current = ws(I, sole_identifier_updatable=False)
    requested = ws(I, sole_identifier_updatable=True, email_updatable_by_id=False, auto_merge=False)
    assert decide_settings_change(current, requested, {}) == requested


def test_r2_settings_keep_the_current_workspace():
    result = decide_settings_change(ws(E), ws(I, workspace_id="other"), all_clear(E, I))
    assert result.workspace_id == WS
    assert result.mode is I


def test_r2_check_with_zero_offending_people_passes():
    results = {Check.EVERY_PERSON_HAS_EMAIL: CheckResult(0, ())}
    assert decide_settings_change(ws(E), ws(O), results).mode is O
