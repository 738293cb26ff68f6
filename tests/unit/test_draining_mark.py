"""Once a process drains, every answer carries the edge's mark
(IMMEDIATE_HEALTH_CHECK_FAIL), and only with the answer: a success's headers go
out after its handler returned, an error's mark rides in its trailing metadata
beside its status and details. Headers sent before the handler finished would
keep the edge from retrying or hedging the call on another instance."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from common.errors import NotFound, Unavailable
from common.interceptors import IMMEDIATE_HEALTH_CHECK_FAIL, ServerInterceptor
from tests.unit.test_interceptor_reuse import Aborted, Context, Details, call, continuation

METHOD = "/chirp.test.v1.DrainService/Do"


class RecordingContext(Context):
    """Records what the wrapper sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, Any]] = []

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.sent.append(("initial", tuple(metadata)))

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.sent.append(("trailing", tuple(trailing_metadata)))
        await super().abort(code, details, trailing_metadata)


async def _wrapped(interceptor: ServerInterceptor, inner: Any) -> grpc.RpcMethodHandler:
    handler = grpc.unary_unary_rpc_method_handler(inner)
    return await interceptor.intercept_service(continuation(handler), cast(Any, Details(METHOD)))


async def test_no_mark_before_draining() -> None:
    interceptor = ServerInterceptor(())

    async def ok(request: Any, context: Any) -> str:
        return "done"

    context = RecordingContext()
    assert await call(await _wrapped(interceptor, ok), "x", context) == "done"
    assert context.sent == []


async def test_a_success_is_marked_only_once_its_handler_returned() -> None:
    interceptor = ServerInterceptor(())
    interceptor.start_draining()
    context = RecordingContext()
    seen_while_running: list[list[tuple[str, Any]]] = []

    async def slow(request: Any, context_: Any) -> str:
        await asyncio.sleep(0)
        seen_while_running.append(list(context.sent))
        return "done"

    assert await call(await _wrapped(interceptor, slow), "x", context) == "done"
    assert seen_while_running == [[]]  # nothing went out while the handler ran
    assert context.sent == [("initial", IMMEDIATE_HEALTH_CHECK_FAIL)]


@pytest.mark.parametrize(
    ("error", "code"),
    [(NotFound("no such thing"), grpc.StatusCode.NOT_FOUND), (Unavailable("store down"), grpc.StatusCode.UNAVAILABLE)],
)
async def test_an_error_carries_the_mark_beside_its_status(error: Exception, code: grpc.StatusCode) -> None:
    interceptor = ServerInterceptor(())
    interceptor.start_draining()

    async def refuse(request: Any, context: Any) -> str:
        raise error

    context = RecordingContext()
    with pytest.raises(Aborted):
        await call(await _wrapped(interceptor, refuse), "x", context)
    assert context.aborted == code
    ((kind, trailing),) = context.sent  # no headers ahead of the status
    assert kind == "trailing"
    assert set(IMMEDIATE_HEALTH_CHECK_FAIL) <= set(trailing)
    assert "grpc-status-details-bin" in dict(trailing)  # the error's details still go
