"""Domain errors and the one place that maps them to gRPC statuses (AIP-193)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "chirp.dev"


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


DEPENDENCY_DOWN_MESSAGE = "a service Chirp depends on is unavailable; try again shortly"
INTERNAL_MESSAGE = "internal error"


def status_details(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> bytes:
    """google.rpc.Status with one ErrorInfo, serialized for grpc-status-details-bin."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return status.SerializeToString()


def to_status(
    error: BaseException, dependency_errors: tuple[type[BaseException], ...]
) -> tuple[grpc.StatusCode, str, bytes]:
    """Map any exception to (code, client-safe message, status details)."""
    if isinstance(error, ChirpError):
        code, message, reason, metadata = error.code, error.message, error.reason, error.metadata
    elif isinstance(error, dependency_errors):
        code, message, reason, metadata = (
            grpc.StatusCode.UNAVAILABLE,
            DEPENDENCY_DOWN_MESSAGE,
            "DEPENDENCY_UNAVAILABLE",
            {},
        )
    else:
        code, message, reason, metadata = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "INTERNAL", {}
    return code, message, status_details(code, message, reason, metadata)
