"""The gRPC servicers: proto in, domain call, proto out; domain refusals become a status with
details (service.api.status). Thin on purpose: every decision is the rules core's."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Callable, TypeVar

import grpc

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.api import convert, csv_import
from service.errors import DomainError
from service.api.status import to_status, to_status_proto
from service.usecases import IdentityService

R = TypeVar("R")


def refusals_as_status(response_type: type[R]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """A DomainError ends the call with its status and details (R42). The status is set on the
    context rather than raised with abort_with_status, which grpc_testing does not support."""

    def decorate(method: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(method)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
            try:
                return method(self, request, context)
            except DomainError as error:
                status = to_status(error)
                context.set_trailing_metadata(status.trailing_metadata)
                context.set_code(status.code)
                context.set_details(status.details)
                return response_type()

        return wrapper

    return decorate


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, service: IdentityService):
        self.service = service

    @refusals_as_status(pb.IdentifyResponse)
    def Identify(self, request: pb.IdentifyRequest, context: grpc.ServicerContext) -> pb.IdentifyResponse:
        result = self.service.identify(convert.identify_from_pb(request))
        return pb.IdentifyResponse(
            person=convert.person_to_pb(result.person),
            outcome=convert.OUTCOME_TO_PB[result.outcome.value],
            merged_cio_ids=list(result.merged_cio_ids),
        )

    @refusals_as_status(pb.UpdateIdentifierResponse)
    def UpdateIdentifier(
        self, request: pb.UpdateIdentifierRequest, context: grpc.ServicerContext
    ) -> pb.UpdateIdentifierResponse:
        person = self.service.update_identifier(
            request.workspace_id,
            convert.ref_from_pb(request.person, request.HasField("person")),
            convert.identifier_from_pb(request.identifier),
            request.value,
        )
        return pb.UpdateIdentifierResponse(person=convert.person_to_pb(person))

    @refusals_as_status(pb.DeleteIdentifierResponse)
    def DeleteIdentifier(
        self, request: pb.DeleteIdentifierRequest, context: grpc.ServicerContext
    ) -> pb.DeleteIdentifierResponse:
        person = self.service.delete_identifier(
            request.workspace_id,
            convert.ref_from_pb(request.person, request.HasField("person")),
            convert.identifier_from_pb(request.identifier),
        )
        return pb.DeleteIdentifierResponse(person=convert.person_to_pb(person))

    @refusals_as_status(pb.GetSettingsResponse)
    def GetSettings(self, request: pb.GetSettingsRequest, context: grpc.ServicerContext) -> pb.GetSettingsResponse:
        return pb.GetSettingsResponse(settings=convert.settings_to_pb(self.service.get_settings(request.workspace_id)))

    @refusals_as_status(pb.GetPersonResponse)
    def GetPerson(self, request: pb.GetPersonRequest, context: grpc.ServicerContext) -> pb.GetPersonResponse:
        person = self.service.get_person(
            request.workspace_id, convert.ref_from_pb(request.person, request.HasField("person"))
        )
        return pb.GetPersonResponse(person=convert.person_to_pb(person))

    @refusals_as_status(pb.DeletePersonResponse)
    def DeletePerson(self, request: pb.DeletePersonRequest, context: grpc.ServicerContext) -> pb.DeletePersonResponse:
        cio_id = self.service.delete_person(
            request.workspace_id, convert.ref_from_pb(request.person, request.HasField("person"))
        )
        return pb.DeletePersonResponse(cio_id=cio_id)


    @refusals_as_status(pb.ImportPeopleResponse)
    def ImportPeople(self, request: pb.ImportPeopleRequest, context: grpc.ServicerContext) -> pb.ImportPeopleResponse:
        rows = csv_import.parse(request.workspace_id, request.csv)
        response = pb.ImportPeopleResponse()
        for number, result in self.service.import_people(request.workspace_id, rows):
            row = response.rows.add(row=number)
            if isinstance(result, DomainError):
                row.error.CopyFrom(to_status_proto(result))
                response.refused_count += 1
            else:
                row.outcome = convert.OUTCOME_TO_PB[result.outcome.value]
                row.cio_id = result.person.cio_id
                response.applied_count += 1
        return response


class WorkspaceServicer(pb_grpc.WorkspaceServiceServicer):
    def __init__(self, service: IdentityService):
        self.service = service

    @refusals_as_status(pb.CreateWorkspaceResponse)
    def CreateWorkspace(
        self, request: pb.CreateWorkspaceRequest, context: grpc.ServicerContext
    ) -> pb.CreateWorkspaceResponse:
        settings = convert.settings_from_pb(
            request.workspace_id, request.settings if request.HasField("settings") else None
        )
        return pb.CreateWorkspaceResponse(settings=convert.settings_to_pb(self.service.create_workspace(settings)))

    @refusals_as_status(pb.UpdateSettingsResponse)
    def UpdateSettings(
        self, request: pb.UpdateSettingsRequest, context: grpc.ServicerContext
    ) -> pb.UpdateSettingsResponse:
        patch = convert.settings_patch(request.settings, list(request.update_mask.paths))
        settings = self.service.update_settings(
            request.workspace_id, lambda current: replace(current, **patch), request.validate_only
        )
        return pb.UpdateSettingsResponse(settings=convert.settings_to_pb(settings))
