"""Validation end to end through gRPC (R3-R8): INVALID_ARGUMENT with a BadRequest naming the
field, FAILED_PRECONDITION for a reference by a field that is not an identifier (R7), NOT_FOUND for
an unknown workspace (R8) or cio_id (R5). A refused call stores nothing."""

from __future__ import annotations

import grpc
import pytest

from identity.v1 import identity_pb2 as pb
from service.domain import Mode
from tests.e2e.helpers import (
    EMAIL,
    ID,
    UNKNOWN_CIO_ID,
    assert_invalid,
    assert_well_formed,
    attrs,
    delete_request,
    identify,
    identify_request,
    ref,
    refused,
    update_request,
)

INVALID_IDS = {
    "empty": "",
    "leading space": " ab100",
    "trailing space": "ab100 ",
    "trailing newline": "ab100\n",
    "tab inside": "ab\t100",
    "NUL": "ab\x00100",
    "DEL": "ab\x7f100",
    "C1 control": "ab\x85100",
    "151 ASCII bytes": "a" * 151,
    "152 UTF-8 bytes in 76 characters": "é" * 76,
}
VALID_IDS = ["a", "a" * 150, "é" * 75, "ab 100", "AB100", "ид-100", "user:42/x"]

LONG_LOCAL = "a" * 64
DOMAIN_189 = "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
DOMAIN_190 = "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"
INVALID_EMAILS = {
    "empty": "",
    "no at": "plainaddress",
    "no domain": "p@",
    "no local part": "@example.com",
    "space inside": "p q@example.com",
    "leading space": " p@example.com",
    "trailing space": "p@example.com ",
    "two ats": "p@@example.com",
    "empty label": "p@example..com",
    "255 characters": LONG_LOCAL + "@" + DOMAIN_190,
    "control character": "p\x07@example.com",
}
VALID_EMAILS = [
    "p@example.com",
    "Person@Example.com",
    "first.last+tag@sub.example.co.uk",
    "someone@no-dns-lookup-for-this-domain-q7z.com",
    LONG_LOCAL + "@" + DOMAIN_189,  # 254 characters
]


# --------------------------------------------------------------------------- R3


@pytest.mark.parametrize("value", list(INVALID_IDS.values()), ids=list(INVALID_IDS))
def test_r3_an_invalid_id_is_invalid_argument_everywhere(stub, workspace, people_rows, value):
    person = identify(stub, workspace, email="p@example.com").person
    before = people_rows(workspace)
    assert_invalid(refused(stub.Identify, identify_request(workspace, id=value)), "id")
    assert_invalid(refused(stub.Identify, identify_request(workspace, id=value, email="p@example.com")), "id")
    assert_invalid(refused(stub.UpdateIdentifier, update_request(workspace, ID, value, cio_id=person.cio_id)),
                   "value")
    assert_invalid(refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id=value))),
                   "person.id")
    assert_invalid(refused(stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace, person=ref(id=value))),
                   "person.id")
    assert people_rows(workspace) == before


@pytest.mark.parametrize("value", VALID_IDS)
def test_r3_a_valid_id_is_accepted_and_stored_as_given(stub, workspace, value):
    response = identify(stub, workspace, id=value)
    assert response.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert response.person.id == value
    assert stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=ref(id=value))).person == response.person


# --------------------------------------------------------------------------- R4


@pytest.mark.parametrize("value", list(INVALID_EMAILS.values()), ids=list(INVALID_EMAILS))
def test_r4_an_invalid_email_is_invalid_argument_everywhere(stub, workspace, people_rows, value):
    person = identify(stub, workspace, id="ab100").person
    before = people_rows(workspace)
    assert_invalid(refused(stub.Identify, identify_request(workspace, email=value)), "email")
    assert_invalid(refused(stub.Identify, identify_request(workspace, id="ab100", email=value)), "email")
    assert_invalid(refused(stub.UpdateIdentifier, update_request(workspace, EMAIL, value, cio_id=person.cio_id)),
                   "value")
    assert_invalid(refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(email=value))),
                   "person.email")
    assert_invalid(refused(stub.DeleteIdentifier, delete_request(workspace, ID, email=value)), "person.email")
    assert people_rows(workspace) == before


@pytest.mark.parametrize("value", VALID_EMAILS)
def test_r4_a_valid_email_is_accepted_and_stored_as_given(stub, workspace, value):
    response = identify(stub, workspace, email=value)
    assert response.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert response.person.email == value
    found = stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=ref(email=value.upper()))).person
    assert found.cio_id == response.person.cio_id


def test_r4_an_invalid_email_attribute_in_id_only_is_invalid(make_workspace, stub, people_rows):
    # Where email is an attribute, the request's email field is still an email (R4, R12).
    workspace = make_workspace(Mode.ID_ONLY)
    assert_invalid(refused(stub.Identify, identify_request(workspace, id="ab100", email="not-an-email")), "email")
    assert people_rows(workspace) == []


def test_r3_r4_every_bad_field_is_named(stub, workspace, people_rows):
    refusal = refused(stub.Identify, identify_request(workspace, id=" x", email="nope", cio_id="BAD",
                                                      attributes={"a" * 151: 1}))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(refusal.fields) >= {"id", "email", "cio_id", "attributes." + "a" * 151}
    for violation in refusal.bad_request.field_violations:
        assert violation.description
    assert people_rows(workspace) == []


# --------------------------------------------------------------------------- R5

BAD_CIO_IDS = {
    "empty": "",
    "short": "abc",
    "21 characters": "a" * 21,
    "upper case": "ABCDEFGHIJKLMNOPQRST",
    "punctuation": "abcdefghijklmnopqr-t",
    "space": " bcdefghijklmnopqrst",
}


@pytest.mark.parametrize("value", list(BAD_CIO_IDS.values()), ids=list(BAD_CIO_IDS))
def test_r5_a_malformed_cio_id_is_invalid_argument(stub, workspace, people_rows, value):
    assert_invalid(refused(stub.Identify, identify_request(workspace, cio_id=value, id="ab100")), "cio_id")
    for call, request in (
        (stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(cio_id=value))),
        (stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace, person=ref(cio_id=value))),
        (stub.UpdateIdentifier, update_request(workspace, ID, "ab100", cio_id=value)),
        (stub.DeleteIdentifier, delete_request(workspace, ID, cio_id=value)),
    ):
        assert_invalid(refused(call, request), "person.cio_id")
    assert people_rows(workspace) == []


def test_r5_a_cio_id_outside_the_documented_alphabet_is_invalid(stub, workspace, people_rows):
    # PersonRef.cio_id: 20 characters of Crockford's base32 (0-9, a-z without i, l, o, u). A value
    # the service could never have generated is malformed, whatever it names.
    for value in ("abcdefghijklmnopqrst", "uuuuuuuuuuuuuuuuuuuu", "0123456789ilouilouil"):
        refusal = refused(
            stub.GetPerson,
            pb.GetPersonRequest(workspace_id=workspace, person=ref(cio_id=value)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert refusal.reason == "INVALID_CIO_ID"
        refused(stub.Identify, identify_request(workspace, cio_id=value, id="ab100"), grpc.StatusCode.INVALID_ARGUMENT)
    assert people_rows(workspace) == []


def test_r5_an_unknown_cio_id_is_not_found_everywhere(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", email="p@example.com")
    before = people_rows(workspace)
    for call, request in (
        (stub.Identify, identify_request(workspace, cio_id=UNKNOWN_CIO_ID)),
        (stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(cio_id=UNKNOWN_CIO_ID))),
        (stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace, person=ref(cio_id=UNKNOWN_CIO_ID))),
        (stub.UpdateIdentifier, update_request(workspace, ID, "ab200", cio_id=UNKNOWN_CIO_ID)),
        (stub.DeleteIdentifier, delete_request(workspace, EMAIL, cio_id=UNKNOWN_CIO_ID)),
    ):
        assert_well_formed(refused(call, request, grpc.StatusCode.NOT_FOUND))
    assert people_rows(workspace) == before


def test_r5_a_cio_id_of_another_workspace_is_not_found(make_workspace, stub):
    other = make_workspace()
    foreign = identify(stub, other, id="ab100").person.cio_id
    workspace = make_workspace()
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(cio_id=foreign)),
            grpc.StatusCode.NOT_FOUND)
    refused(stub.Identify, identify_request(workspace, cio_id=foreign), grpc.StatusCode.NOT_FOUND)


# --------------------------------------------------------------------------- R6


def test_r6_at_most_300_attribute_names(stub, workspace, people_rows):
    many = {f"a{i}": i for i in range(301)}
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", attributes=many))
    assert_invalid(refusal, "attributes")
    assert people_rows(workspace) == []
    del many["a300"]
    assert len(attrs(identify(stub, workspace, id="ab100", attributes=many).person)) == 300


def test_r6_the_300_names_hold_for_the_person_as_stored(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", attributes={f"a{i}": i for i in range(300)})
    before = people_rows(workspace)
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", attributes={"one_more": 1}),
                      grpc.StatusCode.FAILED_PRECONDITION)
    assert_well_formed(refusal)
    assert people_rows(workspace) == before
    # Replacing and removing stays possible at the limit.
    response = identify(stub, workspace, id="ab100", attributes={"a0": "x", "a1": None, "one_more": 1})
    assert len(attrs(response.person)) == 300


@pytest.mark.parametrize("name", ["", "n" * 151, "é" * 76])
def test_r6_an_attribute_name_is_1_to_150_bytes(stub, workspace, people_rows, name):
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", attributes={name: 1}))
    assert_invalid(refusal, f"attributes.{name}")
    assert people_rows(workspace) == []


@pytest.mark.parametrize("name", ["n", "n" * 150, "é" * 75, "with space", "ünïcode"])
def test_r6_valid_attribute_names_are_accepted(stub, workspace, name):
    assert attrs(identify(stub, workspace, id="ab100", attributes={name: "v"}).person) == {name: "v"}


def test_r6_an_attribute_value_is_at_most_1000_bytes_of_json(stub, workspace, people_rows):
    at_limit = "x" * 998  # "xxx..." with its quotes: 1000 bytes
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", attributes={"big": at_limit + "x"}))
    assert_invalid(refusal, "attributes.big")
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100",
                                                      attributes={"list": ["y" * 200] * 5}))
    assert_invalid(refusal, "attributes.list")
    assert people_rows(workspace) == []
    assert attrs(identify(stub, workspace, id="ab100", attributes={"big": at_limit}).person) == {"big": at_limit}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_r6_a_number_that_json_cannot_hold_is_invalid(stub, workspace, people_rows, number):
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", attributes={"x": number}))
    assert_invalid(refusal, "attributes.x")
    assert people_rows(workspace) == []


@pytest.mark.parametrize("name", ["id", "email", "cio_id"])
def test_r6_identifier_names_are_reserved_where_they_are_identifiers(stub, workspace, people_rows, name):
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", attributes={name: "x@example.com"}))
    assert_invalid(refusal, f"attributes.{name}")
    assert people_rows(workspace) == []


def test_r6_a_null_value_is_allowed_and_removes(stub, workspace):
    identify(stub, workspace, id="ab100", attributes={"gone": "soon", "kept": 1})
    assert attrs(identify(stub, workspace, id="ab100", attributes={"gone": None}).person) == {"kept": 1}


# --------------------------------------------------------------------------- R7


@pytest.mark.parametrize("present", [True, False])
def test_r7_a_reference_must_carry_one_of_cio_id_id_email(stub, workspace, present):
    person_ref = pb.PersonRef() if present else None
    for call, request in (
        (stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=person_ref)),
        (stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace, person=person_ref)),
        (stub.UpdateIdentifier, pb.UpdateIdentifierRequest(workspace_id=workspace, person=person_ref,
                                                           identifier=ID, value="ab100")),
        (stub.DeleteIdentifier, pb.DeleteIdentifierRequest(workspace_id=workspace, person=person_ref,
                                                           identifier=ID)),
    ):
        assert_invalid(refused(call, request), "person")


@pytest.mark.parametrize(("mode", "reference", "name"), [
    (Mode.ID_ONLY, {"email": "p@example.com"}, "email"),
    (Mode.EMAIL_ONLY, {"id": "ab100"}, "id"),
])
def test_r7_a_reference_by_a_field_that_is_not_an_identifier_is_failed_precondition(
    make_workspace, stub, people_rows, mode, reference, name
):
    workspace = make_workspace(mode, sole_identifier_updatable=True)
    identify(stub, workspace, id="ab100", email="p@example.com")
    before = people_rows(workspace)
    for call, request in (
        (stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(**reference))),
        (stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace, person=ref(**reference))),
        (stub.UpdateIdentifier, update_request(workspace, ID if mode == Mode.ID_ONLY else EMAIL,
                                               "new@example.com" if mode == Mode.EMAIL_ONLY else "new",
                                               **reference)),
        (stub.DeleteIdentifier, delete_request(workspace, EMAIL if mode == Mode.ID_ONLY else ID, **reference)),
    ):
        refusal = refused(call, request, grpc.StatusCode.FAILED_PRECONDITION)
        assert_well_formed(refusal)
        assert f"{name} is not an identifier in this workspace" in refusal.message
        assert refusal.metadata["field"] == name
    assert people_rows(workspace) == before


def test_r7_update_identifier_needs_an_identifier_type(stub, workspace, people_rows):
    person = identify(stub, workspace, id="ab100").person
    before = people_rows(workspace)
    for call, request in (
        (stub.UpdateIdentifier, update_request(workspace, pb.IDENTIFIER_TYPE_UNSPECIFIED, "x", cio_id=person.cio_id)),
        (stub.UpdateIdentifier, update_request(workspace, 99, "x", cio_id=person.cio_id)),
        (stub.DeleteIdentifier, delete_request(workspace, pb.IDENTIFIER_TYPE_UNSPECIFIED, cio_id=person.cio_id)),
    ):
        assert_invalid(refused(call, request), "identifier")
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R8


def _every_call(stub, workspace_stub, workspace_id: str):
    cio = UNKNOWN_CIO_ID
    return [
        (stub.Identify, identify_request(workspace_id, id="ab100")),
        (stub.UpdateIdentifier, update_request(workspace_id, EMAIL, "p@example.com", id="ab100")),
        (stub.DeleteIdentifier, delete_request(workspace_id, EMAIL, cio_id=cio)),
        (stub.GetSettings, pb.GetSettingsRequest(workspace_id=workspace_id)),
        (stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace_id, person=ref(cio_id=cio))),
        (stub.DeletePerson, pb.DeletePersonRequest(workspace_id=workspace_id, person=ref(id="ab100"))),
        (workspace_stub.UpdateSettings, pb.UpdateSettingsRequest(
            workspace_id=workspace_id, settings=pb.WorkspaceSettings(auto_merge=False))),
    ]


def test_r8_an_unknown_workspace_is_not_found_for_every_call(stub, workspace_stub):
    for call, request in _every_call(stub, workspace_stub, "no-such-workspace"):
        refusal = refused(call, request, grpc.StatusCode.NOT_FOUND)
        assert_well_formed(refusal)
        assert refusal.reason == "WORKSPACE_NOT_FOUND"


@pytest.mark.parametrize("workspace_id", ["", "has space", "w" * 65, "ünï", "a/b", "a.b"])
def test_r8_a_malformed_workspace_id_is_invalid_argument_for_every_call(stub, workspace_stub, workspace_id):
    calls = _every_call(stub, workspace_stub, workspace_id)
    calls.append((workspace_stub.CreateWorkspace, pb.CreateWorkspaceRequest(workspace_id=workspace_id)))
    for call, request in calls:
        assert_invalid(refused(call, request), "workspace_id")


def test_r8_a_workspace_id_of_64_characters_of_the_allowed_kinds_is_accepted(stub, workspace_stub):
    import secrets

    workspace_id = ("Aa0_-" + secrets.token_hex(32))[:64]
    workspace_stub.CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace_id))
    assert stub.GetSettings(pb.GetSettingsRequest(workspace_id=workspace_id)).settings.workspace_id == workspace_id


def test_r8_nothing_crosses_workspaces(make_workspace, stub):
    one, two = make_workspace(), make_workspace()
    identify(stub, one, id="ab100", email="p@example.com")
    for reference in ({"id": "ab100"}, {"email": "p@example.com"}):
        refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=two, person=ref(**reference)),
                grpc.StatusCode.NOT_FOUND)
