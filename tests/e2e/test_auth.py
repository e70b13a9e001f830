"""API keys: UNAUTHENTICATED without a known key, PERMISSION_DENIED for a workspace the key does
not grant; health checks need no key. A refused call changes nothing."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.api.auth import ApiKeys
from tests.e2e.helpers import refused


@pytest.fixture
def keyed(start_server, make_workspace):
    mine, theirs = make_workspace(), make_workspace()
    keys = ApiKeys.parse(f"k-mine={mine},k-admin=*")
    running = start_server(api_keys=keys, pool_size=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield channel, mine, theirs
    channel.close()
    running.stop(0)


def _with(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_a_call_without_a_key_is_unauthenticated(keyed, people_rows):
    channel, mine, _ = keyed
    stub = pb_grpc.IdentityServiceStub(channel)
    refusal = refused(stub.Identify, pb.IdentifyRequest(workspace_id=mine, id="ab100"), grpc.StatusCode.UNAUTHENTICATED)
    assert refusal.reason == "API_KEY_MISSING"
    refusal = refused(stub.Identify, pb.IdentifyRequest(workspace_id=mine, id="ab100"), grpc.StatusCode.UNAUTHENTICATED,
                      metadata=_with("k-wrong"))
    assert refusal.reason == "API_KEY_INVALID"
    assert people_rows(mine) == []


def test_a_key_reaches_only_its_workspaces(keyed, people_rows):
    channel, mine, theirs = keyed
    stub = pb_grpc.IdentityServiceStub(channel)
    created = stub.Identify(pb.IdentifyRequest(workspace_id=mine, id="ab100"), metadata=_with("k-mine"))
    assert created.outcome == pb.IDENTIFY_OUTCOME_CREATED
    refusal = refused(stub.Identify, pb.IdentifyRequest(workspace_id=theirs, id="ab100"),
                      grpc.StatusCode.PERMISSION_DENIED, metadata=_with("k-mine"))
    assert refusal.reason == "WORKSPACE_NOT_ALLOWED" and refusal.metadata["workspace_id"] == theirs
    assert people_rows(theirs) == []
    workspaces = pb_grpc.WorkspaceServiceStub(channel)
    refused(workspaces.CreateWorkspace, pb.CreateWorkspaceRequest(workspace_id="t-new-by-mine"),
            grpc.StatusCode.PERMISSION_DENIED, metadata=_with("k-mine"))
    # The admin key ("*") reaches every workspace, and may create one.
    assert stub.GetSettings(pb.GetSettingsRequest(workspace_id=theirs), metadata=_with("k-admin")).settings.auto_merge
    workspaces.CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id="t-new-by-admin-" + theirs[2:]),
                               metadata=_with("k-admin"))


def test_health_needs_no_key(keyed):
    channel, _, _ = keyed
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_api_keys_spec_is_validated():
    with pytest.raises(ValueError):
        ApiKeys.parse("no-equals-sign")
    assert not ApiKeys.parse("").enabled
