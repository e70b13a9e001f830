"""Refusals and the server around the servicers: R42 (every refusal carries google.rpc details),
R40 (a refused call changes nothing), unexpected exceptions as INTERNAL without internals, health
checking, server reflection v1 and v1alpha, and stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as reflection_pb
from grpc_reflection.v1alpha import reflection_pb2_grpc

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.db.repository import Repository
from service.domain import Mode
from service.runtime.server import ServerThread
from service.usecases import IdentityService
from tests.e2e.helpers import (
    CIO_ID,
    EMAIL,
    ID,
    UNKNOWN_CIO_ID,
    assert_no_internals,
    assert_well_formed,
    delete_request,
    identify,
    identify_request,
    parse,
    ref,
    refused,
    settings_of,
    update_request,
)

C = grpc.StatusCode
SERVICES = {
    "identity.v1.IdentityService",
    "identity.v1.WorkspaceService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


# --------------------------------------------------------------------------- a catalogue of refusals


@dataclass
class Case:
    workspace: str
    service: str  # "identity" or "workspace"
    method: str
    request: Any
    code: grpc.StatusCode
    metadata: set[str] = field(default_factory=set)  # ErrorInfo metadata keys the client can rely on


CASES: dict[str, Callable[[Any, Callable[..., str]], Case]] = {}


def catalogued(name: str):
    """Registers a refusal: a function of (stub, make_workspace) that sets up a workspace with
    people and returns the call that must be refused."""

    def register(build):
        CASES[name] = build
        return build

    return register


def _two(stub, make_workspace, **settings):
    """A workspace with A (id and email) and B (email only)."""
    workspace = make_workspace(**settings)
    a = identify(stub, workspace, id="ab100", email="a@example.com", attributes={"plan": "free"}).person
    b = identify(stub, workspace, email="b@example.com", attributes={"lang": "fr"}).person
    return workspace, a, b


def _id_only(stub, make_workspace):
    """An ID_ONLY workspace with one person with an email attribute and one without."""
    workspace = make_workspace(Mode.ID_ONLY)
    p = identify(stub, workspace, id="ab100", email="a@example.com").person
    identify(stub, workspace, id="ab200")
    return workspace, p


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


@catalogued("R2 bad update_mask")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = pb.UpdateSettingsRequest(workspace_id=workspace, settings=pb.WorkspaceSettings(auto_merge=False),
                                       update_mask=_mask("auto_merge", "nope"))
    return Case(workspace, "workspace", "UpdateSettings", request, C.INVALID_ARGUMENT, {"field"})


@catalogued("R2 people without email")
def _(stub, make_workspace):
    workspace, _p = _id_only(stub, make_workspace)
    settings = pb.WorkspaceSettings(identifier_mode=pb.IDENTIFIER_MODE_EMAIL_ONLY, auto_merge=False)
    request = pb.UpdateSettingsRequest(workspace_id=workspace, settings=settings,
                                       update_mask=_mask("identifier_mode", "auto_merge"))
    return Case(workspace, "workspace", "UpdateSettings", request, C.FAILED_PRECONDITION,
                {"offending_count", "sample_cio_ids"})


@catalogued("R2 validate_only")
def _(stub, make_workspace):
    workspace, _p = _id_only(stub, make_workspace)
    request = pb.UpdateSettingsRequest(workspace_id=workspace, validate_only=True,
                                       settings=pb.WorkspaceSettings(identifier_mode=pb.IDENTIFIER_MODE_EMAIL_ONLY))
    return Case(workspace, "workspace", "UpdateSettings", request, C.FAILED_PRECONDITION,
                {"offending_count", "sample_cio_ids"})


@catalogued("R3 invalid id")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    return Case(workspace, "identity", "Identify", identify_request(workspace, id="ab100 ", attributes={"x": 1}),
                C.INVALID_ARGUMENT, {"field"})


@catalogued("R5 unknown cio_id")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = identify_request(workspace, cio_id=UNKNOWN_CIO_ID, id="new", email="new@example.com")
    return Case(workspace, "identity", "Identify", request, C.NOT_FOUND)


@catalogued("R6 reserved name")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = identify_request(workspace, id="ab100", attributes={"email": "x", "plan": "pro"})
    return Case(workspace, "identity", "Identify", request, C.INVALID_ARGUMENT, {"field"})


@catalogued("R6 value too large")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = identify_request(workspace, id="ab100", attributes={"x": "y" * 2000, "plan": "pro"})
    return Case(workspace, "identity", "Identify", request, C.INVALID_ARGUMENT, {"field"})


@catalogued("R7 no reference")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef())
    return Case(workspace, "identity", "DeletePerson", request, C.INVALID_ARGUMENT, {"field"})


@catalogued("R7 not an identifier")
def _(stub, make_workspace):
    workspace, _p = _id_only(stub, make_workspace)
    request = pb.DeletePersonRequest(workspace_id=workspace, person=ref(email="a@example.com"))
    return Case(workspace, "identity", "DeletePerson", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R8 unknown workspace")
def _(stub, make_workspace):
    return Case("no-such-workspace", "identity", "Identify", identify_request("no-such-workspace", id="ab100"),
                C.NOT_FOUND)


@catalogued("R11 id change by email")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = identify_request(workspace, id="other", email="a@example.com", attributes={"plan": "pro"})
    return Case(workspace, "identity", "Identify", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R11 update_only nobody")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    return Case(workspace, "identity", "Identify", identify_request(workspace, id="new", update_only=True),
                C.NOT_FOUND)


@catalogued("R11/R13 two people no merge")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = identify_request(workspace, id="ab100", email="B@example.com", attributes={"plan": "pro"})
    return Case(workspace, "identity", "Identify", request, C.ALREADY_EXISTS, {"field", "owner_cio_id"})


@catalogued("R13 auto merge off")
def _(stub, make_workspace):
    workspace = make_workspace(auto_merge=False)
    identify(stub, workspace, id="ab100", attributes={"plan": "free"})
    identify(stub, workspace, email="b@example.com")
    request = identify_request(workspace, id="ab100", email="b@example.com", attributes={"plan": "pro"})
    return Case(workspace, "identity", "Identify", request, C.ALREADY_EXISTS, {"field", "owner_cio_id"})


@catalogued("R20 email change by id")
def _(stub, make_workspace):
    workspace = make_workspace(email_updatable_by_id=False)
    identify(stub, workspace, id="ab100", email="a@example.com")
    request = update_request(workspace, EMAIL, "new@example.com", id="ab100")
    return Case(workspace, "identity", "UpdateIdentifier", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R21 id change by id")
def _(stub, make_workspace):
    workspace, _a, _b = _two(stub, make_workspace)
    request = update_request(workspace, ID, "ab200", id="ab100")
    return Case(workspace, "identity", "UpdateIdentifier", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R22 sole identifier")
def _(stub, make_workspace):
    workspace, p = _id_only(stub, make_workspace)
    request = update_request(workspace, ID, "ab300", cio_id=p.cio_id)
    return Case(workspace, "identity", "UpdateIdentifier", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R23 not an identifier")
def _(stub, make_workspace):
    workspace, p = _id_only(stub, make_workspace)
    request = update_request(workspace, EMAIL, "b@example.com", cio_id=p.cio_id)
    return Case(workspace, "identity", "UpdateIdentifier", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R24 value owned")
def _(stub, make_workspace):
    workspace, a, _b = _two(stub, make_workspace)
    request = update_request(workspace, EMAIL, "B@EXAMPLE.COM", cio_id=a.cio_id)
    return Case(workspace, "identity", "UpdateIdentifier", request, C.ALREADY_EXISTS, {"field", "owner_cio_id"})


@catalogued("R30 cio_id")
def _(stub, make_workspace):
    workspace, a, _b = _two(stub, make_workspace)
    request = delete_request(workspace, CIO_ID, cio_id=a.cio_id)
    return Case(workspace, "identity", "DeleteIdentifier", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R31 last identifier")
def _(stub, make_workspace):
    workspace, _a, b = _two(stub, make_workspace)
    request = delete_request(workspace, EMAIL, cio_id=b.cio_id)
    return Case(workspace, "identity", "DeleteIdentifier", request, C.FAILED_PRECONDITION, {"field"})


@catalogued("R32 sole identifier")
def _(stub, make_workspace):
    workspace, _p = _id_only(stub, make_workspace)
    request = delete_request(workspace, ID, id="ab100")
    return Case(workspace, "identity", "DeleteIdentifier", request, C.FAILED_PRECONDITION, {"field"})


def _call(case: Case, stub, workspace_stub):
    return getattr(stub if case.service == "identity" else workspace_stub, case.method)


@pytest.mark.parametrize("name", list(CASES))
def test_r42_every_refusal_carries_google_rpc_details(stub, workspace_stub, make_workspace, name):
    case = CASES[name](stub, make_workspace)
    refusal = refused(_call(case, stub, workspace_stub), case.request, case.code)
    assert_well_formed(refusal)  # ErrorInfo, domain identity.v1, UPPER_SNAKE_CASE reason, no internals
    assert refusal.status.code == case.code.value[0]
    assert refusal.status.message == refusal.message
    assert case.metadata <= set(refusal.metadata), (case.metadata, refusal.metadata)
    if case.code == C.INVALID_ARGUMENT:
        assert refusal.bad_request is not None and refusal.bad_request.field_violations
        for violation in refusal.bad_request.field_violations:
            assert violation.field and violation.description
        assert refusal.metadata["field"] in refusal.fields
    if "owner_cio_id" in case.metadata:
        owner = stub.GetPerson(pb.GetPersonRequest(workspace_id=case.workspace,
                                                   person=ref(cio_id=refusal.metadata["owner_cio_id"]))).person
        assert owner.email.lower() == "b@example.com"


@pytest.mark.parametrize("name", list(CASES))
def test_r40_a_refused_call_changes_nothing(stub, workspace_stub, make_workspace, people_rows, name):
    case = CASES[name](stub, make_workspace)
    workspace = case.workspace if case.workspace != "no-such-workspace" else None
    people_before = people_rows(workspace) if workspace else None
    settings_before = settings_of(stub, workspace) if workspace else None
    refused(_call(case, stub, workspace_stub), case.request, case.code)
    if workspace:
        assert people_rows(workspace) == people_before
        assert settings_of(stub, workspace) == settings_before
    else:
        refused(stub.GetSettings, pb.GetSettingsRequest(workspace_id="no-such-workspace"), C.NOT_FOUND)


def test_r42_invalid_argument_names_the_field_and_the_reason_per_violation(stub, workspace):
    refusal = refused(stub.Identify, identify_request(workspace, id="", email="bad"), C.INVALID_ARGUMENT)
    violations = {v.field: v for v in refusal.bad_request.field_violations}
    assert set(violations) == {"id", "email"}
    for violation in violations.values():
        assert violation.reason and violation.reason.upper() == violation.reason


# --------------------------------------------------------------------------- unexpected errors


@pytest.fixture
def own_server(start_server) -> Iterator[tuple[ServerThread, grpc.Channel]]:
    running = start_server(pool_size=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield running, channel
    finally:
        channel.close()
        running.stop(0)


def _assert_internal(error: grpc.RpcError) -> None:
    assert error.code() == C.INTERNAL
    assert error.details() == "internal error"
    refusal = parse(error)
    for key, value in refusal.trailing_metadata:
        assert_no_internals(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)


def test_an_unexpected_exception_is_internal_without_internals(own_server, workspace, monkeypatch):
    _, channel = own_server

    async def explode(self, req):
        raise RuntimeError('SELECT * FROM people WHERE password = \'hunter2\'\nTraceback (most recent call last)')

    monkeypatch.setattr(IdentityService, "identify", explode)
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.IdentityServiceStub(channel).Identify(identify_request(workspace, id="ab100"))
    _assert_internal(caught.value)
    assert "hunter2" not in repr(caught.value.trailing_metadata())


def test_a_database_error_is_internal_without_sql(own_server, workspace, monkeypatch, people_rows):
    _, channel = own_server

    async def broken_query(self, workspace_id, lookup, lock):
        await self.conn.execute("SELECT secret_column FROM no_such_table_for_this_test")

    monkeypatch.setattr(Repository, "load", broken_query)
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.IdentityServiceStub(channel).Identify(identify_request(workspace, id="ab100"))
    _assert_internal(caught.value)
    assert "no_such_table" not in repr(caught.value.trailing_metadata())
    monkeypatch.undo()
    assert people_rows(workspace) == []
    # The server keeps serving after an unexpected error.
    assert pb_grpc.IdentityServiceStub(channel).Identify(identify_request(workspace, id="ab100")).outcome == \
        pb.IDENTIFY_OUTCOME_CREATED


# --------------------------------------------------------------------------- health


@pytest.mark.parametrize("service", ["", "identity.v1.IdentityService", "identity.v1.WorkspaceService"])
def test_health_check_is_serving(channel, service):
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
    assert caught.value.code() == C.NOT_FOUND


def test_after_stop_health_is_not_serving_or_the_channel_fails(start_server):
    running = start_server(pool_size=2)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="identity.v1.IdentityService")
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        running.stop(0)
        try:
            status = health.Check(request, timeout=2).status
        except grpc.RpcError as error:
            assert error.code() in (C.UNAVAILABLE, C.CANCELLED, C.DEADLINE_EXCEEDED)
        else:
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id="x"), timeout=2)
        assert caught.value.code() in (C.UNAVAILABLE, C.CANCELLED, C.DEADLINE_EXCEEDED)


# --------------------------------------------------------------------------- reflection


def _v1alpha(channel: grpc.Channel):
    return reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo


def _v1(channel: grpc.Channel):
    return channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb.ServerReflectionResponse.FromString,
    )


VERSIONS = {"v1alpha": _v1alpha, "v1": _v1}


def _ask(channel, version: str, *requests: reflection_pb.ServerReflectionRequest):
    return list(VERSIONS[version](channel)(iter(requests), timeout=10))


@pytest.mark.parametrize("version", list(VERSIONS))
def test_reflection_lists_the_services(channel, version):
    (response,) = _ask(channel, version, reflection_pb.ServerReflectionRequest(list_services=""))
    assert response.WhichOneof("message_response") == "list_services_response"
    names = {s.name for s in response.list_services_response.service}
    assert SERVICES <= names


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("symbol", ["identity.v1.IdentityService", "identity.v1.WorkspaceService"])
def test_reflection_describes_the_services(channel, version, symbol):
    (response,) = _ask(channel, version, reflection_pb.ServerReflectionRequest(file_containing_symbol=symbol))
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in response.file_descriptor_response.file_descriptor_proto]
    # The answer is enough for a client to build the service: the file and what it imports.
    pool = descriptor_pool.DescriptorPool()
    pending = list(files)
    while pending:
        progress = False
        for file in list(pending):
            try:
                pool.Add(file)
            except (TypeError, KeyError):
                continue
            pending.remove(file)
            progress = True
        assert progress, f"cannot resolve {[f.name for f in pending]}"
    service = pool.FindServiceByName(symbol)
    expected = pb.DESCRIPTOR.services_by_name[symbol.rsplit(".", 1)[1]]
    assert {m.name for m in service.methods} == {m.name for m in expected.methods}
    identify_method = pool.FindServiceByName("identity.v1.IdentityService").methods_by_name["Identify"]
    assert identify_method.input_type.fields_by_name["workspace_id"].number == 1


@pytest.mark.parametrize("version", list(VERSIONS))
def test_reflection_of_an_unknown_symbol_is_an_error_response(channel, version):
    (response,) = _ask(channel, version, reflection_pb.ServerReflectionRequest(file_containing_symbol="no.Such"))
    assert response.WhichOneof("message_response") == "error_response"
    assert response.error_response.error_code == C.NOT_FOUND.value[0]
