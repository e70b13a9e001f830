"""What a client that knows only the contract needs to call the service and read its refusals:
calling helpers, and the google.rpc details of a refusal (R42) parsed from the real call."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from identity.v1 import identity_pb2 as pb

DOMAIN = "identity.v1"
UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")
CIO_ID_SHAPE = re.compile(r"[0-9a-z]{20}")
UNKNOWN_CIO_ID = "0" * 20  # well formed (R5), never generated in practice

ID = pb.IDENTIFIER_TYPE_ID
EMAIL = pb.IDENTIFIER_TYPE_EMAIL
CIO_ID = pb.IDENTIFIER_TYPE_CIO_ID


@dataclass
class Refusal:
    """A failed call as a client sees it: the code, the message and the google.rpc details."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status | None
    error_info: error_details_pb2.ErrorInfo | None
    bad_request: error_details_pb2.BadRequest | None
    trailing_metadata: tuple = field(default=())

    @property
    def reason(self) -> str | None:
        return self.error_info.reason if self.error_info else None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.error_info.metadata) if self.error_info else {}

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.bad_request.field_violations] if self.bad_request else []


def parse(error: grpc.RpcError) -> Refusal:
    status = rpc_status.from_call(error)
    info = bad = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                assert info is None, "more than one ErrorInfo"
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
    return Refusal(error.code(), error.details() or "", status, info, bad, tuple(error.trailing_metadata() or ()))


def refused(call: Callable[..., Any], request: Any, code: grpc.StatusCode | None = None, **kwargs: Any) -> Refusal:
    """Makes the call, which must fail (with `code` when given); returns the parsed refusal."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, **kwargs)
    refusal = parse(caught.value)
    if code is not None:
        assert refusal.code == code, (refusal.code, refusal.message, refusal.reason)
    return refusal


def assert_invalid(refusal: Refusal, field_name: str) -> None:
    """INVALID_ARGUMENT with a BadRequest naming `field_name` (R3-R6, R42)."""
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT, (refusal.code, refusal.message)
    assert refusal.bad_request is not None, "INVALID_ARGUMENT without a BadRequest"
    assert field_name in refusal.fields, (field_name, refusal.fields)
    assert_well_formed(refusal)


def assert_well_formed(refusal: Refusal) -> None:
    """R42: an ErrorInfo with the service's domain and an UPPER_SNAKE_CASE reason; no internals."""
    assert refusal.status is not None, f"no google.rpc.Status for {refusal.code}: {refusal.message}"
    assert refusal.error_info is not None, "no ErrorInfo"
    assert refusal.error_info.domain == DOMAIN
    assert UPPER_SNAKE.fullmatch(refusal.error_info.reason), refusal.error_info.reason
    assert_no_internals(refusal.message)


def assert_no_internals(text: str) -> None:
    lowered = text.lower()
    for leak in ("traceback", "select ", "insert ", "update people", "psycopg", "sqlalchemy", 'file "'):
        assert leak not in lowered, f"{leak!r} leaked into {text!r}"


# --- building requests -------------------------------------------------------------------


def ref(**which: str) -> pb.PersonRef:
    (name, value), = which.items()
    return pb.PersonRef(**{name: value})


def identify(
    stub: Any, workspace_id: str, attributes: dict[str, Any] | None = None, timeout: float | None = None, **kw: Any
) -> pb.IdentifyResponse:
    return stub.Identify(identify_request(workspace_id, attributes, **kw), timeout=timeout)


def identify_request(workspace_id: str, attributes: dict[str, Any] | None = None, **kw: Any) -> pb.IdentifyRequest:
    request = pb.IdentifyRequest(workspace_id=workspace_id, **kw)
    if attributes is not None:
        request.attributes.update(attributes)
    return request


def get(stub: Any, workspace_id: str, **which: str) -> pb.Person:
    return stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace_id, person=ref(**which))).person


def update_request(workspace_id: str, identifier: int, value: str, **which: str) -> pb.UpdateIdentifierRequest:
    return pb.UpdateIdentifierRequest(
        workspace_id=workspace_id, person=ref(**which), identifier=identifier, value=value
    )


def delete_request(workspace_id: str, identifier: int, **which: str) -> pb.DeleteIdentifierRequest:
    return pb.DeleteIdentifierRequest(workspace_id=workspace_id, person=ref(**which), identifier=identifier)


def attrs(person: pb.Person) -> dict[str, Any]:
    return MessageToDict(person.attributes)


def plain(person: pb.Person) -> dict[str, Any]:
    """A person's identifiers and attributes as plain values."""
    return {
        "cio_id": person.cio_id,
        "id": person.id if person.HasField("id") else None,
        "email": person.email if person.HasField("email") else None,
        "attributes": attrs(person),
    }


def settings_of(stub: Any, workspace_id: str) -> pb.WorkspaceSettings:
    return stub.GetSettings(pb.GetSettingsRequest(workspace_id=workspace_id)).settings


def workspace_world(engine: Any, workspace: str) -> tuple[list, list]:
    """The people and the change log of a workspace, up to the random cio_ids (each named by
    the order of its first event) and the times: two workspaces that went through the same
    decisions compare equal."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        people = conn.execute(
            sa.text("SELECT cio_id, id, email, attributes FROM people WHERE workspace_id = :w"), {"w": workspace}
        ).all()
        events = conn.execute(
            sa.text("SELECT cio_id, kind, body FROM person_events WHERE workspace_id = :w ORDER BY sequence"),
            {"w": workspace},
        ).all()
    names: dict[str, str] = {}

    def name(cio_id: str) -> str:
        return names.setdefault(cio_id, f"p{len(names)}")

    for cio_id, _, _ in events:
        name(cio_id)
    logged = []
    for cio_id, kind, body in events:
        body = dict(body)
        if "merged" in body:
            merged = {k: v for k, v in body["merged"].items() if k not in ("created_at", "updated_at")}
            merged["cio_id"] = name(merged["cio_id"])
            body["merged"] = merged
        logged.append((name(cio_id), kind, json.dumps(body, sort_keys=True)))
    stored = sorted((name(c), i, e, json.dumps(a, sort_keys=True)) for c, i, e, a in people)
    return stored, logged
