"""Domain errors and the one place that maps any exception to a gRPC status (AIP-193).

An error is classified by what it means for the caller:
- a `ChirpError` (raised by domain code) carries its own code and client-safe message;
- an error from a peer Chirp service (`grpc.aio.AioRpcError`) maps by its status
  code: a peer that is down, overloaded or slow stays retryable (UNAVAILABLE,
  DEADLINE_EXCEEDED); a refusal the client can act on (NOT_FOUND,
  INVALID_ARGUMENT, ...) passes through, with the peer's message only when the
  peer's own error mapping wrote it for clients; anything else is our bug;
- a store error the service lists as "unreachable or overloaded" (for CQL,
  `common.cql.CQL_UNAVAILABLE_ERRORS`) is UNAVAILABLE: the edge retries those;
- anything else, a bad query included, is INTERNAL, and its text stays in our logs.

The status travels as a `google.rpc.Status` with one `ErrorInfo`, built by grpcio-status.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "chirp.dev"
DETAILS_KEY = "grpc-status-details-bin"  # where grpcio-status puts the google.rpc.Status
# Whole seconds to wait, on a RESOURCE_EXHAUSTED status: the edge passes it on as the
# REST Retry-After header; gRPC clients read it from the trailing metadata.
RETRY_AFTER_KEY = "retry-after"


class ChirpError(Exception):
    """A failure a client can act on. `message` is shown to the client as is."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata


class InvalidArgument(ChirpError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class Unauthenticated(ChirpError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(ChirpError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class NotFound(ChirpError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(ChirpError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class Unavailable(ChirpError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class ResourceExhausted(ChirpError):
    """A rate limit: the client may try again after `retry_after_seconds` (429 with Retry-After)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: int, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message, reason, **metadata)
        self.retry_after_seconds = max(1, retry_after_seconds)


DEPENDENCY_DOWN_MESSAGE = "a service Chirp depends on is unavailable; try again shortly"
DEPENDENCY_SLOW_MESSAGE = "a service Chirp depends on did not answer in time; try again shortly"
INTERNAL_MESSAGE = "internal error"

# A peer that could not answer now: the same request may succeed shortly.
_PEER_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, DEPENDENCY_DOWN_MESSAGE, "DEPENDENCY_UNAVAILABLE"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        grpc.StatusCode.UNAVAILABLE,
        DEPENDENCY_DOWN_MESSAGE,
        "DEPENDENCY_UNAVAILABLE",
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        DEPENDENCY_SLOW_MESSAGE,
        "DEPENDENCY_DEADLINE_EXCEEDED",
    ),
}
# A peer's refusal that is about the client's request, with a message for when
# the peer's own is not known to be client-safe.
_PEER_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT: "the request is not valid",
    grpc.StatusCode.NOT_FOUND: "something the request refers to does not exist",
    grpc.StatusCode.ALREADY_EXISTS: "something the request creates already exists",
    grpc.StatusCode.PERMISSION_DENIED: "the request is not allowed",
    grpc.StatusCode.FAILED_PRECONDITION: "the request cannot be done in the current state",
    grpc.StatusCode.OUT_OF_RANGE: "the request is out of range",
}


@dataclass(frozen=True)
class ErrorStatus:
    """What a failed call answers: code, client-safe message and its ErrorInfo."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: int | None = None

    def grpc_status(self) -> grpc.Status:
        """The status with google.rpc.Status in grpc-status-details-bin (grpcio-status);
        with a retry delay, also a RetryInfo detail and `retry-after` metadata."""
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata))
        details = [detail]
        if self.retry_after_seconds is not None:
            retry = any_pb2.Any()
            retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)))
            details.append(retry)
        status: grpc.Status = rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        )
        if self.retry_after_seconds is None:
            return status
        trailing = (*status.trailing_metadata, (RETRY_AFTER_KEY, str(self.retry_after_seconds)))
        return _Status(status.code, status.details, trailing)


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A grpc.Status with metadata besides grpcio-status's own (which builds the same shape)."""


def classify(error: BaseException, dependency_errors: tuple[type[BaseException], ...]) -> ErrorStatus:
    """Map any exception to what the client is told."""
    if isinstance(error, ChirpError):
        return ErrorStatus(
            error.code, error.message, error.reason, dict(error.metadata), getattr(error, "retry_after_seconds", None)
        )
    if isinstance(error, grpc.aio.AioRpcError):
        return peer_error(error)
    if isinstance(error, dependency_errors):
        return ErrorStatus(grpc.StatusCode.UNAVAILABLE, DEPENDENCY_DOWN_MESSAGE, "DEPENDENCY_UNAVAILABLE")
    return ErrorStatus(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "INTERNAL")


def peer_error(error: grpc.aio.AioRpcError) -> ErrorStatus:
    """A peer Chirp service's error, mapped by its status code."""
    code = error.code()
    if code in _PEER_RETRYABLE:
        ours, message, reason = _PEER_RETRYABLE[code]
        return ErrorStatus(ours, message, reason)
    if code in _PEER_PASS_THROUGH:
        info = _chirp_error_info(error)
        if info is not None:  # written for clients by the peer's own mapping
            return ErrorStatus(code, error.details() or _PEER_PASS_THROUGH[code], info.reason, dict(info.metadata))
        return ErrorStatus(code, _PEER_PASS_THROUGH[code], code.name)
    return ErrorStatus(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "INTERNAL")


def _chirp_error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        # AioRpcError answers code(), details() and trailing_metadata() as a grpc.Call does.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:  # details that disagree with the status line: not ours
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info
    return None


def status_of(error: BaseException, dependency_errors: tuple[type[BaseException], ...]) -> grpc.Status:
    return classify(error, dependency_errors).grpc_status()


def to_status(
    error: BaseException, dependency_errors: tuple[type[BaseException], ...]
) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, client-safe message, serialized google.rpc.Status) for callers that want the parts."""
    status = status_of(error, dependency_errors)
    details = dict(status.trailing_metadata)[DETAILS_KEY]
    return status.code, status.details, details if isinstance(details, bytes) else details.encode()
