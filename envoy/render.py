"""Render the Envoy edge config. Instance counts and ports come from
infra/topology.py, limits from CHIRP_EDGE_* settings; one template for every
environment (tests render private edges with their own ports and limits).

    python envoy/render.py OUT.json --jwks FILE
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chirp.feed.v1 import feed_pb2
from chirp.graph.v1 import graph_pb2
from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_pb2

from infra import topology

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "generated" / "chirp.binpb"
USER_ID_HEADER = "x-chirp-user-id"
IDEMPOTENCY_HEADER = "idempotency-key"

# gRPC codes used in the JSON body of replies Envoy makes itself.
LOCAL_REPLY_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 3, 429: 8, 503: 14, 504: 4}

# Calls that need no token. Public reads verify a token when one is sent.
NO_TOKEN = ("chirp.graph.v1.GraphService/CreateUser", "chirp.graph.v1.GraphService/CreateSession")
TOKEN_OPTIONAL = (
    "chirp.graph.v1.GraphService/GetUser",
    "chirp.graph.v1.GraphService/ListFollowers",
    "chirp.graph.v1.GraphService/ListFollowing",
    "chirp.tweet.v1.TweetService/GetTweet",
    "chirp.tweet.v1.TweetService/ListUserTweets",
    "chirp.rank.v1.RankService/ListTrending",
)
# Safe to retry on another instance: reads, and writes whose repeat changes
# nothing (follow and like state are idempotent). CreateTweet only with an
# Idempotency-Key (a route of its own below). Sign-up, login and delete are not.
RETRYABLE = {
    "GetUser", "ListFollowers", "ListFollowing", "BatchGetUsers", "ListFollowerIds", "ListFollowingIds",
    "FollowUser", "UnfollowUser",
    "GetTweet", "ListUserTweets", "BatchGetTweets", "ListRecentTweetIds", "LikeTweet", "UnlikeTweet",
    "GetHomeFeed", "ListTrending",
}  # fmt: skip
LOGIN_METHODS = {"CreateSession", "CreateUser"}
POST_METHODS = {"CreateTweet"}
SLOW_METHODS = {"CreateUser", "CreateSession"}  # argon2id on purpose
SERVICE_DESCRIPTORS = {
    "chirp.graph.v1.GraphService": graph_pb2.DESCRIPTOR.services_by_name["GraphService"],
    "chirp.tweet.v1.TweetService": tweet_pb2.DESCRIPTOR.services_by_name["TweetService"],
    "chirp.feed.v1.FeedService": feed_pb2.DESCRIPTOR.services_by_name["FeedService"],
    "chirp.rank.v1.RankService": rank_pb2.DESCRIPTOR.services_by_name["RankService"],
}


@dataclass(frozen=True)
class EdgeSettings:
    listen_port: int = topology.EDGE_PORT
    admin_port: int = topology.ENVOY_ADMIN_PORT
    # Token buckets per Envoy instance (requests per second, burst = 2 seconds' worth).
    default_rps: int = 5000
    post_rps: int = 1000
    login_rps: int = 50
    max_request_bytes: int = 64 * 1024
    read_timeout_s: float = 2.0
    write_timeout_s: float = 5.0

    @classmethod
    def from_env(cls) -> EdgeSettings:
        def num(name: str, default: int) -> int:
            return int(os.environ.get(name, default))

        base = cls()
        return replace(
            base,
            default_rps=num("CHIRP_EDGE_DEFAULT_RPS", base.default_rps),
            post_rps=num("CHIRP_EDGE_POST_RPS", base.post_rps),
            login_rps=num("CHIRP_EDGE_LOGIN_RPS", base.login_rps),
            max_request_bytes=num("CHIRP_EDGE_MAX_REQUEST_BYTES", base.max_request_bytes),
        )


def _any(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": type_name, **fields}


def _json_reply(code: int, message: str, status: int | None = None, **match: Any) -> dict[str, Any]:
    mapper: dict[str, Any] = {
        "filter": match,
        "body_format_override": {
            "json_format": {"code": code, "message": message, "details": []},
            "content_type": "application/json",
        },
    }
    if status is not None:
        mapper["status_code"] = status
    return mapper


def _status_is(status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": f"chirp.local_reply.{status}"}}
        }
    }


def _local_reply_config() -> dict[str, Any]:
    """Every reply Envoy makes itself gets the JSON error body of API.md."""
    mappers = [
        _json_reply(5, "no such endpoint", 404, response_flag_filter={"flags": ["NR"]}),
        _json_reply(8, "rate limit exceeded, slow down", 429, **_status_is(429)),
        # jwt_authn answers 403 for a token it does not accept (wrong audience):
        # to a client that is a bad token, 401. A service's own 403 is a gRPC
        # status, not a local reply, so it is not touched.
        _json_reply(16, "%LOCAL_REPLY_BODY%", 401, **_status_is(403)),
        _json_reply(3, "request body is larger than the limit", 413, **_status_is(413)),
    ]
    mappers += [
        _json_reply(code, "%LOCAL_REPLY_BODY%", **_status_is(status)) for status, code in LOCAL_REPLY_CODES.items()
    ]
    return {"mappers": mappers}


# Headers HTTP allows but gRPC metadata does not (odd characters in a name, a
# "-bin" value that is not base64, a malformed grpc-timeout) would make the
# services' gRPC layer fail the call with INTERNAL before any of our code
# runs. They are dropped at the edge.
SANITIZE_LUA = """
local function refused(name, value)
  if name:sub(1, 1) == ":" then return false end
  if name:find("[^0-9a-z_.%-]") then return true end
  if name:sub(-4) == "-bin" then return value:gsub("=+$", ""):find("[^A-Za-z0-9+/]") ~= nil end
  if name == "grpc-timeout" then return not value:match("^%d+[HMSmun]$") or #value > 9 end
  return false
end
function envoy_on_request(handle)
  local headers, drop = handle:headers(), {}
  for name, value in pairs(headers) do
    if refused(name, value) then drop[#drop + 1] = name end
  end
  for _, name in ipairs(drop) do headers:remove(name) end
end
"""


def _sanitizer() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            default_source_code={"inline_string": SANITIZE_LUA},
        ),
    }


def _transcoder() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(DESCRIPTOR),
            services=[svc.grpc_service for svc in topology.SERVICES],
            print_options={
                "always_print_primitive_fields": True,
                "preserve_proto_field_names": True,
                "always_print_enums_as_ints": False,
            },
            convert_grpc_status=True,
            request_validation_options={"reject_unknown_query_parameters": True},
        ),
    }


def _jwt_authn(jwks: str) -> dict[str, Any]:
    """Runs after the transcoder, so rules match gRPC paths for REST and gRPC alike."""
    provider = "chirp"
    rules: list[dict[str, Any]] = [{"match": {"path": f"/{method}"}} for method in NO_TOKEN]
    rules += [
        {
            "match": {"path": f"/{method}"},
            "requires": {"requires_any": {"requirements": [{"provider_name": provider}, {"allow_missing": {}}]}},
        }
        for method in TOKEN_OPTIONAL
    ]
    rules.append({"match": {"prefix": "/"}, "requires": {"provider_name": provider}})
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers={
                provider: {
                    "issuer": "chirp",
                    "audiences": ["chirp-api"],
                    "local_jwks": {"inline_string": jwks},
                    "forward": False,
                    "clock_skew_seconds": 30,
                    "claim_to_headers": [{"header_name": USER_ID_HEADER, "claim_name": "sub"}],
                }
            },
            rules=rules,
        ),
    }


def _bucket(rps: int) -> dict[str, Any]:
    return {"max_tokens": max(1, rps * 2), "tokens_per_fill": max(1, rps), "fill_interval": "1s"}


def _rate_limit(rps: int) -> dict[str, Any]:
    percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "chirp.ratelimit"}
    return _any(
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        stat_prefix="edge_rate_limit",
        token_bucket=_bucket(rps),
        filter_enabled=percent,
        filter_enforced=percent,
    )


def _retry_policy(per_try_timeout_s: float) -> dict[str, Any]:
    return {
        "retry_on": "unavailable,reset,connect-failure,refused-stream",
        "num_retries": 2,
        "per_try_timeout": f"{per_try_timeout_s}s",
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def _route(svc: topology.Service, method: str, settings: EdgeSettings) -> list[dict[str, Any]]:
    path = f"/{svc.grpc_service}/{method}"
    write = method not in RETRYABLE or method in {"FollowUser", "UnfollowUser", "LikeTweet", "UnlikeTweet"}
    timeout = settings.write_timeout_s if write or method in SLOW_METHODS else settings.read_timeout_s
    action: dict[str, Any] = {"cluster": svc.name, "timeout": f"{timeout}s"}
    route: dict[str, Any] = {"match": {"path": path}, "route": action}
    if method in LOGIN_METHODS:
        route["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": _rate_limit(settings.login_rps)}
    if method in POST_METHODS:
        route["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": _rate_limit(settings.post_rps)}
    if method in RETRYABLE:
        action["retry_policy"] = _retry_policy(timeout / 2)
    routes = [route]
    if method == "CreateTweet":
        # With an Idempotency-Key a repeat returns the original tweet: safe to retry.
        keyed = json.loads(json.dumps(route))
        keyed["match"]["headers"] = [{"name": IDEMPOTENCY_HEADER, "present_match": True}]
        keyed["route"]["retry_policy"] = _retry_policy(timeout / 2)
        routes.insert(0, keyed)
    return routes


def _routes(settings: EdgeSettings) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    for svc in topology.SERVICES:
        for method in SERVICE_DESCRIPTORS[svc.grpc_service].methods_by_name:
            routes += _route(svc, method, settings)
    return routes


def _cluster(svc: topology.Service) -> dict[str, Any]:
    return {
        "name": svc.name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={
                    "http2_protocol_options": {"connection_keepalive": {"interval": "10s", "timeout": "2s"}}
                },
            )
        },
        "load_assignment": {
            "cluster_name": svc.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": topology.HOST, "port_value": inst.port}}
                            }
                        }
                        for inst in topology.instances(svc)
                    ]
                }
            ],
        },
        # Active health: NOT_SERVING (dependency down, or draining on SIGTERM)
        # takes an instance out within about two seconds.
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": svc.grpc_service},
            }
        ],
        # Passive health: an instance that stops answering is ejected at once.
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "enforcing_consecutive_local_origin_failure": 100,
            "interval": "2s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    "max_requests": 4096,
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 5},
                }
            ]
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def _compressor() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
            # The default content types include application/json; gRPC is never compressed here.
            response_direction_config={"common_config": {"min_content_length": 512}},
            compressor_library={
                "name": "gzip",
                "typed_config": _any("type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"),
            },
        ),
    }


def _access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            log_format={
                "json_format": {
                    "ts": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "route": "%REQ(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS(NUMBER)%",
                    "flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "upstream": "%UPSTREAM_HOST%",
                    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                }
            },
        ),
    }


def build(jwks: str, settings: EdgeSettings | None = None) -> dict[str, Any]:
    settings = settings or EdgeSettings()
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": _any("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
    }
    hcm = _any(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="edge",
        codec_type="AUTO",
        request_timeout="30s",
        stream_idle_timeout="30s",
        # Identity comes only from the verified token: drop any client-sent copy
        # before any filter runs.
        early_header_mutation_extensions=[
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    mutations=[{"remove": USER_ID_HEADER}],
                ),
            }
        ],
        access_log=[_access_log()],
        local_reply_config=_local_reply_config(),
        route_config={
            "name": "edge",
            "virtual_hosts": [{"name": "chirp", "domains": ["*"], "routes": _routes(settings)}],
        },
        # Order matters: size limit first; the compressor sees the JSON the
        # transcoder makes; rate limits and auth run on the gRPC route.
        http_filters=[
            _sanitizer(),
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    max_request_bytes=settings.max_request_bytes,
                ),
            },
            _compressor(),
            _transcoder(),
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": _rate_limit(settings.default_rps)},
            _jwt_authn(jwks),
            router,
        ],
    )
    return {
        "admin": {"address": {"socket_address": {"address": topology.HOST, "port_value": settings.admin_port}}},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": _any(
                        "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        max_active_downstream_connections=10000,
                    ),
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {"socket_address": {"address": topology.HOST, "port_value": settings.listen_port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [_cluster(svc) for svc in topology.SERVICES],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--jwks", type=Path, required=True, help="public key set that verifies access tokens")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(build(args.jwks.read_text(), EdgeSettings.from_env()), indent=2))


if __name__ == "__main__":
    main()
