"""Domain refusals -> google.rpc.Status with one ErrorInfo, and a BadRequest for invalid fields
(R42, AIP-193). The only place where a refusal gets its gRPC code.

A refusal travels in the trailers, which a default client drops past 8 KiB, so what it echoes
is bounded: each echoed string is cut, at most MAX_VIOLATIONS fields are listed (the ErrorInfo
says how many were left out), and the whole status stays under MAX_STATUS_BYTES."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import errors

DOMAIN = "identity.v1"
MAX_TEXT = 200  # UTF-8 bytes of any one echoed string (field, description; metadata: 300)
MAX_VIOLATIONS = 10
MAX_STATUS_BYTES = 3000  # serialized; base64 in the trailer makes it 4/3 of this

_CODES: list[tuple[type[errors.DomainError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.Aborted, code_pb2.ABORTED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.OutOfRange, code_pb2.OUT_OF_RANGE),
]


def code_of(error: errors.DomainError) -> int:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return code_pb2.FAILED_PRECONDITION


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """At most `limit` bytes of UTF-8 (whole characters), saying so when cut."""
    data = text.encode("utf-8", "replace")  # a lone surrogate (never valid in a message) becomes "?"
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[: limit - 14].decode("utf-8", "ignore") + "…(truncated)"


def to_status(error: errors.DomainError) -> grpc.Status:
    return rpc_status.to_status(to_status_proto(error))


def _packed(message: object) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)  # type: ignore[arg-type]
    return detail


def to_status_proto(error: errors.DomainError) -> status_pb2.Status:
    violations = getattr(error, "violations", [])
    shown = min(len(violations), MAX_VIOLATIONS)
    while True:
        status = _build(error, violations[:shown], len(violations) - shown)
        if status.ByteSize() <= MAX_STATUS_BYTES or shown <= 1:
            return status  # one violation is at most a few hundred bytes
        shown //= 2


def _build(error: errors.DomainError, shown: list[errors.FieldViolation], omitted: int) -> status_pb2.Status:
    metadata = {cut(k, 64): cut(v, 300) for k, v in list(error.metadata.items())[:16]}
    message = error.message
    if shown or omitted:
        message = "; ".join(f"{v.field}: {v.description}" for v in shown)
        if omitted:
            metadata["violations_omitted"] = str(omitted)
            message += f"; and {omitted} more"
    status = status_pb2.Status(code=code_of(error), message=cut(message, 2 * MAX_TEXT))
    status.details.append(_packed(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        # AIP-193: RESOURCE_EXHAUSTED says when to retry.
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.FromNanoseconds(max(1_000_000, int(retry_after * 1e9)))
        status.details.append(_packed(delay))
    if shown:
        status.details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=cut(v.field), description=cut(v.description), reason=v.reason
                        )
                        for v in shown
                    ]
                )
            )
        )
    return status
