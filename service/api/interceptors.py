"""Cross-cutting server behaviour: API keys, one log line per call, metrics, the call's deadline,
and unexpected exceptions turned into INTERNAL with no internals in the message."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import grpc

from service import metrics
from service.db import deadlines
from service.api.auth import ApiKeys
from service.errors import DomainError
from service.api.status import to_status

log = logging.getLogger("identity.calls")


class CallInterceptor(grpc.ServerInterceptor):
    def __init__(self, api_keys: ApiKeys | None = None):
        self.api_keys = api_keys or ApiKeys({})

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming calls (reflection) pass through untouched
        method = details.method.rsplit("/", 1)[-1]
        quiet = details.method.startswith("/grpc.")  # health checks: metrics, no log line
        inner = handler.unary_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            token = deadlines.set_remaining(context.time_remaining())
            try:
                if self.api_keys.enabled and not quiet:
                    try:
                        self.api_keys.check(context.invocation_metadata(), getattr(request, "workspace_id", ""))
                    except DomainError as refusal:
                        context.abort_with_status(to_status(refusal))
                return inner(request, context)
            except Exception:
                if context.code() in (None, grpc.StatusCode.OK):
                    # Not a refusal: a bug or an unexpected failure. Logged here with its stack;
                    # the client learns only that it happened.
                    log.exception("unexpected error in %s", method)
                    context.abort(grpc.StatusCode.INTERNAL, "internal error")
                raise
            finally:
                deadlines.reset(token)
                code = context.code() or grpc.StatusCode.OK
                elapsed = time.perf_counter() - start
                metrics.CALLS.labels(method, code.name).inc()
                metrics.LATENCY.labels(method).observe(elapsed)
                if not quiet:
                    log.info(
                        "method=%s workspace=%s code=%s ms=%.2f",
                        method,
                        getattr(request, "workspace_id", "") or "-",
                        code.name,
                        elapsed * 1000,
                    )

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
