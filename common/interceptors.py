"""One server interceptor for metrics, request ids, deadlines, error mapping and a log
line for each slow call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

import grpc
from google.protobuf.message import DecodeError

from common import deadlines, stages
from common.errors import ChirpError, InvalidArgument, Unavailable, classify
from common.identity import metadata_value
from common.logs import request_id_var
from common.metrics import GRPC_HANDLED, GRPC_LATENCY

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# What the edge allows this try, in milliseconds: Envoy's router sends it with every
# try (the route's timeout left, or its per-try timeout when the try is not hedged).
# Envoy sends no grpc-timeout of its own (only with the deprecated max_grpc_timeout),
# so without it a call from the edge would have no deadline here: its own calls and
# statements would take their full defaults after the edge gave up, and its expiry
# would show as CANCELLED. A direct caller's deadline is used as it is.
EDGE_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A call that took longer than this is logged with the stages its handler marked
# (common/stages.py). The edge gives a read one second per try before it asks
# another instance, so a slower call is one the client may have given up on.
SLOW_CALL_SECONDS = 1.0
# A caller's deadline fires at the caller first and its reset reaches the server a
# moment before the server's copy of the deadline runs out: a call cancelled this
# close to its deadline ran out of time. The edge's allowance is counted from when the
# handler starts, which on a busy instance can be a while after Envoy sent it; the
# edge cancels a hedged try that lost at least a second before its deadline.
DEADLINE_SLACK_SECONDS = 0.25
# A request the message parser refused (a string field that is not UTF-8, which the
# edge's transcoder passes on from a query string): answered INVALID_ARGUMENT by the
# handler below, not UNKNOWN with the parser's text by the gRPC core.
_UNPARSABLE = object()
# Sent with every answer once the process is draining (SIGTERM): Envoy's router
# takes an instance that answers with it out of its cluster at once, as if it
# had failed an active health check (until a check passes again), so an edge
# with traffic stops routing to a draining instance at its first answer instead
# of at its next health check (envoy/render.py HEALTH_CHECK_SECONDS). It goes
# with the answer, never ahead of it: a success's headers once its handler has
# returned, an error's in the one frame that also carries its status (trailers
# only). Headers sent before the handler ran would commit the edge to this
# instance: Envoy decides retries and hedges on the status in the headers and
# only until a response has started. The edge strips it from what clients see.
IMMEDIATE_HEALTH_CHECK_FAIL_HEADER = "x-envoy-immediate-health-check-fail"
IMMEDIATE_HEALTH_CHECK_FAIL = ((IMMEDIATE_HEALTH_CHECK_FAIL_HEADER, "true"),)


def _time_left(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds the call has: its gRPC deadline or the edge's allowance, the shorter."""
    remaining: float | None = context.time_remaining()
    allowed = metadata_value(context, EDGE_TIMEOUT_HEADER)
    if allowed is not None and allowed.isascii() and allowed.isdigit():
        edge = int(allowed) / 1000
        if remaining is None or edge < remaining:
            return edge
    return remaining


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


class _Wrapped(NamedTuple):
    """A method's wrapped handler and the continuation's handler parts it wraps."""

    inner: Any
    request_deserializer: Any
    response_serializer: Any
    handler: grpc.RpcMethodHandler


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, dependency_errors: tuple[type[BaseException], ...], slow_seconds: float = SLOW_CALL_SECONDS
    ) -> None:
        self._dependency_errors = dependency_errors
        self._slow_seconds = slow_seconds
        # Method name -> its wrapped handler, built once per method instead of per call
        # (with the label children bound below: 26 µs of CPU per call to 14, measured
        # around a trivial handler) and reused only while the continuation answers with
        # the same handler parts. A method no handler serves is never stored, so this
        # holds at most one entry per registered method.
        self._wrapped: dict[str, _Wrapped] = {}
        self.draining = False

    def start_draining(self) -> None:
        """From now on every answer tells the edge to stop routing here."""
        self.draining = True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (health Watch, reflection) pass through
        full_name = handler_call_details.method
        wrapped = self._wrapped.get(full_name)
        if (
            wrapped is not None
            and wrapped.inner is handler.unary_unary
            and wrapped.request_deserializer is handler.request_deserializer
            and wrapped.response_serializer is handler.response_serializer
        ):
            return wrapped.handler
        service, method = _split(full_name)
        if service.startswith("grpc."):
            return handler
        method_handler = grpc.unary_unary_rpc_method_handler(
            self._wrap(cast(Handler, handler.unary_unary), service, method),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._wrapped[full_name] = _Wrapped(
            handler.unary_unary, handler.request_deserializer, handler.response_serializer, method_handler
        )
        return method_handler

    def _wrap(self, inner: Handler, service: str, method: str) -> Handler:
        dependency_errors = self._dependency_errors
        slow_seconds = self._slow_seconds
        # Label children bound once per method (labels() takes a lock and a dict lookup);
        # a code's child is made at its first call, so no series shows before it happens.
        latency = GRPC_LATENCY.labels(service, method)
        handled: dict[grpc.StatusCode, Any] = {}

        def count(code: grpc.StatusCode) -> None:
            child = handled.get(code)
            if child is None:
                child = handled[code] = GRPC_HANDLED.labels(service, method, code.name)
            child.inc()

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            request_id = metadata_value(context, REQUEST_ID_HEADER) or new_request_id()
            request_id_var.set(request_id)
            deadlines.set_deadline(_time_left(context))
            marks = stages.begin()
            code = grpc.StatusCode.OK
            try:
                if request is _UNPARSABLE:
                    raise InvalidArgument("the request is not valid: every text field must be UTF-8")
                try:
                    response = await inner(request, context)
                    if self.draining:
                        with contextlib.suppress(grpc.aio.BaseError):  # the call is over: nothing to mark
                            await context.send_initial_metadata(IMMEDIATE_HEALTH_CHECK_FAIL)
                    return response
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # gRPC ended the call under its handler: the deadline passed, or the
                        # client cancelled (the edge, when a hedged try answered first or its
                        # timeout ran out; every call, when the server stops). Not a success.
                        remaining = deadlines.remaining()
                        expired = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
                        code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                        raise
                    # Not this call's cancellation: a shared load it awaited was cancelled
                    # (the process is stopping). Answer at once, retryable, rather than
                    # leave the client waiting out its deadline for nothing.
                    log.warning("a load this call awaited was cancelled", extra={"grpc_method": method})
                    raise Unavailable("the request was dropped; try again") from None
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
                trailing = status.trailing_metadata
                if self.draining:
                    trailing = (*trailing, *IMMEDIATE_HEALTH_CHECK_FAIL)
                await context.abort(status.code, status.details, trailing_metadata=trailing)
            finally:
                count(code)
                elapsed = time.perf_counter() - started
                latency.observe(elapsed)
                if elapsed >= slow_seconds:
                    log.warning(
                        "slow call",
                        extra={
                            "grpc_method": method,
                            "grpc_code": code.name,
                            "ms": round(elapsed * 1000, 1),
                            "stages_ms": stages.offsets_ms(marks, started),
                        },
                    )

        return handle


def new_request_id() -> str:
    """A request id for a call that came without one: 32 random hex digits, as uuid4().hex
    (version bits aside) at a quarter of its CPU."""
    return os.urandom(16).hex()
