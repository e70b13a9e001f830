"""Managed API keys (issue 11): the first admin key from the command line, ApiKeyService, keys
scoped to workspaces, revocation reaching every server within a second, expiry, and secrets
that never show in a log line, a listing or a refusal."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from identity.v1 import api_keys_pb2 as kpb
from identity.v1 import api_keys_pb2_grpc as kpb_grpc
from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.api.auth import ApiKeys
from tests.e2e.helpers import refused
from tests.e2e.keys_helpers import assert_no_secret, bearer, cli_admin_key, error_bytes, server_logs  # noqa: F401
from tests.e2e.test_tls import processes  # noqa: F401 - real server processes, stopped at the end

SECRETS: list[str] = []  # every secret this module saw: none may show in the servers' logs
KEY_IDS: list[str] = []


class Keyed:
    def __init__(self, running, admin: str):
        self.running = running
        self.channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        self.keys = kpb_grpc.ApiKeyServiceStub(self.channel)
        self.people = pb_grpc.IdentityServiceStub(self.channel)
        self.workspaces = pb_grpc.WorkspaceServiceStub(self.channel)
        self.admin = bearer(admin)

    def create_key(self, **request) -> tuple[str, kpb.ApiKey]:
        response = self.keys.CreateApiKey(kpb.CreateApiKeyRequest(**request), metadata=self.admin, timeout=10)
        SECRETS.append(response.secret)
        KEY_IDS.append(response.api_key.key_id)
        return response.secret, response.api_key


@pytest.fixture(scope="module")
def admin(database_url, engine, server_logs) -> str:
    secret, key_id = cli_admin_key(database_url)
    SECRETS.append(secret)
    KEY_IDS.append(key_id)
    return secret


@pytest.fixture(scope="module")
def keyed(start_server, admin, server_logs):
    running = start_server(require_api_keys=True, pool_size=2)
    keyed = Keyed(running, admin)
    yield keyed
    keyed.channel.close()
    running.stop(0)


@pytest.fixture
def two_workspaces(keyed):
    made = []
    for _ in range(2):
        workspace_id = "k-" + __import__("secrets").token_hex(6)
        keyed.workspaces.CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace_id), metadata=keyed.admin)
        made.append(workspace_id)
    return made


def test_the_cli_admin_key_is_stored_only_as_a_salted_digest(admin, engine):
    key_id = admin.split("_")[1]
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE key_id = :k"), {"k": key_id}).mappings().one()
        dump = "\n".join(str(r) for r in conn.execute(sa.text("SELECT * FROM api_keys")))
    assert row["admin"] and len(row["salt"]) == 16 and len(row["digest"]) == 32
    assert_no_secret([admin], dump, bytes(row["digest"]).hex(), bytes(row["digest"]))


def test_a_workspace_key_reaches_its_workspace_only_and_manages_nothing(keyed, two_workspaces):
    mine, theirs = two_workspaces
    secret, key = keyed.create_key(workspace_ids=[mine], description="tenant one")
    assert secret.startswith(f"idk_{key.key_id}_") and list(key.workspace_ids) == [mine] and not key.admin
    who = bearer(secret)
    assert keyed.people.Identify(pb.IdentifyRequest(workspace_id=mine, id="u1"), metadata=who).outcome == pb.IDENTIFY_OUTCOME_CREATED
    denied = refused(keyed.people.GetSettings, pb.GetSettingsRequest(workspace_id=theirs), grpc.StatusCode.PERMISSION_DENIED,
                     metadata=who)
    assert denied.reason == "WORKSPACE_NOT_ALLOWED"
    # Keys, workspaces and fair-share limits are the operator's (README, "Security").
    for call, request in (
        (keyed.keys.CreateApiKey, kpb.CreateApiKeyRequest(workspace_ids=[mine])),
        (keyed.keys.ListApiKeys, kpb.ListApiKeysRequest(workspace_id=mine)),
        (keyed.keys.RevokeApiKey, kpb.RevokeApiKeyRequest(key_id=key.key_id)),
        (keyed.workspaces.CreateWorkspace, pb.CreateWorkspaceRequest(workspace_id=mine)),
    ):
        assert refused(call, request, grpc.StatusCode.PERMISSION_DENIED, metadata=who).reason == "ADMIN_REQUIRED"
    raise_limit = pb.UpdateSettingsRequest(
        workspace_id=mine, settings=pb.WorkspaceSettings(max_calls_per_second=1000),
        update_mask=field_mask_pb2.FieldMask(paths=["max_calls_per_second"]),
    )
    assert refused(keyed.workspaces.UpdateSettings, raise_limit, grpc.StatusCode.PERMISSION_DENIED, metadata=who).reason == "ADMIN_REQUIRED"
    # Its other settings it may change; the admin may change the limits.
    other = pb.UpdateSettingsRequest(workspace_id=mine, settings=pb.WorkspaceSettings(auto_merge=False),
                                     update_mask=field_mask_pb2.FieldMask(paths=["auto_merge"]))
    assert not keyed.workspaces.UpdateSettings(other, metadata=who).settings.auto_merge
    assert keyed.workspaces.UpdateSettings(raise_limit, metadata=keyed.admin).settings.max_calls_per_second == 1000
    # The key still works: the refusals above revoked nothing.
    assert keyed.people.GetSettings(pb.GetSettingsRequest(workspace_id=mine), metadata=who).settings.max_calls_per_second == 1000


def test_listing_shows_keys_but_never_a_secret_and_pages(keyed, two_workspaces):
    mine, _ = two_workspaces
    made = [keyed.create_key(workspace_ids=[mine], description=f"k{i}") for i in range(3)]
    first = keyed.keys.ListApiKeys(kpb.ListApiKeysRequest(workspace_id=mine, page_size=2), metadata=keyed.admin)
    assert len(first.api_keys) == 2 and first.next_page_token
    second = keyed.keys.ListApiKeys(kpb.ListApiKeysRequest(workspace_id=mine, page_size=2, page_token=first.next_page_token),
                                    metadata=keyed.admin)
    assert not second.next_page_token
    listed = [k.key_id for k in (*first.api_keys, *second.api_keys)]
    assert listed == sorted(k.key_id for _, k in made)
    every = keyed.keys.ListApiKeys(kpb.ListApiKeysRequest(page_size=1000, show_revoked=True), metadata=keyed.admin)
    assert_no_secret(SECRETS, first.SerializeToString(), second.SerializeToString(), every.SerializeToString())


def test_a_revoked_key_is_refused_by_another_server_within_a_second(keyed, start_server, two_workspaces):
    mine, _ = two_workspaces
    other = Keyed(start_server(require_api_keys=True, pool_size=2), keyed.admin[0][1].split(" ", 1)[1])
    try:
        secret, key = keyed.create_key(workspace_ids=[mine])
        request = pb.GetSettingsRequest(workspace_id=mine)
        deadline = time.monotonic() + 5
        while True:  # the other server learns of the new key at its next poll
            try:
                other.people.GetSettings(request, metadata=bearer(secret), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "a new key was not accepted within 5 s"
                time.sleep(0.02)
        revoked = keyed.keys.RevokeApiKey(kpb.RevokeApiKeyRequest(key_id=key.key_id), metadata=keyed.admin)
        revoked_at = time.monotonic()
        assert revoked.api_key.HasField("revoke_time")
        while True:
            try:
                other.people.GetSettings(request, metadata=bearer(secret), timeout=5)
            except grpc.RpcError as error:
                latency = time.monotonic() - revoked_at
                refusal = refused(other.people.GetSettings, request, grpc.StatusCode.UNAUTHENTICATED, metadata=bearer(secret))
                assert refusal.reason == "API_KEY_REVOKED" and refusal.metadata == {"key_id": key.key_id}
                assert_no_secret(SECRETS, error_bytes(error))
                break
            assert time.monotonic() - revoked_at < 1.0, "the revocation did not reach the other server within 1 s"
            time.sleep(0.01)
        print(f"\nrevocation reached the other server in {latency * 1000:.0f} ms")
        # Revoking again changes nothing.
        again = keyed.keys.RevokeApiKey(kpb.RevokeApiKeyRequest(key_id=key.key_id), metadata=keyed.admin)
        assert again.api_key.revoke_time == revoked.api_key.revoke_time
    finally:
        other.channel.close()
        other.running.stop(0)


def test_an_expired_key_is_refused(keyed, two_workspaces):
    mine, _ = two_workspaces
    expire = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    request = kpb.CreateApiKeyRequest(workspace_ids=[mine])
    request.expire_time.FromDatetime(expire)
    response = keyed.keys.CreateApiKey(request, metadata=keyed.admin)
    SECRETS.append(response.secret)
    who = bearer(response.secret)
    time.sleep(0.6)  # the server's next poll
    keyed.people.GetSettings(pb.GetSettingsRequest(workspace_id=mine), metadata=who)
    time.sleep(max(0.0, (expire - datetime.now(timezone.utc)).total_seconds()) + 0.1)
    refusal = refused(keyed.people.GetSettings, pb.GetSettingsRequest(workspace_id=mine), grpc.StatusCode.UNAUTHENTICATED,
                      metadata=who)
    assert refusal.reason == "API_KEY_EXPIRED"


def test_unknown_and_tampered_keys_are_unauthenticated(keyed, two_workspaces):
    mine, _ = two_workspaces
    secret, key = keyed.create_key(workspace_ids=[mine])
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (tampered, f"idk_{'0' * 16}_{'a' * 43}", "not-a-key", secret + "x"):
        try:
            keyed.people.GetSettings(pb.GetSettingsRequest(workspace_id=mine), metadata=bearer(wrong))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert_no_secret([secret, wrong], error_bytes(error))
        else:
            pytest.fail("a wrong key was accepted")
    assert refused(keyed.people.GetSettings, pb.GetSettingsRequest(workspace_id=mine), metadata=()).reason == "API_KEY_MISSING"


def test_bad_requests_name_their_fields_and_never_echo_a_key(keyed, two_workspaces):
    mine, _ = two_workspaces
    secret, _ = keyed.create_key(workspace_ids=[mine])
    past = kpb.CreateApiKeyRequest(workspace_ids=["no such!", mine], description="x" * 201)
    past.expire_time.FromDatetime(datetime.now(timezone.utc) - timedelta(minutes=1))
    cases = [
        (keyed.keys.CreateApiKey, kpb.CreateApiKeyRequest(), {"workspace_ids"}),
        (keyed.keys.CreateApiKey, kpb.CreateApiKeyRequest(admin=True, workspace_ids=[mine]), {"workspace_ids"}),
        (keyed.keys.CreateApiKey, past, {"workspace_ids[0]", "expire_time", "description"}),
        (keyed.keys.ListApiKeys, kpb.ListApiKeysRequest(page_size=-1, page_token="zz"), {"page_size", "page_token"}),
        (keyed.keys.RevokeApiKey, kpb.RevokeApiKeyRequest(key_id=secret), {"key_id"}),
    ]
    for call, request, fields in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=keyed.admin)
        refusal = refused(call, request, grpc.StatusCode.INVALID_ARGUMENT, metadata=keyed.admin)
        assert set(refusal.fields) == fields, refusal.fields
        assert_no_secret(SECRETS, error_bytes(caught.value))
    missing = refused(keyed.keys.CreateApiKey, kpb.CreateApiKeyRequest(workspace_ids=[mine, "k-missing-ws"]),
                      grpc.StatusCode.NOT_FOUND, metadata=keyed.admin)
    assert missing.reason == "WORKSPACE_NOT_FOUND" and missing.metadata["workspace_id"] == "k-missing-ws"
    unknown = refused(keyed.keys.RevokeApiKey, kpb.RevokeApiKeyRequest(key_id="0" * 16), grpc.StatusCode.NOT_FOUND,
                      metadata=keyed.admin)
    assert unknown.reason == "API_KEY_NOT_FOUND"


def test_static_keys_still_work_beside_managed_ones(start_server, admin, make_workspace):
    mine = make_workspace()
    running = start_server(api_keys=ApiKeys.parse(f"dev-key={mine}"), pool_size=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            people = pb_grpc.IdentityServiceStub(channel)
            assert people.GetSettings(pb.GetSettingsRequest(workspace_id=mine), metadata=bearer("dev-key")).settings.workspace_id == mine
            assert people.GetSettings(pb.GetSettingsRequest(workspace_id=mine), metadata=bearer(admin)).settings.workspace_id == mine
            refused(people.GetSettings, pb.GetSettingsRequest(workspace_id=mine), grpc.StatusCode.UNAUTHENTICATED,
                    metadata=bearer("dev-key-wrong"))
    finally:
        running.stop(0)


@pytest.mark.parametrize("method", ["CreateApiKey", "ListApiKeys", "RevokeApiKey"])
def test_hostile_bytes_and_fields_to_the_key_service_are_never_internal(keyed, method):
    raw = keyed.channel.unary_unary(f"/identity.v1.ApiKeyService/{method}", request_serializer=None,
                                    response_deserializer=None)
    garbage = [b"\xff\xff\xff", b"\x0a\x05abc", b"\x0a" * 50_000]
    for body in garbage:
        with pytest.raises(grpc.RpcError) as caught:
            raw(body, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the key first, before any decoding
        with pytest.raises(grpc.RpcError) as caught:
            raw(body, metadata=keyed.admin, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    hostile = {
        "CreateApiKey": [
            kpb.CreateApiKeyRequest(workspace_ids=["w"] * 1000 + ["\x00bad"]),
            kpb.CreateApiKeyRequest(workspace_ids=["x" * 100_000]),
            kpb.CreateApiKeyRequest(admin=True, description="\x00" * 300),
            kpb.CreateApiKeyRequest(admin=True, expire_time={"seconds": 10**15}),
            kpb.CreateApiKeyRequest(admin=True, expire_time={"seconds": -(10**15), "nanos": -5}),
        ],
        "ListApiKeys": [
            kpb.ListApiKeysRequest(workspace_id="\x00"),
            kpb.ListApiKeysRequest(page_size=2**31 - 1, page_token="\u2603" * 100),
        ],
        "RevokeApiKey": [kpb.RevokeApiKeyRequest(key_id="\x00" * 16), kpb.RevokeApiKeyRequest(key_id="'; DROP TABLE api_keys; --")],
    }[method]
    stub = getattr(keyed.keys, method)
    for request in hostile:
        refusal = refused(stub, request, grpc.StatusCode.INVALID_ARGUMENT, metadata=keyed.admin)
        assert refusal.bad_request is not None and refusal.fields
        assert "SELECT" not in refusal.message and "api_keys" not in refusal.message


def test_a_revocation_in_the_database_reaches_every_worker_process_within_a_second(database_url, engine, tmp_path,
                                                                                     processes):
    """A real server with two worker processes, keys from a file and from the CLI; the key is
    revoked with `identity-service keys revoke` (in the database: no worker is told), and every
    worker refuses it within a second. The log (JSON) names key ids, never a secret."""
    from click.testing import CliRunner

    from service.cli import cli
    from tests.e2e.test_tls import ServerProcess

    static = "static-" + __import__("secrets").token_hex(16)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the first admin key, for the tests\n{static}=*\n")
    server = ServerProcess(["--listen", "127.0.0.1:{port}", "--database-url", database_url, "--workers", "2",
                            "--api-keys-file", str(keys_file), "--log-format", "json"], tmp_path / "server.log")
    processes.append(server)
    server.wait_serving(None)
    workspace = "w-" + __import__("secrets").token_hex(5)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        pb_grpc.WorkspaceServiceStub(channel).CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace),
                                                              metadata=bearer(static), timeout=10)
    made = CliRunner().invoke(cli, ["keys", "create", "-w", workspace, "--json", "--database-url", database_url])
    assert made.exit_code == 0, made.output
    created = __import__("json").loads(made.stdout)
    secret = created["secret"]
    SECRETS.extend([secret, static])
    # Sixteen connections: SO_REUSEPORT spreads them over both workers.
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(16)]
    try:
        stubs = [pb_grpc.IdentityServiceStub(c) for c in channels]
        request = pb.GetSettingsRequest(workspace_id=workspace)
        for stub in stubs:  # a key just made in the database works at once, on every worker
            stub.GetSettings(request, metadata=bearer(secret), timeout=10)
        revoked = CliRunner().invoke(cli, ["keys", "revoke", created["key_id"], "--database-url", database_url])
        assert revoked.exit_code == 0 and f"revoked API key {created['key_id']}" in revoked.output
        start = time.monotonic()
        live = set(range(len(stubs)))
        latencies = []
        while live:
            for i in list(live):
                try:
                    stubs[i].GetSettings(request, metadata=bearer(secret), timeout=10)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                    latencies.append(time.monotonic() - start)
                    live.discard(i)
            assert time.monotonic() - start < 1.0, f"{len(live)} connections still accept the revoked key after 1 s"
            time.sleep(0.005)
    finally:
        for channel in channels:
            channel.close()
    print(f"\nrevocation reached every worker in {max(latencies) * 1000:.0f} ms")
    assert server.terminate() == 0
    lines = [__import__("json").loads(line) for line in server.log().splitlines() if line.startswith("{")]
    served = {line["process"] for line in lines if line.get("method") == "GetSettings" and line.get("code") == "OK"}
    assert len(served) == 2, "the calls did not reach both workers"
    assert {line.get("key_id") for line in lines if line.get("method") == "GetSettings"} == {created["key_id"]}
    assert_no_secret([secret, static], server.log())


def test_the_logs_name_key_ids_and_never_a_secret(server_logs):
    """Last of the module: everything the servers above logged."""
    assert len(SECRETS) >= 8
    assert_no_secret(SECRETS, server_logs.text)
    assert any(f"created API key {k}" in server_logs.text for k in KEY_IDS)
    assert any(f"key_id={k}" in server_logs.text for k in KEY_IDS)  # the call lines name the key
