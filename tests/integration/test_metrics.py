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


# The RPC of each service that the traffic below calls through the edge.
CALLED = {"graph_svc": "CreateUser", "tweet_svc": "CreateTweet", "feed_svc": "GetHomeFeed", "rank_svc": "ListTrending"}
DOMAIN = (
    ("feed_svc", "chirp_timeline_cache_total"),
    ("feed_svc", "chirp_celebrity_pulls_per_read_count"),
)
FANOUT = ("chirp_fanout_pushed_per_tweet_count", "chirp_fanout_lag_seconds_count")


def rpc_counts() -> dict[str, float]:
    """Completed-OK count and latency-sample count of each called RPC, summed over instances.

    Counters only grow and earlier tests already moved them, so a test reads them
    before and after its own traffic: a value alone would pass with the metric broken.
    """
    counts: dict[str, float] = {}
    for svc in topology.SERVICES:
        method = CALLED[svc.name]
        handled = f"grpc_server_handled_total{{grpc_code=OK,grpc_method={method},grpc_service={svc.grpc_service}}}"
        timed = f"grpc_server_handling_seconds_count{{grpc_method={method},grpc_service={svc.grpc_service}}}"
        counts[handled] = total(svc.name, handled)
        counts[timed] = total(svc.name, timed)
    for service, name in DOMAIN:
        counts[name] = total(service, name)
    return counts


def test_services_and_workers_export_domain_metrics_after_traffic(edge: httpx.Client) -> None:
    before = rpc_counts()
    fan_before = {name: total("fanout_worker", name) for name in FANOUT}
    name = unique_name()
    edge.post("/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()
    token = edge.post("/v1/sessions", json={"username": name, "password": "correct horse"}).json()["access_token"]
    auth = {"authorization": f"Bearer {token}"}
    edge.post("/v1/tweets", json={"text": "metrics"}, headers=auth).raise_for_status()
    edge.get("/v1/feed", headers=auth).raise_for_status()
    edge.get("/v1/feed/trending").raise_for_status()

    after = rpc_counts()
    # Other traffic on the shared stack can only add to these, never hide a missing increment.
    grown = {key: after[key] - before[key] for key in before}
    assert all(delta >= 1 for delta in grown.values()), grown
    faults.wait_for(
        lambda: all(total("fanout_worker", name) > fan_before[name] for name in FANOUT),
        15,
        "the fan-out of the tweet to be counted and its lag observed",
    )
    lag_samples = [scrape(inst.metrics_port) for w in topology.WORKERS for inst in topology.instances(w)]
    groups = {k for s in lag_samples for k in s if k.startswith("chirp_consumer_lag_messages{")}
    assert {
        "chirp_consumer_lag_messages{group=chirp-fanout}",
        "chirp_consumer_lag_messages{group=chirp-like-worker}",
    } <= groups


def test_rank_workers_export_how_full_each_state_redis_node_is() -> None:
    """The early warning before the state Redis refuses writes (ChirpRedisStateAlmostFull):
    every rank worker reads each state Redis node's used memory over its limit."""
    nodes = {node.address for node in topology.state_redis_nodes()}
    rank = next(w for w in topology.WORKERS if w.name == "rank_worker")

    def read(port: int, metric: str) -> dict[str, float]:
        return {name: value for name, value in scrape(port).items() if name.startswith(metric + "{")}

    for inst in topology.instances(rank):
        ratios: dict[str, float] = {}

        def all_read(port: int = inst.metrics_port, found: dict[str, float] = ratios) -> bool:
            found.update(read(port, "chirp_redis_state_memory_used_ratio"))
            return bool(found) and all(0.0 < ratio < 1.0 for ratio in found.values())

        # Read every 30 s: NaN for a while after a node came back (the fault tests stop it).
        faults.wait_for(all_read, 45, "every state node's memory to be read", interval=1.0)
        assert set(ratios) == {f"chirp_redis_state_memory_used_ratio{{node={node}}}" for node in nodes}
        evicts = read(inst.metrics_port, "chirp_redis_state_evicts")
        assert evicts == {f"chirp_redis_state_evicts{{node={node}}}": 0.0 for node in nodes}
