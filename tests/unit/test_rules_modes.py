"""Identifier modes: which fields identify a person (R1), and settings changes validated against
the data (R2)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.domain import Field, Mode, Person, Settings
from service.errors import FailedPrecondition
from service.rules import modes
from service.rules.modes import Check, CheckResult, check_people, decide_settings_change, mode_change_checks

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
        "rule": "R2",
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


# --------------------------------------------------------------------------- R2: on the data
#
# The checks as the data answers them (modes.check_people, the definition the repository's SQL
# implements), through mode_change_checks and decide_settings_change as the service runs them.


def change_mode(current: Mode, new: Mode, people: list[Person]) -> Settings:
    results = {check: check_people(check, people) for check in mode_change_checks(current, new)}
    return decide_settings_change(ws(current), ws(new), results)


def test_r2_email_only_to_id_only_allowed_when_everyone_has_an_id_and_ids_are_unique():
    # In EMAIL_ONLY the ids are attributes (no unique key holds them), yet the people have them.
    people = [person(id="ab100", email="a@example.com", cio_id=cio(1)),
              person(id="AB100", email="b@example.com", cio_id=cio(2))]  # ids are case-sensitive
    assert change_mode(O, I, people).mode is I


def test_r2_email_only_to_id_only_refused_when_someone_has_no_id():
    people = [person(id="ab100", email="a@example.com", cio_id=cio(1)),
              person(email="b@example.com", cio_id=cio(2))]
    with pytest.raises(FailedPrecondition) as info:
        change_mode(O, I, people)
    assert info.value.reason == "PEOPLE_WITHOUT_ID"
    assert info.value.metadata["offending_count"] == "1"
    assert info.value.metadata["sample_cio_ids"] == cio(2)


def test_r2_email_only_to_id_only_refused_when_two_share_an_id():
    people = [person(id="ab100", email="a@example.com", cio_id=cio(3)),
              person(id="ab100", email="b@example.com", cio_id=cio(1)),
              person(id="cd200", email="c@example.com", cio_id=cio(2))]
    with pytest.raises(FailedPrecondition) as info:
        change_mode(O, I, people)
    assert info.value.reason == "DUPLICATE_IDS"
    assert info.value.metadata["offending_count"] == "2"
    assert info.value.metadata["sample_cio_ids"] == f"{cio(1)},{cio(3)}"  # in cio_id order


def test_r2_id_only_to_email_only_refused_with_duplicate_emails_case_insensitively():
    people = [person(id="ab100", email="Person@Example.com", cio_id=cio(1)),
              person(id="cd200", email="person@example.com", cio_id=cio(2)),
              person(id="ef300", email="other@example.com", cio_id=cio(3))]
    with pytest.raises(FailedPrecondition) as info:
        change_mode(I, O, people)
    assert info.value.reason == "DUPLICATE_EMAILS"
    assert info.value.metadata["offending_count"] == "2"
    assert info.value.metadata["sample_cio_ids"] == f"{cio(1)},{cio(2)}"


def test_r2_id_only_to_email_only_allowed_with_distinct_emails():
    people = [person(id="ab100", email="a@example.com", cio_id=cio(1)),
              person(id="ab100", email="b@example.com", cio_id=cio(2))]  # ids no longer matter
    assert change_mode(I, O, people).mode is O


def test_r2_id_only_to_email_only_refused_when_someone_has_no_email_first():
    people = [person(id="ab100", cio_id=cio(1)),
              person(id="cd200", email="p@example.com", cio_id=cio(2)),
              person(id="ef300", email="P@example.com", cio_id=cio(3))]
    with pytest.raises(FailedPrecondition) as info:
        change_mode(I, O, people)
    assert info.value.reason == "PEOPLE_WITHOUT_EMAIL"  # the first failing check, in R2's order


@pytest.mark.parametrize(
    "current, new, people, reason",
    [
        (E, I, [person(id="ab100", cio_id=cio(1)), person(email="p@example.com", cio_id=cio(2))], "PEOPLE_WITHOUT_ID"),
        (E, O, [person(email="p@example.com", cio_id=cio(2)), person(id="ab100", cio_id=cio(1))], "PEOPLE_WITHOUT_EMAIL"),
        (I, E, [person(id="ab100", email="P@x.example", cio_id=cio(1)), person(id="cd200", email="p@x.example", cio_id=cio(2))], "DUPLICATE_EMAILS"),
        (O, E, [person(id="ab100", email="a@x.example", cio_id=cio(1)), person(id="ab100", email="b@x.example", cio_id=cio(2))], "DUPLICATE_IDS"),
    ],
)
def test_r2_to_and_from_email_or_id_on_the_data(current, new, people, reason):
    with pytest.raises(FailedPrecondition) as info:
        change_mode(current, new, people)
    assert info.value.reason == reason
    # Without the offending person the change goes through.
    assert change_mode(current, new, people[:1]).mode is new


def test_r2_check_people_counts_everyone_and_samples_the_first_ten_by_cio_id():
    people = [person(cio_id=cio(n)) for n in reversed(range(25))]
    result = check_people(Check.EVERY_PERSON_HAS_ID, people)
    assert result == CheckResult(25, tuple(cio(n) for n in range(10)))
    assert check_people(Check.EVERY_PERSON_HAS_EMAIL, []) == CheckResult(0, ())
    shared = [person(id="x", cio_id=cio(n)) for n in range(12)] + [person(cio_id=cio(99))]
    assert check_people(Check.IDS_UNIQUE, shared) == CheckResult(12, tuple(cio(n) for n in range(10)))
    # People without the field share nothing.
    assert check_people(Check.EMAILS_UNIQUE, shared) == CheckResult(0, ())


# --------------------------------------------------------------------------- R12: as clients see people


def test_r12_email_or_id_presents_the_person_as_stored():
    p = Person("a" * 20, "ab100", "p@example.com", {"plan": "pro"}, T0, T0)
    assert modes.presented(E, p) is p


def test_r12_id_only_presents_the_email_as_an_attribute():
    p = Person("a" * 20, "ab100", "P@Example.com", {"plan": "pro"}, T0, T0)
    assert modes.presented(I, p) == Person(
        "a" * 20, "ab100", None, {"plan": "pro", "email": "P@Example.com"}, T0, T0
    )
    assert p.attributes == {"plan": "pro"}  # the stored person is not touched
    bare = Person("a" * 20, "ab100", None, {"plan": "pro"}, T0, T0)
    assert modes.presented(I, bare) == bare


def test_r12_email_only_presents_the_id_as_an_attribute():
    p = Person("a" * 20, "ab100", "p@example.com", {}, T0, T0)
    assert modes.presented(O, p) == Person("a" * 20, None, "p@example.com", {"id": "ab100"}, T0, T0)
    bare = Person("a" * 20, None, "p@example.com", {"n": 1}, T0, T0)
    assert modes.presented(O, bare) == bare
