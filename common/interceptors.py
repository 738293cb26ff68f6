"""One server interceptor for metrics, request ids, deadlines and error mapping."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from common import deadlines
from common.errors import ChirpError, InvalidArgument, classify
from common.identity import metadata_value
from common.logs import request_id_var
from common.metrics import GRPC_HANDLED, GRPC_LATENCY

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A request the message parser refused (a string field that is not UTF-8, which the
# edge's transcoder passes on from a query string): answered INVALID_ARGUMENT by the
# handler below, not UNKNOWN with the parser's text by the gRPC core.
_UNPARSABLE = object()


def _tolerant(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None

    def tolerant(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            return _UNPARSABLE

    return tolerant


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "unknown", method)
    return service, name


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, dependency_errors: tuple[type[BaseException], ...]) -> None:
        self._dependency_errors = dependency_errors

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (health Watch, reflection) pass through
        service, method = _split(handler_call_details.method)
        if service.startswith("grpc."):
            return handler
        wrapped = self._wrap(cast(Handler, handler.unary_unary), service, method)
        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, inner: Handler, service: str, method: str) -> Handler:
        dependency_errors = self._dependency_errors

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            request_id = metadata_value(context, REQUEST_ID_HEADER) or uuid.uuid4().hex
            request_id_var.set(request_id)
            deadlines.set_deadline(context.time_remaining())
            code = grpc.StatusCode.OK
            try:
                if request is _UNPARSABLE:
                    raise InvalidArgument("the request is not valid: every text field must be UTF-8")
                return await inner(request, context)
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                error = classify(exc, dependency_errors)
                code = error.code
                if isinstance(exc, ChirpError):
                    log.info("rejected", extra={"grpc_method": method, "grpc_code": code.name})
                elif code in _RETRYABLE:
                    log.warning("dependency unavailable: %r", exc, extra={"grpc_method": method})
                elif code != grpc.StatusCode.INTERNAL:  # a peer's refusal of the client's request
                    log.info("rejected by a peer", extra={"grpc_method": method, "grpc_code": code.name})
                else:
                    log.exception("unhandled error", extra={"grpc_method": method})
                status = error.grpc_status()
                await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
            finally:
                GRPC_HANDLED.labels(service, method, code.name).inc()
                GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - started)

        return handle
