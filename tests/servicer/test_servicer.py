"""The servicer in-process (no network): proto in, proto out, through the real use cases and
database, and a refusal becomes its code and a google.rpc.Status in the trailing metadata
('grpc-status-details-bin', R42), as the edge (service.api.handlers) sends it."""

from __future__ import annotations

import asyncio
import secrets

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from identity.v1 import identity_pb2 as pb
from service.api.servicer import IdentityApi
from service.api.status import to_status
from service.db.engine import create_pool
from service.db.unit_of_work import UnitOfWork
from service.errors import DomainError
from service.usecases import IdentityService

IDENTITY = pb.DESCRIPTOR.services_by_name["IdentityService"]
WORKSPACE = pb.DESCRIPTOR.services_by_name["WorkspaceService"]
DETAILS_KEY = "grpc-status-details-bin"


@pytest.fixture(scope="module")
def server(database_url, engine):
    """The servicer on a pool of its own, with the event loop that runs its coroutines."""
    loop = asyncio.new_event_loop()
    pool = create_pool(database_url, size=2)
    loop.run_until_complete(pool.open())
    yield loop, IdentityApi(IdentityService(UnitOfWork(pool)))
    loop.run_until_complete(pool.close())
    loop.close()


def call(server, service, method: str, request):
    """(response, trailing_metadata, code, details), as a client would see them."""
    assert method in service.methods_by_name
    loop, api = server
    try:
        return loop.run_until_complete(getattr(api, method)(request)), (), grpc.StatusCode.OK, ""
    except DomainError as refusal:
        status = to_status(refusal)
        return None, status.trailing_metadata, status.code, status.details


def details_of(trailing_metadata) -> tuple[status_pb2.Status, dict]:
    values = [value for key, value in trailing_metadata if key == DETAILS_KEY]
    assert len(values) == 1, f"no {DETAILS_KEY} in {trailing_metadata}"
    status = status_pb2.Status.FromString(values[0])
    found = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return status, found


@pytest.fixture
def workspace(server):
    workspace_id = "g-" + secrets.token_hex(6)
    request = pb.CreateWorkspaceRequest(workspace_id=workspace_id)
    response, _, code, _ = call(server, WORKSPACE, "CreateWorkspace", request)
    assert code == grpc.StatusCode.OK
    assert response.settings.identifier_mode == pb.IDENTIFIER_MODE_EMAIL_OR_ID
    return workspace_id


def test_identify_creates_then_updates(server, workspace):
    response, _, code, _ = call(server, IDENTITY, "Identify",
                                pb.IdentifyRequest(workspace_id=workspace, id="ab100", email="P@Example.com"))
    assert code == grpc.StatusCode.OK
    assert response.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert (response.person.id, response.person.email) == ("ab100", "P@Example.com")
    again, _, code, _ = call(server, IDENTITY, "Identify", pb.IdentifyRequest(workspace_id=workspace,
                                                                              email="p@example.com"))
    assert code == grpc.StatusCode.OK
    assert again.outcome == pb.IDENTIFY_OUTCOME_UNCHANGED
    assert again.person == response.person
    fetched, _, code, _ = call(server, IDENTITY, "GetPerson", pb.GetPersonRequest(
        workspace_id=workspace, person=pb.PersonRef(cio_id=response.person.cio_id)))
    assert code == grpc.StatusCode.OK and fetched.person == response.person


def test_get_settings(server, workspace):
    response, _, code, _ = call(server, IDENTITY, "GetSettings", pb.GetSettingsRequest(workspace_id=workspace))
    assert code == grpc.StatusCode.OK
    assert response.settings == pb.WorkspaceSettings(workspace_id=workspace,
                                                     identifier_mode=pb.IDENTIFIER_MODE_EMAIL_OR_ID,
                                                     email_updatable_by_id=True, sole_identifier_updatable=False,
                                                     auto_merge=True, event_retention_days=30)


def test_a_refusal_carries_its_code_and_error_info_in_the_trailing_metadata(server, workspace):
    owner, _, _, _ = call(server, IDENTITY, "Identify", pb.IdentifyRequest(workspace_id=workspace, id="ab100"))
    other, _, _, _ = call(server, IDENTITY, "Identify", pb.IdentifyRequest(workspace_id=workspace, id="ab200"))
    request = pb.UpdateIdentifierRequest(workspace_id=workspace, person=pb.PersonRef(cio_id=other.person.cio_id),
                                         identifier=pb.IDENTIFIER_TYPE_ID, value="ab100")
    response, trailing, code, message = call(server, IDENTITY, "UpdateIdentifier", request)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    status, found = details_of(trailing)
    assert status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert status.message == message
    info = found["ErrorInfo"]
    assert info.domain == "identity.v1"
    assert info.reason == "IDENTIFIER_ALREADY_EXISTS"
    assert info.metadata["owner_cio_id"] == owner.person.cio_id


def test_an_invalid_argument_carries_a_bad_request(server, workspace):
    _, trailing, code, _ = call(server, IDENTITY, "Identify", pb.IdentifyRequest(workspace_id=workspace, id=" ab"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    status, found = details_of(trailing)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert found["ErrorInfo"].domain == "identity.v1"
    assert [v.field for v in found["BadRequest"].field_violations] == ["id"]


def test_a_failed_precondition_of_update_settings(server, workspace):
    call(server, IDENTITY, "Identify", pb.IdentifyRequest(workspace_id=workspace, email="p@example.com"))
    request = pb.UpdateSettingsRequest(workspace_id=workspace,
                                       settings=pb.WorkspaceSettings(identifier_mode=pb.IDENTIFIER_MODE_ID_ONLY))
    _, trailing, code, _ = call(server, WORKSPACE, "UpdateSettings", request)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    _, found = details_of(trailing)
    assert found["ErrorInfo"].metadata["offending_count"] == "1"


def test_an_unknown_workspace_is_not_found(server):
    _, trailing, code, _ = call(server, IDENTITY, "GetSettings", pb.GetSettingsRequest(workspace_id="no-such-ws"))
    assert code == grpc.StatusCode.NOT_FOUND
    _, found = details_of(trailing)
    assert found["ErrorInfo"].reason == "WORKSPACE_NOT_FOUND"
