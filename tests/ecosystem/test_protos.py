"""Protos that tools can read and reflection that serves them with their comments: the vendored
google/rpc protos are googleapis-common-protos', the descriptor set that reflection serves is
what `make generate` makes from protos/ (and the same contract as the generated code), and the
real grpcurl shows the proto's comments and decodes refusal details through reflection."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as reflection_pb
from grpc_reflection.v1alpha import reflection_pb2_grpc

from identity.v1 import api_keys_pb2, identity_pb2
from service.runtime.codegen import (
    DESCRIPTOR_SET, GOOGLE_RPC_PROTOS, PROJECT_ROOT, PROTO_ROOT, generate, googleapis_root,
)

COMMITTED_SET = PROJECT_ROOT / "generated" / DESCRIPTOR_SET


def _set(path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


@pytest.mark.parametrize("name", GOOGLE_RPC_PROTOS)
def test_vendored_google_rpc_protos_are_the_packages(name):
    vendored = PROTO_ROOT / "google" / "rpc" / name
    assert vendored.read_bytes() == (googleapis_root() / "google" / "rpc" / name).read_bytes(), \
        "run `make generate`: protos/google/rpc/ differs from the installed googleapis-common-protos"


def test_descriptor_set_is_what_make_generate_makes(tmp_path):
    generate(tmp_path)
    committed, fresh = _set(COMMITTED_SET), _set(tmp_path / DESCRIPTOR_SET)
    # Our own files exactly; the imported ones by name (their comments come with grpcio-tools).
    assert [f.name for f in committed.file] == [f.name for f in fresh.file], "run `make generate`"
    ours = [f.name for f in fresh.file if not f.name.startswith("google/")]
    assert ours == ["identity/v1/api_keys.proto", "identity/v1/identity.proto"]
    by_name = {f.name: f for f in committed.file}
    for file in fresh.file:
        if file.name in ours:
            assert by_name[file.name] == file, f"run `make generate`: {file.name} is stale in the descriptor set"


def _without_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _without_json_names(message.nested_type)


@pytest.mark.parametrize("module", [identity_pb2, api_keys_pb2], ids=lambda m: m.DESCRIPTOR.name)
def test_descriptor_set_is_the_generated_codes_contract(module):
    served = {f.name: f for f in _set(COMMITTED_SET).file}[module.DESCRIPTOR.name]
    assert len(served.source_code_info.location) > 50  # the comments are there
    served.ClearField("source_code_info")
    compiled = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(compiled)
    # protoc writes each field's JSON name into a descriptor set, not into generated code.
    _without_json_names(served.message_type)
    assert served == compiled, "run `make generate`: the descriptor set and generated/ disagree"


def _reflection(channel: grpc.Channel, version: str):
    if version == "v1alpha":
        return reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    return channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb.ServerReflectionResponse.FromString,
    )


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.parametrize(
    "symbol, file",
    [
        ("identity.v1.IdentityService.Identify", "identity/v1/identity.proto"),
        ("identity.v1.WorkspaceService", "identity/v1/identity.proto"),
        ("identity.v1.ApiKeyService", "identity/v1/api_keys.proto"),
        ("google.rpc.RetryInfo", "google/rpc/error_details.proto"),
        ("google.rpc.ErrorInfo", "google/rpc/error_details.proto"),
        ("google.rpc.BadRequest", "google/rpc/error_details.proto"),
        ("grpc.health.v1.Health", "grpc_health/v1/health.proto"),
        ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
    ],
)
def test_reflection_serves_files_with_their_comments(channel, version, symbol, file):
    request = reflection_pb.ServerReflectionRequest(file_containing_symbol=symbol)
    (response,) = list(_reflection(channel, version)(iter([request]), timeout=10))
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in response.file_descriptor_response.file_descriptor_proto]
    assert files[0].name == file
    if not file.startswith(("grpc/", "grpc_health/")):  # ours and googleapis' come with their comments
        assert files[0].source_code_info.location
    # Enough for a client to build the symbol: the file and everything it imports.
    pool = descriptor_pool.DescriptorPool()
    for proto in reversed(files):  # dependencies come after their importers
        pool.Add(proto)
    pool.FindFileContainingSymbol(symbol.rsplit(".", 1)[0] if symbol.endswith("Identify") else symbol)


def _grpcurl(grpcurl_bin, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(grpcurl_bin), *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_describe_shows_the_proto_comments(server_process, grpcurl_bin):
    result = _grpcurl(grpcurl_bin, "-plaintext", server_process.address, "describe", "identity.v1.IdentifyRequest")
    assert result.returncode == 0, result.stderr
    assert "// The workspace (R8)" in result.stdout
    result = _grpcurl(grpcurl_bin, "-plaintext", server_process.address, "describe", "identity.v1.NoSuch")
    assert result.returncode != 0 and "Symbol not found" in result.stderr


def test_grpcurl_decodes_refusal_details_through_reflection(server_process, grpcurl_bin):
    request = json.dumps({"workspace_id": "no such workspace!", "email": "x"})
    result = _grpcurl(grpcurl_bin, "-plaintext", "-format-error", "-d", request, server_process.address,
                      "identity.v1.IdentityService/Identify")
    assert result.returncode == 64 + 3, result
    status = json.loads(result.stdout or result.stderr)
    types = [detail["@type"] for detail in status["details"]]
    assert types == ["type.googleapis.com/google.rpc.ErrorInfo", "type.googleapis.com/google.rpc.BadRequest"]
    assert {v["field"] for v in status["details"][1]["fieldViolations"]} == {"workspace_id", "email"}


def test_grpcurl_reads_the_protos_without_reflection(grpcurl_bin):
    result = subprocess.run(
        [str(grpcurl_bin), "-import-path", "protos", "-proto", "identity/v1/identity.proto",
         "-proto", "google/rpc/error_details.proto", "describe", "google.rpc.BadRequest"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "message BadRequest" in result.stdout
