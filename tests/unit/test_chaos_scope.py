"""The fault suite's rolling restart: every component, or one of each kind (CI's scope)."""

from __future__ import annotations

import pytest

from infra import chaos


def test_scope_one_keeps_the_first_of_each_kind_in_order() -> None:
    names = ["redis-1", "redis-2", "cassandra-1", "cassandra-2", "kafka-1", "graph_svc-0", "graph_svc-1"]
    assert chaos._first_of_each(names) == ["redis-1", "cassandra-1", "kafka-1", "graph_svc-0"]


def test_rolling_order_by_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIRP_TOPOLOGY", "cluster")
    every = chaos.rolling_order("all")
    one = chaos.rolling_order("one")
    assert set(one) < set(every)
    assert [n for n in every if n in one] == one  # same order: stores first
    kinds = {n.rsplit("-", 1)[0] for n in every}
    assert sorted(n.rsplit("-", 1)[0] for n in one) == sorted(kinds)
    assert {"cassandra", "kafka", "redis", "redis_state", "feed_svc", "fanout_worker"} <= kinds
