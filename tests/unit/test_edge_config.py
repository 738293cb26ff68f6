"""The rendered Envoy edge config (envoy/render.py): which calls are retried,
timeouts, and how unhealthy instances leave the pool. Checked on the config
itself; tests/e2e/test_edge.py shows a private edge built from it serving."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from common.config import load_common
from common.interceptors import IMMEDIATE_HEALTH_CHECK_FAIL
from common.worker import IDLE_WAIT_SECONDS
from infra import stack, topology
from tests.edge import render

SETTINGS = render.EdgeSettings()


def _config() -> dict[str, Any]:
    config: dict[str, Any] = render.build('{"keys": []}', SETTINGS)
    return config


def _hcm(settings: Any = SETTINGS) -> dict[str, Any]:
    config = render.build('{"keys": []}', settings)
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _routes() -> dict[str, list[dict[str, Any]]]:
    by_path: dict[str, list[dict[str, Any]]] = {}
    for route in _hcm()["route_config"]["virtual_hosts"][0]["routes"]:
        if "path" in route["match"]:
            by_path.setdefault(route["match"]["path"], []).append(route)
    return by_path


def test_only_safe_calls_are_retried_and_every_route_has_a_timeout() -> None:
    routes = _routes()
    every_rpc = {
        f"/{svc.grpc_service}/{method}"
        for svc in topology.SERVICES
        for method in render.SERVICE_DESCRIPTORS[svc.grpc_service].methods_by_name
    }
    assert set(routes) - every_rpc == set()  # no internal RPC is routed
    assert every_rpc <= set(routes)  # else the checks below would skip the missing ones
    timeouts = {f"{SETTINGS.read_timeout_s}s", f"{SETTINGS.write_timeout_s}s"}
    for path, entries in routes.items():
        assert all(r["route"]["timeout"] in timeouts for r in entries), path
    assert routes["/chirp.feed.v1.FeedService/GetHomeFeed"][0]["route"]["timeout"] == f"{SETTINGS.read_timeout_s}s"
    assert routes["/chirp.tweet.v1.TweetService/CreateTweet"][0]["route"]["timeout"] == f"{SETTINGS.write_timeout_s}s"
    assert "retry_policy" in routes["/chirp.feed.v1.FeedService/GetHomeFeed"][0]["route"]
    assert "retry_policy" in routes["/chirp.tweet.v1.TweetService/GetTweet"][0]["route"]
    # A call that must not run twice is retried only when it never reached an instance
    # (one that has just stopped): no retry on a reset, UNAVAILABLE or a timeout.
    # Not on a refused stream either: Envoy retries one even after the request went
    # out, and gRPC resets a call it cancels UNAVAILABLE as refused.
    unsent = {"connect-failure", "reset-before-request"}
    keyed, plain = routes["/chirp.tweet.v1.TweetService/CreateTweet"]
    unsafe = [entries[-1] for path, entries in routes.items() if path.rsplit("/", 1)[1] not in render.RETRYABLE]
    assert plain in unsafe
    assert {"DeleteTweet", "CreateUser", "CreateSession", "RefreshSession", "ChangePassword"} <= {
        route["match"]["path"].rsplit("/", 1)[1] for route in unsafe
    }
    for route in unsafe:
        policy = route["route"]["retry_policy"]
        assert set(policy["retry_on"].split(",")) == unsent, route["match"]
        assert "per_try_timeout" not in policy
    assert keyed["match"]["headers"][0]["name"] == "idempotency-key"
    assert "reset" in keyed["route"]["retry_policy"]["retry_on"].split(",")
    # Every call is retried on another instance when its connection is refused.
    for path, entries in routes.items():
        for route in entries:
            assert "connect-failure" in route["route"]["retry_policy"]["retry_on"].split(","), path
    # A read past its per-try timeout keeps going while a second try starts (hedged); a
    # write that may be repeated is retried only after its try ended.
    hedged = {path for path, entries in routes.items() if "hedge_policy" in entries[0]["route"]}
    reads = {f"/{svc.grpc_service}/{m}" for svc in topology.SERVICES for m in render.RETRYABLE}
    assert hedged == {path for path in reads if path in routes} - {
        path for path in routes if path.rsplit("/", 1)[1] in render.IDEMPOTENT_WRITES
    }
    assert (
        "/chirp.feed.v1.FeedService/GetHomeFeed" in hedged and "/chirp.graph.v1.GraphService/FollowUser" not in hedged
    )
    assert routes["/chirp.feed.v1.FeedService/GetHomeFeed"][0]["route"]["hedge_policy"] == {
        "hedge_on_per_try_timeout": True
    }


def test_a_draining_instance_leaves_the_edge_at_its_first_answer_or_next_check() -> None:
    """On SIGTERM an instance marks every answer (the edge takes it out at the first)
    and answers NOT_SERVING for drain_seconds before it refuses calls. With no
    traffic the edge's next check may come after the listener closed; a call sent
    there meanwhile is refused unsent and retried on another instance (every route
    retries a connect failure). The edge does not
    hand the mark on to clients. The stack gives each instance drain and grace
    before it kills it."""
    common = load_common({}, "graph_svc", 50051)
    checks = [check for c in _config()["static_resources"]["clusters"] for check in c.get("health_checks", [])]
    (interval,) = {float(check["interval"].removesuffix("s")) for check in checks}
    assert interval == render.HEALTH_CHECK_SECONDS
    # The same before the first request (Envoy's default would be 60 s).
    assert {check["no_traffic_interval"] for check in checks} == {check["interval"] for check in checks}
    (header,) = IMMEDIATE_HEALTH_CHECK_FAIL
    assert header == ("x-envoy-immediate-health-check-fail", "true")
    assert _hcm()["route_config"]["response_headers_to_remove"] == [header[0]]
    service_stop = {c.stop_timeout for c in stack.components(prepare=False) if c.name.startswith("graph_svc")}
    assert service_stop and min(service_stop) > common.drain_seconds + common.shutdown_grace_seconds
    # A worker's consumer closes once its idle poll returns.
    worker_stop = {c.stop_timeout for c in stack.components(prepare=False) if c.name.startswith("fanout_worker")}
    assert worker_stop and min(worker_stop) > common.drain_seconds + common.shutdown_grace_seconds + IDLE_WAIT_SECONDS


def test_the_edge_merges_stats_only_when_scraped_and_its_watchdogs_check_once_a_second() -> None:
    """An idle edge wakes for neither: no sink reads a periodic flush, and the
    watchdogs only count misses (nothing is killed)."""
    config = _config()
    assert config["stats_flush_on_admin"] is True
    assert "stats_flush_interval" not in config and "stats_sinks" not in config
    for name in ("main_thread_watchdog", "worker_watchdog"):
        watchdog = config["watchdogs"][name]
        assert watchdog == {"miss_timeout": "1s", "megamiss_timeout": "1s"}, watchdog


def test_clusters_have_health_checks_outlier_detection_and_a_retry_budget() -> None:
    clusters = {cluster["name"]: cluster for cluster in _config()["static_resources"]["clusters"]}
    slow = {render.slow_cluster_name(svc): svc for svc in topology.SERVICES if svc.name == "graph_svc"}
    assert set(clusters) == {svc.name for svc in topology.SERVICES} | set(slow) | {render.SIDECAR_CLUSTER}
    for name, svc in [*((svc.name, svc) for svc in topology.SERVICES), *slow.items()]:
        cluster = clusters[name]
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
        budget = cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]
        assert budget["budget_percent"]["value"] == 10.0
        # The feed's and trending's hedges are what an overload of reads could amplify;
        # the clusters that take writes retry a store node's failures together (not the
        # argon2 one, whose calls are retried only when never sent).
        assert budget["min_retry_concurrency"] == (10 if name in ("graph_svc", "tweet_svc") else 3), name


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def test_a_dead_instance_is_marked_down_before_its_ejection_ends_and_retries_avoid_it() -> None:
    """Outlier detection takes a dead instance out at its first failed calls; the
    health checks must mark it down before that ends, or it comes back into rotation
    dead. And a retry picks again while it picks a tried instance: least-request
    favours a dead one (no calls in flight), 3 times in 4 of two instances."""
    for cluster in _config()["static_resources"]["clusters"]:
        if "health_checks" not in cluster:
            continue
        (check,) = cluster["health_checks"]
        assert check["unhealthy_threshold"] == 2, cluster["name"]
        # The first failure at most an interval after the death, the second a recheck
        # later, each up to its timeout.
        marked_down_within = (
            _seconds(check["interval"]) + _seconds(check["unhealthy_edge_interval"]) + 2 * _seconds(check["timeout"])
        )
        assert _seconds(cluster["outlier_detection"]["base_ejection_time"]) > marked_down_within, cluster["name"]
    for path, entries in _routes().items():
        for route in entries:
            picks = route["route"]["retry_policy"]["host_selection_retry_max_attempts"] + 1
            assert (3 / 4) ** picks < 0.01, path  # a retry sent back to the dead one


def test_path_field_regexes_catch_every_override_and_only_those() -> None:
    patterns = [re.compile(m["string_match"]["safe_regex"]["regex"]) for m in render.path_field_in_query()]

    def refused(path: str) -> bool:
        return any(p.fullmatch(path) for p in patterns)  # Envoy's safe_regex matches the whole value

    for path in (
        "/v1/tweets/1?tweet_id=2",
        "/v1/tweets/1/like?page_size=1&tweet_id=2",
        "/v1/users/1/followers?user%5Fid=2",
        "/v1/users/1?user_id.x=2",
        "/v1/users/1/tweets?user_id",
        "/v1/tweets/1?tweetId=2",  # the JSON name, which the transcoder also takes
        "/v1/users/1?userId=2",
        "/v1/users/1/followers?page_size=1&userId=2",
    ):
        assert refused(path), path
    for path in (
        "/v1/tweets/1",
        "/v1/users/1/tweets?page_size=2&page_token=abc",
        "/v1/feed?page_size=1",
        "/v1/users/1",
    ):
        assert not refused(path), path


def test_local_replies_never_put_json_in_grpc_message_and_pick_a_grpc_status() -> None:
    mappers = _hcm()["local_reply_config"]["mappers"]
    grpc_mappers = [m for m in mappers if "text_format_source" in m["body_format_override"]]
    rest_mappers = [m for m in mappers if "json_format" in m["body_format_override"]]
    assert len(grpc_mappers) == len(rest_mappers) == len(render.local_replies())
    assert mappers[: len(grpc_mappers)] == grpc_mappers  # a gRPC client's reply is chosen first
    for mapper in grpc_mappers:
        assert not mapper["body_format_override"]["text_format_source"]["inline_string"].startswith("{")
        assert mapper["headers_to_add"][0]["header"]["key"] == "grpc-status"
    statuses = {r.status: r.code for r in render.local_replies() if r.status is not None}
    assert statuses[414] == statuses[431] == statuses[413] == 3 and statuses[429] == 8
    # A request too slow to arrive (the edge's request timeout) gets the JSON body too, not Envoy's text.
    assert statuses[408] == 4
    slow = next(m for m in rest_mappers if m.get("status_code") == 408)
    assert slow["body_format_override"]["content_type"] == "application/json"


def test_token_and_identity_settings() -> None:
    hcm = _hcm(replace(SETTINGS, trusted_hops=2))
    assert hcm["use_remote_address"] is True and hcm["xff_num_trusted_hops"] == 2
    mutations = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    removed = [m["remove"] for m in mutations if "remove" in m]
    assert {render.USER_ID_HEADER, render.CLIENT_IP_HEADER} <= set(removed)
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    provider = filters["envoy.filters.http.jwt_authn"]["providers"]["chirp"]
    assert provider["require_expiration"] is True
    assert "from_params" not in provider and provider["from_headers"][0]["name"] == "authorization"
    log_format = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert log_format["path"].startswith("%REQ_WITHOUT_QUERY(") and log_format["route"].startswith(
        "%REQ_WITHOUT_QUERY("
    )
    assert render.EdgeSettings().login_rps >= 500  # a safety valve; throttling per account lives in graph_svc
    assert stack.EDGE_SIDECAR_PORT == render.SIDECAR_PORT


def test_a_health_check_times_out_as_504_and_reflection_streams_do_not() -> None:
    """A stuck sidecar answers a health check with the route's 504, not the 408 of the
    connection's 30 s; a reflection stream lasts as long as a tool's session."""
    by_prefix = {
        r["match"]["prefix"]: r["route"]
        for r in _hcm()["route_config"]["virtual_hosts"][0]["routes"]
        if r["match"].get("prefix") in render.SIDECAR_PREFIXES
    }
    assert set(by_prefix) == set(render.SIDECAR_PREFIXES)
    for prefix, route in by_prefix.items():
        assert route["cluster"] == render.SIDECAR_CLUSTER
        assert route["timeout"] == ("2s" if prefix == "/grpc.health.v1.Health/" else "0s"), prefix


def test_every_post_route_and_only_those_takes_from_the_post_bucket() -> None:
    limit = next(f for f in _hcm()["http_filters"] if f["name"] == "envoy.filters.http.local_ratelimit")
    config = limit["typed_config"]
    assert config["always_consume_default_token_bucket"] is False  # a post takes from its bucket only
    (rule,) = config["rate_limits"]
    (action,) = rule["actions"]
    (header,) = action["header_value_match"]["headers"]
    assert header["name"] == ":path"
    regex = re.compile(header["string_match"]["safe_regex"]["regex"])
    posts = [p for p, routes in _routes().items() if p.rsplit("/", 1)[1] in render.POST_METHODS]
    assert len(posts) == 1 and len(_routes()[posts[0]]) == 2  # with and without an Idempotency-Key
    for path, routes in _routes().items():
        post = path in posts
        # A query is ignored by the routes' path match: it must be by the rule too.
        assert bool(regex.match(path)) is post and bool(regex.match(path + "?x=1")) is post, path
        # No route of its own: its own filter config would be a bucket of its own.
        assert not post or all("typed_per_filter_config" not in r for r in routes)
    (descriptor,) = config["descriptors"]
    assert descriptor["entries"] == [{"key": "chirp_limit", "value": "post"}]
    assert descriptor["token_bucket"]["tokens_per_fill"] == SETTINGS.post_rps
