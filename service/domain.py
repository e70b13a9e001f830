"""Plain domain types shared by the rules core, the repository and the servicer.

No gRPC and no SQL here: these are the values the rules core decides on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

JsonValue = Any  # a value that json.dumps accepts (str, int, float, bool, None, list, dict)


class Mode(enum.Enum):
    """Which of id and email are identifiers of a workspace (R1)."""

    EMAIL_OR_ID = "EMAIL_OR_ID"
    ID_ONLY = "ID_ONLY"
    EMAIL_ONLY = "EMAIL_ONLY"


class Field(enum.Enum):
    """A field that can name or identify a person."""

    CIO_ID = "cio_id"
    ID = "id"
    EMAIL = "email"


@dataclass(frozen=True)
class Settings:
    """A workspace's identifier settings (section 2 of the rules)."""

    workspace_id: str
    mode: Mode = Mode.EMAIL_OR_ID
    email_updatable_by_id: bool = True
    sole_identifier_updatable: bool = False
    auto_merge: bool = True
    event_retention_days: int = 30  # how long the change log keeps events (R52)
    # Fair share (issue 11), per server process; 0: the server's default.
    max_calls_per_second: int = 0
    max_concurrent_calls: int = 0


@dataclass(frozen=True)
class Person:
    """A person as stored. `email` is kept as given; matching uses its normalised key."""

    cio_id: str
    id: str | None
    email: str | None
    attributes: Mapping[str, JsonValue]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Ref:
    """Names one existing person by exactly one field (R7)."""

    field: Field
    value: str


@dataclass(frozen=True)
class IdentifyInput:
    """An Identify request in domain terms; None means "not given"."""

    workspace_id: str
    cio_id: str | None = None
    id: str | None = None
    email: str | None = None
    attributes: Mapping[str, JsonValue] = field(default_factory=dict)
    update_only: bool = False
    from_import: bool = False  # a row of a bulk import (R25)


class Outcome(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    MERGED = "MERGED"
    UNCHANGED = "UNCHANGED"


@dataclass(frozen=True)
class IdentifyResult:
    person: Person
    outcome: Outcome
    merged_cio_ids: tuple[str, ...] = ()
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Match:
    """R72: an identifier a request gave, and the cio_id of the stored person it matched (None:
    nobody)."""

    field: Field
    value: str
    cio_id: str | None


@dataclass(frozen=True)
class Explanation:
    """R72: the rule that decided a call, and whom each identifier it gave matched."""

    rule: str
    matches: tuple[Match, ...] = ()


@dataclass(frozen=True)
class Changed:
    """The result of a call that changes one person: the person (as presented) and why."""

    person: Person
    explanation: Explanation


@dataclass(frozen=True)
class Merged:
    """The result of MergePeople (R60): the primary after it, the secondary's cio_id, the
    sequence of the MERGED event (0 for a dry run) and why."""

    person: Person
    merged_cio_id: str
    merge_sequence: int
    explanation: Explanation


@dataclass(frozen=True)
class Unmerged:
    """The result of UnmergePeople (R62): both people as they are after it."""

    primary: Person
    secondary: Person


@dataclass(frozen=True)
class Call:
    """What every call that writes carries besides its request: the RPC's name (recorded in
    the change log, R50), the client's request_id (R50, R70) and validate_only (R71)."""

    method: str
    request_id: str = ""
    validate_only: bool = False
    # R70: what makes two requests "the same" (a digest of the request but its request_id),
    # and how the response is stored: its bytes and the cio_ids it shows (an erasure deletes
    # the stored responses that show an erased person, R54). Set by the edge with request_id.
    fingerprint: bytes = b""
    encode: Callable[[Any], tuple[bytes, list[str]]] | None = None
    # The key the response is stored under, when not request_id itself (an import's rows).
    store_as: str = ""


@dataclass(frozen=True)
class Replayed:
    """R70: the stored response of an earlier call with the same request_id and request."""

    response: bytes
