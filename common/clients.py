"""gRPC channels to other Chirp services: client-side round robin over every
instance (a headless Service in Kubernetes), deadlines derived from the
incoming call, the request id passed along."""

from __future__ import annotations

import grpc

from common import deadlines
from common.identity import USER_ID_HEADER
from common.logs import request_id_var


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30000),
        ],
    )


def call_options(default_timeout: float, acting_user: int | None = None) -> dict[str, object]:
    """`timeout` and `metadata` keyword arguments for one outgoing call."""
    metadata: list[tuple[str, str]] = []
    request_id = request_id_var.get()
    if request_id:
        metadata.append(("x-request-id", request_id))
    if acting_user is not None:
        metadata.append((USER_ID_HEADER, str(acting_user)))
    return {"timeout": deadlines.timeout(default_timeout), "metadata": tuple(metadata)}
