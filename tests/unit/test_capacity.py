"""The capacity model's arithmetic on a small example worked by hand, and where its inputs come from."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.capacity import (
    ALL_TIERS,
    Figure,
    Inputs,
    Results,
    Split,
    build_inputs,
    cores_for,
    fanout_inputs,
    nodes_for,
    plan,
    post_split,
    render,
)


def fig(value: float) -> Figure:
    return Figure(value, "", "test", True)


def split(**ms: float) -> Split:
    return Split(ms, "test", True)


def example() -> Inputs:
    """1000 feed reads/s and 10 posts/s pushed to 50 timelines each, on 4-core nodes run at 50%."""
    base = build_inputs(Results(()), None, {})
    return replace(
        base,
        feed_reads_per_s=fig(1000),
        posts_per_s=fig(10),
        likes_per_post=fig(0),
        follows_per_post=fig(0),
        read_cpu=split(feed_svc=4.0, envoy=1.0, redis=0.5),
        post_ack_cpu=split(tweet_svc=5.0, cassandra=2.0),
        entry_cpu=split(fanout_worker=1.0, redis=0.1),
        seeded_followers_per_post=fig(100),
        active_follower_share=fig(0.5),
        utilisation=fig(0.5),
        cores_per_node=fig(4),
        scylla_cores_per_node=fig(4),
        min_nodes=fig(1),
        measured_rf=fig(1),
        rf=fig(3),
        redis_replicas=fig(1),
        cql_timeline_copy=fig(1),
        # 1024 users x 1024 entries: 1 GiB of timelines in Redis at 1 KiB, 1 TiB of CQL rows at 1 MiB.
        daily_users=fig(1024),
        monthly_per_daily=fig(1),
        timeline_entries=fig(1024),
        redis_bytes_per_entry=fig(1024),
        body_cache_days=fig(0),
        redis_node_gb=fig(1),
        redis_usable=fig(0.5),
        redis_cores_per_shard=fig(1),
        redis_processes_per_node=fig(2),
        cql_bytes_per_timeline_row=fig(1024 * 1024),
        tweet_retention_days=fig(0),
        scylla_disk_tb_per_node=fig(1),
        scylla_disk_usable=fig(0.5),
        nic_gbit_per_node=fig(1e6),
    )


def test_cores_and_nodes() -> None:
    assert cores_for(1000, 4.0, 1.0) == pytest.approx(4.0)
    assert cores_for(1000, 4.0, 0.5) == pytest.approx(8.0)
    assert nodes_for(8.0, 16, 3) == 3
    assert nodes_for(50.0, 16, 1) == 4
    assert nodes_for(48.0, 16, 1) == 3


def test_worked_example() -> None:
    result = plan(example())
    tiers = result.tiers
    # Reads: 1000/s x 4 ms / 0.5 = 8 feed_svc cores, two 4-core nodes; Envoy 1000 x 1 ms / 0.5 = 2 cores.
    assert tiers["feed_svc"].cores == pytest.approx(8.0)
    assert tiers["feed_svc"].nodes == 2
    assert tiers["Envoy (edge)"].cores == pytest.approx(2.0)
    assert tiers["Envoy (edge)"].nodes == 1
    # A post reaches 100 followers x 0.5 active = 50 timelines: 10 posts/s x 50 x 1 ms / 0.5 = 1 core.
    assert result.pushed_per_post == pytest.approx(50)
    assert result.entries_per_s == pytest.approx(500)
    assert tiers["fanout_worker pool"].cores == pytest.approx(1.0)
    assert tiers["tweet_svc"].cores == pytest.approx(10 * 5 / 1000 / 0.5)
    # Writes: 50 timelines x (primary + replica) in Redis, x RF 3 in CQL.
    assert result.redis_writes_per_post == pytest.approx(100)
    assert result.cql_writes_per_post == pytest.approx(150)
    # ScyllaDB CPU: 2 ms measured at RF 1 is 6 ms at RF 3: 10 x 6 / 1000 / 0.5 = 0.12 cores;
    # disk: 1 TiB of timeline rows x RF 3 on 1 TB nodes half used = 6 nodes.
    assert tiers["ScyllaDB"].cores == pytest.approx(0.12)
    assert result.scylla_disk_tb == pytest.approx(3.0)
    assert tiers["ScyllaDB"].nodes == 6
    # Redis: reads 1000 x 0.5 / 0.5 = 1 core, writes 500 entries x 0.1 ms x 2 copies / 0.5 = 0.2;
    # the primaries do 1 + 0.2 / 2 = 1.1 cores: 2 shards, 4 processes, 2 nodes by CPU;
    # memory: 1 GiB x 2 copies on 1 GiB nodes half used = 4 nodes.
    assert tiers["Redis Cluster"].cores == pytest.approx(1.2)
    assert result.redis_memory_gb["with replicas"] == pytest.approx(2.0)
    assert tiers["Redis Cluster"].nodes == 4
    # No Kafka CPU in this example: the minimum of one node; one partition per fan-out process.
    assert tiers["Kafka"].nodes == 1
    assert result.kafka_partitions["chirp.tweets.v1"] == 1
    assert result.total_cores == pytest.approx(8 + 2 + 1 + 0.1 + 0.12 + 1.2)


def test_whole_post_figure_scales_its_fanout_components_with_the_timelines_pushed() -> None:
    inputs = replace(
        example(),
        entry_cpu=None,
        post_cpu=split(fanout_worker=10.0, tweet_svc=5.0),
        bench_followers_per_post=fig(20),
    )
    assert post_split(inputs, 40) == pytest.approx({"fanout_worker": 20.0, "tweet_svc": 5.0})


def test_report_names_every_tier_and_marks_assumptions() -> None:
    inputs = example()
    text = render(inputs, plan(inputs), "not gathered", "2026-01-01T00:00:00+00:00")
    for tier in ALL_TIERS:
        assert f"| {tier} |" in text
    assert "**assumption: peak rate is twice the daily average (for daily volumes)**" in text
    assert "| feed_svc | 8.00 | 2 |" in text


def write(path: Path, started: str, scenarios: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"started": started, "scenarios": scenarios}))
    return path


def test_results_take_the_newest_file_and_its_fastest_clean_rate(tmp_path: Path) -> None:
    rows = [
        {"achieved_rps": 50, "requests": 100, "errors": 0, "stack_cpu_ms_per_req": 20.0},
        {"achieved_rps": 200, "requests": 400, "errors": 0, "cpu_ms_per_req_by_component": {"feed_svc": 3.0}},
        {"achieved_rps": 300, "requests": 600, "errors": 60, "cpu_ms_per_req_by_component": {"feed_svc": 9.0}},
        {
            "achieved_rps": 400,
            "requests": 800,
            "errors": 0,
            "step": "overload",
            "cpu_ms_per_req_by_component": {"feed_svc": 99.0},
        },
    ]
    old = write(tmp_path / "quick.json", "2026-01-01T00:00:00+00:00", {"a_feed_rest": [{"achieved_rps": 1}]})
    new = write(tmp_path / "full.json", "2026-02-01T00:00:00+00:00", {"a_feed_rest": rows})
    by_component, total = Results.load([old, new]).split("a_feed_rest")
    assert total is None and by_component is not None
    assert dict(by_component.ms) == {"feed_svc": 3.0}
    assert by_component.source == "bench/results/full.json: scenarios.a_feed_rest[1].cpu_ms_per_req_by_component"
    # Without a split, the total is spread as issue 14's profile and the source says so.
    only_total = write(tmp_path / "full.json", "2026-02-01T00:00:00+00:00", {"a_feed_rest": rows[:1]})
    inputs = build_inputs(Results.load([only_total]), None, {})
    assert inputs.read_cpu.total == pytest.approx(20.0)
    assert "stack_cpu_ms_per_req" in inputs.read_cpu.source and "issue 14" in inputs.read_cpu.source


def test_unmeasured_fanout_falls_back_to_the_issue_figure() -> None:
    inputs = build_inputs(Results(()), None, {})
    assert inputs.entry_cpu is None
    assert inputs.post_cpu.total == pytest.approx(65.0)
    assert not inputs.post_cpu.measured
    measured = build_inputs(
        Results(()), None, {"redis_bytes_per_entry": {"value": 99.0, "source": "Redis MEMORY USAGE"}}
    )
    assert measured.redis_bytes_per_entry == Figure(99.0, "bytes", "Redis MEMORY USAGE", True)
    assert not inputs.redis_bytes_per_entry.measured


def test_followers_per_post_from_the_seed_manifest() -> None:
    manifest = {
        "users": 10,
        "edges": 40,
        "celebrity_threshold": 100,
        "authors": [{"followers": 1}, {"followers": 3}, {"followers": 8}],
        "celebrities": [{"followers": 120}],
    }
    fan = fanout_inputs(manifest, Results(()))
    # The bench posts as sampled authors (mean 4); every user posts in production and 3 of
    # the 10 sampled users have 1..99 followers: 4 x 0.3 timelines per post.
    assert fan["bench"].value == pytest.approx(4.0)
    assert fan["seeded"].value == pytest.approx(1.2)
    labels = [b.label for b in fan["bands"]]
    assert labels == ["1-9", ">= 100 (pulled)"]


def test_an_unreachable_stack_falls_back_to_the_last_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    import bench.capacity as capacity

    def refuse(timeline_size: int) -> dict[str, Any]:
        raise RedisConnectionError("refused")

    monkeypatch.setattr(capacity, "gather", refuse)
    monkeypatch.setattr(capacity, "MEASURED_CACHE", tmp_path / "measured.json")
    measured, note = capacity.measured_figures(True, 800)
    assert measured == {} and "assumptions used" in note
    (tmp_path / "measured.json").write_text(json.dumps({"redis_bytes_per_entry": {"value": 90, "source": "x"}}))
    measured, note = capacity.measured_figures(True, 800)
    assert measured["redis_bytes_per_entry"]["value"] == 90 and "last cached" in note


def test_like_follow_and_fanout_figures_are_read_when_the_bench_reports_them(tmp_path: Path) -> None:
    run = {
        "started": "2026-03-01T00:00:00+00:00",
        "scenarios": {
            "k_like": [{"achieved_rps": 100, "requests": 100, "errors": 0, "cpu_ms_per_req_by_component": {"x": 2.0}}],
            "m_fanout": {"cpu_ms_per_entry_by_component": {"fanout_worker": 0.25}},
        },
    }
    path = tmp_path / "full.json"
    path.write_text(json.dumps(run))
    inputs = build_inputs(Results.load([path]), None, {})
    assert dict(inputs.like_cpu.ms) == {"x": 2.0} and inputs.like_cpu.measured
    assert inputs.entry_cpu is not None
    assert inputs.entry_cpu.source == "bench/results/full.json: scenarios.m_fanout.cpu_ms_per_entry_by_component"
    assert not inputs.follow_cpu.measured


def test_a_burst_run_prices_a_post_with_its_fanout_at_the_burst_s_entries_per_post() -> None:
    burst = {
        "tweets_handled": 400,
        "timeline_entries_written": 1400,
        "net_cpu_ms_per_post_by_component": {"cassandra": 5.0, "fanout_worker": 3.0, "prometheus": -0.1},
    }
    run = {"started": "2026-12-01T00:00:00", "scenarios": {"m_burst": {"burst": burst}}}
    inputs = build_inputs(Results((("bench/results/x.json", run),)), None, {})
    assert inputs.post_cpu.measured and inputs.post_cpu.source.endswith(
        "m_burst.burst.net_cpu_ms_per_post_by_component"
    )
    assert inputs.post_cpu.ms == {"cassandra": 5.0, "fanout_worker": 3.0, "prometheus": 0.0}
    assert inputs.bench_followers_per_post.value == 3.5
