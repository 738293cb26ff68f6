"""A call slower than the interceptor's threshold is logged once, with its method, code,
duration and the stages its handler marked (common/stages.py), in order and timed from
the call's start, each call with its own; a faster call logs nothing; tweet_svc marks where its
batch reads got their answer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import grpc
import pytest

from common import stages
from common.errors import NotFound
from common.interceptors import ServerInterceptor
from tests.unit.test_interceptor_reuse import Aborted, Context, Details, call, continuation
from tests.unit.test_singleflight import FillCache, FillStore, tweets

METHOD = "/chirp.test.v1.SlowService/Walk"


async def walk(request: Any, context: Any) -> str:
    stages.reached("first")
    await asyncio.sleep(0.03)

    async def aside() -> None:
        stages.reached("in a sub-task")

    await asyncio.gather(aside())
    stages.reached("last")
    if request == "missing":
        raise NotFound("no such walk")
    return "done"


async def _handler(slow_seconds: float) -> grpc.RpcMethodHandler:
    interceptor = ServerInterceptor((), slow_seconds=slow_seconds)
    return await interceptor.intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(walk)), cast(Any, Details(METHOD))
    )


def _slow_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "slow call"]


async def test_a_slow_call_is_logged_with_its_stages_in_order(caplog: pytest.LogCaptureFixture) -> None:
    handler = await _handler(slow_seconds=0.02)
    with caplog.at_level(logging.WARNING, logger="common.interceptors"):
        assert await call(handler, "ok", Context()) == "done"
        with pytest.raises(Aborted):
            await call(handler, "missing", Context())

    done, refused = _slow_records(caplog)
    assert (done.grpc_method, done.grpc_code) == ("Walk", "OK")  # type: ignore[attr-defined]
    assert refused.grpc_code == "NOT_FOUND"  # type: ignore[attr-defined]
    assert len(refused.stages_ms) == 3  # type: ignore[attr-defined]  # its own marks, not the first call's too
    marks = done.stages_ms  # type: ignore[attr-defined]
    assert [stage for stage, _ in marks] == ["first", "in a sub-task", "last"]
    offsets = [at for _, at in marks]
    assert offsets == sorted(offsets) and offsets[0] < 30 <= offsets[1]  # the sleep lies between them
    assert done.ms >= offsets[-1]  # type: ignore[attr-defined]


async def test_a_fast_call_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    handler = await _handler(slow_seconds=10.0)
    with caplog.at_level(logging.WARNING, logger="common.interceptors"):
        assert await call(handler, "ok", Context()) == "done"
    assert _slow_records(caplog) == []


async def test_tweet_svc_marks_where_a_batch_read_got_its_answer() -> None:
    """A read the cache missed marks the cache's answer, the store's and the like counts;
    one the cache answered marks no store read."""
    store, cache = FillStore(), FillCache()
    domain = tweets(store, cache)
    store.release.set()

    marks = stages.begin()
    assert [t.tweet_id for t in await domain.hydrate([1, 2])] == [1, 2]
    assert [stage for stage, _ in marks] == ["bodies cached", "bodies loaded", "like counts"]

    marks = stages.begin()
    await domain.hydrate([1, 2])  # now cached
    assert [stage for stage, _ in marks] == ["bodies cached", "like counts"]

    marks = stages.begin()
    assert await domain.recent_ids([7], 0, 10) == [(30, 7), (20, 7), (10, 7)]
    assert [stage for stage, _ in marks] == ["recent ids cached", "recent ids loaded"]
