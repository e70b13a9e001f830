"""References (R5, R7) and changes to one identifier: update (R20-R24) and delete (R30-R32),
including every branch of the seed's three flowcharts (TestSeedFlowcharts)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.domain import Field, Mode, Person, Ref, Settings
from service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from service.rules import identifiers
from service.rules.decisions import Decision, Lookup, Write
from tests.unit.refusals import expect_refusal
from tests.unit.repository_double import stored

# --------------------------------------------------------------------------- builders

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
WS = "ws-1"
CIO_A = "a" + "0" * 19
CIO_B = "b" + "0" * 19
CIO_UNKNOWN = "z" * 20

E, I, O = Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY


def ws(mode: Mode = E, **kw) -> Settings:
    return Settings(WS, mode, **kw)


def person(cio_id: str = CIO_A, id=None, email=None, attributes=None) -> Person:
    return Person(cio_id, id, email, dict(attributes or {}), T0, T0)


def by_cio(cio_id: str = CIO_A) -> Ref:
    return Ref(Field.CIO_ID, cio_id)


def by_id(value: str) -> Ref:
    return Ref(Field.ID, value)


def by_email(value: str) -> Ref:
    return Ref(Field.EMAIL, value)


def update(settings: Settings, people: list[Person], ref: Ref, field: Field, value: str) -> Decision:
    """UpdateIdentifier as the service runs it: lookup, repository, decision."""
    lookup = identifiers.update_identifier_lookup(WS, ref, field, value)
    return identifiers.decide_update_identifier(
        settings, ref, field, value, stored(settings, lookup, people), NOW
    )


def delete(settings: Settings, people: list[Person], ref: Ref, field: Field) -> Decision:
    """DeleteIdentifier as the service runs it."""
    lookup = identifiers.delete_identifier_lookup(WS, ref, field)
    return identifiers.decide_delete_identifier(settings, ref, field, stored(settings, lookup, people), NOW)


def assert_updated(decision: Decision, before: Person, **fields) -> None:
    assert decision.write is Write.UPDATE
    assert decision.deleted == ()
    assert decision.person.cio_id == before.cio_id
    assert decision.person.created_at == before.created_at
    assert decision.person.updated_at == NOW
    expected = {"id": before.id, "email": before.email, **fields}
    assert (decision.person.id, decision.person.email) == (expected["id"], expected["email"])
    assert decision.person.attributes == before.attributes


def assert_unchanged(decision: Decision, before: Person) -> None:
    assert decision.write is Write.NONE
    assert decision.person == before
    assert decision.person.updated_at == T0


# --------------------------------------------------------------------------- R5 / R7: references


@pytest.mark.parametrize("mode", list(Mode))
def test_r7_reference_by_cio_id_is_allowed_in_every_mode(mode):
    assert identifiers.ref_lookup(WS, by_cio()) == Lookup(cio_ids=(CIO_A,))


def test_r7_reference_by_id_looks_up_the_exact_id():
    assert identifiers.ref_lookup(WS, by_id("AB100")) == Lookup(ids=("AB100",))


def test_r7_reference_by_email_looks_up_the_email_as_given():
    # The repository derives the key; who the lookup finds is by key (test_r7_found_*).
    assert identifiers.ref_lookup(WS, by_email("Person@Example.com")) == Lookup(emails=("Person@Example.com",))


def test_r7_reference_by_email_refused_where_email_is_not_an_identifier():
    err = expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: identifiers.resolve(ws(I), [], by_email("person@example.com")),
        field="email",
        identifier_mode="ID_ONLY",
    )
    assert "email is not an identifier in this workspace" in err.message


def test_r7_reference_by_id_refused_where_id_is_not_an_identifier():
    err = expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: identifiers.resolve(ws(O), [], by_id("ab100")),
        field="id",
        identifier_mode="EMAIL_ONLY",
    )
    assert "id is not an identifier in this workspace" in err.message


def test_r7_update_and_delete_refuse_a_reference_by_a_non_identifier():
    expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: update(ws(I), [], by_email("p@example.com"), Field.ID, "ab100"),
        field="email",
    )
    expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: delete(ws(O), [], by_id("ab100"), Field.EMAIL),
        field="id",
    )


def test_r5_unknown_cio_id_is_not_found():
    expect_refusal(
        NotFound,
        "PERSON_NOT_FOUND",
        lambda: identifiers.resolve(ws(E), [person()], by_cio(CIO_UNKNOWN)),
        field="cio_id",
    )


def test_r7_resolve_by_id_is_case_sensitive():
    ab = person(id="ab100")
    assert identifiers.resolve(ws(E), [ab], by_id("ab100")) is ab
    expect_refusal(NotFound, "PERSON_NOT_FOUND", lambda: identifiers.resolve(ws(E), [ab], by_id("AB100")), field="id")


def test_r7_resolve_by_email_is_case_insensitive():
    p = person(email="Person@Example.com")
    assert identifiers.resolve(ws(E), [p], by_email("person@EXAMPLE.com")) is p


def test_r7_delete_person_deletes_the_referenced_person():
    p, other = person(id="ab100"), person(CIO_B, id="AB100")
    decision = identifiers.decide_delete_person(ws(E), by_id("ab100"), [p, other])
    assert decision == Decision(Write.DELETE, p)
    expect_refusal(
        NotFound, "PERSON_NOT_FOUND", lambda: identifiers.decide_delete_person(ws(E), by_cio(CIO_UNKNOWN), [p])
    )


# --------------------------------------------------------------------------- who a lookup finds


@pytest.mark.parametrize(
    "mode, field, value, found",
    [
        (E, Field.CIO_ID, CIO_A, True),
        (I, Field.CIO_ID, CIO_A, True),
        (O, Field.CIO_ID, CIO_A, True),
        (E, Field.CIO_ID, CIO_UNKNOWN, False),
        (E, Field.ID, "ab100", True),
        (E, Field.ID, "AB100", False),  # ids are case-sensitive
        (I, Field.ID, "ab100", True),
        (O, Field.ID, "ab100", False),  # an attribute names nobody (R1, R7)
        (E, Field.EMAIL, "PERSON@example.COM", True),  # emails by key (R4)
        (O, Field.EMAIL, "person@example.com", True),
        (I, Field.EMAIL, "Person@Example.com", False),
        (E, Field.EMAIL, "other@example.com", False),
    ],
)
def test_r1_r7_matches_names_a_person_only_by_an_identifier_of_the_mode(mode, field, value, found):
    p = person(id="ab100", email="Person@Example.com")
    assert identifiers.matches(mode, p, field, value) is found
    assert identifiers.find(mode, [person(CIO_B, id="x1"), p], field, value) is (p if found else None)
    lookup = identifiers.lookup_for(field, value)
    assert identifiers.found(mode, lookup, [p]) == ([p] if found else [])


def test_r7_a_person_without_an_email_matches_no_email():
    assert not identifiers.matches(E, person(id="ab100"), Field.EMAIL, "p@example.com")
    assert identifiers.find(E, [person(id="ab100")], Field.EMAIL, None) is None


def test_r41_found_is_everyone_any_value_of_the_lookup_names_in_the_order_given():
    a, b = person(CIO_A, id="ab100"), person(CIO_B, email="q@example.com")
    c = person("c" + "0" * 19, id="cd200", email="r@example.com")
    lookup = Lookup(cio_ids=("c" + "0" * 19,), ids=("ab100", "zz"), emails=("Q@example.com",))
    assert identifiers.found(E, lookup, [a, b, c]) == [a, b, c]
    assert identifiers.found(I, lookup, [a, b, c]) == [a, c]
    assert identifiers.found(O, lookup, [a, b, c]) == [b, c]
    assert identifiers.found(E, Lookup(), [a, b, c]) == []


# --------------------------------------------------------------------------- seed flowcharts


class TestSeedFlowcharts:
    """Every branch of the three charts in how-to-identify-people.txt."""

    # Chart 1: "Update email (where id and email are identifiers)" -> Is it set?

    @pytest.mark.parametrize("via", ["id", "cio_id"])
    def test_r20_chart1_email_set_switch_on_can_set_email_with_id(self, via):
        # yes -> "cio_id or id" enabled? yes -> "You can set email with id"
        p = person(id="ab100", email="old@example.com")
        ref = by_id("ab100") if via == "id" else by_cio()
        decision = update(ws(E, email_updatable_by_id=True), [p], ref, Field.EMAIL, "new@example.com")
        assert_updated(decision, p, email="new@example.com")

    def test_r20_chart1_email_set_switch_off_id_reference_refused(self):
        # yes -> enabled? no -> "You must update email with cio_id"
        p = person(id="ab100", email="old@example.com")
        err = expect_refusal(
            FailedPrecondition,
            "EMAIL_CHANGE_REQUIRES_CIO_ID",
            lambda: update(ws(E, email_updatable_by_id=False), [p], by_id("ab100"), Field.EMAIL, "new@example.com"),
            field="email",
            reference="id",
            allowed_references="cio_id",
        )
        assert "cio_id" in err.message

    def test_r20_chart1_email_set_switch_off_must_update_email_with_cio_id(self):
        p = person(id="ab100", email="old@example.com")
        decision = update(ws(E, email_updatable_by_id=False), [p], by_cio(), Field.EMAIL, "new@example.com")
        assert_updated(decision, p, email="new@example.com")

    @pytest.mark.parametrize("switch", [True, False])
    @pytest.mark.parametrize("via", ["id", "cio_id"])
    def test_r20_chart1_email_not_set_can_update_email_with_id(self, switch, via):
        # no -> "You can update email with id" (the switch does not matter)
        p = person(id="ab100")
        ref = by_id("ab100") if via == "id" else by_cio()
        decision = update(ws(E, email_updatable_by_id=switch), [p], ref, Field.EMAIL, "new@example.com")
        assert_updated(decision, p, email="new@example.com")

    # Chart 2: "Update id (where email and id are identifiers)" -> Is it set?

    def test_r21_chart2_id_set_can_update_id_with_cio_id(self):
        # yes -> "You can update id with cio_id"
        p = person(id="ab100", email="p@example.com")
        decision = update(ws(E), [p], by_cio(), Field.ID, "cd200")
        assert_updated(decision, p, id="cd200")

    @pytest.mark.parametrize("ref", [by_email("p@example.com"), by_id("ab100")], ids=["email", "id"])
    def test_r21_chart2_id_set_other_references_refused(self, ref):
        p = person(id="ab100", email="p@example.com")
        expect_refusal(
            FailedPrecondition,
            "ID_CHANGE_REQUIRES_CIO_ID",
            lambda: update(ws(E), [p], ref, Field.ID, "cd200"),
            field="id",
            reference=ref.field.value,
        )

    def test_r21_chart2_id_not_set_can_set_id_with_email(self):
        # no -> "You can set id with email"
        p = person(email="p@example.com")
        decision = update(ws(E), [p], by_email("P@Example.com"), Field.ID, "ab100")
        assert_updated(decision, p, id="ab100")

    def test_r21_chart2_id_not_set_can_set_id_with_cio_id(self):
        p = person(email="p@example.com")
        decision = update(ws(E), [p], by_cio(), Field.ID, "ab100")
        assert_updated(decision, p, id="ab100")

    # Chart 3: "Update id (where id is the only identifier)" -> Is it set?

    @pytest.mark.parametrize("switch", [True, False])
    def test_r22_chart3_id_not_set_person_does_not_exist(self, switch):
        # no -> "Person does not exist": a reference that matches nobody is NOT_FOUND
        others = [person(CIO_B, id="AB100")]
        expect_refusal(
            NotFound,
            "PERSON_NOT_FOUND",
            lambda: update(ws(I, sole_identifier_updatable=switch), others, by_id("ab100"), Field.ID, "cd200"),
            field="id",
        )
        expect_refusal(
            NotFound,
            "PERSON_NOT_FOUND",
            lambda: update(ws(I, sole_identifier_updatable=switch), others, by_cio(CIO_UNKNOWN), Field.ID, "cd200"),
            field="cio_id",
        )

    def test_r22_chart3_id_set_switch_on_can_update_id_with_cio_id(self):
        # yes -> "cio_id or id" enabled? yes -> "You can update id with cio_id"
        p = person(id="ab100", email="p@example.com")
        decision = update(ws(I, sole_identifier_updatable=True), [p], by_cio(), Field.ID, "cd200")
        assert_updated(decision, p, id="cd200")

    def test_r22_chart3_id_set_switch_on_id_reference_refused(self):
        p = person(id="ab100")
        expect_refusal(
            FailedPrecondition,
            "SOLE_IDENTIFIER_CHANGE_REQUIRES_CIO_ID",
            lambda: update(ws(I, sole_identifier_updatable=True), [p], by_id("ab100"), Field.ID, "cd200"),
            field="id",
            reference="id",
        )

    @pytest.mark.parametrize("ref", [by_cio(), by_id("ab100")], ids=["cio_id", "id"])
    def test_r22_chart3_id_set_switch_off_cannot_update_id(self, ref):
        # yes -> enabled? no -> "You cannot update id"
        p = person(id="ab100")
        expect_refusal(
            FailedPrecondition,
            "SOLE_IDENTIFIER_NOT_UPDATABLE",
            lambda: update(ws(I, sole_identifier_updatable=False), [p], ref, Field.ID, "cd200"),
            field="id",
            identifier_mode="ID_ONLY",
        )

    # Prose under the charts.

    def test_r23_chart3_prose_in_id_only_email_is_not_updated_as_an_identifier(self):
        # "You can update email like any custom attribute": not through UpdateIdentifier.
        p = person(id="ab100", email="p@example.com")
        expect_refusal(
            FailedPrecondition,
            "NOT_AN_IDENTIFIER",
            lambda: update(ws(I), [p], by_cio(), Field.EMAIL, "q@example.com"),
            field="email",
        )


# --------------------------------------------------------------------------- R20-R22 details


def test_r20_email_cannot_be_changed_through_its_own_email_reference():
    p = person(id="ab100", email="old@example.com")
    expect_refusal(
        FailedPrecondition,
        "EMAIL_CHANGE_REQUIRES_CIO_ID",
        lambda: update(ws(E), [p], by_email("old@example.com"), Field.EMAIL, "new@example.com"),
        field="email",
        reference="email",
        allowed_references="cio_id,id",
    )


def test_r22_email_only_email_can_be_changed_through_cio_id_when_allowed():
    p = person(email="old@example.com")
    decision = update(ws(O, sole_identifier_updatable=True), [p], by_cio(), Field.EMAIL, "new@example.com")
    assert_updated(decision, p, email="new@example.com")


def test_r22_email_only_email_reference_refused():
    p = person(email="old@example.com")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_CHANGE_REQUIRES_CIO_ID",
        lambda: update(ws(O, sole_identifier_updatable=True), [p], by_email("old@example.com"), Field.EMAIL, "new@example.com"),
        field="email",
        reference="email",
    )


def test_r22_email_only_switch_off_refused_even_through_cio_id():
    p = person(email="old@example.com")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_NOT_UPDATABLE",
        lambda: update(ws(O), [p], by_cio(), Field.EMAIL, "new@example.com"),
        field="email",
        identifier_mode="EMAIL_ONLY",
    )


def test_r22_email_only_reference_matching_nobody_is_not_found():
    expect_refusal(
        NotFound,
        "PERSON_NOT_FOUND",
        lambda: update(ws(O, sole_identifier_updatable=True), [person(email="x@example.com")],
                       by_email("old@example.com"), Field.EMAIL, "new@example.com"),
        field="email",
    )


@pytest.mark.parametrize(
    "mode, ref, field",
    [(I, by_id("ab100"), "id"), (O, by_email("p@example.com"), "email"), (I, by_cio(CIO_UNKNOWN), "cio_id")],
)
def test_r22_resolve_reference_matching_nobody_is_not_found(mode, ref, field):
    # Every person has the sole identifier: no match means "person does not exist".
    people = [person(CIO_B, id="AB100", email="q@example.com")]
    identifiers.check_ref_allowed(ws(mode), ref)  # the reference itself is allowed (R7)
    expect_refusal(NotFound, "PERSON_NOT_FOUND", lambda: identifiers.resolve(ws(mode), people, ref), field=field)


# --------------------------------------------------------------------------- R23


@pytest.mark.parametrize("mode, field, value", [(I, Field.EMAIL, "q@example.com"), (O, Field.ID, "cd200")])
def test_r23_updating_a_non_identifier_is_failed_precondition(mode, field, value):
    p = person(id="ab100", email="p@example.com")
    expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: update(ws(mode), [p], by_cio(), field, value),
        field=field.value,
        identifier_mode=mode.value,
    )
    # The decision refuses it too, whatever the lookup found.
    expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: identifiers.decide_update_identifier(ws(mode), by_cio(), field, value, [p], NOW),
        field=field.value,
    )


# --------------------------------------------------------------------------- R24


def test_r24_id_owned_by_another_person_is_already_exists_with_owner():
    p, owner = person(id="ab100"), person(CIO_B, id="cd200")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: update(ws(E), [p, owner], by_cio(), Field.ID, "cd200"),
        field="id",
        owner_cio_id=CIO_B,
    )


def test_r24_id_owned_case_variant_is_a_different_id():
    p, other = person(id="ab100"), person(CIO_B, id="cd200")
    decision = update(ws(E), [p, other], by_cio(), Field.ID, "CD200")
    assert_updated(decision, p, id="CD200")


def test_r24_id_only_id_owned_by_another_is_already_exists():
    p, owner = person(id="ab100"), person(CIO_B, id="cd200")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: update(ws(I, sole_identifier_updatable=True), [p, owner], by_cio(), Field.ID, "cd200"),
        field="id",
        owner_cio_id=CIO_B,
    )


@pytest.mark.parametrize("new", ["other@example.com", "Other@Example.com", "OTHER@EXAMPLE.COM"])
def test_r24_email_owned_case_insensitively_by_another_is_already_exists(new):
    p, owner = person(id="ab100", email="p@example.com"), person(CIO_B, email="other@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: update(ws(E), [p, owner], by_cio(), Field.EMAIL, new),
        field="email",
        owner_cio_id=CIO_B,
    )


def test_r24_email_only_email_owned_by_another_is_already_exists():
    p, owner = person(email="p@example.com"), person(CIO_B, email="other@example.com")
    expect_refusal(
        AlreadyExists,
        "IDENTIFIER_ALREADY_EXISTS",
        lambda: update(ws(O, sole_identifier_updatable=True), [p, owner], by_cio(), Field.EMAIL, "Other@example.com"),
        field="email",
        owner_cio_id=CIO_B,
    )


@pytest.mark.parametrize(
    "settings, ref, field, value",
    [
        (ws(E), by_cio(), Field.ID, "ab100"),
        (ws(E), by_email("person@example.com"), Field.ID, "ab100"),  # R21 would refuse a change
        (ws(E), by_cio(), Field.EMAIL, "Person@Example.com"),
        (ws(E, email_updatable_by_id=False), by_id("ab100"), Field.EMAIL, "Person@Example.com"),
        (ws(I), by_id("ab100"), Field.ID, "ab100"),  # R22 would refuse a change
        (ws(O), by_cio(), Field.EMAIL, "Person@Example.com"),
    ],
)
def test_r24_equal_value_succeeds_and_changes_nothing(settings, ref, field, value):
    p = person(id="ab100", email="Person@Example.com")
    assert_unchanged(update(settings, [p], ref, field, value), p)


def test_r24_email_case_variant_of_own_email_is_a_change():
    p = person(id="ab100", email="Person@Example.com")
    decision = update(ws(E), [p], by_cio(), Field.EMAIL, "person@example.com")
    assert_updated(decision, p, email="person@example.com")


def test_r24_email_case_variant_of_own_email_is_a_change_in_email_only():
    p = person(email="Person@Example.com")
    decision = update(ws(O, sole_identifier_updatable=True), [p], by_cio(), Field.EMAIL, "PERSON@example.com")
    assert_updated(decision, p, email="PERSON@example.com")


def test_r24_email_case_variant_of_own_email_still_obeys_r20():
    p = person(id="ab100", email="Person@Example.com")
    expect_refusal(
        FailedPrecondition,
        "EMAIL_CHANGE_REQUIRES_CIO_ID",
        lambda: update(ws(E, email_updatable_by_id=False), [p], by_id("ab100"), Field.EMAIL, "person@example.com"),
        field="email",
    )


def test_r24_lookup_finds_both_the_person_and_the_owner_of_the_new_value():
    lookup = identifiers.update_identifier_lookup(WS, by_id("ab100"), Field.EMAIL, "New@Example.com")
    assert lookup == Lookup(ids=("ab100",), emails=("New@Example.com",))
    lookup = identifiers.update_identifier_lookup(WS, by_email("P@example.com"), Field.ID, "AB100")
    assert lookup == Lookup(ids=("AB100",), emails=("P@example.com",))
    lookup = identifiers.update_identifier_lookup(WS, by_cio(), Field.ID, "AB100")
    assert lookup == Lookup(cio_ids=(CIO_A,), ids=("AB100",))


# --------------------------------------------------------------------------- R42: every bad field, once


def violations(call) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        call()
    return [(v.field, v.reason) for v in info.value.violations]


def test_r42_ref_lookup_names_the_workspace_and_the_reference():
    assert violations(lambda: identifiers.ref_lookup("bad ws", by_id(" ab100"))) == [
        ("workspace_id", "INVALID_WORKSPACE_ID"),
        ("person.id", "INVALID_ID"),
    ]
    assert violations(lambda: identifiers.ref_lookup("", by_cio("x"))) == [
        ("workspace_id", "WORKSPACE_ID_REQUIRED"),
        ("person.cio_id", "INVALID_CIO_ID"),
    ]


def test_r42_update_identifier_lookup_names_workspace_reference_and_value_together():
    assert violations(
        lambda: identifiers.update_identifier_lookup("bad ws", by_email("nope"), Field.ID, "")
    ) == [("workspace_id", "INVALID_WORKSPACE_ID"), ("person.email", "INVALID_EMAIL"), ("value", "INVALID_ID")]
    assert violations(
        lambda: identifiers.update_identifier_lookup(WS, by_id("a\x00b"), Field.EMAIL, "a@b@c")
    ) == [("person.id", "INVALID_ID"), ("value", "INVALID_EMAIL")]
    assert violations(lambda: identifiers.update_identifier_lookup("ws/1", by_cio(), Field.ID, "ab100")) == [
        ("workspace_id", "INVALID_WORKSPACE_ID")
    ]


def test_r42_delete_identifier_lookup_names_the_workspace_and_the_reference():
    assert violations(lambda: identifiers.delete_identifier_lookup("ws 1", by_email("x"), Field.ID)) == [
        ("workspace_id", "INVALID_WORKSPACE_ID"),
        ("person.email", "INVALID_EMAIL"),
    ]


def test_r30_the_cio_id_guards_come_after_the_shapes():
    # Invalid fields are named first (INVALID_ARGUMENT); a well-formed cio_id change or
    # deletion is then refused, before any database work.
    assert violations(lambda: identifiers.update_identifier_lookup("ws 1", by_cio(), Field.CIO_ID, "x")) == [
        ("workspace_id", "INVALID_WORKSPACE_ID")
    ]
    assert violations(lambda: identifiers.delete_identifier_lookup("ws 1", by_cio(), Field.CIO_ID)) == [
        ("workspace_id", "INVALID_WORKSPACE_ID")
    ]
    # The new value of a cio_id change is not validated as anything: the change is refused.
    expect_refusal(FailedPrecondition, "CIO_ID_IMMUTABLE",
                   lambda: identifiers.update_identifier_lookup(WS, by_id("ab100"), Field.CIO_ID, "not a cio_id"))


# --------------------------------------------------------------------------- R72: the rule that decided


@pytest.mark.parametrize(
    "settings, ref, field, value, write, rule",
    [
        (ws(E), by_cio(), Field.EMAIL, "new@example.com", Write.UPDATE, "R20"),
        (ws(E), by_cio(), Field.ID, "cd200", Write.UPDATE, "R21"),
        (ws(I, sole_identifier_updatable=True), by_cio(), Field.ID, "cd200", Write.UPDATE, "R22"),
        (ws(O, sole_identifier_updatable=True), by_cio(), Field.EMAIL, "q@example.com", Write.UPDATE, "R22"),
        (ws(E), by_cio(), Field.EMAIL, "p@example.com", Write.NONE, "R24"),
        (ws(I), by_cio(), Field.ID, "ab100", Write.NONE, "R24"),
    ],
)
def test_r72_update_identifier_names_the_rule(settings, ref, field, value, write, rule):
    p = person(id="ab100", email="p@example.com")
    decision = update(settings, [p], ref, field, value)
    assert (decision.write, decision.rule, decision.outcome, decision.deleted) == (write, rule, None, ())


def test_r72_delete_identifier_names_r31():
    p = person(id="ab100", email="p@example.com")
    assert delete(ws(E), [p], by_cio(), Field.ID).rule == "R31"
    assert delete(ws(E), [p], by_cio(), Field.EMAIL).rule == "R31"
    assert delete(ws(E), [person(email="p@example.com")], by_cio(), Field.ID).rule == "R31"


# --------------------------------------------------------------------------- R30


@pytest.mark.parametrize("mode", list(Mode))
def test_r30_cio_id_can_never_be_deleted(mode):
    expect_refusal(
        FailedPrecondition,
        "CIO_ID_NOT_DELETABLE",
        lambda: delete(ws(mode), [person(id="ab100", email="p@example.com")], by_cio(), Field.CIO_ID),
        field="cio_id",
    )


@pytest.mark.parametrize("mode", list(Mode))
def test_r30_cio_id_can_never_be_changed(mode):
    expect_refusal(
        FailedPrecondition,
        "CIO_ID_IMMUTABLE",
        lambda: update(ws(mode, sole_identifier_updatable=True), [person(id="ab100", email="p@example.com")],
                       by_cio(), Field.CIO_ID, CIO_B),
        field="cio_id",
    )


# --------------------------------------------------------------------------- R31


@pytest.mark.parametrize(
    "field, ref, expected",
    [
        (Field.ID, by_cio(), {"id": None}),
        (Field.ID, by_email("p@example.com"), {"id": None}),
        (Field.ID, by_id("ab100"), {"id": None}),
        (Field.EMAIL, by_cio(), {"email": None}),
        (Field.EMAIL, by_id("ab100"), {"email": None}),
        (Field.EMAIL, by_email("P@example.com"), {"email": None}),
    ],
)
def test_r31_either_identifier_can_be_removed_when_the_other_remains(field, ref, expected):
    p = person(id="ab100", email="p@example.com", attributes={"plan": "pro"})
    decision = delete(ws(E), [p], ref, field)
    assert_updated(decision, p, **expected)


@pytest.mark.parametrize(
    "before, field, ref",
    [
        (person(id="ab100"), Field.ID, by_id("ab100")),
        (person(id="ab100"), Field.ID, by_cio()),
        (person(email="p@example.com"), Field.EMAIL, by_email("p@example.com")),
        (person(email="p@example.com"), Field.EMAIL, by_cio()),
    ],
)
def test_r31_removing_the_last_identifier_is_refused(before, field, ref):
    expect_refusal(
        FailedPrecondition,
        "LAST_IDENTIFIER",
        lambda: delete(ws(E), [before], ref, field),
        field=field.value,
    )


@pytest.mark.parametrize(
    "before, field",
    [(person(id="ab100"), Field.EMAIL), (person(email="p@example.com"), Field.ID)],
)
def test_r31_removing_an_identifier_the_person_lacks_changes_nothing(before, field):
    assert_unchanged(delete(ws(E), [before], by_cio(), field), before)


def test_r31_removing_from_a_person_that_does_not_exist_is_not_found():
    expect_refusal(NotFound, "PERSON_NOT_FOUND", lambda: delete(ws(E), [], by_id("ab100"), Field.EMAIL), field="id")


# --------------------------------------------------------------------------- R32


@pytest.mark.parametrize(
    "mode, field, ref",
    [
        (I, Field.ID, by_cio()),
        (I, Field.ID, by_id("ab100")),
        (O, Field.EMAIL, by_cio()),
        (O, Field.EMAIL, by_email("p@example.com")),
    ],
)
@pytest.mark.parametrize("switch", [True, False])
def test_r32_sole_identifier_cannot_be_removed(mode, field, ref, switch):
    p = person(id="ab100", email="p@example.com")
    expect_refusal(
        FailedPrecondition,
        "SOLE_IDENTIFIER_NOT_DELETABLE",
        lambda: delete(ws(mode, sole_identifier_updatable=switch), [p], ref, field),
        field=field.value,
        identifier_mode=mode.value,
    )


@pytest.mark.parametrize("mode, field", [(I, Field.EMAIL), (O, Field.ID)])
def test_r32_removing_a_non_identifier_is_failed_precondition(mode, field):
    expect_refusal(
        FailedPrecondition,
        "NOT_AN_IDENTIFIER",
        lambda: delete(ws(mode), [person(id="ab100", email="p@example.com")], by_cio(), field),
        field=field.value,
        identifier_mode=mode.value,
    )
