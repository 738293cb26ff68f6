"""The server interceptor (common/interceptors.py) wraps each method's handler once and
reuses that wrapper on every later call, while still mapping each call's error,
counting each call in the metrics and giving each call its own request id; a
method whose handler changes gets a new wrapper around the new handler."""

from __future__ import annotations

import re
from typing import Any, cast

import grpc
import pytest
from prometheus_client import REGISTRY

from common.errors import NotFound
from common.interceptors import ServerInterceptor
from common.logs import request_id_var

SERVICE = "chirp.test.v1.ReuseService"
METHOD = f"/{SERVICE}/Do"


class Aborted(Exception):
    pass


class Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.aborted: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float:
        return 5.0

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = code
        raise Aborted


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class Servicer:
    """Answers "ok", or raises NotFound for "missing"; records each call's request id."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    async def do(self, request: Any, context: Any) -> str:
        self.request_ids.append(request_id_var.get())
        if request == "missing":
            raise NotFound("no such thing")
        return "done"


def continuation(handler: grpc.RpcMethodHandler | None) -> Any:
    async def answer(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return handler

    return answer


def handled(code: str, method: str = "Do") -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def timed(method: str = "Do") -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method}
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0.0


async def call(handler: grpc.RpcMethodHandler, request: str, context: Context) -> Any:
    return await cast(Any, handler.unary_unary)(request, cast(grpc.aio.ServicerContext, context))


async def test_the_wrapper_is_built_once_per_method_and_still_maps_and_counts_every_call() -> None:
    interceptor = ServerInterceptor(())
    servicer = Servicer()
    inner = grpc.unary_unary_rpc_method_handler(servicer.do)
    ok_before, missing_before, timed_before = handled("OK"), handled("NOT_FOUND"), timed()

    first = await interceptor.intercept_service(continuation(inner), cast(Any, Details(METHOD)))
    second = await interceptor.intercept_service(continuation(inner), cast(Any, Details(METHOD)))
    assert first is second and first is not inner  # reused, and still the interceptor's wrapper

    assert await call(first, "ok", Context()) == "done"
    refused = Context()
    with pytest.raises(Aborted):
        await call(second, "missing", refused)
    assert refused.aborted == grpc.StatusCode.NOT_FOUND  # the domain error, mapped on the reused wrapper
    assert await call(second, "ok", Context((("x-request-id", "edge-1"),))) == "done"

    assert handled("OK") - ok_before == 2
    assert handled("NOT_FOUND") - missing_before == 1
    assert timed() - timed_before == 3
    generated, _, given = servicer.request_ids
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and given == "edge-1"


async def test_each_call_without_a_request_id_gets_its_own() -> None:
    interceptor = ServerInterceptor(())
    servicer = Servicer()
    handler = await interceptor.intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(servicer.do)), cast(Any, Details(METHOD))
    )

    for _ in range(3):
        await call(handler, "ok", Context())

    assert len(set(servicer.request_ids)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in servicer.request_ids)


async def test_a_method_whose_handler_changes_is_wrapped_again_around_the_new_one() -> None:
    interceptor = ServerInterceptor(())
    old, new = Servicer(), Servicer()
    before = await interceptor.intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(old.do)), cast(Any, Details(METHOD))
    )
    after = await interceptor.intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(new.do)), cast(Any, Details(METHOD))
    )

    assert after is not before
    await call(after, "ok", Context())
    assert len(new.request_ids) == 1 and old.request_ids == []


async def test_each_method_has_its_own_wrapper_and_counts() -> None:
    interceptor = ServerInterceptor(())
    servicer = Servicer()
    inner = grpc.unary_unary_rpc_method_handler(servicer.do)
    other_before, do_before = handled("OK", "Other"), handled("OK")

    do = await interceptor.intercept_service(continuation(inner), cast(Any, Details(METHOD)))
    other = await interceptor.intercept_service(continuation(inner), cast(Any, Details(f"/{SERVICE}/Other")))
    assert do is not other
    await call(other, "ok", Context())

    assert handled("OK", "Other") - other_before == 1
    assert handled("OK") == do_before


async def test_grpc_services_and_unknown_methods_pass_through_unwrapped() -> None:
    interceptor = ServerInterceptor(())
    health = grpc.unary_unary_rpc_method_handler(Servicer().do)
    details = cast(Any, Details("/grpc.health.v1.Health/Check"))

    assert await interceptor.intercept_service(continuation(health), details) is health
    assert await interceptor.intercept_service(continuation(health), details) is health
    assert await interceptor.intercept_service(continuation(None), cast(Any, Details(METHOD))) is None
