"""The standing timer that lets the driver's I/O thread sleep (common/cql.py):
one per reactor class and process, renewed each time it fires."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common import cql
from common.cql import STANDING_TIMER_SECONDS, keep_a_timer_pending


class FakeReactor:
    timers: list[tuple[float, Callable[[], None]]] = []

    @classmethod
    def create_timer(cls, timeout: float, callback: Callable[[], None]) -> object:
        cls.timers.append((timeout, callback))
        return object()


def test_one_timer_is_pending_per_reactor_and_renewed_when_it_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cql, "_standing_timers", set())
    FakeReactor.timers = []
    keep_a_timer_pending(FakeReactor)
    keep_a_timer_pending(FakeReactor)  # a second session in the same process
    assert [t for t, _ in FakeReactor.timers] == [STANDING_TIMER_SECONDS]

    _, fire = FakeReactor.timers[0]
    fire()
    assert [t for t, _ in FakeReactor.timers] == [STANDING_TIMER_SECONDS, STANDING_TIMER_SECONDS]
