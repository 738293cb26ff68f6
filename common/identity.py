"""Who is acting: the user id the edge verified, carried as gRPC metadata.

Envoy verifies the bearer token, removes any client-sent copy of this header
first, and sets it from the token's `sub` claim. Internal gRPC callers set the
same metadata entry to the user they act for.
"""

from __future__ import annotations

import re

import grpc

from common.errors import InvalidArgument, Unauthenticated

USER_ID_HEADER = "x-chirp-user-id"
# The session (refresh chain) the verified token was issued in, from its `sid` claim;
# the edge removes client-sent copies the same way. Absent for tokens issued before
# sessions had ids.
SESSION_ID_HEADER = "x-chirp-session-id"
USER_ID_RE = re.compile(r"[1-9][0-9]*")
MAX_USER_ID = 2**63 - 1


def acting_user(context: grpc.aio.ServicerContext) -> int:
    """The verified acting user id. Without a usable one (absent, not a positive whole
    number: through the edge, a token whose subject is no user) the call is refused as
    unauthenticated. A value no edge sets, only a direct call to a service port, is
    invalid input rather than an internal error further down: a number beyond a CQL
    bigint (2^63 - 1), or the entry given more than once."""
    values = [v for k, v in context.invocation_metadata() or () if k == USER_ID_HEADER]
    if not values:
        raise Unauthenticated("this call needs a valid access token")
    if len(values) > 1:
        raise InvalidArgument(f"{USER_ID_HEADER} must be given once", field=USER_ID_HEADER)
    value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
    # Plain ASCII digits only: int() would also take "+5", " 5", "5_0" and non-ASCII digits.
    if not USER_ID_RE.fullmatch(value):
        raise Unauthenticated("this call needs a valid access token")
    if len(value) > len(str(MAX_USER_ID)) or int(value) > MAX_USER_ID:  # int() refuses 4300+ digits
        raise InvalidArgument(f"{USER_ID_HEADER} must be a user id, at most {MAX_USER_ID}", field=USER_ID_HEADER)
    return int(value)


def optional_user(context: grpc.aio.ServicerContext) -> int | None:
    """Who is looking, on a call whose token is optional (public reads with viewer flags
    or visibility rules): the verified user, or None without a token. The edge sets the
    entry only for a valid token; a peer sets it for the user it asks for."""
    if metadata_value(context, USER_ID_HEADER) is None:
        return None
    return acting_user(context)


def calling_session(context: grpc.aio.ServicerContext) -> int | None:
    """The session id of the verified token (graph_svc/sessions.py), or None when the
    token has none."""
    value = metadata_value(context, SESSION_ID_HEADER)
    if value is None:
        return None
    if not USER_ID_RE.fullmatch(value) or len(value) > len(str(MAX_USER_ID)) or int(value) > MAX_USER_ID:
        raise InvalidArgument(f"{SESSION_ID_HEADER} must be a positive 64-bit integer", field=SESSION_ID_HEADER)
    return int(value)


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of a metadata entry (request id, idempotency key), as text."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None
