"""Identify (R9-R15) including the automatic merge (R13) and R25, run as the service runs it:
the lookup, what the repository finds, the decision. (Random sequences of calls:
test_rules_properties.py.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from service.domain import IdentifyInput, Mode, Outcome, Person, Settings
from service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from service.rules.decisions import Decision, Lookup, Write
from service.rules.identify import decide_identify, identify_lookup
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


def identify(settings: Settings, people: list[Person], **fields: Any) -> Decision:
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


def assert_updated(decision: Decision, before: Person, **fields: Any) -> Person:
    """UPDATED: the same person (cio_id, created_at), touched now, with `fields` changed."""
    assert decision.outcome is Outcome.UPDATED
    assert decision.write is Write.UPDATE
    assert decision.deleted == ()
    after = decision.person
    assert (after.cio_id, after.created_at, after.updated_at) == (before.cio_id, before.created_at, NOW)
    expected = {"id": before.id, "email": before.email, "attributes": before.attributes, **fields}
    assert (after.id, after.email, dict(after.attributes)) == (
        expected["id"],
        expected["email"],
        dict(expected["attributes"]),
    )
    return after


def assert_unchanged(decision: Decision, before: Person) -> None:
    assert decision.outcome is Outcome.UNCHANGED
    assert decision.write is Write.NONE
    assert decision.deleted == ()
    assert decision.person == before


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
    assert lookup == Lookup(cio_ids=(CIO_A,), ids=("AB100",), emails=("P@Example.com",))


def test_r10_cio_id_can_change_a_set_id():
    p = person(id="ab100", email="p@example.com")
    decision = identify(ws(), [p], cio_id=CIO_A, id="cd200")
    assert_updated(decision, p, id="cd200")


def test_r10_cio_id_can_change_email_even_when_email_updatable_by_id_is_off():
    p = person(id="ab100", email="old@example.com")
    decision = identify(ws(email_updatable_by_id=False), [p], cio_id=CIO_A, email="new@example.com")
    assert_updated(decision, p, email="new@example.com")


def test_r10_cio_id_sets_missing_identifiers_and_attributes():
    p = person(email="p@example.com")
    decision = identify(ws(), [p], cio_id=CIO_A, id="ab100", attributes={"plan": "pro"})
    assert_updated(decision, p, id="ab100", attributes={"plan": "pro"})


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
    decision = identify(ws(), [p], cio_id=CIO_A, email="person@example.com")
    assert_unchanged(decision, p)


def test_r10_cio_id_with_the_same_values_changes_nothing():
    p = person(id="ab100", email="p@example.com", attributes={"plan": "pro"})
    decision = identify(ws(), [p], cio_id=CIO_A, id="ab100", email="p@example.com", attributes={"plan": "pro"})
    assert_unchanged(decision, p)


def test_r10_id_only_cio_id_changes_id_only_when_sole_identifier_updatable():
    p = person(id="ab100")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_NOT_UPDATABLE",
        lambda: identify(ws(I), [p], cio_id=CIO_A, id="cd200"),
        field="id",
    )
    decision = identify(ws(I, sole_identifier_updatable=True), [p], cio_id=CIO_A, id="cd200")
    assert_updated(decision, p, id="cd200")


def test_r10_email_only_cio_id_changes_email_only_when_sole_identifier_updatable():
    p = person(email="old@example.com")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_NOT_UPDATABLE",
        lambda: identify(ws(O), [p], cio_id=CIO_A, email="new@example.com"),
        field="email",
    )
    decision = identify(ws(O, sole_identifier_updatable=True), [p], cio_id=CIO_A, email="new@example.com")
    assert_updated(decision, p, email="new@example.com")


# --------------------------------------------------------------------------- R11 (EMAIL_OR_ID, no cio_id)


def test_r11_lookup_is_by_id_and_email_key():
    lookup = identify_lookup(IdentifyInput(WS, id="AB100", email="Person@Example.com"))
    # Raw values: the repository derives its keys (the email key) from them.
    assert lookup == Lookup(ids=("AB100",), emails=("Person@Example.com",))


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "ab100", "email": "p@example.com"},
        {"id": "ab100"},
        {"email": "p@example.com"},
    ],
)
def test_r11_none_none_creates_a_person(fields):
    decision = identify(ws(), [person(CIO_B, id="other", email="other@example.com")],
                               **fields, attributes={"plan": "pro", "gone": None})
    assert decision.outcome is Outcome.CREATED
    assert decision.write is Write.INSERT
    assert decision.deleted == ()
    assert decision.person == Person(
        CIO_NEW, fields.get("id"), fields.get("email"), {"plan": "pro"}, NOW, NOW
    )


def test_r11_none_none_with_update_only_is_not_found():
    expect_refusal(
        NotFound,
        "PERSON_NOT_FOUND",
        lambda: identify(ws(), [person(CIO_B, id="other")], id="ab100", email="p@example.com", update_only=True),
        update_only="true",
    )


@UPDATE_ONLY
def test_r11_found_none_updates_a(update_only):
    a = person(id="ab100", email="p@example.com", attributes={"plan": "free"})
    decision = identify(ws(), [a], id="ab100", attributes={"plan": "pro"}, update_only=update_only)
    assert_updated(decision, a, attributes={"plan": "pro"})


@UPDATE_ONLY
def test_r11_found_none_sets_email_when_person_has_none(update_only):
    a = person(id="ab100")
    decision = identify(ws(email_updatable_by_id=False), [a], id="ab100", email="New@Example.com",
                               update_only=update_only)
    assert_updated(decision, a, email="New@Example.com")


@UPDATE_ONLY
def test_r11_found_none_changes_email_by_id_when_email_updatable_by_id(update_only):
    a = person(id="ab100", email="old@example.com")
    decision = identify(ws(email_updatable_by_id=True), [a], id="ab100", email="new@example.com",
                               update_only=update_only)
    assert_updated(decision, a, email="new@example.com")


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
    decision = identify(ws(), [b], email="P@example.com", attributes={"plan": "pro"}, update_only=update_only)
    assert_updated(decision, b, attributes={"plan": "pro"})


@UPDATE_ONLY
def test_r11_none_found_sets_id_with_email_when_b_has_none(update_only):
    b = person(CIO_B, email="p@example.com")
    decision = identify(ws(), [b], id="ab100", email="p@example.com", update_only=update_only)
    assert_updated(decision, b, id="ab100")


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
    decision = identify(ws(), [a], id="ab100", email="person@example.com", attributes={"plan": "pro"},
                               update_only=update_only)
    # The email is matched by key; the stored spelling is kept.
    assert_updated(decision, a, attributes={"plan": "pro"})


@UPDATE_ONLY
def test_r11_found_found_different_merges_when_r13_applies(update_only):
    a, b = person(CIO_A, id="ab100"), person(CIO_B, email="p@example.com")
    decision = identify(ws(), [a, b], id="ab100", email="p@example.com", update_only=update_only)
    assert decision.outcome is Outcome.MERGED
    assert decision.deleted == (CIO_B,)


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
    decision = identify(ws(), [ab], id="AB100")
    assert decision.outcome is Outcome.CREATED
    assert decision.person.id == "AB100" and decision.person.cio_id == CIO_NEW


def test_r11_emails_are_case_insensitive_one_person():
    p = person(email="Person@Example.com")
    decision = identify(ws(), [p], email="person@example.com")
    assert_unchanged(decision, p)


# --------------------------------------------------------------------------- R12


def test_r12_id_only_email_matches_nobody():
    # The lookup does not depend on the mode; who it finds does: in ID_ONLY an email names nobody.
    other = person(CIO_B, id="cd200", email="p@example.com")
    assert stored(ws(I), identify_lookup(IdentifyInput(WS, email="p@example.com")), [other]) == []
    decision = identify(ws(I), [other], id="ab100", email="p@example.com")
    assert decision.outcome is Outcome.CREATED and decision.person.cio_id == CIO_NEW


def test_r12_email_only_id_matches_nobody():
    other = person(CIO_B, id="ab100", email="q@example.com")
    assert stored(ws(O), identify_lookup(IdentifyInput(WS, id="ab100")), [other]) == []
    decision = identify(ws(O), [other], id="ab100", email="P@example.com")
    assert decision.outcome is Outcome.CREATED and decision.person.cio_id == CIO_NEW


def test_r12_id_only_email_is_stored_in_the_email_field_as_an_attribute():
    decision = identify(ws(I), [], id="ab100", email="p@example.com", attributes={"plan": "pro"})
    assert decision.outcome is Outcome.CREATED
    assert decision.person == Person(CIO_NEW, "ab100", "p@example.com", {"plan": "pro"}, NOW, NOW)


def test_r12_id_only_two_people_may_share_an_email():
    other = person(CIO_B, id="cd200", email="p@example.com")
    decision = identify(ws(I), [other], id="ab100", email="P@example.com")
    assert decision.outcome is Outcome.CREATED
    assert decision.person.email == "P@example.com"


def test_r12_id_only_email_is_updated_like_any_attribute():
    # Seed: "You can update email like any custom attribute", whatever email_updatable_by_id says.
    a = person(id="ab100", email="old@example.com")
    decision = identify(ws(I, email_updatable_by_id=False), [a], id="ab100", email="new@example.com")
    assert_updated(decision, a, email="new@example.com")


def test_r12_id_only_attributes_email_maps_to_person_email():
    a = person(id="ab100", email="old@example.com")
    decision = identify(ws(I), [a], id="ab100", attributes={"email": "new@example.com", "plan": "pro"})
    after = assert_updated(decision, a, email="new@example.com", attributes={"plan": "pro"})
    assert "email" not in after.attributes


def test_r12_id_only_attributes_email_null_removes_the_email():
    a = person(id="ab100", email="old@example.com")
    decision = identify(ws(I), [a], id="ab100", attributes={"email": None})
    assert_updated(decision, a, email=None)


def test_r12_id_only_attributes_email_equal_to_request_email_is_fine():
    decision = identify(ws(I), [], id="ab100", email="p@example.com", attributes={"email": "p@example.com"})
    assert decision.outcome is Outcome.CREATED and decision.person.email == "p@example.com"
    assert decision.person.attributes == {}


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
    decision = identify(ws(I), [a, b], id="ab100", email="p@example.com")
    assert_updated(decision, a, email="p@example.com")


def test_r12_email_only_id_is_stored_in_the_id_field_as_an_attribute():
    decision = identify(ws(O), [], email="p@example.com", id="ab100")
    assert decision.outcome is Outcome.CREATED
    assert decision.person == Person(CIO_NEW, "ab100", "p@example.com", {}, NOW, NOW)


def test_r12_email_only_two_people_may_share_an_id():
    other = person(CIO_B, id="ab100", email="other@example.com")
    decision = identify(ws(O), [other], email="p@example.com", id="ab100")
    assert decision.outcome is Outcome.CREATED and decision.person.id == "ab100"


def test_r12_email_only_id_is_updated_like_any_attribute():
    b = person(CIO_B, id="cd200", email="p@example.com")
    decision = identify(ws(O), [b], email="p@example.com", id="ab100")
    assert_updated(decision, b, id="ab100")


def test_r12_email_only_attributes_id_maps_to_person_id():
    b = person(CIO_B, id="cd200", email="p@example.com")
    decision = identify(ws(O), [b], email="p@example.com", attributes={"id": None})
    assert_updated(decision, b, id=None)


@pytest.mark.parametrize(
    "mode, fields",
    [(I, {"id": "ab100"}), (I, {"cio_id": CIO_A}), (O, {"email": "p@example.com"}), (O, {"cio_id": CIO_A})],
)
def test_r12_a_request_without_the_attribute_field_keeps_it(mode, fields):
    # Where id or email is an attribute, a request that does not carry it leaves it as it is (R14).
    a = person(id="ab100", email="p@example.com", attributes={"plan": "free"})
    decision = identify(ws(mode), [a], **fields, attributes={"plan": "pro"})
    assert_updated(decision, a, attributes={"plan": "pro"})


def test_r12_every_violation_of_the_mode_is_named_together():
    with pytest.raises(InvalidArgument) as info:
        identify(ws(I), [], attributes={"id": "ab100", "email": "nope", "cio_id": "x"})
    assert sorted((v.field, v.reason) for v in info.value.violations) == [
        ("attributes.cio_id", "RESERVED_ATTRIBUTE_NAME"),
        ("attributes.email", "INVALID_EMAIL"),
        ("attributes.id", "RESERVED_ATTRIBUTE_NAME"),
        ("id", "MISSING_IDENTIFIER"),
    ]


def test_r12_email_only_attributes_id_conflicting_with_request_id_is_invalid():
    expect_invalid(
        lambda: identify(ws(O), [], email="p@example.com", id="ab100", attributes={"id": "AB100"}),
        "attributes.id",
        "CONFLICTING_VALUES",
    )


# --------------------------------------------------------------------------- R13


def merge(a: Person, b: Person, settings: Settings | None = None, **fields: Any) -> Decision:
    fields = {"id": a.id, "email": b.email, **fields}
    return identify(settings or ws(), [a, b], **fields)


def test_r13_merge_primary_ends_with_both_identifiers_and_secondary_is_deleted():
    a = person(CIO_A, id="ab100", attributes={"plan": "pro"})
    b = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1))
    decision = merge(a, b)
    assert decision.outcome is Outcome.MERGED
    assert decision.write is Write.UPDATE
    assert decision.deleted == (CIO_B,)
    assert decision.person == Person(CIO_A, "ab100", "p@example.com", {"plan": "pro"}, T0, NOW)


def test_r13_merge_older_person_is_primary():
    b_older = T0 - timedelta(days=30)
    a = person(CIO_A, id="ab100")
    b = person(CIO_B, email="p@example.com", created_at=b_older)
    decision = merge(a, b)
    assert decision.outcome is Outcome.MERGED
    assert decision.deleted == (CIO_A,)
    assert decision.person == Person(CIO_B, "ab100", "p@example.com", {}, b_older, NOW)


def test_r13_merge_tie_on_creation_time_is_broken_by_cio_id():
    # A's cio_id sorts after B's: B is the primary.
    a = person("q" + "0" * 19, id="ab100")
    b = person("c" + "0" * 19, email="p@example.com")
    decision = merge(a, b)
    assert decision.person.cio_id == "c" + "0" * 19
    assert decision.deleted == ("q" + "0" * 19,)
    # And the other way round.
    a2 = person("c" + "0" * 19, id="ab100")
    b2 = person("q" + "0" * 19, email="p@example.com")
    decision2 = merge(a2, b2)
    assert decision2.person.cio_id == "c" + "0" * 19
    assert decision2.deleted == ("q" + "0" * 19,)


def test_r13_merge_attribute_empty_on_primary_takes_secondary_value():
    primary = person(CIO_A, id="ab100", attributes={"plan": "pro", "city": "", "age": 0, "vip": False})
    secondary = person(
        CIO_B,
        email="p@example.com",
        created_at=T0 + timedelta(days=1),
        attributes={"plan": "free", "city": "Paris", "age": 40, "vip": True, "lang": "fr"},
    )
    decision = merge(primary, secondary)
    assert decision.person.attributes == {
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
    decision = merge(primary, secondary, attributes={"plan": "team", "lang": "de", "city": None, "old": None})
    assert decision.outcome is Outcome.MERGED
    assert decision.person.attributes == {"plan": "team", "lang": "de"}


def test_r13_merge_keeps_the_stored_email_spelling():
    a = person(CIO_A, id="ab100")
    b = person(CIO_B, email="Person@Example.com", created_at=T0 + timedelta(days=1))
    decision = merge(a, b, email="person@example.com")
    assert decision.person.email == "Person@Example.com"


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
    decision = identify(ws(mode, auto_merge=True), [a, b],
                               id="ab100", email="p@example.com")
    assert decision.outcome is not Outcome.MERGED
    assert decision.deleted == ()
    # ID_ONLY: A is found by id and gets the email as an attribute.
    # EMAIL_ONLY: B is found by email and gets the id as an attribute.
    if mode is I:
        assert_updated(decision, a, email="p@example.com")
    else:
        assert_updated(decision, b, id="ab100")


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


def test_r13_newer_id_person_merges_into_the_older_email_person():
    # The primary is the older person whichever identifier it holds: here B (found by email).
    # Its cio_id, creation time and non-empty attributes stay; A's fill only what is empty on B.
    a = person(CIO_A, id="ab100", created_at=T0 + timedelta(days=1),
               attributes={"plan": "a-plan", "city": "Lyon", "a_only": 1})
    b = person(CIO_B, email="p@example.com", attributes={"plan": "b-plan", "city": "", "b_only": 2})
    decision = merge(a, b)
    assert (decision.outcome, decision.write, decision.deleted, decision.rule) == (
        Outcome.MERGED, Write.UPDATE, (CIO_A,), "R13"
    )
    assert decision.person == Person(
        CIO_B, "ab100", "p@example.com", {"plan": "b-plan", "city": "Lyon", "a_only": 1, "b_only": 2}, T0, NOW
    )


def test_r13_older_id_person_keeps_its_attributes_over_the_newer_email_person():
    a = person(CIO_A, id="ab100", attributes={"plan": "a-plan", "city": ""})
    b = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1),
               attributes={"plan": "b-plan", "city": "Paris"})
    decision = merge(a, b)
    assert decision.deleted == (CIO_B,)
    assert decision.person == Person(CIO_A, "ab100", "p@example.com", {"plan": "a-plan", "city": "Paris"}, T0, NOW)


def test_r6_r13_a_merge_beyond_300_attributes_is_refused():
    # Two people with 200 attributes each would merge into one with 400.
    a = person(CIO_A, id="ab100", attributes={f"a{i}": i for i in range(200)})
    b = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1),
               attributes={f"b{i}": i for i in range(200)})
    err = expect_refusal(
        FailedPrecondition, "PERSON_ATTRIBUTE_LIMIT", lambda: merge(a, b), field="attributes", limit="300"
    )
    assert "400" in err.message
    # The other way round (the newer person is the id-person) too.
    expect_refusal(FailedPrecondition, "PERSON_ATTRIBUTE_LIMIT",
                   lambda: merge(replace(a, created_at=T0 + timedelta(days=2)), b))


def test_r6_r13_a_merge_counts_the_request_attributes():
    a = person(CIO_A, id="ab100", attributes={f"a{i}": i for i in range(150)})
    b = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1),
               attributes={f"b{i}": i for i in range(149)})
    assert len(merge(a, b, attributes={"new": 1}).person.attributes) == 300
    expect_refusal(FailedPrecondition, "PERSON_ATTRIBUTE_LIMIT", lambda: merge(a, b, attributes={"new": 1, "new2": 2}))
    # Names the request removes do not count: 150 + 149 + 2 - 1.
    decision = merge(a, b, attributes={"new": 1, "new2": 2, "a0": None})
    assert decision.outcome is Outcome.MERGED and len(decision.person.attributes) == 300
    # Names both have count once.
    shared = person(CIO_B, email="p@example.com", created_at=T0 + timedelta(days=1),
                    attributes={f"a{i}": "other" for i in range(150)} | {f"b{i}": i for i in range(150)})
    assert len(merge(a, shared).person.attributes) == 300


# --------------------------------------------------------------------------- R14


def test_r14_names_set_null_removes_others_untouched():
    a = person(id="ab100", attributes={"plan": "free", "city": "Paris", "lang": "fr"})
    decision = identify(ws(), [a], id="ab100", attributes={"plan": "pro", "city": None, "new": [1, 2]})
    assert_updated(decision, a, attributes={"plan": "pro", "lang": "fr", "new": [1, 2]})


def test_r14_removing_an_absent_attribute_changes_nothing():
    a = person(id="ab100", attributes={"plan": "free"})
    decision = identify(ws(), [a], id="ab100", attributes={"gone": None})
    assert_unchanged(decision, a)


def test_r14_setting_the_same_values_changes_nothing():
    a = person(id="ab100", attributes={"plan": "free", "tags": ["a"], "n": 3})
    decision = identify(ws(), [a], id="ab100", attributes={"plan": "free", "tags": ["a"], "n": 3})
    assert_unchanged(decision, a)


@pytest.mark.parametrize(
    "old, new",
    [(1.0, True), (False, 0.0), ({"k": 1.0}, {"k": True})],
)
def test_r14_a_json_value_of_another_type_is_a_change(old, new):
    # JSON true and 1 are different values (google.protobuf.Struct keeps bool_value and
    # number_value apart), but Python's True == 1.
    a = person(id="ab100", attributes={"flag": old})
    decision = identify(ws(), [a], id="ab100", attributes={"flag": new})
    after = assert_updated(decision, a, attributes={"flag": new})
    assert type(after.attributes["flag"]) is type(new)


# --------------------------------------------------------------------------- R15


def test_r15_created_outcome_is_an_insert():
    decision = identify(ws(), [], id="ab100")
    assert (decision.outcome, decision.write, decision.deleted) == (Outcome.CREATED, Write.INSERT, ())
    assert (decision.person.created_at, decision.person.updated_at) == (NOW, NOW)


def test_r15_updated_outcome_is_an_update_of_the_whole_person():
    a = person(id="ab100", email="p@example.com", attributes={"plan": "free", "lang": "fr"})
    decision = identify(ws(), [a], id="ab100", attributes={"plan": "pro"})
    assert (decision.outcome, decision.write) == (Outcome.UPDATED, Write.UPDATE)
    assert decision.person == Person(CIO_A, "ab100", "p@example.com", {"plan": "pro", "lang": "fr"}, T0, NOW)


def test_r15_merged_outcome_is_an_update_and_a_deletion():
    a, b = person(CIO_A, id="ab100"), person(CIO_B, email="p@example.com")
    decision = merge(a, b)
    assert (decision.outcome, decision.write, decision.deleted) == (Outcome.MERGED, Write.UPDATE, (CIO_B,))


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
    decision = identify(ws(), [a], **fields)
    assert_unchanged(decision, a)
    assert decision.person.updated_at == T0


@pytest.mark.parametrize(
    "fields, outcome, rule",
    [
        ({"id": "new1"}, Outcome.CREATED, "R11"),
        ({"id": "ab100", "attributes": {"plan": "team"}}, Outcome.UPDATED, "R11"),
        ({"email": "P@example.com"}, Outcome.UNCHANGED, "R11"),
        ({"cio_id": CIO_A, "attributes": {"plan": "team"}}, Outcome.UPDATED, "R10"),
        ({"cio_id": CIO_A}, Outcome.UNCHANGED, "R10"),
        ({"id": "ab100", "email": "q@example.com"}, Outcome.MERGED, "R13"),
    ],
)
def test_r15_r72_the_decision_names_its_outcome_and_the_rule_that_decided(fields, outcome, rule):
    a = person(CIO_A, id="ab100", attributes={"plan": "pro"})
    p = person(CIO_B, email="p@example.com", id="cd200")
    q = person("c" + "0" * 19, email="q@example.com")
    decision = identify(ws(), [a, p, q], **fields)
    assert (decision.outcome, decision.rule) == (outcome, rule)


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
    decision = identify(ws(), [p], cio_id=CIO_A, id="cd200")
    assert decision.outcome is Outcome.UPDATED and decision.person.id == "cd200"


def test_r25_an_import_row_may_set_a_missing_id_and_repeat_the_same_one():
    p = person(CIO_A, email="p@example.com")
    decision = identify(ws(), [p], cio_id=CIO_A, id="ab100", from_import=True)
    assert decision.outcome is Outcome.UPDATED and decision.person.id == "ab100"
    q = person(CIO_A, id="ab100")
    decision = identify(ws(), [q], cio_id=CIO_A, id="ab100", from_import=True, attributes={"n": 1})
    assert decision.outcome is Outcome.UPDATED and decision.person.id == "ab100"


def test_r25_an_import_row_by_email_cannot_change_an_id_either():
    p = person(CIO_A, id="ab100", email="p@example.com")
    expect_refusal(
        FailedPrecondition,
        "ID_CHANGE_REQUIRES_CIO_ID",
        lambda: identify(ws(), [p], id="cd200", email="P@example.com", from_import=True),
    )
