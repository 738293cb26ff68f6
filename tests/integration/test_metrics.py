"""Every instance exports the metrics SREs need, with real values after traffic."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra import topology
from tests import faults
from tests.conftest import unique_name


def scrape(port: int) -> dict[str, float]:
    """Sample name (with labels) -> value, summed over the instance's samples of that name."""
    text = httpx.get(f"http://{topology.HOST}:{port}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
            labelled = sample.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"
            values[labelled] = sample.value
    return values


def total(service: str, name: str) -> float:
    svc = next(s for s in (*topology.SERVICES, *topology.WORKERS) if s.name == service)
    return sum(scrape(inst.metrics_port).get(name, 0.0) for inst in topology.instances(svc))


def test_services_and_workers_export_domain_metrics_after_traffic(edge: httpx.Client) -> None:
    name = unique_name()
    edge.post("/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()
    token = edge.post("/v1/sessions", json={"username": name, "password": "correct horse"}).json()["access_token"]
    auth = {"authorization": f"Bearer {token}"}
    fan_before = total("fanout_worker", "chirp_fanout_pushed_per_tweet_count")
    edge.post("/v1/tweets", json={"text": "metrics"}, headers=auth).raise_for_status()
    edge.get("/v1/feed", headers=auth).raise_for_status()
    edge.get("/v1/feed/trending").raise_for_status()

    for svc in topology.SERVICES:
        assert total(svc.name, "grpc_server_handled_total") > 0, svc.name
        assert total(svc.name, "grpc_server_handling_seconds_count") > 0, svc.name
    assert total("feed_svc", "chirp_timeline_cache_total") > 0
    assert total("feed_svc", "chirp_celebrity_pulls_per_read_count") > 0
    faults.wait_for(
        lambda: total("fanout_worker", "chirp_fanout_pushed_per_tweet_count") > fan_before,
        15,
        "the fan-out of the tweet",
    )
    assert total("fanout_worker", "chirp_fanout_lag_seconds_count") > 0
    lag_samples = [scrape(inst.metrics_port) for w in topology.WORKERS for inst in topology.instances(w)]
    groups = {k for s in lag_samples for k in s if k.startswith("chirp_consumer_lag_messages{")}
    assert {
        "chirp_consumer_lag_messages{group=chirp-fanout}",
        "chirp_consumer_lag_messages{group=chirp-like-worker}",
    } <= groups
