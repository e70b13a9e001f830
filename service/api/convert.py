"""Proto messages <-> domain values. Shapes only: no rule is decided here."""

from __future__ import annotations

import math
from typing import Any, Callable

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from identity.v1 import identity_pb2 as pb
from service.domain import Explanation, Field, IdentifyInput, Mode, Person, Ref, Settings
from service.errors import FieldViolation, InvalidArgument, invalid
from service.rules.decisions import ABSENT
from service.rules.events import Identifiers, Recorded

MODE_TO_PB = {
    Mode.EMAIL_OR_ID: pb.IDENTIFIER_MODE_EMAIL_OR_ID,
    Mode.ID_ONLY: pb.IDENTIFIER_MODE_ID_ONLY,
    Mode.EMAIL_ONLY: pb.IDENTIFIER_MODE_EMAIL_ONLY,
}
MODE_FROM_PB = {v: k for k, v in MODE_TO_PB.items()}
FIELD_FROM_PB = {
    pb.IDENTIFIER_TYPE_ID: Field.ID,
    pb.IDENTIFIER_TYPE_EMAIL: Field.EMAIL,
    pb.IDENTIFIER_TYPE_CIO_ID: Field.CIO_ID,
}
OUTCOME_TO_PB = {
    "CREATED": pb.IDENTIFY_OUTCOME_CREATED,
    "UPDATED": pb.IDENTIFY_OUTCOME_UPDATED,
    "MERGED": pb.IDENTIFY_OUTCOME_MERGED,
    "UNCHANGED": pb.IDENTIFY_OUTCOME_UNCHANGED,
}
FIELD_TO_PB = {v: k for k, v in FIELD_FROM_PB.items()}
SETTINGS_FIELDS = (
    "identifier_mode",
    "email_updatable_by_id",
    "sole_identifier_updatable",
    "auto_merge",
    "event_retention_days",
    "max_calls_per_second",
    "max_concurrent_calls",
)
# Fair-share limits (issue 11): the largest value each accepts (0 is the server's default).
LIMIT_FIELDS = {"max_calls_per_second": 1_000_000, "max_concurrent_calls": 10_000}
MAX_RETENTION_DAYS = 3650
EVENT_KIND_TO_PB = {
    "CREATED": pb.PERSON_EVENT_KIND_CREATED,
    "UPDATED": pb.PERSON_EVENT_KIND_UPDATED,
    "MERGED": pb.PERSON_EVENT_KIND_MERGED,
    "UNMERGED": pb.PERSON_EVENT_KIND_UNMERGED,
    "DELETED": pb.PERSON_EVENT_KIND_DELETED,
    "ERASED": pb.PERSON_EVENT_KIND_ERASED,
}


def _value(value: struct_pb2.Value) -> Any:
    """A Struct value as plain Python. Numbers are doubles: whole ones come back as ints so they
    stay ints in JSON; non-finite ones are kept, for R6 to refuse with the field named."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {name: _value(v) for name, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None  # null_value, or no kind set


def attributes_from_pb(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {name: _value(v) for name, v in struct.fields.items()}


def _timestamp(value: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def person_to_pb(person: Person) -> pb.Person:
    message = pb.Person(
        cio_id=person.cio_id,
        create_time=_timestamp(person.created_at),
        update_time=_timestamp(person.updated_at),
    )
    if person.id is not None:
        message.id = person.id
    if person.email is not None:
        message.email = person.email
    message.attributes.update(dict(person.attributes))
    return message


def settings_to_pb(settings: Settings) -> pb.WorkspaceSettings:
    return pb.WorkspaceSettings(
        workspace_id=settings.workspace_id,
        identifier_mode=MODE_TO_PB[settings.mode],
        email_updatable_by_id=settings.email_updatable_by_id,
        sole_identifier_updatable=settings.sole_identifier_updatable,
        auto_merge=settings.auto_merge,
        event_retention_days=settings.event_retention_days,
        max_calls_per_second=settings.max_calls_per_second,
        max_concurrent_calls=settings.max_concurrent_calls,
    )


def retention_from_pb(days: int, field: str, default: int | None = None) -> int:
    if days == 0 and default is not None:
        return default
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise invalid(field, f"must be 1 to {MAX_RETENTION_DAYS} days", "INVALID_RETENTION")
    return days


def limit_from_pb(value: int, name: str) -> int:
    """A fair-share limit (issue 11): 0 (the server's default) up to LIMIT_FIELDS[name]."""
    top = LIMIT_FIELDS[name]
    if not 0 <= value <= top:
        raise invalid(f"settings.{name}", f"must be 0 (the server's default) to {top:,}", "INVALID_LIMIT")
    return value


def explanation_to_pb(why: Explanation) -> pb.Decision:
    return pb.Decision(
        rule=why.rule,
        matches=[
            pb.IdentifierMatch(identifier=FIELD_TO_PB[m.field], value=m.value, matched_cio_id=m.cio_id or "")
            for m in why.matches
        ],
    )


def _json_value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def _identifiers_to_pb(value: Identifiers) -> pb.Identifiers:
    message = pb.Identifiers()
    if value.id is not None:
        message.id = value.id
    if value.email is not None:
        message.email = value.email
    return message


def event_to_pb(record: Recorded) -> pb.PersonEvent:
    event = record.event
    message = pb.PersonEvent(
        sequence=record.sequence,
        kind=EVENT_KIND_TO_PB[event.kind.value],
        cio_id=event.cio_id,
        rpc=record.rpc,
        request_id=record.request_id,
        commit_time=_timestamp(record.commit_time),
        unmerged_sequence=event.unmerged_sequence,
    )
    if event.before is not None:
        message.identifiers_before.CopyFrom(_identifiers_to_pb(event.before))
    if event.after is not None:
        message.identifiers_after.CopyFrom(_identifiers_to_pb(event.after))
    for change in event.changes:
        item = message.attribute_changes.add(name=change.name)
        if change.old is not ABSENT:
            item.old_value.CopyFrom(_json_value(change.old))
        if change.new is not ABSENT:
            item.new_value.CopyFrom(_json_value(change.new))
    if event.merged is not None:
        message.merged_cio_id = event.merged.cio_id
        message.merged_person.CopyFrom(person_to_pb(event.merged))
    return message


def mode_from_pb(value: int, field: str, default: Mode | None = None) -> Mode:
    if value == pb.IDENTIFIER_MODE_UNSPECIFIED and default is not None:
        return default
    if value not in MODE_FROM_PB:
        raise invalid(field, "must be EMAIL_OR_ID, ID_ONLY or EMAIL_ONLY", "INVALID_IDENTIFIER_MODE")
    return MODE_FROM_PB[value]


def settings_from_pb(workspace_id: str, message: pb.WorkspaceSettings | None) -> Settings:
    """CreateWorkspace: absent settings are the defaults; present ones are taken as given."""
    if message is None:
        return Settings(workspace_id)
    values: dict[str, Any] = {}
    violations: list[FieldViolation] = []
    checks: dict[str, Callable[[], Any]] = {
        "mode": lambda: mode_from_pb(message.identifier_mode, "settings.identifier_mode", Mode.EMAIL_OR_ID),
        "event_retention_days": lambda: retention_from_pb(
            message.event_retention_days, "settings.event_retention_days", 30
        ),
        **{name: (lambda name=name: limit_from_pb(getattr(message, name), name)) for name in LIMIT_FIELDS},
    }
    for name, check in checks.items():  # every bad field at once (R42)
        try:
            values[name] = check()
        except InvalidArgument as error:
            violations += error.violations
    if violations:
        raise InvalidArgument(violations)
    return Settings(
        workspace_id=workspace_id,
        email_updatable_by_id=message.email_updatable_by_id,
        sole_identifier_updatable=message.sole_identifier_updatable,
        auto_merge=message.auto_merge,
        **values,
    )


def settings_patch(message: pb.WorkspaceSettings, paths: list[str]) -> dict[str, Any]:
    """AIP-134: the fields named by the mask, or with no mask every field with a non-default
    value. Returns Settings attribute names and values."""
    if not paths:
        paths = [name for name in SETTINGS_FIELDS if getattr(message, name)]
    elif paths == ["*"]:
        paths = list(SETTINGS_FIELDS)
    unknown = [p for p in paths if p not in SETTINGS_FIELDS]
    if unknown:
        raise InvalidArgument(
            [
                FieldViolation(
                    "update_mask",
                    f"unknown field {p!r}; allowed: {', '.join(SETTINGS_FIELDS)} or '*'",
                    "INVALID_UPDATE_MASK",
                )
                for p in unknown
            ]
        )
    patch: dict[str, Any] = {}
    violations: list[FieldViolation] = []
    for path in paths:
        try:
            if path == "identifier_mode":
                patch["mode"] = mode_from_pb(message.identifier_mode, "settings.identifier_mode")
            elif path == "event_retention_days":
                patch[path] = retention_from_pb(message.event_retention_days, "settings.event_retention_days", 30)
            elif path in LIMIT_FIELDS:
                patch[path] = limit_from_pb(getattr(message, path), path)
            else:
                patch[path] = getattr(message, path)
        except InvalidArgument as error:  # every bad field at once (R42)
            violations += error.violations
    if violations:
        raise InvalidArgument(violations)
    return patch


def ref_from_pb(message: pb.PersonRef, present: bool, field: str = "person") -> Ref:
    """R7: exactly one of cio_id, id, email."""
    which = message.WhichOneof("ref") if present else None
    if which is None:
        raise invalid(field, "must carry exactly one of cio_id, id or email", "MISSING_REFERENCE")
    return Ref(Field(which), getattr(message, which))


def identifier_from_pb(value: int, field: str = "identifier") -> Field:
    if value not in FIELD_FROM_PB:
        raise invalid(field, "must be IDENTIFIER_TYPE_ID or IDENTIFIER_TYPE_EMAIL", "INVALID_IDENTIFIER_TYPE")
    return FIELD_FROM_PB[value]


def identify_from_pb(request: pb.IdentifyRequest) -> IdentifyInput:
    return IdentifyInput(
        workspace_id=request.workspace_id,
        cio_id=request.cio_id if request.HasField("cio_id") else None,
        id=request.id if request.HasField("id") else None,
        email=request.email if request.HasField("email") else None,
        attributes=attributes_from_pb(request.attributes),
        update_only=request.update_only,
    )
