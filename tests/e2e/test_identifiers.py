"""UpdateIdentifier (R20-R25), DeleteIdentifier (R30-R32), GetPerson and DeletePerson end to end
through gRPC."""

from __future__ import annotations

import grpc
import pytest

from identity.v1 import identity_pb2 as pb
from service.domain import Mode
from tests.e2e.helpers import (
    CIO_ID,
    EMAIL,
    ID,
    delete_request,
    get,
    identify,
    ref,
    refused,
    update_request,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _ref_value(person: pb.Person, via: str) -> dict[str, str]:
    return {via: getattr(person, via)}


# --------------------------------------------------------------------------- R20


@pytest.mark.parametrize("via", ["id", "cio_id"])
def test_r20_an_unset_email_can_be_set_through_id_or_cio_id(make_workspace, stub, via):
    workspace = make_workspace(email_updatable_by_id=False)  # the switch only concerns a set email
    person = identify(stub, workspace, id="ab100").person
    response = stub.UpdateIdentifier(update_request(workspace, EMAIL, "p@example.com", **_ref_value(person, via)))
    assert (response.person.cio_id, response.person.email) == (person.cio_id, "p@example.com")
    assert get(stub, workspace, email="P@example.com").cio_id == person.cio_id


def test_r20_a_set_email_can_be_changed_through_cio_id(make_workspace, stub):
    workspace = make_workspace(email_updatable_by_id=False)
    person = identify(stub, workspace, id="ab100", email="old@example.com").person
    response = stub.UpdateIdentifier(update_request(workspace, EMAIL, "new@example.com", cio_id=person.cio_id))
    assert response.person.email == "new@example.com"
    assert get(stub, workspace, email="new@example.com").cio_id == person.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(email="old@example.com")),
            NOT_FOUND)


def test_r20_a_set_email_can_be_changed_through_id_when_email_updatable_by_id(make_workspace, stub):
    workspace = make_workspace(email_updatable_by_id=True)
    person = identify(stub, workspace, id="ab100", email="old@example.com").person
    response = stub.UpdateIdentifier(update_request(workspace, EMAIL, "new@example.com", id="ab100"))
    assert (response.person.cio_id, response.person.email) == (person.cio_id, "new@example.com")


def test_r20_a_set_email_cannot_be_changed_through_id_when_email_not_updatable_by_id(
    make_workspace, stub, people_rows
):
    workspace = make_workspace(email_updatable_by_id=False)
    identify(stub, workspace, id="ab100", email="old@example.com")
    before = people_rows(workspace)
    refusal = refused(stub.UpdateIdentifier, update_request(workspace, EMAIL, "new@example.com", id="ab100"),
                      FAILED_PRECONDITION)
    assert refusal.reason == "EMAIL_CHANGE_REQUIRES_CIO_ID"
    assert "only a cio_id" in refusal.message
    assert refusal.metadata["field"] == "email"
    assert people_rows(workspace) == before


def test_r20_a_set_email_cannot_be_changed_through_an_email_reference(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", email="old@example.com")
    before = people_rows(workspace)
    refused(stub.UpdateIdentifier, update_request(workspace, EMAIL, "new@example.com", email="old@example.com"),
            FAILED_PRECONDITION)
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R21


@pytest.mark.parametrize("via", ["email", "cio_id"])
def test_r21_an_unset_id_can_be_set_through_email_or_cio_id(stub, workspace, via):
    person = identify(stub, workspace, email="p@example.com").person
    response = stub.UpdateIdentifier(update_request(workspace, ID, "ab100", **_ref_value(person, via)))
    assert (response.person.cio_id, response.person.id) == (person.cio_id, "ab100")
    assert get(stub, workspace, id="ab100").cio_id == person.cio_id


def test_r21_a_set_id_can_be_changed_through_cio_id(stub, workspace):
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    response = stub.UpdateIdentifier(update_request(workspace, ID, "ab200", cio_id=person.cio_id))
    assert response.person.id == "ab200"
    assert get(stub, workspace, id="ab200").cio_id == person.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id="ab100")), NOT_FOUND)


@pytest.mark.parametrize("via", ["id", "email"])
def test_r21_a_set_id_cannot_be_changed_through_id_or_email(stub, workspace, people_rows, via):
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    before = people_rows(workspace)
    refusal = refused(stub.UpdateIdentifier, update_request(workspace, ID, "ab200", **_ref_value(person, via)),
                      FAILED_PRECONDITION)
    assert refusal.reason == "ID_CHANGE_REQUIRES_CIO_ID"
    assert refusal.metadata["field"] == "id"
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R22


@pytest.mark.parametrize(("mode", "field", "old", "new", "other"), [
    (Mode.ID_ONLY, ID, "ab100", "ab200", "id"),
    (Mode.EMAIL_ONLY, EMAIL, "old@example.com", "new@example.com", "email"),
])
def test_r22_the_sole_identifier_changes_through_cio_id_when_updatable(make_workspace, stub, mode, field, old,
                                                                        new, other):
    workspace = make_workspace(mode, sole_identifier_updatable=True)
    person = identify(stub, workspace, **{other: old}).person
    response = stub.UpdateIdentifier(update_request(workspace, field, new, cio_id=person.cio_id))
    assert response.person.cio_id == person.cio_id
    assert get(stub, workspace, **{other: new}).cio_id == person.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(**{other: old})), NOT_FOUND)


@pytest.mark.parametrize(("mode", "field", "old", "new", "other"), [
    (Mode.ID_ONLY, ID, "ab100", "ab200", "id"),
    (Mode.EMAIL_ONLY, EMAIL, "old@example.com", "new@example.com", "email"),
])
@pytest.mark.parametrize("via", ["cio_id", "self"])
def test_r22_the_sole_identifier_cannot_change_when_not_updatable(make_workspace, stub, people_rows, mode, field,
                                                                  old, new, other, via):
    workspace = make_workspace(mode, sole_identifier_updatable=False)
    person = identify(stub, workspace, **{other: old}).person
    before = people_rows(workspace)
    reference = {"cio_id": person.cio_id} if via == "cio_id" else {other: old}
    refusal = refused(stub.UpdateIdentifier, update_request(workspace, field, new, **reference), FAILED_PRECONDITION)
    assert refusal.reason == "SOLE_IDENTIFIER_NOT_UPDATABLE"
    assert people_rows(workspace) == before


@pytest.mark.parametrize(("mode", "field", "old", "new", "other"), [
    (Mode.ID_ONLY, ID, "ab100", "ab200", "id"),
    (Mode.EMAIL_ONLY, EMAIL, "old@example.com", "new@example.com", "email"),
])
def test_r22_the_sole_identifier_cannot_change_through_itself_even_when_updatable(make_workspace, stub,
                                                                                   people_rows, mode, field, old,
                                                                                   new, other):
    workspace = make_workspace(mode, sole_identifier_updatable=True)
    identify(stub, workspace, **{other: old})
    before = people_rows(workspace)
    refusal = refused(stub.UpdateIdentifier, update_request(workspace, field, new, **{other: old}),
                      FAILED_PRECONDITION)
    assert refusal.reason == "SOLE_IDENTIFIER_CHANGE_REQUIRES_CIO_ID"
    assert people_rows(workspace) == before


@pytest.mark.parametrize(("mode", "field", "missing", "new"), [
    (Mode.ID_ONLY, ID, {"id": "nobody"}, "ab200"),
    (Mode.EMAIL_ONLY, EMAIL, {"email": "nobody@example.com"}, "new@example.com"),
])
@pytest.mark.parametrize("updatable", [True, False])
def test_r22_a_reference_that_matches_nobody_is_not_found(make_workspace, stub, people_rows, mode, field,
                                                          missing, new, updatable):
    workspace = make_workspace(mode, sole_identifier_updatable=updatable)
    refused(stub.UpdateIdentifier, update_request(workspace, field, new, **missing), NOT_FOUND)
    assert people_rows(workspace) == []


def test_r22_identify_by_cio_id_cannot_change_the_sole_identifier_when_not_updatable(make_workspace, stub,
                                                                                     people_rows):
    workspace = make_workspace(Mode.ID_ONLY, sole_identifier_updatable=False)
    person = identify(stub, workspace, id="ab100").person
    before = people_rows(workspace)
    request = pb.IdentifyRequest(workspace_id=workspace, cio_id=person.cio_id, id="ab200")
    refused(stub.Identify, request, FAILED_PRECONDITION)
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R23


@pytest.mark.parametrize(("mode", "field", "value", "reference"), [
    (Mode.ID_ONLY, EMAIL, "p@example.com", {"id": "ab100"}),
    (Mode.EMAIL_ONLY, ID, "ab100", {"email": "p@example.com"}),
])
def test_r23_updating_a_field_that_is_not_an_identifier_is_failed_precondition(make_workspace, stub, people_rows,
                                                                               mode, field, value, reference):
    workspace = make_workspace(mode, sole_identifier_updatable=True)
    person = identify(stub, workspace, **reference).person
    before = people_rows(workspace)
    for ref_ in (reference, {"cio_id": person.cio_id}):
        refusal = refused(stub.UpdateIdentifier, update_request(workspace, field, value, **ref_),
                          FAILED_PRECONDITION)
        assert refusal.reason == "NOT_AN_IDENTIFIER"
        assert refusal.metadata["field"] == ("email" if field == EMAIL else "id")
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R24


@pytest.mark.parametrize(("field", "taken", "given"), [
    (ID, "ab100", "ab100"),
    (EMAIL, "owner@example.com", "owner@example.com"),
    (EMAIL, "owner@example.com", "OWNER@Example.COM"),
])
def test_r24_a_value_owned_by_another_person_is_already_exists_with_the_owner(stub, workspace, people_rows,
                                                                              field, taken, given):
    name = "id" if field == ID else "email"
    owner = identify(stub, workspace, **{name: taken}).person
    person = identify(stub, workspace, id="someone", email="someone@example.com").person
    before = people_rows(workspace)
    refusal = refused(stub.UpdateIdentifier, update_request(workspace, field, given, cio_id=person.cio_id),
                      ALREADY_EXISTS)
    assert refusal.reason == "IDENTIFIER_ALREADY_EXISTS"
    assert refusal.metadata["owner_cio_id"] == owner.cio_id
    assert refusal.metadata["field"] == name
    assert people_rows(workspace) == before


@pytest.mark.parametrize(("field", "value"), [(ID, "ab100"), (EMAIL, "p@example.com")])
def test_r24_the_current_value_succeeds_and_changes_nothing(make_workspace, stub, people_rows, field, value):
    # Even where changing it would be refused: it is not a change.
    workspace = make_workspace(email_updatable_by_id=False)
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    before = people_rows(workspace)
    response = stub.UpdateIdentifier(update_request(workspace, field, value, id="ab100"))
    assert response.person == person
    assert people_rows(workspace) == before


def test_r24_a_case_variant_of_the_own_email_is_a_change_of_the_stored_value(stub, workspace):
    # For email, "equal" is exactly equal: a case variant is a change, and the person owns the key.
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    response = stub.UpdateIdentifier(update_request(workspace, EMAIL, "P@Example.com", cio_id=person.cio_id))
    assert (response.person.cio_id, response.person.email) == (person.cio_id, "P@Example.com")
    assert get(stub, workspace, email="p@example.com").email == "P@Example.com"


def test_r24_cio_id_cannot_be_updated(stub, workspace, people_rows):
    person = identify(stub, workspace, id="ab100").person
    before = people_rows(workspace)
    refusal = refused(stub.UpdateIdentifier, update_request(workspace, CIO_ID, "1" * 20, cio_id=person.cio_id),
                      FAILED_PRECONDITION)
    assert refusal.reason == "CIO_ID_IMMUTABLE"
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R25


def test_r25_identify_without_a_cio_id_never_changes_an_id(stub, workspace, people_rows):
    # Outside ImportPeople (tests/e2e/test_import.py), an Identify without cio_id never changes an
    # existing id either, neither by email nor with update_only.
    identify(stub, workspace, id="ab100", email="p@example.com")
    before = people_rows(workspace)
    for request in (
        pb.IdentifyRequest(workspace_id=workspace, email="p@example.com", id="ab200"),
        pb.IdentifyRequest(workspace_id=workspace, email="p@example.com", id="ab200", update_only=True),
    ):
        refused(stub.Identify, request, FAILED_PRECONDITION)
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R30


@pytest.mark.parametrize("mode", list(Mode))
def test_r30_cio_id_can_never_be_deleted(make_workspace, stub, people_rows, mode):
    workspace = make_workspace(mode, sole_identifier_updatable=True)
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    before = people_rows(workspace)
    refusal = refused(stub.DeleteIdentifier, delete_request(workspace, CIO_ID, cio_id=person.cio_id),
                      FAILED_PRECONDITION)
    assert refusal.reason == "CIO_ID_NOT_DELETABLE"
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R31


@pytest.mark.parametrize(("field", "gone", "kept"), [(EMAIL, "email", "id"), (ID, "id", "email")])
@pytest.mark.parametrize("via", ["cio_id", "id", "email"])
def test_r31_one_of_two_identifiers_can_be_removed(stub, workspace, field, gone, kept, via):
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    response = stub.DeleteIdentifier(delete_request(workspace, field, **_ref_value(person, via)))
    assert response.person.cio_id == person.cio_id
    assert not response.person.HasField(gone)
    assert response.person.HasField(kept)
    assert get(stub, workspace, cio_id=person.cio_id) == response.person
    # The removed value is free again: it now names a new person.
    value = {"id": "ab100", "email": "p@example.com"}[gone]
    created = identify(stub, workspace, **{gone: value})
    assert created.outcome == pb.IDENTIFY_OUTCOME_CREATED


@pytest.mark.parametrize(("field", "only"), [(EMAIL, {"email": "p@example.com"}), (ID, {"id": "ab100"})])
def test_r31_the_last_identifier_cannot_be_removed(stub, workspace, people_rows, field, only):
    person = identify(stub, workspace, **only).person
    before = people_rows(workspace)
    for reference in (only, {"cio_id": person.cio_id}):
        refusal = refused(stub.DeleteIdentifier, delete_request(workspace, field, **reference), FAILED_PRECONDITION)
        assert refusal.reason == "LAST_IDENTIFIER"
    assert people_rows(workspace) == before


@pytest.mark.parametrize(("field", "only"), [(EMAIL, {"id": "ab100"}), (ID, {"email": "p@example.com"})])
def test_r31_removing_an_identifier_the_person_does_not_have_changes_nothing(stub, workspace, people_rows, field,
                                                                             only):
    person = identify(stub, workspace, **only).person
    before = people_rows(workspace)
    response = stub.DeleteIdentifier(delete_request(workspace, field, **only))
    assert response.person == person
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R32


@pytest.mark.parametrize(("mode", "field", "reason", "reference"), [
    (Mode.ID_ONLY, ID, "SOLE_IDENTIFIER_NOT_DELETABLE", {"id": "ab100"}),
    (Mode.ID_ONLY, EMAIL, "NOT_AN_IDENTIFIER", {"id": "ab100"}),
    (Mode.EMAIL_ONLY, EMAIL, "SOLE_IDENTIFIER_NOT_DELETABLE", {"email": "p@example.com"}),
    (Mode.EMAIL_ONLY, ID, "NOT_AN_IDENTIFIER", {"email": "p@example.com"}),
])
def test_r32_sole_identifier_and_non_identifiers_cannot_be_deleted(make_workspace, stub, people_rows, mode, field,
                                                                   reason, reference):
    workspace = make_workspace(mode, sole_identifier_updatable=True)
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    before = people_rows(workspace)
    for ref_ in (reference, {"cio_id": person.cio_id}):
        refusal = refused(stub.DeleteIdentifier, delete_request(workspace, field, **ref_), FAILED_PRECONDITION)
        assert refusal.reason == reason
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- GetPerson / DeletePerson (R7)


@pytest.mark.parametrize("via", ["cio_id", "id", "email"])
def test_r7_get_person_by_each_identifier(stub, workspace, via):
    person = identify(stub, workspace, id="ab100", email="Person@Example.com", attributes={"plan": "pro"}).person
    assert get(stub, workspace, **_ref_value(person, via)) == person


@pytest.mark.parametrize("via", ["cio_id", "id", "email"])
def test_r7_delete_person_by_each_identifier(stub, workspace, people_rows, via):
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    other = identify(stub, workspace, id="other").person
    response = stub.DeletePerson(pb.DeletePersonRequest(workspace_id=workspace, person=ref(**_ref_value(person, via))))
    assert response.cio_id == person.cio_id
    assert [row[0] for row in people_rows(workspace)] == [other.cio_id]
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(cio_id=person.cio_id)), NOT_FOUND)
    # Its identifiers are free: the same id is a new person with a new cio_id.
    again = identify(stub, workspace, id="ab100", email="p@example.com")
    assert again.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert again.person.cio_id != person.cio_id


@pytest.mark.parametrize("reference", [{"cio_id": "0" * 20}, {"id": "nobody"}, {"email": "nobody@example.com"}])
def test_r7_get_and_delete_of_nobody_are_not_found(stub, workspace, people_rows, reference):
    identify(stub, workspace, id="somebody")
    before = people_rows(workspace)
    refusal = refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(**reference)), NOT_FOUND)
    assert refusal.reason == "PERSON_NOT_FOUND"
    refused(stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace, person=ref(**reference)), NOT_FOUND)
    assert people_rows(workspace) == before
