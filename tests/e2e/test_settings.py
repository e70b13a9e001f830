"""Workspaces and their settings end to end through gRPC: R1 (identifiers per mode) and R2 (mode
changes through WorkspaceService.UpdateSettings, AIP-134 update_mask, validate_only)."""

from __future__ import annotations

import secrets

import grpc
import pytest
from google.protobuf import field_mask_pb2

from identity.v1 import identity_pb2 as pb
from tests.e2e.helpers import (
    assert_invalid,
    assert_well_formed,
    get,
    identify,
    identify_request,
    ref,
    refused,
    settings_of,
)

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EMAIL_OR_ID = pb.IDENTIFIER_MODE_EMAIL_OR_ID
ID_ONLY = pb.IDENTIFIER_MODE_ID_ONLY
EMAIL_ONLY = pb.IDENTIFIER_MODE_EMAIL_ONLY


def new_workspace(workspace_stub, settings: pb.WorkspaceSettings | None = None) -> str:
    """A workspace created through the contract, as a client would."""
    workspace_id = "s-" + secrets.token_hex(6)
    request = pb.CreateWorkspaceRequest(workspace_id=workspace_id)
    if settings is not None:
        request.settings.CopyFrom(settings)
    workspace_stub.CreateWorkspace(request)
    return workspace_id


def update(workspace_stub, workspace: str, paths: list[str] | None = None, validate_only: bool = False,
           **settings) -> pb.WorkspaceSettings:
    return workspace_stub.UpdateSettings(update_request(workspace, paths, validate_only, **settings)).settings


def update_request(workspace: str, paths: list[str] | None = None, validate_only: bool = False,
                   **settings) -> pb.UpdateSettingsRequest:
    """`settings` are WorkspaceSettings fields; `paths` the update_mask (None: no mask)."""
    request = pb.UpdateSettingsRequest(workspace_id=workspace, settings=pb.WorkspaceSettings(**settings),
                                       validate_only=validate_only)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return request


# --------------------------------------------------------------------------- workspaces


def test_create_workspace_without_settings_has_the_defaults(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    assert settings_of(stub, workspace) == pb.WorkspaceSettings(
        workspace_id=workspace, identifier_mode=EMAIL_OR_ID, email_updatable_by_id=True,
        sole_identifier_updatable=False, auto_merge=True, event_retention_days=30)


def test_create_workspace_takes_given_settings_as_given(workspace_stub, stub):
    given = pb.WorkspaceSettings(identifier_mode=ID_ONLY, email_updatable_by_id=False,
                                 sole_identifier_updatable=True, auto_merge=False)
    workspace = new_workspace(workspace_stub, given)
    expected = pb.WorkspaceSettings(workspace_id=workspace, event_retention_days=30)
    expected.MergeFrom(given)
    assert settings_of(stub, workspace) == expected


def test_create_workspace_twice_is_already_exists(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    refusal = refused(workspace_stub.CreateWorkspace,
                      pb.CreateWorkspaceRequest(workspace_id=workspace,
                                                settings=pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY)),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert_well_formed(refusal)
    assert settings_of(stub, workspace).identifier_mode == ID_ONLY


# --------------------------------------------------------------------------- R1


def test_r1_email_or_id_both_are_unique_identifiers_and_one_is_needed(stub, workspace):
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    assert get(stub, workspace, id="ab100") == person
    assert get(stub, workspace, email="P@EXAMPLE.com") == person
    assert_invalid(refused(stub.Identify, identify_request(workspace, attributes={"x": 1})), "id")
    # Both are reserved attribute names where they are identifiers (R6).
    for name in ("id", "email", "cio_id"):
        assert_invalid(refused(stub.Identify, identify_request(workspace, id="ab100", attributes={name: "v"})),
                       f"attributes.{name}")


def test_r1_id_only_email_is_not_an_identifier(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    assert get(stub, workspace, id="ab100").cio_id == person.cio_id
    refusal = refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(email="p@example.com")),
                      FAILED_PRECONDITION)
    assert refusal.reason == "NOT_AN_IDENTIFIER"
    # "email" is an ordinary attribute name here; "id" is reserved.
    identify(stub, workspace, id="ab200", attributes={"email": "q@example.com"})
    assert_invalid(refused(stub.Identify, identify_request(workspace, id="ab200", attributes={"id": "x"})),
                   "attributes.id")


def test_r1_email_only_id_is_not_an_identifier(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY))
    person = identify(stub, workspace, email="p@example.com", id="ab100").person
    assert get(stub, workspace, email="p@example.com").cio_id == person.cio_id
    refusal = refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id="ab100")),
                      FAILED_PRECONDITION)
    assert refusal.reason == "NOT_AN_IDENTIFIER"
    identify(stub, workspace, email="q@example.com", attributes={"id": "anything"})
    assert_invalid(refused(stub.Identify, identify_request(workspace, email="q@example.com",
                                                           attributes={"email": "x@example.com"})),
                   "attributes.email")


def test_r1_cio_id_references_a_person_in_every_mode(workspace_stub, stub):
    for mode, kw in ((EMAIL_OR_ID, {"id": "a"}), (ID_ONLY, {"id": "a"}), (EMAIL_ONLY, {"email": "a@example.com"})):
        workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=mode))
        person = identify(stub, workspace, **kw).person
        assert get(stub, workspace, cio_id=person.cio_id) == person


# --------------------------------------------------------------------------- R2: mode changes


def test_r2_to_id_only_refused_while_a_person_has_no_id(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub)
    identify(stub, workspace, id="ab100", email="a@example.com")
    lacking = {identify(stub, workspace, email=f"e{i}@example.com").person.cio_id for i in range(2)}
    settings_before, rows_before = settings_of(stub, workspace), people_rows(workspace)
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=ID_ONLY), FAILED_PRECONDITION)
    assert_well_formed(refusal)
    assert refusal.reason == "PEOPLE_WITHOUT_ID"
    assert refusal.metadata["offending_count"] == "2"
    assert set(refusal.metadata["sample_cio_ids"].split(",")) == lacking
    assert settings_of(stub, workspace) == settings_before
    assert people_rows(workspace) == rows_before


def test_r2_to_email_only_refused_while_a_person_has_no_email(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub)
    identify(stub, workspace, id="ab100", email="a@example.com")
    lacking = identify(stub, workspace, id="ab200").person.cio_id
    settings_before, rows_before = settings_of(stub, workspace), people_rows(workspace)
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=EMAIL_ONLY), FAILED_PRECONDITION)
    assert refusal.reason == "PEOPLE_WITHOUT_EMAIL"
    assert refusal.metadata["offending_count"] == "1"
    assert refusal.metadata["sample_cio_ids"] == lacking
    assert settings_of(stub, workspace) == settings_before
    assert people_rows(workspace) == rows_before


def test_r2_the_sample_is_bounded_and_the_count_is_not(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    lacking = {identify(stub, workspace, email=f"e{i}@example.com").person.cio_id for i in range(12)}
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=ID_ONLY), FAILED_PRECONDITION)
    assert refusal.metadata["offending_count"] == "12"
    sample = refusal.metadata["sample_cio_ids"].split(",")
    assert 1 <= len(sample) <= 10
    assert set(sample) <= lacking


def test_r2_id_only_to_email_or_id_refused_with_emails_shared_case_insensitively(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    sharing = {identify(stub, workspace, id="a", email="Same@Example.com").person.cio_id,
               identify(stub, workspace, id="b", email="same@example.com").person.cio_id}
    identify(stub, workspace, id="c", email="other@example.com")
    identify(stub, workspace, id="d")
    settings_before, rows_before = settings_of(stub, workspace), people_rows(workspace)
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=EMAIL_OR_ID), FAILED_PRECONDITION)
    assert refusal.reason == "DUPLICATE_EMAILS"
    assert refusal.metadata["offending_count"] == "2"
    assert set(refusal.metadata["sample_cio_ids"].split(",")) == sharing
    assert settings_of(stub, workspace) == settings_before
    assert people_rows(workspace) == rows_before


def test_r2_email_only_to_email_or_id_refused_with_shared_ids(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY))
    sharing = {identify(stub, workspace, email="a@example.com", id="shared").person.cio_id,
               identify(stub, workspace, email="b@example.com", id="shared").person.cio_id}
    identify(stub, workspace, email="c@example.com", id="SHARED")  # ids are case-sensitive: not a duplicate
    settings_before, rows_before = settings_of(stub, workspace), people_rows(workspace)
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=EMAIL_OR_ID), FAILED_PRECONDITION)
    assert refusal.reason == "DUPLICATE_IDS"
    assert refusal.metadata["offending_count"] == "2"
    assert set(refusal.metadata["sample_cio_ids"].split(",")) == sharing
    assert settings_of(stub, workspace) == settings_before
    assert people_rows(workspace) == rows_before


def test_r2_id_only_to_email_only_refused_while_a_person_has_no_email(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    identify(stub, workspace, id="a", email="a@example.com")
    lacking = identify(stub, workspace, id="b").person.cio_id
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=EMAIL_ONLY), FAILED_PRECONDITION)
    assert refusal.metadata["offending_count"] == "1"
    assert refusal.metadata["sample_cio_ids"] == lacking
    assert settings_of(stub, workspace).identifier_mode == ID_ONLY


def test_r2_email_or_id_to_id_only_makes_email_an_attribute(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    a = identify(stub, workspace, id="a", email="shared@example.com").person
    identify(stub, workspace, id="b")
    assert update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=ID_ONLY).identifier_mode == ID_ONLY
    assert settings_of(stub, workspace).identifier_mode == ID_ONLY
    # Email is an attribute now: another person may share it, and it references nobody.
    b = identify(stub, workspace, id="b", email="SHARED@example.com")
    assert b.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert b.person.cio_id != a.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(email="shared@example.com")),
            FAILED_PRECONDITION)
    # And going back is refused while two people share it.
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=EMAIL_OR_ID), FAILED_PRECONDITION)
    assert refusal.metadata["offending_count"] == "2"


def test_r2_id_only_to_email_or_id_makes_email_an_identifier(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    a = identify(stub, workspace, id="a", email="Person@Example.com").person
    update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=EMAIL_OR_ID)
    # Email references the person, case-insensitively, and is unique.
    assert get(stub, workspace, email="person@example.com").cio_id == a.cio_id
    response = identify(stub, workspace, email="PERSON@example.com", attributes={"plan": "pro"})
    assert (response.outcome, response.person.cio_id) == (pb.IDENTIFY_OUTCOME_UPDATED, a.cio_id)
    refusal = refused(stub.Identify, identify_request(workspace, id="b", email="person@EXAMPLE.com"),
                      grpc.StatusCode.FAILED_PRECONDITION)  # R11: B has another id
    assert refusal.reason == "ID_CHANGE_REQUIRES_CIO_ID"


def test_r2_email_only_to_email_or_id_makes_id_an_identifier(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY))
    a = identify(stub, workspace, email="a@example.com", id="ab100").person
    update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=EMAIL_OR_ID)
    assert get(stub, workspace, id="ab100").cio_id == a.cio_id
    assert identify(stub, workspace, id="ab100").person.cio_id == a.cio_id


def test_r2_email_or_id_to_email_only_makes_id_an_attribute(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    identify(stub, workspace, id="same", email="a@example.com")
    update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=EMAIL_ONLY)
    other = identify(stub, workspace, email="b@example.com", id="same")
    assert other.outcome == pb.IDENTIFY_OUTCOME_CREATED
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id="same")), FAILED_PRECONDITION)


def test_r2_a_round_trip_of_modes_keeps_the_values(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=ID_ONLY)
    update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=EMAIL_OR_ID)
    assert get(stub, workspace, email="p@example.com").cio_id == person.cio_id
    assert get(stub, workspace, id="ab100").cio_id == person.cio_id


# --------------------------------------------------------------------------- R2: validate_only


def test_r2_validate_only_refuses_the_same_way_and_stores_nothing(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub)
    lacking = identify(stub, workspace, email="e@example.com").person.cio_id
    before, rows = settings_of(stub, workspace), people_rows(workspace)
    for validate_only in (True, False):
        refusal = refused(workspace_stub.UpdateSettings,
                          update_request(workspace, ["identifier_mode"], validate_only, identifier_mode=ID_ONLY),
                          FAILED_PRECONDITION)
        assert (refusal.reason, refusal.metadata["offending_count"], refusal.metadata["sample_cio_ids"]) == (
            "PEOPLE_WITHOUT_ID", "1", lacking)
    assert settings_of(stub, workspace) == before
    assert people_rows(workspace) == rows


def test_r2_validate_only_accepts_and_stores_nothing(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub)
    identify(stub, workspace, id="ab100", email="p@example.com")
    before, rows = settings_of(stub, workspace), people_rows(workspace)
    answer = update(workspace_stub, workspace, ["identifier_mode", "auto_merge"], True,
                    identifier_mode=ID_ONLY, auto_merge=False)
    assert answer == pb.WorkspaceSettings(workspace_id=workspace, identifier_mode=ID_ONLY,
                                          email_updatable_by_id=True, sole_identifier_updatable=False,
                                          auto_merge=False, event_retention_days=30)
    assert settings_of(stub, workspace) == before
    assert people_rows(workspace) == rows
    # Email still is an identifier.
    assert get(stub, workspace, email="p@example.com").id == "ab100"


# --------------------------------------------------------------------------- R2: update_mask (AIP-134)


def test_r2_update_mask_changes_only_the_named_fields(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    answer = update(workspace_stub, workspace, ["auto_merge"], identifier_mode=ID_ONLY,
                    sole_identifier_updatable=True, auto_merge=False)
    expected = pb.WorkspaceSettings(workspace_id=workspace, identifier_mode=EMAIL_OR_ID, email_updatable_by_id=True,
                                    sole_identifier_updatable=False, auto_merge=False, event_retention_days=30)
    assert answer == expected
    assert settings_of(stub, workspace) == expected


def test_r2_update_mask_can_set_a_field_to_false(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    update(workspace_stub, workspace, ["email_updatable_by_id"], email_updatable_by_id=False)
    assert settings_of(stub, workspace).email_updatable_by_id is False
    assert settings_of(stub, workspace).auto_merge is True


def test_r2_update_mask_star_replaces_every_field(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    update(workspace_stub, workspace, ["*"], identifier_mode=EMAIL_ONLY, sole_identifier_updatable=True)
    assert settings_of(stub, workspace) == pb.WorkspaceSettings(
        workspace_id=workspace, identifier_mode=EMAIL_ONLY, email_updatable_by_id=False,
        sole_identifier_updatable=True, auto_merge=False, event_retention_days=30)


def test_r2_no_update_mask_changes_the_fields_with_non_default_values(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    update(workspace_stub, workspace, None, identifier_mode=ID_ONLY, sole_identifier_updatable=True)
    assert settings_of(stub, workspace) == pb.WorkspaceSettings(
        workspace_id=workspace, identifier_mode=ID_ONLY, email_updatable_by_id=True,
        sole_identifier_updatable=True, auto_merge=True, event_retention_days=30)


def test_r2_the_workspace_id_in_settings_is_output_only(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    answer = update(workspace_stub, workspace, ["auto_merge", "email_updatable_by_id"], workspace_id="elsewhere",
                    auto_merge=False)
    assert answer.workspace_id == workspace
    assert settings_of(stub, workspace).auto_merge is False


@pytest.mark.parametrize(("paths", "settings", "field"), [
    (["no_such_field"], {}, "update_mask"),
    (["auto_merge", "workspace_id"], {}, "update_mask"),
    (["identifier_mode"], {"identifier_mode": pb.IDENTIFIER_MODE_UNSPECIFIED}, "settings.identifier_mode"),
    (["identifier_mode"], {"identifier_mode": 42}, "settings.identifier_mode"),
])
def test_r2_a_malformed_update_is_invalid_and_changes_nothing(workspace_stub, stub, paths, settings, field):
    workspace = new_workspace(workspace_stub)
    before = settings_of(stub, workspace)
    request = update_request(workspace, paths, auto_merge=False, **settings)
    assert_invalid(refused(workspace_stub.UpdateSettings, request), field)
    assert settings_of(stub, workspace) == before


def test_r2_update_settings_of_an_unknown_workspace_is_not_found(workspace_stub):
    refusal = refused(workspace_stub.UpdateSettings, update_request("no-such-workspace", ["auto_merge"]),
                      grpc.StatusCode.NOT_FOUND)
    assert_well_formed(refusal)


def test_r2_a_setting_change_applies_to_the_next_call(workspace_stub, stub):
    workspace = new_workspace(workspace_stub)
    identify(stub, workspace, id="ab100")
    b = identify(stub, workspace, email="b@example.com").person
    update(workspace_stub, workspace, ["auto_merge"], auto_merge=False)
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", email="b@example.com"),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert refusal.metadata["owner_cio_id"] == b.cio_id
    update(workspace_stub, workspace, ["auto_merge"], auto_merge=True)
    assert identify(stub, workspace, id="ab100", email="b@example.com").outcome == pb.IDENTIFY_OUTCOME_MERGED


# --------------------------------------------------------------------------- direct switches between the single-identifier modes


def test_r2_email_only_to_id_only_when_everyone_has_a_unique_id(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY))
    a = identify(stub, workspace, email="a@example.com", id="ab100").person
    identify(stub, workspace, email="b@example.com", id="AB100")  # ids are case-sensitive: distinct
    assert update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=ID_ONLY).identifier_mode == ID_ONLY
    # id is the identifier now: it references the person, and email is an attribute.
    assert get(stub, workspace, id="ab100").cio_id == a.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(email="a@example.com")),
            FAILED_PRECONDITION)
    again = identify(stub, workspace, id="ab100", email="b@example.com")
    assert (again.outcome, again.person.cio_id) == (pb.IDENTIFY_OUTCOME_UPDATED, a.cio_id)


def test_r2_email_only_to_id_only_refused_with_shared_ids(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY))
    sharing = {identify(stub, workspace, email="a@example.com", id="shared").person.cio_id,
               identify(stub, workspace, email="b@example.com", id="shared").person.cio_id}
    identify(stub, workspace, email="c@example.com", id="own")
    settings_before, rows_before = settings_of(stub, workspace), people_rows(workspace)
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=ID_ONLY), FAILED_PRECONDITION)
    assert refusal.reason == "DUPLICATE_IDS"
    assert set(refusal.metadata["sample_cio_ids"].split(",")) == sharing
    assert settings_of(stub, workspace) == settings_before
    assert people_rows(workspace) == rows_before


def test_r2_email_only_to_id_only_refused_while_a_person_has_no_id(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=EMAIL_ONLY))
    identify(stub, workspace, email="a@example.com", id="ab100")
    lacking = identify(stub, workspace, email="b@example.com").person.cio_id
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=ID_ONLY), FAILED_PRECONDITION)
    assert (refusal.reason, refusal.metadata["sample_cio_ids"]) == ("PEOPLE_WITHOUT_ID", lacking)


def test_r2_id_only_to_email_only_when_everyone_has_a_unique_email(workspace_stub, stub):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    a = identify(stub, workspace, id="a", email="Person@Example.com").person
    identify(stub, workspace, id="a2", email="other@example.com")
    update(workspace_stub, workspace, ["identifier_mode"], identifier_mode=EMAIL_ONLY)
    assert get(stub, workspace, email="PERSON@example.com").cio_id == a.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id="a")), FAILED_PRECONDITION)


def test_r2_id_only_to_email_only_refused_with_emails_shared_case_insensitively(workspace_stub, stub, people_rows):
    workspace = new_workspace(workspace_stub, pb.WorkspaceSettings(identifier_mode=ID_ONLY))
    sharing = {identify(stub, workspace, id="a", email="Same@Example.com").person.cio_id,
               identify(stub, workspace, id="b", email="same@example.com").person.cio_id}
    settings_before, rows_before = settings_of(stub, workspace), people_rows(workspace)
    refusal = refused(workspace_stub.UpdateSettings, update_request(workspace, ["identifier_mode"],
                                                                    identifier_mode=EMAIL_ONLY), FAILED_PRECONDITION)
    assert refusal.reason == "DUPLICATE_EMAILS"
    assert set(refusal.metadata["sample_cio_ids"].split(",")) == sharing
    assert settings_of(stub, workspace) == settings_before
    assert people_rows(workspace) == rows_before
