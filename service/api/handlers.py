"""The gRPC edge of identity.v1: for every call, in this order, the API key (before anything of
the request is decoded), the request decoded (undecodable or too deep: INVALID_ARGUMENT), the
workspace the key grants (or an admin key, for ApiKeyService and CreateWorkspace), the
workspace's calls per second, the process's limit of calls in flight, the workspace's calls at
once (service.api.fair_share), the call's deadline; then the servicer; then its refusal as a google.rpc.Status, one structured log line and the metrics.
An unexpected exception is logged with its stack and answered INTERNAL "internal error"."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import symbol_database

from identity.v1 import api_keys_pb2
from identity.v1 import identity_pb2 as pb
from service import metrics
from service.api.api_key_servicer import ApiKeyApi
from service.api.auth import ApiKeys, Authenticator, admin_required, current_grant
from service.api.fair_share import FairShare, WorkspaceLimits
from service.api.servicer import IdentityApi
from service.api.status import cut, to_status
from service.db import deadlines
from service.errors import DomainError, FieldViolation, InvalidArgument, ResourceExhausted, Unauthenticated
from service.runtime import logs, telemetry

log = logging.getLogger("identity.calls")

SERVICES = [
    *(pb.DESCRIPTOR.services_by_name[name] for name in ("IdentityService", "WorkspaceService")),
    api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"],
]
KEYS_SERVICE = "identity.v1.ApiKeyService"
# Calls that need an admin key whatever their workspace: a workspace key may not create
# workspaces (README, "Security"), nor manage keys.
ADMIN_ONLY = {"CreateWorkspace"}
SERVICE_NAMES = [service.full_name for service in SERVICES]
_LOGGED_WORKSPACE_CHARS = 64


def _undecodable(method: str) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("request", f"is not a valid {method} request message (malformed, or nested too deep)",
                        "MALFORMED_REQUEST")]
    )


def _serializer(response_type: Any) -> Callable[[Any], bytes]:
    """A response message's bytes; a servicer may also hand over bytes it serialized itself
    (the change feed sends each event's bytes, made once, to every stream)."""
    serialize = response_type.SerializeToString

    def serializer(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return serializer


class Edge:
    """What every identity.v1 call goes through; one per server process."""

    def __init__(
        self,
        api: IdentityApi,
        auth: Authenticator | ApiKeys | None = None,
        max_in_flight: int = 64,
        keys_api: ApiKeyApi | None = None,
        fair_share: FairShare | None = None,
    ):
        self.api = api
        self.keys_api = keys_api or ApiKeyApi()
        self.auth = auth if isinstance(auth, Authenticator) else Authenticator(auth)
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.fair_share = fair_share or FairShare(WorkspaceLimits())

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        found = symbol_database.Default()
        generic = []
        for service in SERVICES:
            methods = {}
            keys = service.full_name == KEYS_SERVICE
            impls = self.keys_api if keys else self.api
            for method in service.methods:
                if not hasattr(impls, method.name):
                    continue  # not served yet: gRPC answers UNIMPLEMENTED
                request_type = found.GetSymbol(method.input_type.full_name)
                response_type = found.GetSymbol(method.output_type.full_name)
                behavior = self._behavior(
                    method.name, request_type, getattr(impls, method.name), method.server_streaming,
                    admin_only=keys or method.name in ADMIN_ONLY, fair=not keys,
                    client_streaming=method.client_streaming,
                )
                if method.client_streaming:
                    make = grpc.stream_stream_rpc_method_handler
                elif method.server_streaming:
                    make = grpc.unary_stream_rpc_method_handler
                else:
                    make = grpc.unary_unary_rpc_method_handler
                methods[method.name] = make(
                    behavior,
                    request_deserializer=None,  # raw bytes: decoded after the key check
                    response_serializer=_serializer(response_type),
                )
            generic.append(grpc.method_handlers_generic_handler(service.full_name, methods))
        return generic

    def _behavior(
        self, method: str, request_type: Any, impl: Callable[..., Any], streaming: bool,
        admin_only: bool = False, fair: bool = True, client_streaming: bool = False,
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        """A unary call returns impl's response; a server-streaming one (impl an async
        generator) writes each of its responses. Streams do not count against the limit of
        calls in flight: they hold no thread and, between events, no database connection.
        A client stream's first message is checked as a unary request is (it names the
        workspace); impl gets it and an iterator of the next ones, each decoded in turn and
        held to the first one's workspace."""
        # Labelled metric children bound once: a labels() lookup takes a lock on every call.
        latency = metrics.LATENCY.labels(method)
        calls: dict[grpc.StatusCode, Any] = {}

        def decode(raw: bytes) -> Any:
            try:
                return request_type.FromString(raw)
            except (protobuf_message.DecodeError, RecursionError, ValueError):
                raise _undecodable(method) from None

        async def following(requests: Any, workspace: str) -> Any:
            async for raw in requests:
                request = decode(raw)
                if request.workspace_id and request.workspace_id != workspace:
                    raise InvalidArgument(
                        [FieldViolation("workspace_id", "must be empty or the first message's", "WORKSPACE_CHANGED")]
                    )
                yield request

        async def behavior(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            workspace = request_id = key_id = ""
            code = grpc.StatusCode.OK
            token = deadlines.set_remaining(context.time_remaining())
            grant_token = None
            try:
                grant = await self.auth.authenticate_waiting(context.invocation_metadata()) if self.auth.enabled else None
                if grant is not None:
                    key_id = grant.key_id
                    grant_token = current_grant.set(grant)
                requests = None
                if client_streaming:
                    requests = raw.__aiter__()
                    try:
                        raw = await requests.__anext__()
                    except StopAsyncIteration:
                        raise InvalidArgument(
                            [FieldViolation("workspace_id", "is required: the stream ended before its first message",
                                            "WORKSPACE_ID_REQUIRED")]
                        ) from None
                request = decode(raw)
                workspace = getattr(request, "workspace_id", "")
                request_id = getattr(request, "request_id", "")
                if fair:  # a call on a workspace: the key must grant it (whether it exists or not)
                    self.auth.authorize(grant, workspace)
                if admin_only and grant is not None and not grant.admin:
                    raise admin_required(method)
                if fair:
                    self.fair_share.check_rate(workspace)
                if streaming:
                    metrics.OPEN_STREAMS.labels(method).inc()
                    try:
                        responses = impl(request, following(requests, workspace)) if client_streaming else impl(request)
                        async for response in responses:
                            await context.write(response)
                    finally:
                        metrics.OPEN_STREAMS.labels(method).dec()
                    return None
                if self.in_flight >= self.max_in_flight:
                    raise ResourceExhausted(
                        "TOO_MANY_CALLS",
                        "the server is at its limit of calls in flight; retry with backoff",
                        {"limit": str(self.max_in_flight)},
                        retry_after=0.05,
                    )
                self.in_flight += 1
                try:
                    ticket = await self.fair_share.enter(workspace) if fair else None
                    try:
                        return await impl(request)
                    finally:
                        self.fair_share.leave(ticket)
                finally:
                    self.in_flight -= 1
            except DomainError as refusal:
                if not key_id and isinstance(refusal, Unauthenticated):
                    key_id = refusal.metadata.get("key_id", "")  # a revoked or expired key's id, never its secret
                status = to_status(refusal)
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                # Not a refusal: a bug or an unexpected failure. Logged here with its stack; the
                # client learns only that it happened.
                log.exception("unexpected error in %s", method)
                code = grpc.StatusCode.INTERNAL
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                deadlines.reset(token)
                if grant_token is not None:
                    current_grant.reset(grant_token)
                elapsed = time.perf_counter() - start
                counter = calls.get(code)
                if counter is None:
                    counter = calls[code] = metrics.CALLS.labels(method, code.name)
                counter.inc()
                latency.observe(elapsed)
                if log.isEnabledFor(logging.INFO):
                    # One line per call (service.runtime.logs: JSON fields or a human line): a
                    # client's text (the workspace_id is not yet validated) is cut here and
                    # escaped by the format, so it cannot forge or flood log lines.
                    fields = {
                        "method": method,
                        "workspace": cut(workspace, _LOGGED_WORKSPACE_CHARS),
                        "code": code.name,
                        "ms": round(elapsed * 1000, 2),
                    }
                    if key_id:
                        fields["key_id"] = key_id
                    if request_id:
                        fields["request_id"] = cut(request_id, _LOGGED_WORKSPACE_CHARS)
                    trace_id = telemetry.current_trace_id()
                    if trace_id:
                        fields["trace_id"] = trace_id
                    log.info(logs.call_message(fields), extra={logs.CALL: fields})

        return behavior

