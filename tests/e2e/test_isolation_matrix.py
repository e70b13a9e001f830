"""The isolation matrix (issue 11, item 4): every RPC of IdentityService, WorkspaceService and
ApiKeyService x seven callers {no key, unknown key, revoked key, expired key, another
workspace's key, this workspace's key, admin key} x three targets {own workspace, other existing
workspace, missing workspace}, each cell with its expected code and reason, against a real
server with managed keys. No key shows in any response, refusal or log line.

"Own" is the workspace of "this workspace's key" (A), "other" the workspace of "another
workspace's key" (B). A key is checked before anything else (UNAUTHENTICATED), then its grant
(PERMISSION_DENIED, before the workspace's existence: a key learns nothing of workspaces it may
not use); only then does the call run (its own outcome: OK, or NOT_FOUND for the missing
workspace, or the rules' refusal the request is built to get)."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2

from identity.v1 import api_keys_pb2 as kpb
from identity.v1 import api_keys_pb2_grpc as kpb_grpc
from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.api.handlers import SERVICES
from tests.e2e.helpers import parse
from tests.e2e.keys_helpers import assert_no_secret, bearer, cli_admin_key, error_bytes, server_logs  # noqa: F401

C = grpc.StatusCode
CALLERS = ("no key", "unknown key", "revoked key", "expired key", "another workspace's key", "this workspace's key",
           "admin key")
TARGETS = ("own", "other", "missing")
KEY_SERVICE_RPCS = {"CreateApiKey", "ListApiKeys", "RevokeApiKey"}
ADMIN_ONLY = KEY_SERVICE_RPCS | {"CreateWorkspace"}
STREAMS = {"WatchChanges", "ExportPeople"}
CLIENT_STREAMS = {"StreamImportPeople"}  # its requests go as an iterator of messages
SEEN_SECRETS: list[str] = []


@dataclass
class World:
    stubs: dict[str, Any]
    keys: dict[str, str]  # caller -> the key it sends ("" for none)
    workspaces: dict[str, str]  # "own", "other" -> workspace_id
    admin: str
    victim: str  # a live key's key_id that non-admin RevokeApiKey calls name


def _requests(world: World, workspace: str, existing: bool) -> dict[str, Callable[[], Any]]:
    """For each RPC, a request on `workspace` built to get a definite outcome when authorized."""
    n = secrets.token_hex(4)
    csv = f"id,plan\nimported-{n},pro\n".encode()

    def revoke() -> Any:
        if not existing:
            return kpb.RevokeApiKeyRequest(key_id=secrets.token_hex(8))  # no such key
        made = world.stubs["ApiKeyService"].CreateApiKey(
            kpb.CreateApiKeyRequest(workspace_ids=[workspace]), metadata=bearer(world.admin))
        SEEN_SECRETS.append(made.secret)
        return kpb.RevokeApiKeyRequest(key_id=made.api_key.key_id)

    return {
        "Identify": lambda: pb.IdentifyRequest(workspace_id=workspace, id=f"m-{n}"),
        "UpdateIdentifier": lambda: pb.UpdateIdentifierRequest(
            workspace_id=workspace, person=pb.PersonRef(id="p1"), identifier=pb.IDENTIFIER_TYPE_EMAIL,
            value=f"p1-{n}@example.com"),
        "DeleteIdentifier": lambda: pb.DeleteIdentifierRequest(
            workspace_id=workspace, person=pb.PersonRef(email="solo@example.com"), identifier=pb.IDENTIFIER_TYPE_EMAIL),
        "GetSettings": lambda: pb.GetSettingsRequest(workspace_id=workspace),
        "GetPerson": lambda: pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(id="p1")),
        "DeletePerson": lambda: pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef(id="nobody")),
        "ImportPeople": lambda: pb.ImportPeopleRequest(workspace_id=workspace, csv=csv),
        "StreamImportPeople": lambda: [
            pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=str(uuid.uuid4())),
            pb.StreamImportPeopleRequest(chunk=csv),
        ],
        "WatchChanges": lambda: pb.WatchChangesRequest(workspace_id=workspace, end_when_caught_up=True),
        "ListPersonHistory": lambda: pb.ListPersonHistoryRequest(workspace_id=workspace, person=pb.PersonRef(id="p1")),
        "MergePeople": lambda: pb.MergePeopleRequest(
            workspace_id=workspace, primary=pb.PersonRef(id="p1"), secondary=pb.PersonRef(id="nobody")),
        "UnmergePeople": lambda: pb.UnmergePeopleRequest(workspace_id=workspace, merge_sequence=999_999),
        "ExportPeople": lambda: pb.ExportPeopleRequest(workspace_id=workspace),
        "CreateWorkspace": lambda: pb.CreateWorkspaceRequest(workspace_id=workspace),
        "UpdateSettings": lambda: pb.UpdateSettingsRequest(
            workspace_id=workspace, settings=pb.WorkspaceSettings(auto_merge=True),
            update_mask=field_mask_pb2.FieldMask(paths=["auto_merge"])),
        "CreateApiKey": lambda: kpb.CreateApiKeyRequest(workspace_ids=[workspace], description="matrix"),
        "ListApiKeys": lambda: kpb.ListApiKeysRequest(workspace_id=workspace),
        "RevokeApiKey": revoke,
    }


# What an authorized call gets: on an existing workspace, and on a missing one.
AUTHORIZED: dict[str, tuple[tuple[C, str | None], tuple[C, str | None]]] = {
    "Identify": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "UpdateIdentifier": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "DeleteIdentifier": ((C.FAILED_PRECONDITION, "LAST_IDENTIFIER"), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "GetSettings": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "GetPerson": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "DeletePerson": ((C.NOT_FOUND, "PERSON_NOT_FOUND"), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "ImportPeople": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "StreamImportPeople": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "WatchChanges": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "ListPersonHistory": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "MergePeople": ((C.NOT_FOUND, "PERSON_NOT_FOUND"), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "UnmergePeople": ((C.NOT_FOUND, "MERGE_NOT_FOUND"), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "ExportPeople": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "CreateWorkspace": ((C.ALREADY_EXISTS, "WORKSPACE_ALREADY_EXISTS"), (C.OK, None)),
    "UpdateSettings": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "CreateApiKey": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "ListApiKeys": ((C.OK, None), (C.NOT_FOUND, "WORKSPACE_NOT_FOUND")),
    "RevokeApiKey": ((C.OK, None), (C.NOT_FOUND, "API_KEY_NOT_FOUND")),
}
UNAUTHENTICATED = {
    "no key": "API_KEY_MISSING",
    "unknown key": "API_KEY_INVALID",
    "revoked key": "API_KEY_REVOKED",
    "expired key": "API_KEY_EXPIRED",
}
GRANTS = {"this workspace's key": "own", "another workspace's key": "other"}


def expected(rpc: str, caller: str, target: str) -> tuple[C, str | None]:
    if caller in UNAUTHENTICATED:
        return C.UNAUTHENTICATED, UNAUTHENTICATED[caller]
    if caller != "admin key":
        if rpc in KEY_SERVICE_RPCS:
            return C.PERMISSION_DENIED, "ADMIN_REQUIRED"
        if GRANTS[caller] != target:
            return C.PERMISSION_DENIED, "WORKSPACE_NOT_ALLOWED"
        if rpc in ADMIN_ONLY:  # CreateWorkspace, even of the key's own workspace
            return C.PERMISSION_DENIED, "ADMIN_REQUIRED"
    return AUTHORIZED[rpc][target == "missing"]


RPCS = [(service.name, method.name) for service in SERVICES for method in service.methods]
CELLS = [(service, rpc, caller, target) for service, rpc in RPCS for caller in CALLERS for target in TARGETS]


def test_the_matrix_covers_every_rpc_of_the_three_services():
    assert {service for service, _ in RPCS} == {"IdentityService", "WorkspaceService", "ApiKeyService"}
    assert {rpc for _, rpc in RPCS} == set(AUTHORIZED)
    assert len(CELLS) == len(RPCS) * 7 * 3
    print(f"\nisolation matrix: {len(RPCS)} RPCs x 7 callers x 3 workspaces = {len(CELLS)} cells")


@pytest.fixture(scope="module")
def world(start_server, database_url, server_logs) -> World:
    admin, _ = cli_admin_key(database_url)
    SEEN_SECRETS.append(admin)
    running = start_server(require_api_keys=True, pool_size=4)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stubs = {
        "IdentityService": pb_grpc.IdentityServiceStub(channel),
        "WorkspaceService": pb_grpc.WorkspaceServiceStub(channel),
        "ApiKeyService": kpb_grpc.ApiKeyServiceStub(channel),
    }
    as_admin = bearer(admin)
    workspaces = {}
    for target in ("own", "other"):
        workspace = f"iso-{target}-{secrets.token_hex(4)}"
        stubs["WorkspaceService"].CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace), metadata=as_admin)
        people = stubs["IdentityService"]
        people.Identify(pb.IdentifyRequest(workspace_id=workspace, id="p1", email="p1@example.com"), metadata=as_admin)
        people.Identify(pb.IdentifyRequest(workspace_id=workspace, email="solo@example.com"), metadata=as_admin)
        workspaces[target] = workspace

    def create(**request: Any) -> kpb.CreateApiKeyResponse:
        made = stubs["ApiKeyService"].CreateApiKey(kpb.CreateApiKeyRequest(**request), metadata=as_admin)
        SEEN_SECRETS.append(made.secret)
        return made

    own, other = create(workspace_ids=[workspaces["own"]]), create(workspace_ids=[workspaces["other"]])
    revoked, victim = create(workspace_ids=[workspaces["own"]]), create(workspace_ids=[workspaces["own"]])
    stubs["ApiKeyService"].RevokeApiKey(kpb.RevokeApiKeyRequest(key_id=revoked.api_key.key_id), metadata=as_admin)
    expiring = kpb.CreateApiKeyRequest(workspace_ids=[workspaces["own"]])
    expire_at = datetime.now(timezone.utc) + timedelta(seconds=1)
    expiring.expire_time.FromDatetime(expire_at)
    expired = stubs["ApiKeyService"].CreateApiKey(expiring, metadata=as_admin)
    SEEN_SECRETS.append(expired.secret)
    unknown = f"idk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    SEEN_SECRETS.append(unknown)
    time.sleep(max(0.0, (expire_at - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    keys = {
        "no key": "",
        "unknown key": unknown,
        "revoked key": revoked.secret,
        "expired key": expired.secret,
        "another workspace's key": other.secret,
        "this workspace's key": own.secret,
        "admin key": admin,
    }
    yield World(stubs, keys, workspaces, admin, victim.api_key.key_id)
    channel.close()
    running.stop(0)


@pytest.mark.parametrize(
    "service,rpc,caller,target", CELLS, ids=[f"{rpc}-{caller.replace(' ', '_')}-{target}" for _, rpc, caller, target in CELLS]
)
def test_cell(world: World, service: str, rpc: str, caller: str, target: str):
    workspace = world.workspaces.get(target) or f"iso-missing-{secrets.token_hex(4)}"
    build = _requests(world, workspace, target != "missing")[rpc]
    if rpc == "RevokeApiKey" and caller != "admin key":
        request = kpb.RevokeApiKeyRequest(key_id=world.victim)  # a live key: it must stay live
    else:
        request = build()
    key = world.keys[caller]
    metadata = bearer(key) if key else ()
    call = getattr(world.stubs[service], rpc)
    code, reason = expected(rpc, caller, target)
    shown: list[bytes] = []
    try:
        if rpc in STREAMS:
            shown += [m.SerializeToString() for m in call(request, metadata=metadata, timeout=15)]
        elif rpc in CLIENT_STREAMS:
            shown += [m.SerializeToString() for m in call(iter(request), metadata=metadata, timeout=15)]
        else:
            response = call(request, metadata=metadata, timeout=15)
            if rpc == "CreateApiKey":
                SEEN_SECRETS.append(response.secret)
                response.secret = ""  # its own new secret is the point of the call; no other may show
            shown.append(response.SerializeToString())
        got, got_reason = C.OK, None
    except grpc.RpcError as error:
        refusal = parse(error)
        got, got_reason = refusal.code, refusal.reason
        shown.append(error_bytes(error))
    assert (got, got_reason) == (code, reason)
    assert_no_secret(SEEN_SECRETS, *shown)


def test_the_victim_key_was_never_revoked_and_no_key_was_logged(world: World, server_logs):
    """After the matrix: non-admin RevokeApiKey calls revoked nothing; no secret in any log line."""
    listed = world.stubs["ApiKeyService"].ListApiKeys(
        kpb.ListApiKeysRequest(workspace_id=world.workspaces["own"], page_size=1000), metadata=bearer(world.admin))
    assert world.victim in {k.key_id for k in listed.api_keys}
    assert len(SEEN_SECRETS) > 10
    assert_no_secret(SEEN_SECRETS, server_logs.text)
    assert "UNAUTHENTICATED" in server_logs.text and "key_id=" in server_logs.text
