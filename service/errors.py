"""Domain refusals. Each carries a stable reason (R42); the servicer maps the class to a gRPC
status code at the edge, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str


class DomainError(Exception):
    """A refusal: the call changes nothing."""

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    """Malformed input (R3-R6, R9): answered with a BadRequest naming each bad field."""

    def __init__(self, violations: list[FieldViolation]):
        first = violations[0]
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(first.reason, message, {"field": first.field})
        self.violations = violations


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class Unauthenticated(DomainError):
    """No API key, or an unknown one."""


class PermissionDenied(DomainError):
    """The API key does not grant the workspace."""


class Aborted(DomainError):
    """Lost a race after the bounded retries (R41)."""


class OutOfRange(DomainError):
    """A cursor older than what is kept (R52)."""


class Unavailable(DomainError):
    """The database cannot be reached, or no connection was free in time."""


class DeadlineExceeded(DomainError):
    """The call's deadline passed before its database work finished; nothing was committed."""


def invalid(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description, reason)])


class ResourceExhausted(DomainError):
    """A limit was reached (the server's calls in flight, a workspace's fair share); retry after
    `retry_after` seconds (sent as a google.rpc.RetryInfo, AIP-193)."""

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None,
                 retry_after: float | None = None):
        super().__init__(reason, message, metadata)
        self.retry_after = retry_after
