"""The fault suite's windows: the warm-up before the baseline, and rows counted
once every request of a window has ended."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench import chaos_load
from bench.chaos_load import Request
from infra import chaos

RATE = 100.0  # requests/s the fake load "sends"


async def _send(load: chaos_load.Load, seconds: float, ok_after: float) -> None:
    """Record a request sent every 1/RATE s: failed (a timeout) until `ok_after` s,
    answered after. Each wake-up records every request due by then, so the rate holds
    however late a busy machine wakes the sender."""
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        while sent / RATE <= elapsed:
            ok = sent / RATE >= ok_after
            load.requests.append(Request("feed", started + sent / RATE, time.time(), 200 if ok else 0, 5.0, ok))
            sent += 1
        await asyncio.sleep(1 / RATE)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaos_load, "TIMEOUT_S", 0.05)
    monkeypatch.setattr(chaos, "WARM_WINDOW_SECONDS", 0.2)
    monkeypatch.setattr(chaos, "WARM_POLL_SECONDS", 0.02)


def _suite() -> chaos.Suite:
    return chaos.Suite(chaos_load.Load(seed=1), None, RATE)  # type: ignore[arg-type]


@pytest.mark.usefixtures("fast")
async def test_warm_up_waits_for_a_window_nearly_all_answered() -> None:
    suite = _suite()
    sender = asyncio.create_task(_send(suite.load, 60.0, ok_after=0.6))
    warm_s = await suite.warm_up(limit=60.0)
    sender.cancel()
    # A window of 0.2 s at most 5% failed ends after about 0.79 s, and is judged once
    # its answers are due (0.05 s later); it does not wait for the limit.
    assert 0.8 <= warm_s < 60.0
    (row,) = suite.finish()
    assert row.fault == "warm-up after set-up"
    assert 0 < row.success < 1  # the cold start is in the report, not hidden


@pytest.mark.usefixtures("fast")
async def test_warm_up_gives_up_at_its_limit() -> None:
    suite = _suite()
    sender = asyncio.create_task(_send(suite.load, 2.0, ok_after=99.0))
    warm_s = await suite.warm_up(limit=0.5)
    sender.cancel()
    assert warm_s >= 0.5
    assert suite.finish()[0].success == 0


def test_rows_count_requests_that_ended_after_the_window_closed() -> None:
    suite = _suite()
    start = time.monotonic()
    suite.load.requests.append(Request("feed", start + 0.1, time.time(), 200, 3.0, True))
    suite.window("no fault (baseline)", start, start + 1.0, (0.0, 0.0, 0.0))
    # Two requests of the window ended later: one timed out, one answered.
    suite.load.requests.append(Request("feed", start + 0.5, time.time(), 0, 5000.0, False))
    suite.load.requests.append(Request("post", start + 0.9, time.time(), 201, 900.0, True))
    suite.load.requests.append(Request("feed", start + 1.5, time.time(), 0, 5000.0, False))  # next window's
    (row,) = suite.finish()
    assert (row.requests, row.success, row.worst_ms) == (3, pytest.approx(2 / 3, abs=1e-4), 5000.0)
    assert row.failed_by_kind == {"feed": 1}
