"""How the server interceptor counts a call that ended under its handler: cancelled by
gRPC with time left (the client gave up) is CANCELLED, at or near its deadline is
DEADLINE_EXCEEDED; a CancelledError that is not the call's own (a shared load it awaited
was cancelled) is answered UNAVAILABLE at once, so the client can retry instead of
waiting out its deadline. None of them is OK."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from common.interceptors import ServerInterceptor
from tests.unit.test_interceptor_reuse import SERVICE, Aborted, Context, Details, call, continuation
from tests.unit.test_interceptor_reuse import handled as handled_by_method

METHOD = "Ended"


class TimedContext(Context):
    def __init__(self, remaining: float | None) -> None:
        super().__init__()
        self.remaining = remaining

    def time_remaining(self) -> float:
        return cast(float, self.remaining)


async def _handler(inner: Any) -> grpc.RpcMethodHandler:
    return await ServerInterceptor(()).intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(inner)), cast(Any, Details(f"/{SERVICE}/{METHOD}"))
    )


def handled(code: str) -> float:
    return handled_by_method(code, METHOD)


async def _cancelled_by_grpc(remaining: float | None) -> None:
    running = asyncio.Event()

    async def stall(request: Any, context: Any) -> str:
        running.set()
        await asyncio.sleep(10)
        return "late"

    handler = await _handler(stall)
    task = asyncio.create_task(call(handler, "x", TimedContext(remaining)))
    await running.wait()
    task.cancel()  # as gRPC cancels a call's task
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("remaining", "code"),
    [(5.0, "CANCELLED"), (None, "CANCELLED"), (0.0, "DEADLINE_EXCEEDED"), (0.01, "DEADLINE_EXCEEDED")],
)
async def test_a_call_cancelled_by_grpc_is_counted_by_how_much_time_it_had_left(
    remaining: float | None, code: str
) -> None:
    before, ok_before = handled(code), handled("OK")
    await _cancelled_by_grpc(remaining)
    assert handled(code) - before == 1
    assert handled("OK") == ok_before


async def test_a_cancelled_load_the_call_awaited_is_answered_unavailable() -> None:
    async def awaits_a_cancelled_load(request: Any, context: Any) -> str:
        load: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        load.cancel()  # e.g. a shared load cancelled while the process stops
        return await load

    handler = await _handler(awaits_a_cancelled_load)
    context = TimedContext(5.0)
    before = handled("UNAVAILABLE")
    with pytest.raises(Aborted):
        await call(handler, "x", context)
    assert context.aborted == grpc.StatusCode.UNAVAILABLE
    assert handled("UNAVAILABLE") - before == 1
