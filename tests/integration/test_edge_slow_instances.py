"""A slow instance is not a dead one: the edge hedges a read past its per-try
timeout to another instance without ejecting the slow one, and a read that runs
out of time is answered as a timeout even when the retry budget refused its
hedge. Run on a private Envoy built from the real renderer whose rank_svc cluster
is two stand-in instances here (tests/integration/test_edge_deadlines.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from tests.edge import cluster_stat, private_edge, render
from tests.integration.test_edge_deadlines import StandIn, serving

PORT, ADMIN, SLOW, FAST = 18484, 19945, 18485, 18486
SETTINGS = replace(render.EdgeSettings(), listen_port=PORT, admin_port=ADMIN)
PER_TRY_S = SETTINGS.read_timeout_s / 2


@pytest.fixture(scope="module")
def instances() -> Iterator[tuple[StandIn, StandIn]]:
    with serving(SLOW) as slow, serving(FAST) as fast:
        yield slow, fast


@pytest.fixture(scope="module")
def edge_base(instances: tuple[StandIn, StandIn], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_edge(tmp_path_factory.mktemp("slow_edge"), SETTINGS, {"rank_svc": [SLOW, FAST]}) as base:
        yield base


def _reads_at_once(base: str, count: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: httpx.get(f"{base}/v1/feed/trending", timeout=10), range(count)))


def _stat(name: str) -> int:
    return cluster_stat(ADMIN, "rank_svc", name)


def test_reads_slow_on_one_instance_are_hedged_to_the_other_which_is_not_ejected(
    instances: tuple[StandIn, StandIn], edge_base: str
) -> None:
    slow, fast = instances
    slow.delay_s, fast.delay_s = PER_TRY_S + 0.3, 0.0
    slow.seen.clear()
    for _ in range(3):
        replies = _reads_at_once(edge_base, 4)
        assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    assert slow.seen, "least-request never tried the slow instance: nothing was tested"
    # Each read the slow instance took timed out its try (and was answered by the
    # other); at 2 such timeouts in a row the edge ejected it.
    assert _stat("outlier_detection.ejections_enforced_total") == 0


def test_a_read_out_of_time_is_a_timeout_even_when_its_hedge_was_refused(
    instances: tuple[StandIn, StandIn], edge_base: str
) -> None:
    for instance in instances:
        instance.delay_s = SETTINGS.read_timeout_s + 1
    overflowed = _stat("upstream_rq_retry_overflow")
    # More reads at once than the retry budget's floor (3) lets hedge.
    replies = _reads_at_once(edge_base, 6)
    assert _stat("upstream_rq_retry_overflow") > overflowed  # else the case was not made
    for reply in replies:
        assert reply.status_code == 504, reply.text
        assert reply.json()["code"] == 4 and "retry-after" not in reply.headers
