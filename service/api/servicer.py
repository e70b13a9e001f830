"""The RPCs: proto in, a use case called, proto out. Thin on purpose: every decision is the rules
core's; refusals travel as DomainError to the edge (service.api.handlers), which gives them
their status. One coroutine per RPC, named as in the proto."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

from identity.v1 import identity_pb2 as pb
from service.api import auth, convert, csv_import, import_stream
from service.api.status import to_status_proto
from service.db.notifier import Notifier
from service.domain import Call, Changed, IdentifyResult, Merged, Replayed, Settings
from service.errors import DomainError, InvalidArgument
from service.rules.validation import check_workspace_id
from service.usecases import IdentityService
from service.usecases.imports import BATCH_ROWS

MAX_IMPORT_ERRORS = 1000
EXPORT_MESSAGE_BYTES = 1 << 20
EVENT_CACHE = 4096
_EVENTS_TAG = bytes([(2 << 3) | 2])  # WatchChangesResponse.events: field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)  # refused rows reported in full; past it, counted only


def _call(method: str, request: Any, encode: Callable[[Any], tuple[bytes, list[str]]]) -> Call:
    """The call's name, request_id and validate_only (R50, R70, R71). With a request_id, what
    makes a repeat "the same request": a digest of the request message (deterministic bytes)
    without its request_id."""
    if not request.request_id:
        return Call(method, "", request.validate_only)
    bare = type(request)()
    bare.CopyFrom(request)
    bare.request_id = ""
    fingerprint = hashlib.sha256(method.encode() + b"\0" + bare.SerializeToString(deterministic=True)).digest()
    return Call(method, request.request_id, request.validate_only, fingerprint, encode)


def _replayable(response_type: Any, build: Callable[[Any], Any], cio_ids: Callable[[Any], list[str]]) -> tuple[
    Callable[[Any], tuple[bytes, list[str]]], Callable[[Any], Any]
]:
    """For a call that writes: how its result is stored (the response's bytes, and the people
    it shows), and how a result or a stored response (R70) becomes the response."""

    def encode(result: Any) -> tuple[bytes, list[str]]:
        return build(result).SerializeToString(), cio_ids(result)

    def respond(result: Any) -> Any:
        return response_type.FromString(result.response) if isinstance(result, Replayed) else build(result)

    return encode, respond


def _convert(workspace_id: str, **parts: Callable[[], Any]) -> dict[str, Any]:
    """Converts each part of a request, collecting every malformed field (with the
    workspace_id's, R42) into one refusal."""
    values: dict[str, Any] = {}
    violations = []
    for name, make in parts.items():
        try:
            values[name] = make()
        except InvalidArgument as error:
            violations += error.violations
    if violations:
        raise InvalidArgument(check_workspace_id(workspace_id) + violations)
    return values


class IdentityApi:
    """identity.v1.IdentityService and identity.v1.WorkspaceService."""

    def __init__(self, service: IdentityService, notifier: Notifier | None = None, import_batch_rows: int = BATCH_ROWS):
        self.service = service
        self.notifier = notifier
        self.import_batch_rows = import_batch_rows
        self._events: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    # --- IdentityService ---

    async def Identify(self, request: pb.IdentifyRequest) -> pb.IdentifyResponse:
        result = await self.service.identify(convert.identify_from_pb(request), _call("Identify", request, _IDENTIFY[0]))
        return _IDENTIFY[1](result)

    async def UpdateIdentifier(self, request: pb.UpdateIdentifierRequest) -> pb.UpdateIdentifierResponse:
        parts = _convert(
            request.workspace_id,
            ref=lambda: convert.ref_from_pb(request.person, request.HasField("person")),
            field=lambda: convert.identifier_from_pb(request.identifier),
        )
        encode, respond = _CHANGED[pb.UpdateIdentifierResponse]
        changed = await self.service.update_identifier(
            request.workspace_id, parts["ref"], parts["field"], request.value, _call("UpdateIdentifier", request, encode)
        )
        return respond(changed)

    async def DeleteIdentifier(self, request: pb.DeleteIdentifierRequest) -> pb.DeleteIdentifierResponse:
        parts = _convert(
            request.workspace_id,
            ref=lambda: convert.ref_from_pb(request.person, request.HasField("person")),
            field=lambda: convert.identifier_from_pb(request.identifier),
        )
        encode, respond = _CHANGED[pb.DeleteIdentifierResponse]
        changed = await self.service.delete_identifier(
            request.workspace_id, parts["ref"], parts["field"], _call("DeleteIdentifier", request, encode)
        )
        return respond(changed)

    async def MergePeople(self, request: pb.MergePeopleRequest) -> pb.MergePeopleResponse:
        parts = _convert(
            request.workspace_id,
            primary=lambda: convert.ref_from_pb(request.primary, request.HasField("primary"), "primary"),
            secondary=lambda: convert.ref_from_pb(request.secondary, request.HasField("secondary"), "secondary"),
        )
        merged = await self.service.merge_people(
            request.workspace_id, parts["primary"], parts["secondary"], _call("MergePeople", request, _MERGE[0])
        )
        return _MERGE[1](merged)

    async def UnmergePeople(self, request: pb.UnmergePeopleRequest) -> pb.UnmergePeopleResponse:
        unmerged = await self.service.unmerge_people(
            request.workspace_id, request.merge_sequence, _call("UnmergePeople", request, _UNMERGE[0])
        )
        return _UNMERGE[1](unmerged)

    async def ListPersonHistory(self, request: pb.ListPersonHistoryRequest) -> pb.ListPersonHistoryResponse:
        parts = _convert(request.workspace_id, ref=lambda: convert.ref_from_pb(request.person, request.HasField("person")))
        events, token = await self.service.list_person_history(
            request.workspace_id, parts["ref"], request.page_size, request.page_token
        )
        return pb.ListPersonHistoryResponse(events=[convert.event_to_pb(e) for e in events], next_page_token=token)

    async def ExportPeople(self, request: pb.ExportPeopleRequest) -> AsyncIterator[pb.ExportPeopleResponse]:
        """Server streaming (R82): batches of at most 1,000 people and about 1 MiB."""
        response, size = pb.ExportPeopleResponse(), 0
        async for people in self.service.export_people(request.workspace_id):
            for person in people:
                message = convert.person_to_pb(person)
                size += message.ByteSize() + 6  # the field's tag and length
                response.people.append(message)
                if len(response.people) >= 1000 or size >= EXPORT_MESSAGE_BYTES:
                    yield response
                    response, size = pb.ExportPeopleResponse(), 0
        if response.people:
            yield response

    async def WatchChanges(self, request: pb.WatchChangesRequest) -> AsyncIterator[bytes]:
        """Server streaming (R52): the edge writes each response to the stream."""
        assert self.notifier is not None, "WatchChanges needs the process's notifier"
        async for page in self.service.watch_changes(
            request.workspace_id, request.after_sequence, self.notifier, request.end_when_caught_up
        ):
            chunks, size = [], 0
            for record in page:
                chunk = self._event_chunk(request.workspace_id, record)
                if chunks and size + len(chunk) > EXPORT_MESSAGE_BYTES:
                    yield b"".join(chunks)
                    chunks, size = [], 0
                chunks.append(chunk)
                size += len(chunk)
            yield b"".join(chunks)  # a WatchChangesResponse, serialized (the edge sends bytes as they are)

    def _event_chunk(self, workspace_id: str, record: Any) -> bytes:
        """An event as the bytes of one element of WatchChangesResponse.events (field 2): a
        message is the concatenation of its elements, so every stream of the workspace sends
        the same bytes, made once (the latest EVENT_CACHE events are kept)."""
        key = (workspace_id, record.sequence)
        chunk = self._events.get(key)
        if chunk is None:
            body = convert.event_to_pb(record).SerializeToString()
            chunk = self._events[key] = _EVENTS_TAG + _varint(len(body)) + body
            if len(self._events) > EVENT_CACHE:
                self._events.popitem(last=False)
        return chunk

    async def GetSettings(self, request: pb.GetSettingsRequest) -> pb.GetSettingsResponse:
        settings = await self.service.get_settings(request.workspace_id)
        return pb.GetSettingsResponse(settings=convert.settings_to_pb(settings))

    async def GetPerson(self, request: pb.GetPersonRequest) -> pb.GetPersonResponse:
        parts = _convert(request.workspace_id, ref=lambda: convert.ref_from_pb(request.person, request.HasField("person")))
        person = await self.service.get_person(request.workspace_id, parts["ref"])
        return pb.GetPersonResponse(person=convert.person_to_pb(person))

    async def DeletePerson(self, request: pb.DeletePersonRequest) -> pb.DeletePersonResponse:
        parts = _convert(request.workspace_id, ref=lambda: convert.ref_from_pb(request.person, request.HasField("person")))
        cio_id = await self.service.delete_person(
            request.workspace_id, parts["ref"], request.erase, _call("DeletePerson", request, _DELETE_PERSON[0])
        )
        return _DELETE_PERSON[1](cio_id)

    async def ImportPeople(self, request: pb.ImportPeopleRequest) -> pb.ImportPeopleResponse:
        rows = _convert(request.workspace_id, rows=lambda: csv_import.parse(request.workspace_id, request.csv))["rows"]
        response = pb.ImportPeopleResponse()
        call = _call("ImportPeople", request, _IDENTIFY[0])  # each row's result stored as an Identify's
        for number, result in await self.service.import_rows(request.workspace_id, rows, call):
            if isinstance(result, Replayed):  # a row applied by an earlier import with this request_id
                result = pb.IdentifyResponse.FromString(result.response)
                row = response.rows.add(row=number, outcome=result.outcome, cio_id=result.person.cio_id)
                response.applied_count += 1
            elif isinstance(result, DomainError):
                response.refused_count += 1
                if response.refused_count <= MAX_IMPORT_ERRORS:
                    row = response.rows.add(row=number)
                    row.error.CopyFrom(to_status_proto(result))
            else:
                row = response.rows.add(row=number)
                row.outcome = convert.OUTCOME_TO_PB[result.outcome.value]
                row.cio_id = result.person.cio_id
                response.applied_count += 1
        return response

    def StreamImportPeople(
        self, first: pb.StreamImportPeopleRequest, rest: AsyncIterator[pb.StreamImportPeopleRequest]
    ) -> AsyncIterator[pb.StreamImportPeopleResponse]:
        """Client and server streaming (R80, R81): see service.api.import_stream."""
        return import_stream.stream_import(self.service.uow, first, rest, self.import_batch_rows)

    # --- WorkspaceService ---

    async def CreateWorkspace(self, request: pb.CreateWorkspaceRequest) -> pb.CreateWorkspaceResponse:
        settings = _convert(
            request.workspace_id,
            settings=lambda: convert.settings_from_pb(
                request.workspace_id, request.settings if request.HasField("settings") else None
            ),
        )["settings"]
        encode, respond = _SETTINGS[pb.CreateWorkspaceResponse]
        created = await self.service.create_workspace(settings, _call("CreateWorkspace", request, encode))
        return respond(created)

    async def UpdateSettings(self, request: pb.UpdateSettingsRequest) -> pb.UpdateSettingsResponse:
        patch = _convert(
            request.workspace_id,
            patch=lambda: convert.settings_patch(request.settings, list(request.update_mask.paths)),
        )["patch"]
        encode, respond = _SETTINGS[pb.UpdateSettingsResponse]

        def apply(current: Settings) -> Settings:
            changed = replace(current, **patch)
            if not auth.is_admin() and _limits(changed) != _limits(current):
                # A tenant may not raise its own fair share (issue 11).
                raise auth.admin_required("changing max_calls_per_second or max_concurrent_calls")
            return changed

        settings = await self.service.update_settings(request.workspace_id, apply, _call("UpdateSettings", request, encode))
        return respond(settings)


def _limits(settings: Settings) -> tuple[int, int]:
    return settings.max_calls_per_second, settings.max_concurrent_calls


def _identify_response(result: IdentifyResult) -> pb.IdentifyResponse:
    return pb.IdentifyResponse(
        person=convert.person_to_pb(result.person),
        outcome=convert.OUTCOME_TO_PB[result.outcome.value],
        merged_cio_ids=list(result.merged_cio_ids),
        decision=convert.explanation_to_pb(result.explanation) if result.explanation else None,
    )


def _changed_response(response_type: Any) -> Callable[[Changed], Any]:
    return lambda changed: response_type(
        person=convert.person_to_pb(changed.person), decision=convert.explanation_to_pb(changed.explanation)
    )


def _merge_response(merged: Merged) -> pb.MergePeopleResponse:
    return pb.MergePeopleResponse(
        person=convert.person_to_pb(merged.person),
        merged_cio_id=merged.merged_cio_id,
        merge_sequence=merged.merge_sequence,
        decision=convert.explanation_to_pb(merged.explanation),
    )


# For each call that writes: how its result is stored and answered (R70).
_IDENTIFY = _replayable(
    pb.IdentifyResponse, _identify_response, lambda r: [r.person.cio_id, *r.merged_cio_ids]
)
_CHANGED = {
    t: _replayable(t, _changed_response(t), lambda c: [c.person.cio_id])
    for t in (pb.UpdateIdentifierResponse, pb.DeleteIdentifierResponse)
}
_MERGE = _replayable(pb.MergePeopleResponse, _merge_response, lambda m: [m.person.cio_id, m.merged_cio_id])
_UNMERGE = _replayable(
    pb.UnmergePeopleResponse,
    lambda u: pb.UnmergePeopleResponse(primary=convert.person_to_pb(u.primary), secondary=convert.person_to_pb(u.secondary)),
    lambda u: [u.primary.cio_id, u.secondary.cio_id],
)
_DELETE_PERSON = _replayable(pb.DeletePersonResponse, lambda cio_id: pb.DeletePersonResponse(cio_id=cio_id), lambda c: [c])
_SETTINGS = {
    t: _replayable(t, lambda settings, t=t: t(settings=convert.settings_to_pb(settings)), lambda s: [])
    for t in (pb.CreateWorkspaceResponse, pb.UpdateSettingsResponse)
}
