"""The benchmark's arithmetic: CPU per read net of the idle stack, the
saturation rule, what an overload step reports, per-window cold-start figures,
and the Markdown they end up in."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import load, report, seed
from bench.idle import Sample
from bench.load import (
    ERROR,
    FAILED,
    OK,
    SATURATION_P99_MS,
    SHED,
    Outcome,
    Stats,
    grpc_kind,
    http_code,
    http_kind,
    net_spent,
    overload_stats,
    per_request_ms,
    saturation,
    spent_by_component,
    stats,
    summarize,
    windows,
)


def step(rate: float, errors: int = 0, requests: int = 1000, p99: float = 20.0) -> Stats:
    return Stats(rate, rate, requests, errors, 5.0, 10.0, p99, p99, p99)


def outcome(kinds: list[str], latencies: list[float], rate: float = 10.0, seconds: float = 1.0) -> Outcome:
    codes = {OK: "200", SHED: "503", ERROR: "500", FAILED: "none"}
    return Outcome(rate, seconds, latencies, kinds, [codes[k] for k in kinds])


# ---- net CPU ------------------------------------------------------------------------------


def test_net_cpu_subtracts_the_idle_rate_over_the_span() -> None:
    spent = {"feed_svc": 3.0, "cassandra": 1.0}
    idle = {"feed_svc": 0.05, "cassandra": 0.2, "kafka": 0.01}
    net = net_spent(spent, idle, wall_seconds=10.0)
    assert net == pytest.approx({"feed_svc": 2.5, "cassandra": -1.0, "kafka": -0.1})


def test_per_request_ms_sorts_largest_first_and_needs_a_success() -> None:
    assert list(per_request_ms({"a": 0.1, "b": 0.3}, good=100).items()) == [("b", 3.0), ("a", 1.0)]
    assert per_request_ms({"a": 1.0}, good=0) == {}


def test_cpu_by_component_leaves_out_a_process_restarted_in_the_span() -> None:
    before = [
        Sample("feed_svc-0", 10, "100", 50.0),
        Sample("feed_svc-1", 11, "100", 40.0),
        Sample("envoy", 12, "90", 5.0),
    ]
    after = [
        Sample("feed_svc-0", 10, "100", 51.5),
        Sample("feed_svc-1", 20, "300", 0.25),
        Sample("envoy", 12, "90", 5.5),
    ]
    assert spent_by_component(before, after) == pytest.approx({"feed_svc": 1.5, "envoy": 0.5})


def test_summarize_reports_gross_and_net_cpu_per_successful_read() -> None:
    run = outcome([OK] * 100 + [SHED] * 100, [10.0] * 200, rate=20.0, seconds=10.0)
    run.cpu_seconds = {"feed_svc": 0.6, "envoy": 0.4}
    run.wall_seconds = 10.0
    result = summarize(run, {"feed_svc": 0.01, "envoy": 0.02})
    assert result.stack_cpu_ms_per_req == 10.0  # 1 s over 100 successes
    assert result.cpu_ms_per_req_by_component == {"feed_svc": 6.0, "envoy": 4.0}
    assert result.net_stack_cpu_ms_per_req == 7.0  # (1.0 - 0.3) s over 100 successes
    assert result.net_cpu_ms_per_req_by_component == {"feed_svc": 5.0, "envoy": 2.0}
    assert result.errors == 100
    assert result.statuses == {"503": 100}


def test_summarize_without_idle_gives_no_net_figure() -> None:
    run = outcome([OK] * 10, [1.0] * 10)
    run.cpu_seconds, run.wall_seconds = {"feed_svc": 0.1}, 1.0
    result = summarize(run)
    assert result.stack_cpu_ms_per_req == 10.0
    assert result.net_stack_cpu_ms_per_req is None


def test_unsent_requests_count_as_errors_but_have_no_latency() -> None:
    run = Outcome(10.0, 1.0, [6.0, 0.0, 0.0, 0.0], [OK, FAILED, FAILED, FAILED], ["200", "unsent", "unsent", "none"])
    result = summarize(run)
    assert result.errors == 3
    assert result.p50_ms == 0.0  # the one unanswered request's latency counts, the unsent do not
    assert result.max_ms == 6.0
    assert result.statuses == {"none": 1, "unsent": 2}


# ---- what became of a request ---------------------------------------------------------------


def test_http_and_grpc_answers_are_classified() -> None:
    assert [http_kind(s) for s in (200, 204, 429, 503, 504, 500, 0, -1)] == [
        OK, OK, SHED, SHED, ERROR, ERROR, FAILED, FAILED,
    ]  # fmt: skip
    assert [http_code(s) for s in (200, 0, -1)] == ["200", "none", "unsent"]
    assert grpc_kind("OK", "") == OK
    assert grpc_kind("Unavailable", "rpc error: code = Unavailable desc = upstream overflow") == SHED
    assert grpc_kind("ResourceExhausted", "") == SHED
    assert grpc_kind("Unavailable", 'connection error: desc = "transport: Error while dialing"') == FAILED
    assert grpc_kind("DeadlineExceeded", "") == FAILED
    assert grpc_kind("Internal", "") == ERROR


# ---- saturation ------------------------------------------------------------------------------


def test_saturation_is_the_last_step_before_the_first_failure() -> None:
    steps = [step(100), step(200), step(400, errors=50), step(600)]
    found = saturation(steps)
    assert found is not None and found.offered_rps == 200


def test_one_percent_of_errors_fails_a_step_just_under_passes() -> None:
    assert saturation([step(100), step(200, errors=10)]) == step(100)
    assert saturation([step(100), step(200, errors=9)]) == step(200, errors=9)


def test_a_slow_tail_fails_a_step() -> None:
    assert saturation([step(100), step(200, p99=SATURATION_P99_MS + 1)]) == step(100)
    assert saturation([step(100), step(200, p99=SATURATION_P99_MS)]) == step(200, p99=SATURATION_P99_MS)


def test_no_saturation_when_the_lowest_step_fails() -> None:
    assert saturation([step(100, errors=500), step(200)]) is None
    assert saturation([]) is None


def test_steps_are_taken_in_rate_order() -> None:
    found = saturation([step(400, errors=100), step(100), step(200)])
    assert found is not None and found.offered_rps == 200


# ---- overload ----------------------------------------------------------------------------------


def test_overload_reports_goodput_shed_and_how_fast_the_excess_was_refused() -> None:
    kinds = [OK] * 180 + [SHED] * 15 + [FAILED] * 5
    latencies = [20.0] * 180 + [3.0] * 10 + [80.0] * 5 + [5000.0] * 5
    result = overload_stats(outcome(kinds, latencies, rate=40.0, seconds=5.0), peak_rps=40.0)
    assert result["goodput_rps"] == 36.0
    assert result["goodput_vs_peak"] == 0.9
    assert result["shed"] == 15
    assert result["shed_per_s"] == 3.0
    assert result["shed_p50_ms"] == 3.0
    assert result["shed_p99_ms"] == 80.0
    assert result["excess"] == 20
    assert result["other_errors"] == 5
    assert (result["non_2xx_p50_ms"], result["non_2xx_p99_ms"]) == (80.0, 5000.0)
    # 10 fast refusals out of 20 requests not served (5 slow refusals, 5 never answered).
    assert result["excess_shed_within_50ms"] == 0.5


def test_overload_with_everything_served_has_no_excess() -> None:
    result = overload_stats(outcome([OK] * 10, [1.0] * 10), peak_rps=10.0)
    assert result["excess"] == 0
    assert result["excess_shed_within_50ms"] is None
    assert result["shed_p50_ms"] is None
    assert result["goodput_vs_peak"] == 1.0
    assert overload_stats(outcome([OK] * 10, [1.0] * 10), peak_rps=None)["goodput_vs_peak"] is None


# ---- cold start windows -----------------------------------------------------------------------


def test_windows_split_by_scheduled_start() -> None:
    kinds = [FAILED] * 3 + [OK] * 7 + [OK] * 10 + [OK] * 4
    latencies = [2000.0] * 3 + [10.0] * 7 + [5.0] * 10 + [4.0] * 4
    run = Outcome(1.0, 24.0, latencies, kinds, ["none" if k == FAILED else "200" for k in kinds])
    rows = windows(run, window_seconds=10.0)
    assert [(r["from_s"], r["to_s"], r["requests"], r["errors"]) for r in rows] == [
        (0.0, 10.0, 10, 3), (10.0, 20.0, 10, 0), (20.0, 24.0, 4, 0),
    ]  # fmt: skip
    assert rows[0]["statuses"] == {"none": 3}
    assert rows[0]["p99_ms"] == 2000.0
    assert rows[1]["p50_ms"] == 5.0


def test_stats_keeps_its_old_shape() -> None:
    result = stats(10.0, 2.0, [1.0, 2.0, 3.0], [True, True, False])
    assert (result.achieved_rps, result.requests, result.errors, result.p50_ms) == (1.0, 3, 1, 2.0)
    assert math.isnan(stats(10.0, 1.0, [], []).p50_ms)


# ---- report --------------------------------------------------------------------------------------


def results_with_everything() -> dict[str, Any]:
    ladder = step(100).row() | {
        "stack_cpu_ms_per_req": 12.0,
        "net_stack_cpu_ms_per_req": 9.5,
        "cpu_ms_per_req_by_component": {"feed_svc": 5.0, "envoy": 2.0},
        "net_cpu_ms_per_req_by_component": {"feed_svc": 4.5, "envoy": 1.75},
    }
    over = step(200, errors=40).row() | {
        "step": "overload",
        "overload": {
            "saturation_rps": 100.0, "saturation_is_lower_bound": False, "rule": "RULE",
            **overload_stats(outcome([OK] * 16 + [SHED] * 4, [9.0] * 16 + [2.0] * 4, rate=20.0), 100.0),
        },
    }  # fmt: skip
    return {
        "label": "t",
        "started": "now",
        "machine": {"cpus": 2, "instances": 2},
        "seed": {"users": 1, "edges": 1, "tweets": 1},
        "idle": {"seconds": 10.0, "cores": 0.05, "cores_by_component": {"cassandra": 0.04, "kafka": 0.01}},
        "scenarios": {
            "a_feed_rest": [ladder, over],
            "d_celebrity": {"skipped": "no celebrity"},
            "j_cold_start": {
                "rate_rps": 60, "seconds": 60.0, "mix": "MIX", "flushed": ["127.0.0.1:6379"],
                "windows": windows(outcome([FAILED] * 5 + [OK] * 5, [900.0] * 5 + [8.0] * 5, rate=1.0), 10.0),
            },
        },
    }  # fmt: skip


def test_markdown_shows_net_cpu_overload_and_cold_start() -> None:
    text = report.markdown(results_with_everything())
    assert "| feed_svc | 5.0 | 4.5 |" in text
    assert "| **total** | 12.0 | 9.5 |" in text
    assert "5.0% of one core (cassandra 4.0%, kafka 1.0%)" in text
    assert "| REST | 100 | 200 | 16.0 | 0.16 | 4.0 | 2.0 | 2.0 | 2.0 | 100.0% | 0 |" in text
    assert "Saturation: RULE." in text
    assert "| 0-10 | 10 | 5 | none: 5 | " in text
    assert "(d) celebrity: skipped, no celebrity." in text
    assert "overload (2x saturation) | 200 |" in text


# ---- seeding when there is no graph ---------------------------------------------------------------


class FakeSeeding:
    """bench.seed with the store and the seeding itself replaced: which usernames exist, and what was seeded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, taken: set[str]) -> None:
        self.taken = taken
        self.seeded: list[list[str]] = []
        self.manifest = tmp_path / "seed.json"
        monkeypatch.setattr(seed, "MANIFEST", self.manifest)
        monkeypatch.setattr(seed, "ROOT", tmp_path)
        monkeypatch.setattr(seed, "_usernames_taken", self.usernames_taken)
        monkeypatch.setattr(seed, "main", self.main)

    async def usernames_taken(self, names: list[str]) -> list[bool]:
        return [n in self.taken for n in names]

    def main(self, argv: list[str]) -> int:
        self.seeded.append(argv)
        prefix = argv[argv.index("--prefix") + 1]
        self.manifest.write_text(json.dumps({"readers": [{"username": f"{prefix}0"}], "authors": []}))
        return 0


def test_a_stack_without_a_manifest_gets_a_small_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeSeeding(monkeypatch, tmp_path, taken=set())
    manifest = seed.ensure_seeded(["--users", "10000", "--edges", "200000"])
    assert fake.seeded == [["--users", "10000", "--edges", "200000", "--prefix", "s"]]
    assert manifest["readers"] == [{"username": "s0"}]


def test_a_present_graph_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeSeeding(monkeypatch, tmp_path, taken={"s7"})
    fake.manifest.write_text(json.dumps({"readers": [{"username": "s7"}], "authors": []}))
    assert seed.ensure_seeded(["--users", "10"])["readers"] == [{"username": "s7"}]
    assert fake.seeded == []


def test_a_manifest_whose_users_are_gone_is_reseeded_under_a_free_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The manifest names users the store lost, while older graphs still hold prefixes s and sa.
    fake = FakeSeeding(monkeypatch, tmp_path, taken={"s0", "s10", "sa0"})
    fake.manifest.write_text(json.dumps({"readers": [{"username": "sc15"}], "authors": []}))
    seed.ensure_seeded(["--users", "10"])
    assert fake.seeded == [["--users", "10", "--prefix", "sb"]]


def test_the_idle_stack_is_the_quietest_window_and_the_report_names_every_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import idle as idle_probe
    from bench import run

    busy = {"cassandra": 0.159, "kafka": 0.038, "feed_svc-0": 0.005}
    quiet = {"cassandra": 0.041, "kafka": 0.022, "feed_svc-0": 0.004}
    windows = iter([busy, quiet, {**quiet, "cassandra": 0.06}])
    monkeypatch.setattr(run.time, "sleep", lambda _s: None)
    runs = {"cassandra": 180.0, "kafka": 150.5, "feed_svc-0": 20.0, "feed_svc-1": 25.0}
    monkeypatch.setattr(run.idle_probe, "measure", lambda s: idle_probe.Window(s, next(windows), 0, 0, [], {}, runs))
    monkeypatch.setattr(run.idle_probe, "wake_cost_us", lambda: 71.64)
    bench = run.Bench(True, {})

    cores = bench.idle_cores()

    assert cores == {"cassandra": 0.041, "kafka": 0.022, "feed_svc": 0.004}
    assert bench.idle is not None and bench.idle["windows_cores"] == [0.202, 0.067, 0.086]
    assert bench.idle["runs_per_second"] == 375.5
    assert bench.idle["runs_per_second_by_component"] == {"cassandra": 180.0, "kafka": 150.5, "feed_svc": 45.0}
    text = "\n".join(report.feed_read_tables({"scenarios": {}, "idle": bench.idle}))
    assert "the quietest of 3 windows (20.2%, 6.7%, 8.6%)" in text
    assert "6.7% of one core" in text
    assert "its threads ran 376 times a second" in text
    assert "sleep and wake cost 72 us of CPU on this host" in text
    # A run recorded before the runs were measured reads as it did.
    for missing in (("runs_per_second", "wake_cost_us"), ("wake_cost_us",)):
        older = {k: v for k, v in bench.idle.items() if k not in missing}
        assert "times a second" not in "\n".join(report.feed_read_tables({"scenarios": {}, "idle": older}))


def test_a_window_with_a_restart_or_traffic_is_not_the_idle_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import idle as idle_probe
    from bench import run

    # A restarted process is left out of its window, so that window's total is the lowest.
    windows = iter(
        [
            idle_probe.Window(10.0, {"kafka": 0.02}, 0, 0, ["cassandra-0"], {}),
            idle_probe.Window(10.0, {"cassandra": 0.03, "kafka": 0.02}, 40, 40, [], {}),
            idle_probe.Window(10.0, {"cassandra": 0.05, "kafka": 0.02}, 0, 0, [], {}),
        ]
    )
    monkeypatch.setattr(run.time, "sleep", lambda _s: None)
    monkeypatch.setattr(run.idle_probe, "measure", lambda s: next(windows))
    bench = run.Bench(True, {})

    assert bench.idle_cores() == {"cassandra": 0.05, "kafka": 0.02}
    assert bench.idle is not None and bench.idle["windows_restarted"] == [["cassandra-0"], [], []]


def test_a_ladder_whose_rates_all_pass_climbs_on_until_a_step_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import run

    offered: list[float] = []

    def fake_run(rate: float, seconds: float) -> Outcome:
        offered.append(rate)
        return outcome([OK], [1.0], rate=rate, seconds=seconds)

    # The stack serves up to 900 req/s: the step at 1000 has 5% errors.
    def fake_summarize(o: Outcome, _idle: object, step: str = "") -> Stats:
        return run.Stats(o.offered_rps, o.offered_rps, 1000, 50 if o.offered_rps > 900 else 0, 5, 10, 20, 20, 20)

    monkeypatch.setattr(run, "summarize", fake_summarize)
    monkeypatch.setattr(run, "_describe", lambda s: "")
    monkeypatch.setattr(run, "overload_stats", lambda _o, _peak: {})
    monkeypatch.setattr(run.time, "sleep", lambda _s: None)
    bench = run.Bench(True, {})
    monkeypatch.setattr(bench, "idle_cores", lambda: {})

    steps = bench.ladder(fake_run, [100, 200, 400])

    assert offered == [100, 200, 400, 600, 900, 1350, 1800]
    assert steps[-1].overload is not None
    assert steps[-1].overload["saturation_rps"] == 900
    assert steps[-1].overload["saturation_is_lower_bound"] is False

    # A stack that passes every step up to the cap saturates at "at least" the cap.
    offered.clear()
    monkeypatch.setattr(
        run, "summarize", lambda o, _idle, step="": run.Stats(o.offered_rps, o.offered_rps, 1000, 0, 5, 10, 20, 20, 20)
    )
    steps = bench.ladder(fake_run, [100, 200, 400])
    assert offered == [100, 200, 400, 600, 900, 1350, 2000, 3000, 6000]
    assert steps[-1].overload is not None
    assert steps[-1].overload["saturation_rps"] == run.MAX_LADDER_RPS
    assert steps[-1].overload["saturation_is_lower_bound"] is True


def test_a_climb_always_rises_and_ends_at_the_cap() -> None:
    from bench import run

    rates = list(run.climb([10]))
    assert rates[:4] == [10, 60, 110, 160]
    assert rates[-1] == run.MAX_LADDER_RPS
    assert rates == sorted(set(rates))  # strictly rising
    with pytest.raises(ValueError):
        list(run.climb([]))


def test_the_rest_p50_is_set_against_the_baseline_back_to_back_and_paced_with_the_load_generators_floor() -> None:
    results = results_with_everything()
    results["scenarios"]["f_baseline"] = {
        "p50_ms": 0.8, "p99_ms": 1.0, "throughput_rps_32_in_flight": 1400.0,
        "paced_rps": 100, "paced_p50_ms": 1.6, "loadgen_floor_p50_ms": 1.1,
    }  # fmt: skip
    text = report.markdown(results)
    # the REST step's p50 is 5.0 ms (step())
    assert "is 6.25x the baseline p50, 3.12x its p50 paced at 100 reads/s (1.6 ms)" in text
    assert "against Envoy's admin /ready, is 1.1 ms of it." in text

    # A ladder without a step at the paced rate (bench-full starts at 50) is set against the back-to-back p50 only.
    results["scenarios"]["a_feed_rest"][0]["offered_rps"] = 50.0
    text = report.markdown(results)
    assert "Chirp's REST home-feed p50 at 50 req/s is 6.25x the baseline p50." in text
    assert "paced" not in text.split("Chirp's REST home-feed p50")[1].split("\n")[0]


def test_ghz_waits_for_the_calls_in_flight_when_its_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its default closes the connections under them, and each was counted as an
    # UNAVAILABLE the stack never sent ("use of closed network connection").
    seen: list[list[str]] = []

    def fake_ghz(argv: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        Path(argv[argv.index("-o") + 1]).write_text("\nduration (ms),status,error\n2.5,OK,\n")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(load.subprocess, "run", fake_ghz)
    outcome = load.grpc_run("chirp.feed.v1.FeedService/GetHomeFeed", {}, {}, "127.0.0.1:1", 100, 1.0)
    (argv,) = seen
    assert argv[argv.index("--duration-stop") + 1] == "wait"
    assert outcome.kinds == [OK] and outcome.latencies_ms == [2.5]
