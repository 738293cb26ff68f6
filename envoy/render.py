"""Render the Envoy edge config from infra/topology.py (instance counts and ports).

Usage: python envoy/render.py OUT.json --jwks FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from infra import topology

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "generated" / "chirp.binpb"
USER_ID_HEADER = "x-chirp-user-id"

# gRPC codes used in the JSON body of replies Envoy makes itself.
LOCAL_REPLY_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 3, 429: 8, 503: 14, 504: 4}


def _any(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": type_name, **fields}


def _local_reply_config() -> dict[str, Any]:
    no_route = {
        "filter": {"response_flag_filter": {"flags": ["NR"]}},
        "status_code": 404,
        "body_format_override": {
            "json_format": {"code": 5, "message": "no such endpoint", "details": []},
            "content_type": "application/json",
        },
    }
    # jwt_authn answers 403 for a token it does not accept (wrong audience):
    # to a client that is a bad token, 401. A service's own 403 is a gRPC
    # status, not a local reply, so it is not touched.
    bad_token = {
        "filter": {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": {"default_value": 403, "runtime_key": "chirp.local_reply.jwt403"}}
            }
        },
        "status_code": 401,
        "body_format_override": {
            "json_format": {"code": 16, "message": "%LOCAL_REPLY_BODY%", "details": []},
            "content_type": "application/json",
        },
    }
    mappers = [no_route, bad_token]
    for status, code in LOCAL_REPLY_CODES.items():
        mappers.append(
            {
                "filter": {
                    "status_code_filter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"default_value": status, "runtime_key": f"chirp.local_reply.{status}"},
                        }
                    }
                },
                "body_format_override": {
                    "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []},
                    "content_type": "application/json",
                },
            }
        )
    return {"mappers": mappers}


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


def _routes() -> list[dict[str, Any]]:
    return [
        {
            "match": {"prefix": f"/{svc.grpc_service}/"},
            "route": {"cluster": svc.name, "timeout": "5s"},
        }
        for svc in topology.SERVICES
    ]


def _cluster(svc: topology.Service) -> dict[str, Any]:
    return {
        "name": svc.name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
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
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": svc.grpc_service},
            }
        ],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def build(jwks: str) -> dict[str, Any]:
    hcm = _any(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="edge",
        codec_type="AUTO",
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
        access_log=[
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    log_format={
                        "json_format": {
                            "ts": "%START_TIME%",
                            "method": "%REQ(:METHOD)%",
                            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                            "status": "%RESPONSE_CODE%",
                            "grpc_status": "%GRPC_STATUS(NUMBER)%",
                            "flags": "%RESPONSE_FLAGS%",
                            "duration_ms": "%DURATION%",
                            "upstream": "%UPSTREAM_HOST%",
                            "request_id": "%REQ(X-REQUEST-ID)%",
                        }
                    },
                ),
            }
        ],
        local_reply_config=_local_reply_config(),
        route_config={
            "name": "edge",
            "virtual_hosts": [{"name": "chirp", "domains": ["*"], "routes": _routes()}],
        },
        http_filters=[
            _transcoder(),
            _jwt_authn(jwks),
            {
                "name": "envoy.filters.http.router",
                "typed_config": _any("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    return {
        "admin": {"address": {"socket_address": {"address": topology.HOST, "port_value": topology.ENVOY_ADMIN_PORT}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {"socket_address": {"address": topology.HOST, "port_value": topology.EDGE_PORT}},
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
    args.out.write_text(json.dumps(build(args.jwks.read_text()), indent=2))


if __name__ == "__main__":
    main()
