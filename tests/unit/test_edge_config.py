"""The rendered Envoy edge config (envoy/render.py): which calls are retried,
timeouts, and how unhealthy instances leave the pool. Checked on the config
itself; tests/e2e/test_edge.py shows a private edge built from it serving."""

from __future__ import annotations

from typing import Any

from infra import topology
from tests.edge import render

SETTINGS = render.EdgeSettings()


def _config() -> dict[str, Any]:
    config: dict[str, Any] = render.build('{"keys": []}', SETTINGS)
    return config


def _routes() -> dict[str, list[dict[str, Any]]]:
    hcm = _config()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    by_path: dict[str, list[dict[str, Any]]] = {}
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        by_path.setdefault(route["match"]["path"], []).append(route)
    return by_path


def test_only_safe_calls_are_retried_and_every_route_has_a_timeout() -> None:
    routes = _routes()
    every_rpc = {
        f"/{svc.grpc_service}/{method}"
        for svc in topology.SERVICES
        for method in render.SERVICE_DESCRIPTORS[svc.grpc_service].methods_by_name
    }
    assert set(routes) == every_rpc  # else the checks below would skip the missing ones
    timeouts = {f"{SETTINGS.read_timeout_s}s", f"{SETTINGS.write_timeout_s}s"}
    for path, entries in routes.items():
        assert all(r["route"]["timeout"] in timeouts for r in entries), path
    assert routes["/chirp.feed.v1.FeedService/GetHomeFeed"][0]["route"]["timeout"] == f"{SETTINGS.read_timeout_s}s"
    assert routes["/chirp.tweet.v1.TweetService/CreateTweet"][0]["route"]["timeout"] == f"{SETTINGS.write_timeout_s}s"
    assert "retry_policy" in routes["/chirp.feed.v1.FeedService/GetHomeFeed"][0]["route"]
    assert "retry_policy" in routes["/chirp.tweet.v1.TweetService/GetTweet"][0]["route"]
    for unsafe in ("DeleteTweet",):
        assert "retry_policy" not in routes[f"/chirp.tweet.v1.TweetService/{unsafe}"][0]["route"]
    for unsafe in ("CreateUser", "CreateSession"):
        assert "retry_policy" not in routes[f"/chirp.graph.v1.GraphService/{unsafe}"][0]["route"]
    keyed, plain = routes["/chirp.tweet.v1.TweetService/CreateTweet"]
    assert keyed["match"]["headers"][0]["name"] == "idempotency-key" and "retry_policy" in keyed["route"]
    assert "retry_policy" not in plain["route"]


def test_clusters_have_health_checks_outlier_detection_and_a_retry_budget() -> None:
    clusters = {cluster["name"]: cluster for cluster in _config()["static_resources"]["clusters"]}
    assert set(clusters) == {svc.name for svc in topology.SERVICES}
    for svc in topology.SERVICES:
        cluster = clusters[svc.name]
        assert cluster["lb_policy"] == "LEAST_REQUEST"
        ports = [
            e["endpoint"]["address"]["socket_address"]["port_value"]
            for group in cluster["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]
        assert ports == [inst.port for inst in topology.instances(svc)], svc.name
        # A wrong name here makes every health check answer NOT_FOUND: the cluster would never be healthy.
        assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == svc.grpc_service
        outliers = cluster["outlier_detection"]
        assert outliers["consecutive_gateway_failure"] > 0
        # Envoy's default enforcement for gateway failures is 0%: counted, never ejected.
        assert outliers["enforcing_consecutive_gateway_failure"] == 100
        budget = cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]["budget_percent"]["value"]
        assert 0 < budget <= 100
