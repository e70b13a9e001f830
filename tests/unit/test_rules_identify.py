"""Identify (R9-R15) including the automatic merge (R13), plus property tests that run random
requests against an in-memory repository and check the identity invariants after every step."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from service.domain import Field, IdentifyInput, Mode, Outcome, Person, Ref, Settings
from service.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from service.rules import identifiers, modes
from service.rules.changes import Change, Lookup, Write
from service.rules.identify import decide_identify, identify_lookup
from service.db.keys import keys_for
from service.rules.modes import Check, CheckResult
from service.rules.validation import email_key
from tests.unit.refusals import expect_refusal
from tests.unit.repository_double import stored

# --------------------------------------------------------------------------- builders

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
WS = "ws-1"
CIO_A = "a" + "0" * 19
CIO_B = "b" + "0" * 19
CIO_NEW = "n" + "0" * 19
CIO_UNKNOWN = "z" * 20

E, I, O = Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY


def ws(mode: Mode = E, **kw) -> Settings:
    return Settings(WS, mode, **kw)


def person(cio_id: str = CIO_A, id=None, email=None, attributes=None, created_at: datetime = T0) -> Person:
    return Person(cio_id, id, email, dict(attributes or {}), created_at, created_at)


def identify(settings: Settings, people: list[Person], **fields: Any) -> tuple[Change, Outcome]:
    """Identify as the service runs it: plan the lookup, fetch from the repository, decide."""
    req = IdentifyInput(WS, **fields)
    lookup = identify_lookup(req)
    return decide_identify(settings, req, stored(settings, lookup, people), NOW, CIO_NEW)


def expect_invalid(call, field: str, reason: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        call()
    err = info.value
    assert [(v.field, v.reason) for v in err.violations] == [(field, reason)]
    assert err.reason == reason and err.metadata == {"field": field}
    return err


def assert_updated(change: Change, outcome: Outcome, before: Person, **fields: Any) -> Person:
    """UPDATED: the same person (cio_id, created_at), touched now, with `fields` changed."""
    assert outcome is Outcome.UPDATED
    assert change.write is Write.UPDATE
    assert change.deleted == ()
    after = change.person
    assert (after.cio_id, after.created_at, after.updated_at) == (before.cio_id, before.created_at, NOW)
    expected = {"id": before.id, "email": before.email, "attributes": before.attributes, **fields}
    assert (after.id, after.email, dict(after.attributes)) == (
        expected["id"],
        expected["email"],
        dict(expected["attributes"]),
    )
    return after


def assert_unchanged(change: Change, outcome: Outcome, before: Person) -> None:
    assert outcome is Outcome.UNCHANGED
    assert change.write is Write.NONE
    assert change.deleted == ()
    assert change.person == before


UPDATE_ONLY = pytest.mark.parametrize("update_only", [False, True], ids=["upsert", "update_only"])

# --------------------------------------------------------------------------- R9


@pytest.mark.parametrize(
    "mode, fields, field",
    [
        (E, {}, "id"),
        (E, {"attributes": {"plan": "pro"}}, "id"),
        (I, {"email": "p@example.com"}, "id"),
        (I, {"attributes": {"email": "p@example.com"}}, "id"),
        (O, {"id": "ab100"}, "email"),
        (O, {"attributes": {"id": "ab100"}}, "email"),
    ],
)
def test_r9_request_without_an_identifier_is_invalid(mode, fields, field):
    err = expect_invalid(lambda: identify(ws(mode), [], **fields), field, "MISSING_IDENTIFIER")
    assert mode.value in err.message


@pytest.mark.parametrize("mode", list(Mode))
def test_r9_cio_id_alone_is_enough(mode):
    assert identify_lookup(IdentifyInput(WS, cio_id=CIO_A)) == Lookup(cio_ids=(CIO_A,))


# --------------------------------------------------------------------------- R10


@UPDATE_ONLY
def test_r10_unknown_cio_id_is_not_found_and_never_creates(update_only):
    expect_refusal(
        NotFound,
        "PERSON_NOT_FOUND",
        lambda: identify(ws(), [person(id="ab100")], cio_id=CIO_UNKNOWN, id="cd200", update_only=update_only),
        field="cio_id",
    )


def test_r10_lookup_by_cio_id_also_fetches_owners_of_the_new_values():
    lookup = identify_lookup(IdentifyInput(WS, cio_id=CIO_A, id="AB100", email="P@Example.com"))
    assert lookup == Lookup(cio_ids=(CIO_A,), id_keys=("AB100",), email_keys=("p@example.com",))


def test_r10_cio_id_can_change_a_set_id():
    p = person(id="ab100", email="p@example.com")
    change, outcome = identify(ws(), [p], cio_id=CIO_A, id="cd200")
    assert_updated(change, outcome, p, id="cd200")


def test_r10_cio_id_can_change_email_even_when_email_updatable_by_id_is_off():
    p = person(id="ab100", email="old@example.com")
    change, outcome = identify(ws(email_updatable_by_id=False), [p], cio_id=CIO_A, email="new@example.com")
    assert_updated(change, outcome, p, email="new@example.com")


def test_r10_cio_id_sets_missing_identifiers_and_attributes():
    p = person(email="p@example.com")
    change, outcome = identify(ws(), [p], cio_id=CIO_A, id="ab100", attributes={"plan": "pro"})
    assert_updated(change, outcome, p, id="ab100", attributes={"plan": "pro"})


def test_r10_cio_id_with_id_owned_by_another_is_already_exists():
    p, owner = person(id="ab100"), person(CIO_B, id="cd200")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: identify(ws(), [p, owner], cio_id=CIO_A, id="cd200"),
        field="id",
        owner_cio_id=CIO_B,
    )


def test_r10_cio_id_with_email_owned_case_insensitively_by_another_is_already_exists():
    p, owner = person(id="ab100"), person(CIO_B, email="other@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: identify(ws(), [p, owner], cio_id=CIO_A, email="Other@Example.COM"),
        field="email",
        owner_cio_id=CIO_B,
    )


def test_r10_cio_id_with_case_variant_of_own_email_changes_nothing():
    p = person(id="ab100", email="Person@Example.com")
    change, outcome = identify(ws(), [p], cio_id=CIO_A, email="person@example.com")
    assert_unchanged(change, outcome, p)


def test_r10_cio_id_with_the_same_values_changes_nothing():
    p = person(id="ab100", email="p@example.com", attributes={"plan": "pro"})
    change, outcome = identify(ws(), [p], cio_id=CIO_A, id="ab100", email="p@example.com", attributes={"plan": "pro"})
    assert_unchanged(change, outcome, p)


def test_r10_id_only_cio_id_changes_id_only_when_sole_identifier_updatable():
    p = person(id="ab100")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_NOT_UPDATABLE",
        lambda: identify(ws(I), [p], cio_id=CIO_A, id="cd200"),
        field="id",
    )
    change, outcome = identify(ws(I, sole_identifier_updatable=True), [p], cio_id=CIO_A, id="cd200")
    assert_updated(change, outcome, p, id="cd200")


def test_r10_email_only_cio_id_changes_email_only_when_sole_identifier_updatable():
    p = person(email="old@example.com")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_NOT_UPDATABLE",
        lambda: identify(ws(O), [p], cio_id=CIO_A, email="new@example.com"),
        field="email",
    )
    change, outcome = identify(ws(O, sole_identifier_updatable=True), [p], cio_id=CIO_A, email="new@example.com")
    assert_updated(change, outcome, p, email="new@example.com")


# --------------------------------------------------------------------------- R11 (EMAIL_OR_ID, no cio_id)


def test_r11_lookup_is_by_id_and_email_key():
    lookup = identify_lookup(IdentifyInput(WS, id="AB100", email="Person@Example.com"))
    assert lookup == Lookup(id_keys=("AB100",), email_keys=("person@example.com",))


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "ab100", "email": "p@example.com"},
        {"id": "ab100"},
        {"email": "p@example.com"},
    ],
)
def test_r11_none_none_creates_a_person(fields):
    change, outcome = identify(ws(), [person(CIO_B, id="other", email="other@example.com")],
                               **fields, attributes={"plan": "pro", "gone": None})
    assert outcome is Outcome.CREATED
    assert change.write is Write.INSERT
    assert change.deleted == ()
    assert change.person == Person(
        CIO_NEW, fields.get("id"), fields.get("email"), {"plan": "pro"}, NOW, NOW
    )


def test_r11_none_none_with_update_only_is_not_found():
    expect_refusal(
        NotFound,
        "PERSON_NOT_FOUND",
        lambda: identify(ws(), [person(CIO_B, id="other")], id="ab100", email="p@example.com", update_only=True),
    )


@UPDATE_ONLY
def test_r11_found_none_updates_a(update_only):
    a = person(id="ab100", email="p@example.com", attributes={"plan": "free"})
    change, outcome = identify(ws(), [a], id="ab100", attributes={"plan": "pro"}, update_only=update_only)
    assert_updated(change, outcome, a, attributes={"plan": "pro"})


@UPDATE_ONLY
def test_r11_found_none_sets_email_when_person_has_none(update_only):
    a = person(id="ab100")
    change, outcome = identify(ws(email_updatable_by_id=False), [a], id="ab100", email="New@Example.com",
                               update_only=update_only)
    assert_updated(change, outcome, a, email="New@Example.com")


@UPDATE_ONLY
def test_r11_found_none_changes_email_by_id_when_email_updatable_by_id(update_only):
    a = person(id="ab100", email="old@example.com")
    change, outcome = identify(ws(email_updatable_by_id=True), [a], id="ab100", email="new@example.com",
                               update_only=update_only)
    assert_updated(change, outcome, a, email="new@example.com")


@UPDATE_ONLY
def test_r11_found_none_refuses_email_change_by_id_when_switch_off(update_only):
    a = person(id="ab100", email="old@example.com")
    expect_refusal(
        FailedPrecondition,
        "EMAIL_CHANGE_REQUIRES_CIO_ID",
        lambda: identify(ws(email_updatable_by_id=False), [a], id="ab100", email="new@example.com",
                         update_only=update_only),
        field="email",
        reference="id",
    )


@UPDATE_ONLY
def test_r11_none_found_updates_b(update_only):
    b = person(CIO_B, id="ab100", email="p@example.com")
    change, outcome = identify(ws(), [b], email="P@example.com", attributes={"plan": "pro"}, update_only=update_only)
    assert_updated(change, outcome, b, attributes={"plan": "pro"})


@UPDATE_ONLY
def test_r11_none_found_sets_id_with_email_when_b_has_none(update_only):
    b = person(CIO_B, email="p@example.com")
    change, outcome = identify(ws(), [b], id="ab100", email="p@example.com", update_only=update_only)
    assert_updated(change, outcome, b, id="ab100")


@UPDATE_ONLY
def test_r11_none_found_refuses_when_b_has_another_id(update_only):
    b = person(CIO_B, id="cd200", email="p@example.com")
    expect_refusal(
        FailedPrecondition,
        "ID_CHANGE_REQUIRES_CIO_ID",
        lambda: identify(ws(), [b], id="ab100", email="p@example.com", update_only=update_only),
        field="id",
        reference="email",
    )


@UPDATE_ONLY
def test_r11_found_found_same_updates_a(update_only):
    a = person(id="ab100", email="Person@Example.com")
    change, outcome = identify(ws(), [a], id="ab100", email="person@example.com", attributes={"plan": "pro"},
                               update_only=update_only)
    # The email is matched by key; the stored spelling is kept.
    assert_updated(change, outcome, a, attributes={"plan": "pro"})


@UPDATE_ONLY
def test_r11_found_found_different_merges_when_r13_applies(update_only):
    a, b = person(CIO_A, id="ab100"), person(CIO_B, email="p@example.com")
    change, outcome = identify(ws(), [a, b], id="ab100", email="p@example.com", update_only=update_only)
    assert outcome is Outcome.MERGED
    assert change.deleted == (CIO_B,)


@UPDATE_ONLY
def test_r11_found_found_different_is_already_exists_otherwise(update_only):
    a, b = person(CIO_A, id="ab100", email="a@example.com"), person(CIO_B, id="cd200", email="p@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: identify(ws(), [a, b], id="ab100", email="P@example.com", update_only=update_only),
        field="email",
        owner_cio_id=CIO_B,
        id_owner_cio_id=CIO_A,
    )


def test_r11_ids_are_case_sensitive_ab100_and_AB100_are_two_people():
    ab = person(id="ab100")
    change, outcome = identify(ws(), [ab], id="AB100")
    assert outcome is Outcome.CREATED
    assert change.person.id == "AB100" and change.person.cio_id == CIO_NEW


def test_r11_emails_are_case_insensitive_one_person():
    p = person(email="Person@Example.com")
    change, outcome = identify(ws(), [p], email="person@example.com")
    assert_unchanged(change, outcome, p)


# --------------------------------------------------------------------------- R12


def test_r12_id_only_email_matches_nobody():
    # The lookup does not depend on the mode; the stored keys do: in ID_ONLY no email key is kept,
    # so a person with the same email is not found by it.
    other = person(CIO_B, id="cd200", email="p@example.com")
    assert keys_for(I, other).email_key is None
    change, outcome = identify(ws(I), [other], id="ab100", email="p@example.com")
    assert outcome is Outcome.CREATED and change.person.cio_id == CIO_NEW


def test_r12_email_only_id_matches_nobody():
    other = person(CIO_B, id="ab100", email="q@example.com")
    assert keys_for(O, other).id_key is None
    change, outcome = identify(ws(O), [other], id="ab100", email="P@example.com")
    assert outcome is Outcome.CREATED and change.person.cio_id == CIO_NEW


def test_r12_id_only_email_is_stored_in_the_email_field_as_an_attribute():
    change, outcome = identify(ws(I), [], id="ab100", email="p@example.com", attributes={"plan": "pro"})
    assert outcome is Outcome.CREATED
    assert change.person == Person(CIO_NEW, "ab100", "p@example.com", {"plan": "pro"}, NOW, NOW)


def test_r12_id_only_two_people_may_share_an_email():
    other = person(CIO_B, id="cd200", email="p@example.com")
    change, outcome = identify(ws(I), [other], id="ab100", email="P@example.com")
    assert outcome is Outcome.CREATED
    assert change.person.email == "P@example.com"


def test_r12_id_only_email_is_updated_like_any_attribute():
    # Seed: "You can update email like any custom attribute", whatever email_updatable_by_id says.
    a = person(id="ab100", email="old@example.com")
    change, outcome = identify(ws(I, email_updatable_by_id=False), [a], id="ab100", email="new@example.com")
    assert_updated(change, outcome, a, email="new@example.com")


def test_r12_id_only_attributes_email_maps_to_person_email():
    a = person(id="ab100", email="old@example.com")
    change, outcome = identify(ws(I), [a], id="ab100", attributes={"email": "new@example.com", "plan": "pro"})
    after = assert_updated(change, outcome, a, email="new@example.com", attributes={"plan": "pro"})
    assert "email" not in after.attributes


def test_r12_id_only_attributes_email_null_removes_the_email():
    a = person(id="ab100", email="old@example.com")
    change, outcome = identify(ws(I), [a], id="ab100", attributes={"email": None})
    assert_updated(change, outcome, a, email=None)


def test_r12_id_only_attributes_email_equal_to_request_email_is_fine():
    change, outcome = identify(ws(I), [], id="ab100", email="p@example.com", attributes={"email": "p@example.com"})
    assert outcome is Outcome.CREATED and change.person.email == "p@example.com"
    assert change.person.attributes == {}


def test_r12_id_only_attributes_email_conflicting_with_request_email_is_invalid():
    expect_invalid(
        lambda: identify(ws(I), [], id="ab100", email="p@example.com", attributes={"email": "q@example.com"}),
        "attributes.email",
        "CONFLICTING_VALUES",
    )


def test_r12_id_only_attributes_email_must_be_a_string_or_null():
    expect_invalid(
        lambda: identify(ws(I), [], id="ab100", attributes={"email": 42}),
        "attributes.email",
        "INVALID_ATTRIBUTE_VALUE",
    )


def test_r12_id_only_attributes_email_must_be_a_valid_email():
    expect_invalid(
        lambda: identify(ws(I), [], id="ab100", attributes={"email": "nope"}),
        "attributes.email",
        "INVALID_EMAIL",
    )


def test_r12_id_only_email_of_another_person_does_not_merge():
    # R13 only in EMAIL_OR_ID: in ID_ONLY the email is an attribute of A.
    a = person(CIO_A, id="ab100")
    b = person(CIO_B, id="cd200", email="p@example.com")
    change, outcome = identify(ws(I), [a, b], id="ab100", email="p@example.com")
    assert_updated(change, outcome, a, email="p@example.com")


def test_r12_email_only_id_is_stored_in_the_id_field_as_an_attribute():
    change, outcome = identify(ws(O), [], email="p@example.com", id="ab100")
    assert outcome is Outcome.CREATED
    assert change.person == Person(CIO_NEW, "ab100", "p@example.com", {}, NOW, NOW)


def test_r12_email_only_two_people_may_share_an_id():
    other = person(CIO_B, id="ab100", email="other@example.com")
    change, outcome = identify(ws(O), [other], email="p@example.com", id="ab100")
    assert outcome is Outcome.CREATED and change.person.id == "ab100"


def test_r12_email_only_id_is_updated_like_any_attribute():
    b = person(CIO_B, id="cd200", email="p@example.com")
    change, outcome = identify(ws(O), [b], email="p@example.com", id="ab100")
    assert_updated(change, outcome, b, id="ab100")


def test_r12_email_only_attributes_id_maps_to_person_id():
    b = person(CIO_B, id="cd200", email="p@example.com")
    change, outcome = identify(ws(O), [b], email="p@example.com", attributes={"id": None})
    assert_updated(change, outcome, b, id=None)


def test_r12_email_only_attributes_id_conflicting_with_request_id_is_invalid():
    expect_invalid(
        lambda: identify(ws(O), [], email="p@example.com", id="ab100", attributes={"id": "AB100"}),
        "attributes.id",
        "CONFLICTING_VALUES",
    )


# --------------------------------------------------------------------------- R13


def merge(a: Person, b: Person, settings: Settings | None = None, **fields: Any) -> tuple[Change, Outcome]:
    fields = {"id": a.id, "email": b.email, **fields}
    return identify(settings or ws(), [a, b], **fields)


def test_r13_merge_primary_ends_with_both_identifiers_and_secondary_is_deleted():
    a = person(CIO_A, id="ab100", attributes={"plan": "pro"})
    b = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1))
    change, outcome = merge(a, b)
    assert outcome is Outcome.MERGED
    assert change.write is Write.UPDATE
    assert change.deleted == (CIO_B,)
    assert change.person == Person(CIO_A, "ab100", "p@example.com", {"plan": "pro"}, T0, NOW)


def test_r13_merge_older_person_is_primary():
    b_older = T0 - timedelta(days=30)
    a = person(CIO_A, id="ab100")
    b = person(CIO_B, email="p@example.com", created_at=b_older)
    change, outcome = merge(a, b)
    assert outcome is Outcome.MERGED
    assert change.deleted == (CIO_A,)
    assert change.person == Person(CIO_B, "ab100", "p@example.com", {}, b_older, NOW)


def test_r13_merge_tie_on_creation_time_is_broken_by_cio_id():
    # A's cio_id sorts after B's: B is the primary.
    a = person("q" + "0" * 19, id="ab100")
    b = person("c" + "0" * 19, email="p@example.com")
    change, _ = merge(a, b)
    assert change.person.cio_id == "c" + "0" * 19
    assert change.deleted == ("q" + "0" * 19,)
    # And the other way round.
    a2 = person("c" + "0" * 19, id="ab100")
    b2 = person("q" + "0" * 19, email="p@example.com")
    change2, _ = merge(a2, b2)
    assert change2.person.cio_id == "c" + "0" * 19
    assert change2.deleted == ("q" + "0" * 19,)


def test_r13_merge_attribute_empty_on_primary_takes_secondary_value():
    primary = person(CIO_A, id="ab100", attributes={"plan": "pro", "city": "", "age": 0, "vip": False})
    secondary = person(
        CIO_B,
        email="p@example.com",
        created_at=T0 + timedelta(days=1),
        attributes={"plan": "free", "city": "Paris", "age": 40, "vip": True, "lang": "fr"},
    )
    change, _ = merge(primary, secondary)
    assert change.person.attributes == {
        "plan": "pro",  # set on the primary: kept
        "city": "Paris",  # empty on the primary: the secondary's
        "age": 0,  # 0 and False are values, not empty
        "vip": False,
        "lang": "fr",  # absent on the primary: the secondary's
    }


def test_r13_merge_request_attributes_apply_last():
    primary = person(CIO_A, id="ab100", attributes={"plan": "pro", "old": 1})
    secondary = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1),
                       attributes={"lang": "fr", "city": "Paris"})
    change, outcome = merge(primary, secondary, attributes={"plan": "team", "lang": "de", "city": None, "old": None})
    assert outcome is Outcome.MERGED
    assert change.person.attributes == {"plan": "team", "lang": "de"}


def test_r13_merge_keeps_the_stored_email_spelling():
    a = person(CIO_A, id="ab100")
    b = person(CIO_B, email="Person@Example.com", created_at=T0 + timedelta(days=1))
    change, _ = merge(a, b, email="person@example.com")
    assert change.person.email == "Person@Example.com"


def test_r13_no_merge_when_auto_merge_is_off():
    a, b = person(CIO_A, id="ab100"), person(CIO_B, email="p@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: merge(a, b, ws(auto_merge=False)),
        field="email",
        owner_cio_id=CIO_B,
        id_owner_cio_id=CIO_A,
    )


@pytest.mark.parametrize("mode", [I, O])
def test_r13_no_merge_when_mode_is_not_email_or_id(mode):
    a, b = person(CIO_A, id="ab100"), person(CIO_B, id="cd200", email="p@example.com")
    change, outcome = identify(ws(mode, auto_merge=True), [a, b],
                               id="ab100", email="p@example.com")
    assert outcome is not Outcome.MERGED
    assert change.deleted == ()
    # ID_ONLY: A is found by id and gets the email as an attribute.
    # EMAIL_ONLY: B is found by email and gets the id as an attribute.
    if mode is I:
        assert_updated(change, outcome, a, email="p@example.com")
    else:
        assert_updated(change, outcome, b, id="ab100")


def test_r13_no_merge_when_a_has_an_email():
    a, b = person(CIO_A, id="ab100", email="a@example.com"), person(CIO_B, email="p@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: identify(ws(), [a, b], id="ab100", email="p@example.com"),
        field="email",
        owner_cio_id=CIO_B,
    )


def test_r13_no_merge_when_b_has_an_id():
    a, b = person(CIO_A, id="ab100"), person(CIO_B, id="cd200", email="p@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: identify(ws(), [a, b], id="ab100", email="p@example.com"),
        field="email",
        owner_cio_id=CIO_B,
    )


# --------------------------------------------------------------------------- R14


def test_r14_names_set_null_removes_others_untouched():
    a = person(id="ab100", attributes={"plan": "free", "city": "Paris", "lang": "fr"})
    change, outcome = identify(ws(), [a], id="ab100", attributes={"plan": "pro", "city": None, "new": [1, 2]})
    assert_updated(change, outcome, a, attributes={"plan": "pro", "lang": "fr", "new": [1, 2]})


def test_r14_removing_an_absent_attribute_changes_nothing():
    a = person(id="ab100", attributes={"plan": "free"})
    change, outcome = identify(ws(), [a], id="ab100", attributes={"gone": None})
    assert_unchanged(change, outcome, a)


def test_r14_setting_the_same_values_changes_nothing():
    a = person(id="ab100", attributes={"plan": "free", "tags": ["a"], "n": 3})
    change, outcome = identify(ws(), [a], id="ab100", attributes={"plan": "free", "tags": ["a"], "n": 3})
    assert_unchanged(change, outcome, a)


@pytest.mark.parametrize(
    "old, new",
    [(1.0, True), (False, 0.0), ({"k": 1.0}, {"k": True})],
)
def test_r14_a_json_value_of_another_type_is_a_change(old, new):
    # JSON true and 1 are different values (google.protobuf.Struct keeps bool_value and
    # number_value apart), but Python's True == 1.
    a = person(id="ab100", attributes={"flag": old})
    change, outcome = identify(ws(), [a], id="ab100", attributes={"flag": new})
    after = assert_updated(change, outcome, a, attributes={"flag": new})
    assert type(after.attributes["flag"]) is type(new)


# --------------------------------------------------------------------------- R15


def test_r15_created_outcome_is_an_insert():
    change, outcome = identify(ws(), [], id="ab100")
    assert (outcome, change.write, change.deleted) == (Outcome.CREATED, Write.INSERT, ())
    assert (change.person.created_at, change.person.updated_at) == (NOW, NOW)


def test_r15_updated_outcome_is_an_update_of_the_whole_person():
    a = person(id="ab100", email="p@example.com", attributes={"plan": "free", "lang": "fr"})
    change, outcome = identify(ws(), [a], id="ab100", attributes={"plan": "pro"})
    assert (outcome, change.write) == (Outcome.UPDATED, Write.UPDATE)
    assert change.person == Person(CIO_A, "ab100", "p@example.com", {"plan": "pro", "lang": "fr"}, T0, NOW)


def test_r15_merged_outcome_is_an_update_and_a_deletion():
    a, b = person(CIO_A, id="ab100"), person(CIO_B, email="p@example.com")
    change, outcome = merge(a, b)
    assert (outcome, change.write, change.deleted) == (Outcome.MERGED, Write.UPDATE, (CIO_B,))


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "ab100"},
        {"email": "P@EXAMPLE.com"},
        {"id": "ab100", "email": "p@example.com"},
        {"cio_id": CIO_A},
        {"cio_id": CIO_A, "id": "ab100", "email": "P@example.com"},
        {"id": "ab100", "attributes": {"plan": "pro", "gone": None}},
    ],
)
def test_r15_unchanged_outcome_writes_nothing(fields):
    a = person(id="ab100", email="p@example.com", attributes={"plan": "pro"})
    change, outcome = identify(ws(), [a], **fields)
    assert_unchanged(change, outcome, a)
    assert change.person.updated_at == T0


# =========================================================================== properties
#
# A small alphabet with case variants, so that requests often hit each other's identifiers.

VALID_IDS = ["ab100", "AB100", "cd200"]
VALID_EMAILS = ["person@example.com", "Person@Example.com", "other@example.com", "OTHER@example.com"]


def mostly(valid: list, rare: list) -> st.SearchStrategy:
    """A value from `valid` 4*len(valid) times in 4*len(valid) + len(rare).
    (sampled_from draws evenly; one_of would favour `rare` inside lists.)"""
    return st.sampled_from(valid * 4 + rare)


ID_VALUES = mostly(VALID_IDS, [" bad"])  # " bad" is malformed (R3)
EMAIL_VALUES = mostly(VALID_EMAILS, ["not-an-email"])  # malformed (R4)
# id and email are reserved attribute names where they are identifiers (R6), fields where not (R12).
ATTRIBUTE_NAMES = st.sampled_from(["plan", "city"] * 6 + ["email", "id"])
ATTRIBUTE_VALUES = st.sampled_from([None, "", "pro", 1, True, "person@example.com", "ab100"])

settings_st = st.builds(
    Settings,
    workspace_id=st.just(WS),
    mode=st.sampled_from([Mode.EMAIL_OR_ID, Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY]),
    email_updatable_by_id=st.booleans(),
    sole_identifier_updatable=st.booleans(),
    auto_merge=st.sampled_from([True, True, False]),
)

# cio_id: None, or an index into the people list (past the end: an unknown cio_id).
cio_pick = st.sampled_from([None] * 10 + [0, 1, 2, 3])
FIELDS = mostly([Field.ID, Field.EMAIL], [Field.CIO_ID])
REF_FIELDS = st.sampled_from(list(Field))


@dataclass(frozen=True)
class IdentifyOp:
    cio: int | None
    id: str | None
    email: str | None
    attributes: dict
    update_only: bool


@dataclass(frozen=True)
class UpdateOp:
    ref_field: Field
    ref_cio: int
    ref_id: str
    ref_email: str
    field: Field
    value_id: str
    value_email: str


@dataclass(frozen=True)
class DeleteOp:
    ref_field: Field
    ref_cio: int
    ref_id: str
    ref_email: str
    field: Field


@dataclass(frozen=True)
class SettingsOp:
    new: Settings


# Which of id and email a request carries: single-identifier people are what R13 merges.
SHAPES = st.sampled_from(["id"] * 3 + ["email"] * 3 + ["both"] * 3 + ["neither"])
identify_op = st.builds(
    lambda shape, cio, id, email, attributes, update_only: IdentifyOp(
        cio,
        id if shape in ("id", "both") else None,
        email if shape in ("email", "both") else None,
        attributes,
        update_only,
    ),
    SHAPES,
    cio_pick,
    ID_VALUES,
    EMAIL_VALUES,
    st.dictionaries(ATTRIBUTE_NAMES, ATTRIBUTE_VALUES, max_size=2),
    st.sampled_from([False] * 6 + [True]),
)
_ref = dict(
    ref_field=REF_FIELDS,
    ref_cio=st.sampled_from([0, 1, 2, 3]),
    ref_id=ID_VALUES,
    ref_email=EMAIL_VALUES,
    field=FIELDS,
)
update_op = st.builds(UpdateOp, value_id=ID_VALUES, value_email=EMAIL_VALUES, **_ref)
delete_op = st.builds(DeleteOp, **_ref)
settings_op = st.builds(SettingsOp, new=settings_st)


def weighted(*choices: tuple[st.SearchStrategy, int]) -> st.SearchStrategy:
    """One of the strategies, picked in proportion to its weight."""
    return st.sampled_from([s for s, weight in choices for _ in range(weight)]).flatmap(lambda s: s)


op_st = weighted((identify_op, 6), (update_op, 2), (delete_op, 1), (settings_op, 1))


class World:
    """The workspace: settings and an in-memory list of people standing in for the repository."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.people: list[Person] = []
        self.step = 0
        self.minted = 0

    # -- the repository

    def find(self, lookup: Lookup) -> list[Person]:
        return stored(self.settings, lookup, self.people)

    def apply(self, change: Change) -> None:
        cio_ids = [p.cio_id for p in self.people]
        for gone in change.deleted:
            assert gone in cio_ids, "a merge deletes someone who exists"
        people = [p for p in self.people if p.cio_id not in change.deleted]
        if change.write is Write.INSERT:
            assert change.person.cio_id not in cio_ids, "an insert has a fresh cio_id"
            people.append(change.person)
        elif change.write is Write.UPDATE:
            index = [p.cio_id for p in people].index(change.person.cio_id)
            old = people[index]
            assert change.person.created_at == old.created_at
            assert change.person.updated_at == self.now
            people[index] = change.person
        elif change.write is Write.DELETE:
            people = [p for p in people if p.cio_id != change.person.cio_id]
        else:
            assert change.write is Write.NONE and change.deleted == ()
            assert change.person in people, "UNCHANGED returns the person as stored"
        self.people = people

    # -- helpers for ops

    @property
    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.step // 2)  # some people share a creation time

    def cio_at(self, index: int) -> str:
        return self.people[index].cio_id if index < len(self.people) else CIO_UNKNOWN

    def ref(self, op: UpdateOp | DeleteOp) -> Ref:
        value = {Field.CIO_ID: self.cio_at(op.ref_cio), Field.ID: op.ref_id, Field.EMAIL: op.ref_email}
        return Ref(op.ref_field, value[op.ref_field])

    def new_cio_id(self) -> str:
        self.minted += 1
        return f"m{self.minted:019d}"

    def request(self, op: IdentifyOp) -> IdentifyInput:
        cio_id = None if op.cio is None else self.cio_at(op.cio)
        return IdentifyInput(WS, cio_id, op.id, op.email, dict(op.attributes), op.update_only)

    # -- the calls, as the service runs them

    def identify(self, req: IdentifyInput) -> tuple[Change, Outcome]:
        people = self.find(identify_lookup(req))
        change, outcome = decide_identify(self.settings, req, people, self.now, self.new_cio_id())
        check_outcome(change, outcome)
        return change, outcome

    def run(self, op) -> Change | None:
        s = self.settings
        if isinstance(op, IdentifyOp):
            return self.identify(self.request(op))[0]
        if isinstance(op, UpdateOp):
            ref = self.ref(op)
            value = op.value_id if op.field is Field.ID else op.value_email
            lookup = identifiers.update_identifier_lookup(ref, op.field, value)
            return identifiers.decide_update_identifier(s, ref, op.field, value, self.find(lookup), self.now)
        if isinstance(op, DeleteOp):
            ref = self.ref(op)
            lookup = identifiers.delete_identifier_lookup(ref, op.field)
            return identifiers.decide_delete_identifier(s, ref, op.field, self.find(lookup), self.now)
        assert isinstance(op, SettingsOp)
        checks = modes.mode_change_checks(s.mode, op.new.mode)
        results = {check: data_check(check, self.people) for check in checks}
        try:
            self.settings = modes.decide_settings_change(s, op.new, results)
        except FailedPrecondition:
            assert any(r.offending for r in results.values()), "R2 refuses only offending data"
            raise
        return None


def data_check(check: Check, people: list[Person]) -> CheckResult:
    """What the repository's R2 checks report, computed independently of the rules core."""
    if check is Check.EVERY_PERSON_HAS_ID:
        bad = [p for p in people if p.id is None]
    elif check is Check.EVERY_PERSON_HAS_EMAIL:
        bad = [p for p in people if p.email is None]
    elif check is Check.IDS_UNIQUE:
        ids = [p.id for p in people if p.id is not None]
        bad = [p for p in people if p.id is not None and ids.count(p.id) > 1]
    else:
        keys = [email_key(p.email) for p in people if p.email is not None]
        bad = [p for p in people if p.email is not None and keys.count(email_key(p.email)) > 1]
    return CheckResult(len(bad), tuple(p.cio_id for p in bad))


def check_outcome(change: Change, outcome: Outcome) -> None:
    """R15: each outcome has its write; only a merge deletes (one person)."""
    write = {
        Outcome.CREATED: Write.INSERT,
        Outcome.UPDATED: Write.UPDATE,
        Outcome.MERGED: Write.UPDATE,
        Outcome.UNCHANGED: Write.NONE,
    }[outcome]
    assert change.write is write, (outcome, change)
    assert len(change.deleted) == (1 if outcome is Outcome.MERGED else 0), (outcome, change)


def check_invariants(settings: Settings, people: list[Person]) -> None:
    mode = settings.mode
    cio_ids = [p.cio_id for p in people]
    assert len(set(cio_ids)) == len(cio_ids), "cio_ids are unique"
    keys = [keys_for(mode, p) for p in people]
    id_keys = [k.id_key for k in keys if k.id_key is not None]
    email_keys = [k.email_key for k in keys if k.email_key is not None]
    assert len(set(id_keys)) == len(id_keys), f"R41: two people share an id in {mode}: {people}"
    assert len(set(email_keys)) == len(email_keys), f"R41: two people share an email in {mode}: {people}"
    for p in people:
        if mode is Mode.EMAIL_OR_ID:
            assert p.id is not None or p.email is not None, f"R1: {p} has neither id nor email"
        elif mode is Mode.ID_ONLY:
            assert p.id is not None, f"R1: {p} has no id in ID_ONLY"
        else:
            assert p.email is not None, f"R1: {p} has no email in EMAIL_ONLY"
        assert not {"id", "email", "cio_id"} & set(p.attributes), "identifier fields never become attributes"


PROPERTY = hyp_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(settings_st, st.lists(op_st, min_size=4, max_size=25))
def test_r1_r2_r11_r13_r41_invariants_hold_after_every_step(settings, ops):
    world = World(settings)
    for op in ops:
        world.step += 1
        try:
            change = world.run(op)
        except DomainError:
            continue  # a refusal; any other exception fails the test
        if change is not None:
            world.apply(change)
        check_invariants(world.settings, world.people)


# EMAIL_OR_ID requests without cio_id, often carrying one identifier only: the ground for R13.
merge_world_op = st.builds(
    lambda shape, id, email, attributes: IdentifyOp(
        None, id if shape != "email" else None, email if shape != "id" else None, attributes, False
    ),
    st.sampled_from(["id"] * 2 + ["email"] * 2 + ["both"]),
    st.sampled_from(VALID_IDS),
    st.sampled_from(VALID_EMAILS),
    st.dictionaries(st.sampled_from(["plan", "city"]), ATTRIBUTE_VALUES, max_size=2),
)
email_or_id_st = st.builds(
    Settings,
    workspace_id=st.just(WS),
    mode=st.just(Mode.EMAIL_OR_ID),
    email_updatable_by_id=st.booleans(),
    auto_merge=st.sampled_from([True, True, False]),
)


@PROPERTY
@given(email_or_id_st, st.lists(weighted((merge_world_op, 4), (delete_op, 1)), min_size=2, max_size=15))
def test_r11_r13_merges_keep_the_invariants(settings, ops):
    world = World(settings)
    for op in ops:
        world.step += 1
        before = list(world.people)
        try:
            change = world.run(op)
        except DomainError:
            continue
        world.apply(change)
        check_invariants(world.settings, world.people)
        if change.deleted:
            assert settings.auto_merge and isinstance(op, IdentifyOp)
            a = next(p for p in before if p.id == op.id)
            b = next(p for p in before if p.email is not None and email_key(p.email) == email_key(op.email))
            assert a.email is None and b.id is None and a.cio_id != b.cio_id
            primary, secondary = sorted((a, b), key=lambda p: (p.created_at, p.cio_id))
            assert change.deleted == (secondary.cio_id,)
            assert change.person.cio_id == primary.cio_id
            assert (change.person.id, change.person.email) == (a.id, b.email)
            assert len(world.people) == len(before) - 1


@PROPERTY
@given(settings_st, st.lists(identify_op, min_size=1, max_size=10))
def test_r15_repeating_a_successful_identify_is_unchanged(settings, ops):
    world = World(settings)
    for op in ops:
        world.step += 1
        req = world.request(op)
        try:
            change, _ = world.identify(req)
        except DomainError:
            continue
        world.apply(change)
        world.step += 1
        again, outcome = world.identify(req)
        assert outcome is Outcome.UNCHANGED, (req, change.person, again)
        assert again.write is Write.NONE and again.person == change.person


@PROPERTY
@given(
    settings_st,
    st.lists(identify_op, max_size=6),
    st.lists(weighted((update_op, 1), (delete_op, 1)), min_size=1, max_size=10),
)
def test_r24_r31_repeating_a_successful_identifier_change_writes_nothing(settings, setup, ops):
    world = World(settings)
    for op in setup:
        world.step += 1
        try:
            world.apply(world.identify(world.request(op))[0])
        except DomainError:
            pass
    for op in ops:
        world.step += 1
        try:
            change = world.run(op)
        except DomainError:
            continue
        world.apply(change)
        world.step += 1
        # The same change again, through the person's cio_id (the first may have changed the
        # value its reference used): an equal value (R24) or an absent one (R31) writes nothing.
        again = world.run(replace(op, ref_field=Field.CIO_ID, ref_cio=world.people.index(change.person)))
        assert again.write is Write.NONE and again.person == change.person, (op, change, again)


# --------------------------------------------------------------------------- R25


def test_r25_an_import_row_never_changes_an_existing_id():
    p = person(CIO_A, id="ab100", email="p@example.com")
    err = expect_refusal(
        FailedPrecondition,
        "ID_CHANGE_IN_IMPORT",
        lambda: identify(ws(), [p], cio_id=CIO_A, id="cd200", from_import=True),
        field="id",
        cio_id=CIO_A,
    )
    assert "never changes an existing person's id" in err.message
    # The same change outside an import is allowed through the cio_id (R21).
    change, outcome = identify(ws(), [p], cio_id=CIO_A, id="cd200")
    assert outcome is Outcome.UPDATED and change.person.id == "cd200"


def test_r25_an_import_row_may_set_a_missing_id_and_repeat_the_same_one():
    p = person(CIO_A, email="p@example.com")
    change, outcome = identify(ws(), [p], cio_id=CIO_A, id="ab100", from_import=True)
    assert outcome is Outcome.UPDATED and change.person.id == "ab100"
    q = person(CIO_A, id="ab100")
    change, outcome = identify(ws(), [q], cio_id=CIO_A, id="ab100", from_import=True, attributes={"n": 1})
    assert outcome is Outcome.UPDATED and change.person.id == "ab100"


def test_r25_an_import_row_by_email_cannot_change_an_id_either():
    p = person(CIO_A, id="ab100", email="p@example.com")
    expect_refusal(
        FailedPrecondition,
        "ID_CHANGE_REQUIRES_CIO_ID",
        lambda: identify(ws(), [p], id="cd200", email="P@example.com", from_import=True),
    )
