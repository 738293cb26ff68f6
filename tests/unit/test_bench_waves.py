"""bench/waves.py's windows: errors, latency and the slowest second of one stretch of a run."""

from __future__ import annotations

from bench.load import OK, SHED, Outcome
from bench.waves import describe, lifetime_window, per_reader_window


def test_a_window_counts_only_its_own_requests_by_their_scheduled_second() -> None:
    rate = 4.0  # four requests a second, for four seconds
    kinds = [OK] * 4 + [OK, SHED, SHED, OK] + [OK] * 3 + [SHED] + [SHED] * 4
    latencies = [1.0] * 4 + [2.0, 90.0, 80.0, 3.0] + [4.0] * 4 + [500.0] * 4
    outcome = Outcome(offered_rps=rate, seconds=4, latencies_ms=latencies, kinds=kinds, codes=["200"] * 16)

    assert describe(outcome, rate, 1, 3) == "3 errors, p50 4.0 ms, p99 90.0 ms, max 90 ms, slowest second 2 ok"
    assert describe(outcome, rate, 0, 1).startswith("0 errors, p50 1.0 ms")


def test_the_lifetime_window_covers_the_last_fifth_of_the_warm_up_s_fills_and_3_s_either_side() -> None:
    # filled 16.5 s before the run began, 90 s lifetimes end 55.5-73.5 s into it
    assert lifetime_window(90.0, 16.5) == ("bodies' and follow lists' lifetime ends", 52, 77)
    assert lifetime_window(10.0, 16.5)[1:] == (0, 0)  # over before the run: nothing to look at


def test_the_per_reader_window_covers_the_spread_like_states_and_the_hidden_sets_due_points() -> None:
    # filled 16.5 s before the run began: like states end 45-60 s after, hidden sets fall
    # due from 48 s after (a fifth of 60 s before their end), so 28.5-43.5 s into it
    assert per_reader_window(16.5) == ("like states' and hidden sets' lifetime ends", 25, 47)
