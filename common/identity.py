"""Who is acting: the user id the edge verified, carried as gRPC metadata.

Envoy verifies the bearer token, removes any client-sent copy of this header
first, and sets it from the token's `sub` claim. Internal gRPC callers set the
same metadata entry to the user they act for.
"""

from __future__ import annotations

import grpc

from common.errors import Unauthenticated

USER_ID_HEADER = "x-chirp-user-id"


def acting_user(context: grpc.aio.ServicerContext) -> int:
    """The verified acting user id; a call without one is refused."""
    values = [v for k, v in context.invocation_metadata() or () if k == USER_ID_HEADER]
    if len(values) != 1:
        raise Unauthenticated("this call needs a valid access token")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode()
    try:
        user_id = int(value)
    except ValueError:
        raise Unauthenticated("this call needs a valid access token") from None
    if user_id <= 0:
        raise Unauthenticated("this call needs a valid access token")
    return user_id


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of a metadata entry (request id, idempotency key), as text."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None
