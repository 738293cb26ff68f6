"""The lean edge and its shedding (envoy/render.py), checked on the rendered
config: no per-request Lua, native header checks, the JWT cache, compression
only where it pays, a sampled access log, and overflow answered at once.
tests/e2e/test_edge_overload.py and test_edge_security.py show them served."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from infra import topology
from tests.edge import render

SETTINGS = render.EdgeSettings()


def _hcm(settings: Any = SETTINGS) -> dict[str, Any]:
    config = render.build('{"keys": []}', settings)
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _filters(settings: Any = SETTINGS) -> dict[str, dict[str, Any]]:
    return {f["name"]: f["typed_config"] for f in _hcm(settings)["http_filters"]}


def test_no_lua_runs_per_request() -> None:
    assert not [name for name in _filters() if "lua" in name]


def test_header_names_grpc_cannot_carry_are_dropped_and_no_others() -> None:
    mutations = [m for ext in _hcm()["early_header_mutation_extensions"] for m in ext["typed_config"]["mutations"]]
    [regex] = [m["remove_on_match"]["key_matcher"]["safe_regex"]["regex"] for m in mutations if "remove_on_match" in m]
    unsafe = re.compile(regex)  # RE2 and Python agree on this syntax; Envoy matches the whole name
    for name in ("x-a*b", "x-a b", "x-é", "x-fuzz-bin", "grpc-trace-bin", "x-a/b"):
        assert unsafe.fullmatch(name), name
    kept = (":path", ":authority", "authorization", "idempotency-key", "grpc-timeout", "x_under.score", "x-binary")
    for name in kept:
        assert not unsafe.fullmatch(name), name


def test_a_malformed_grpc_timeout_is_refused_with_400() -> None:
    valid = re.compile(render.GRPC_TIMEOUT)
    for value in ("1S", "12345678m", "0n", "5H"):
        assert valid.fullmatch(value), value
    for value in ("soon", "123456789S", "1s", "-1S", "1", "S", "1.5S"):
        assert not valid.fullmatch(value), value
    rules = _filters()["envoy.filters.http.rbac"]["rules"]
    assert rules["action"] == "DENY"
    policy = rules["policies"]["grpc_timeout_malformed"]["permissions"][0]["and_rules"]["rules"]
    assert [r["header"] for r in policy] == list(render.GRPC_TIMEOUT_MALFORMED)
    [reply] = [r for r in render.local_replies() if "grpc-timeout" in r.message]
    assert (reply.status, reply.code) == (400, 3)


def test_verified_tokens_are_cached() -> None:
    provider = _filters()["envoy.filters.http.jwt_authn"]["providers"]["chirp"]
    assert provider["jwt_cache_config"]["jwt_cache_size"] == render.JWT_CACHE_SIZE > 0
    assert provider["require_expiration"] is True  # a cached token is still refused once expired


def test_only_bodies_bigger_than_a_segment_are_compressed() -> None:
    compressor = _filters()["envoy.filters.http.compressor"]
    common = compressor["response_direction_config"]["common_config"]
    assert common["min_content_length"] == render.COMPRESS_MIN_BYTES
    assert 1000 <= render.COMPRESS_MIN_BYTES <= 1460
    # The fastest level: a feed page still fits one segment, at half the CPU of the default.
    assert compressor["compressor_library"]["typed_config"]["compression_level"] == "BEST_SPEED"


def _log_filter(settings: Any) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = _hcm(settings)["access_log"][0]["filter"]["or_filter"]["filters"]
    return filters


def test_the_access_log_keeps_every_failure_and_samples_successes() -> None:
    filters = _log_filter(replace(SETTINGS, access_log_success_percent=7))
    comparisons = {
        (f["status_code_filter"]["comparison"]["op"], f["status_code_filter"]["comparison"]["value"]["default_value"])
        for f in filters
        if "status_code_filter" in f
    }
    assert comparisons == {("GE", 300), ("LE", 199)}
    [grpc_errors] = [f["and_filter"]["filters"] for f in filters if "and_filter" in f]
    assert grpc_errors[0] == render.GRPC_CLIENT
    assert grpc_errors[1] == {"grpc_status_filter": {"statuses": ["OK"], "exclude": True}}
    [sampled] = [f["runtime_filter"] for f in filters if "runtime_filter" in f]
    assert sampled["percent_sampled"] == {"numerator": 7, "denominator": "HUNDRED"}


def _clusters(settings: Any = SETTINGS) -> dict[str, dict[str, Any]]:
    config = render.build('{"keys": []}', settings)
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def test_service_clusters_shed_past_max_requests_and_retries_cannot_amplify() -> None:
    clusters = _clusters(replace(SETTINGS, max_requests=3))
    for svc in topology.SERVICES:
        [limits] = clusters[svc.name]["circuit_breakers"]["thresholds"]
        assert limits["max_requests"] == limits["max_pending_requests"] == 3
        assert limits["retry_budget"]["budget_percent"]["value"] <= 10
        # A floor of retries in flight, never more than the requests the breaker lets in.
        assert limits["retry_budget"]["min_retry_concurrency"] <= SETTINGS.max_requests
    assert SETTINGS.max_requests == 32
    routes = _hcm()["route_config"]["virtual_hosts"][0]["routes"]
    retried = [r["route"]["retry_policy"] for r in routes if "retry_policy" in r.get("route", {})]
    assert retried and all(p["num_retries"] == 2 for p in retried)


def test_argon2_calls_have_a_cluster_and_a_limit_of_their_own() -> None:
    clusters = _clusters(replace(SETTINGS, max_requests=30, max_slow_requests=4))
    graph = next(svc for svc in topology.SERVICES if svc.name == "graph_svc")
    slow = clusters[render.slow_cluster_name(graph)]
    assert slow["circuit_breakers"]["thresholds"][0]["max_requests"] == 4
    assert clusters["graph_svc"]["circuit_breakers"]["thresholds"][0]["max_requests"] == 30
    assert slow["load_assignment"]["endpoints"] == [
        {**group} for group in clusters["graph_svc"]["load_assignment"]["endpoints"]
    ]
    routes = {
        r["match"]["path"]: r for r in _hcm()["route_config"]["virtual_hosts"][0]["routes"] if "path" in r["match"]
    }
    for method in render.SLOW_METHODS:
        assert routes[f"/chirp.graph.v1.GraphService/{method}"]["route"]["cluster"] == slow["name"]
    # A burst of logins sheds logins only: everything else of graph_svc keeps its own limit.
    assert routes["/chirp.graph.v1.GraphService/FollowUser"]["route"]["cluster"] == "graph_svc"


def test_an_overflow_is_a_503_with_retry_after_in_the_form_each_client_reads() -> None:
    replies = render.local_replies()
    [overflow] = [r for r in replies if r.match == {"response_flag_filter": {"flags": ["UO"]}}]
    assert (overflow.status, overflow.code, overflow.retry_after) == (503, 14, True)
    # Before the generic 503, which would otherwise answer first.
    assert replies.index(overflow) < next(i for i, r in enumerate(replies) if r.status == 503 and r is not overflow)
    mappers = _hcm()["local_reply_config"]["mappers"]
    shed = [
        m for m in mappers if overflow.match in (m["filter"], *m["filter"].get("and_filter", {}).get("filters", []))
    ]
    assert len(shed) == 2  # a gRPC client's form and the REST one
    for mapper in shed:
        headers = {h["header"]["key"]: h["header"]["value"] for h in mapper["headers_to_add"]}
        assert headers["retry-after"] == str(render.RETRY_AFTER_S)
        assert mapper["status_code"] == 503
    grpc_form, rest_form = shed
    assert {h["header"]["key"]: h["header"]["value"] for h in grpc_form["headers_to_add"]}["grpc-status"] == "14"
    assert grpc_form["body_format_override"]["text_format_source"]["inline_string"] == overflow.message
    assert rest_form["body_format_override"]["json_format"] == {"code": 14, "message": overflow.message, "details": []}
