"""The celebrity threshold's cost curve: the arithmetic and the metric parsing (bench/threshold.py)."""

from __future__ import annotations

import pytest

from bench import threshold
from bench.threshold import PushPoint


def test_fit_line_recovers_slope_and_intercept() -> None:
    slope, intercept = threshold.fit_line([10, 100, 1000], [12.0, 30.0, 210.0])
    assert slope == pytest.approx(0.2)
    assert intercept == pytest.approx(10.0)
    with pytest.raises(ValueError):
        threshold.fit_line([5, 5], [1.0, 2.0])


def test_threshold_is_where_the_push_fills_the_budget() -> None:
    # 0.05 ms per entry and 50 ms fixed: (1000 - 50) / 0.05 = 19,000 followers.
    assert threshold.threshold_for_budget(0.05, 50.0) == 19_000
    assert threshold.threshold_for_budget(0.05, -10.0) == 20_000  # a negative intercept is noise, not a bonus
    assert threshold.threshold_for_budget(1.0, 2000.0) == 0
    with pytest.raises(ValueError):
        threshold.threshold_for_budget(0.0, 1.0)


def test_pick_authors_takes_the_nearest_within_a_factor_of_two_each_once() -> None:
    authors = [{"user_id": i, "followers": f} for i, f in enumerate([1, 9, 12, 95, 450, 1799])]
    picked = threshold.pick_authors(authors, (10, 100, 300, 1000, 3000, 90000))
    # 10 -> 9; 100 -> 95; 300 -> 450 (within 2x); 1000 -> 1799 (within 2x); 3000 -> 1799 again; 90000 -> none.
    assert [a["followers"] for a in picked] == [9, 95, 450, 1799]


def test_pull_cost_per_followee_from_a_strategies_run() -> None:
    strategies = {"push": {"feed": {"stack_cpu_ms_per_req": 16.0}}, "pull": {"feed": {"stack_cpu_ms_per_req": 26.0}}}
    assert threshold.pull_ms_per_followee(strategies, 20.0) == 0.5
    assert threshold.pull_ms_per_followee(None, 20.0) is None
    assert threshold.pull_ms_per_followee({"push": {}}, 20.0) is None
    assert threshold.pull_ms_per_followee(strategies, 0.0) is None


def test_fanout_totals_sums_every_worker_instance() -> None:
    page = "# HELP x\nchirp_fanout_pushed_per_tweet_count 4.0\nchirp_fanout_pushed_per_tweet_sum 120.0\n"
    assert threshold.fanout_totals(lambda url: page) == (8.0, 240.0)  # two instances by default


def test_curve_fits_only_posts_that_pushed() -> None:
    points = [
        PushPoint(followers=0, pushed=0, fanout_ms=5.0, cpu_ms=3.0, cpu_ms_by_component={}),
        PushPoint(followers=10, pushed=10, fanout_ms=20.0, cpu_ms=6.0, cpu_ms_by_component={}),
        PushPoint(followers=1000, pushed=1000, fanout_ms=119.0, cpu_ms=105.0, cpu_ms_by_component={}),
    ]
    result = threshold.curve(points, None, 10.0)
    assert result["fanout_ms_per_entry"] == pytest.approx(0.1)
    assert result["cpu_ms_per_entry"] == pytest.approx(0.1)
    assert result["threshold_for_budget"] == int((1000 - 19.0) / 0.1)
    assert result["pull_cpu_ms_per_followee_per_read"] is None
    assert len(result["points"]) == 3
