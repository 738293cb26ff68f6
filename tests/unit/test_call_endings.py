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

from common import deadlines
from common.interceptors import EDGE_TIMEOUT_HEADER, ServerInterceptor
from tests.unit.test_interceptor_reuse import SERVICE, Aborted, Context, Details, call, continuation
from tests.unit.test_interceptor_reuse import handled as handled_by_method

METHOD = "Ended"


class TimedContext(Context):
    def __init__(self, remaining: float | None, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(metadata)
        self.remaining = remaining

    def time_remaining(self) -> float:
        return cast(float, self.remaining)


async def _handler(inner: Any) -> grpc.RpcMethodHandler:
    return await ServerInterceptor(()).intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(inner)), cast(Any, Details(f"/{SERVICE}/{METHOD}"))
    )


def handled(code: str) -> float:
    return handled_by_method(code, METHOD)


async def _cancelled_by_grpc(remaining: float | None, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    running = asyncio.Event()

    async def stall(request: Any, context: Any) -> str:
        running.set()
        await asyncio.sleep(10)
        return "late"

    handler = await _handler(stall)
    task = asyncio.create_task(call(handler, "x", TimedContext(remaining, metadata)))
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


@pytest.mark.parametrize(
    ("remaining", "allowed", "expected"),
    [
        (None, "300", 0.3),  # a REST call from the edge: its allowance is the deadline
        (5.0, "300", 0.3),  # the shorter of the two
        (0.2, "2000", 0.2),
        (None, None, None),  # no deadline anywhere: every outgoing call its own default
        (None, "-5", None),  # not a count of milliseconds: ignored
        (None, "3e2", None),
        (None, "\u0663\u0660\u0660", None),  # digits, not ASCII ones
    ],
)
async def test_the_call_deadline_is_the_grpc_one_or_the_edges_allowance_whichever_is_shorter(
    remaining: float | None, allowed: str | None, expected: float | None
) -> None:
    seen: list[float | None] = []

    async def note(request: Any, context: Any) -> str:
        seen.append(deadlines.remaining())
        return "ok"

    metadata = () if allowed is None else ((EDGE_TIMEOUT_HEADER, allowed),)
    await call(await _handler(note), "x", TimedContext(remaining, metadata))
    (left,) = seen
    if expected is None:
        assert left is None
    else:
        assert left is not None and expected - 0.05 < left <= expected


async def test_a_call_cancelled_as_the_edges_allowance_ran_out_is_counted_deadline_exceeded() -> None:
    before = handled("DEADLINE_EXCEEDED")
    await _cancelled_by_grpc(None, ((EDGE_TIMEOUT_HEADER, "0"),))
    assert handled("DEADLINE_EXCEEDED") - before == 1
