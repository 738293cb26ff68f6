"""Render the Envoy edge config. Instance counts and ports come from
infra/topology.py, limits from CHIRP_EDGE_* settings; one template for every
environment (tests render private edges with their own ports and limits).

    python envoy/render.py OUT.json --jwks FILE
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chirp.feed.v1 import feed_pb2
from chirp.graph.v1 import graph_pb2
from chirp.rank.v1 import rank_pb2
from chirp.tweet.v1 import tweet_pb2
from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor

from common.identity import SESSION_ID_HEADER
from common.interceptors import IMMEDIATE_HEALTH_CHECK_FAIL_HEADER
from infra import topology

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "generated" / "chirp.binpb"
USER_ID_HEADER = "x-chirp-user-id"
CLIENT_IP_HEADER = "x-chirp-client-ip"
IDEMPOTENCY_HEADER = "idempotency-key"
# envoy/sidecar.py: server reflection (public services only) and health for the edge.
SIDECAR_CLUSTER = "edge_sidecar"
SIDECAR_PORT = topology.EDGE_SIDECAR_PORT
HEALTH_PREFIX = "/grpc.health.v1.Health/"
HEALTH_TIMEOUT = "2s"
SIDECAR_PREFIXES = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    HEALTH_PREFIX,
)

# gRPC codes used in the JSON body of replies Envoy makes itself.
LOCAL_REPLY_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 3, 414: 3, 429: 8, 431: 3, 503: 14, 504: 4}
# The gRPC services' own limit is 16 KiB of metadata (8 KiB soft). A URL counts
# once in the request line and, transcoded, again in x-envoy-original-path.
MAX_URL_BYTES = 8 * 1024
MAX_HEADERS_KB = 16
# Verified tokens kept per worker thread, so a token seen again skips the
# signature check (about 0.27 ms). Access tokens are never revoked (only
# refresh tokens are, graph_svc/sessions.py) and a cached token is still
# checked for expiry on every use, so the cache changes no answer. 8192 covers
# the users active within a few minutes on one edge at a few hundred reads/s;
# an entry is about 2 KB.
JWT_CACHE_SIZE = 8192
# Smaller JSON bodies go out uncompressed: with the response headers they fit
# in one TCP segment (MSS 1460) either way, so gzip would save no packet and
# still cost its per-response setup. Bigger ones pay: a 20-item feed page of
# 4.1 KB goes out as 0.8 KB (3 segments fewer, a phone's radio on for less).
COMPRESS_MIN_BYTES = 1100
# zlib's fastest level. A 20-item feed page of 5.5 KB: level 6 (Envoy's default)
# 944 bytes in 104 us of CPU, level 1 1,121 bytes in 53 us, still one segment
# with the headers; a read costs the edge about 1.4 ms in all.
GZIP_LEVEL = "BEST_SPEED"
# Names gRPC metadata cannot carry (anything but 0-9 a-z _ . -: "x-a*b"), and
# binary metadata, which no service reads and whose malformed base64 the
# services' gRPC layer would refuse: either would fail the call with INTERNAL
# before any of our code runs, so the edge drops them. Pseudo-headers (:path)
# use only allowed characters; RE2 matches the whole name.
GRPC_UNSAFE_HEADER_NAME = r".*[^0-9a-z_.:-].*|.*-bin"
# What gRPC accepts as a deadline: 1 to 8 digits and a unit.
GRPC_TIMEOUT = r"[0-9]{1,8}[HMSmun]"
# Seconds a client is told to wait after the edge shed its request.
RETRY_AFTER_S = 1
# Seconds between the edge's gRPC health checks of each instance, per cluster.
# A check costs a live instance about 2 ms of CPU, a bare grpc.aio server 1-1.4
# (grpc's per-call floor on this machine), and Envoy about 0.5, and wakes the
# instance's event-engine threads for a few seconds after: at 1 s the 10 checks
# a second were 1.5 points of an idle stack's CPU, at 2 s 1.2; from 5 s to 10 s
# (with the stats flush and watchdog ticks below) the Python processes and
# Envoy went from 3.4-3.7% of a core to 2.6-3.1, Envoy alone from 0.46-0.54 to
# 0.16-0.21 (docs/BENCHMARKS.md, "Fewer lease cycles, ... (stop 36)"). Nothing
# a check finds waits for it while the edge carries traffic: a draining
# instance marks every answer
# (common/interceptors.py IMMEDIATE_HEALTH_CHECK_FAIL), which takes it out at
# its first answer; calls that fail at a dead one are retried on another
# (every API route retries a call that never reached an instance) and outlier
# detection ejects it. Checks find what no call shows: NOT_SERVING (a store
# failing its probes, a drain while the edge is quiet) at the next check, a
# dead or hung instance (or a quiet one that finished its drain first) at the
# second, and a restarted one back at the next.
HEALTH_CHECK_SECONDS = 10
# A check that fails to connect or times out (a dead or hung instance) counts once of
# the two it takes to mark the instance down (one NOT_SERVING is enough); the second
# comes this soon after the first instead of a whole interval later. An instance
# marked down is checked this often too, so it is back within it once it answers.
# (The two checks and their timeouts span 4 s: an instance whose loop a busy machine
# stalls for less is not taken out.)
HEALTH_RECHECK_SECONDS = 2
HEALTH_CHECK_TIMEOUT_SECONDS = 1
# How long outlier detection takes an instance out (longer at each repeat): longer
# than the checks need to mark a dead one down (a check at most an interval after
# its death, the recheck, each up to its timeout: 14 s). With 10 s, a killed
# instance came back into rotation before its second check: least-request
# balancing favours an instance with no calls in flight, so each try picked the dead
# one again, and a feed read failed all three (a fresh-clone fault run of 13197e6).
EJECTION_SECONDS = 15
# The longest an Envoy thread may go without returning to its event loop before
# the watchdog counts a miss (its check runs this often).
WATCHDOG_MISS_SECONDS = 1

# Calls that need no token. Public reads verify a token when one is sent.
NO_TOKEN = (
    "chirp.graph.v1.GraphService/CreateUser",
    "chirp.graph.v1.GraphService/CreateSession",
    # The refresh token in the body is the credential: the access token has usually expired.
    "chirp.graph.v1.GraphService/RefreshSession",
)
TOKEN_OPTIONAL = (
    "chirp.graph.v1.GraphService/GetUser",
    "chirp.graph.v1.GraphService/LookupUser",
    "chirp.graph.v1.GraphService/ListFollowers",
    "chirp.graph.v1.GraphService/ListFollowing",
    "chirp.tweet.v1.TweetService/GetTweet",
    "chirp.tweet.v1.TweetService/ListUserTweets",
    "chirp.rank.v1.RankService/ListTrending",
)
# Safe to retry on another instance: reads, and writes whose repeat changes
# nothing (follow, like, block and mute state are idempotent, and so is logging
# out). CreateTweet only with an Idempotency-Key (a route of its own below).
# Sign-up, login, delete, refresh (a repeat of a rotation that went through is
# a reuse, which revokes the session) and password changes are not.
IDEMPOTENT_WRITES = {
    "FollowUser", "UnfollowUser", "LikeTweet", "UnlikeTweet",
    "BlockUser", "UnblockUser", "MuteUser", "UnmuteUser", "DeleteSession",
}  # fmt: skip
RETRYABLE = {
    "GetUser", "LookupUser", "GetMe", "ListFollowers", "ListFollowing", "ListBlocks", "ListMutes",
    "GetTweet", "ListUserTweets", "GetHomeFeed", "ListTrending",
} | IDEMPOTENT_WRITES  # fmt: skip
# Calls that check a password or a refresh token: each route gets a bucket of the
# login size (a per-route filter config is a bucket of its own, so they are not shared).
LOGIN_METHODS = {"CreateSession", "CreateUser", "RefreshSession", "ChangePassword"}
# Calls that post: one bucket of the post size for all their routes (CreateTweet has
# two, with and without an Idempotency-Key), as a descriptor of the edge-wide filter.
POST_METHODS = {"CreateTweet"}
POST_DESCRIPTOR = {"key": "chirp_limit", "value": "post"}
# Retries (and hedges) in flight per cluster: (percent of its requests in flight and
# queued, floor). With at most 32 of each (`max_requests`), a tenth is at most 6: the floor
# decides. feed_svc and rank_svc keep 3, which bounds what hedges add to an overload of
# their reads (issue 14's overload step). The two clusters that take the writes get 10: a
# store node lost fails the writes in flight on it together (a follow's lightweight
# transaction answers UNAVAILABLE after about 2 s), and past 3 the rest failed on their one
# try (7 follows and an unfollow in a fault run). Their hedged reads (a user, a tweet, a
# user's tweets) may then have 10 hedges in flight too. The argon2 cluster keeps 3.
READ_RETRY_BUDGET = (10.0, 3)
RETRY_BUDGETS = {"graph_svc": (10.0, 10), "tweet_svc": (10.0, 10)}
SLOW_METHODS = {"CreateUser", "CreateSession", "ChangePassword"}  # argon2id on purpose
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
    # A safety valve only: per-account and per-address login throttling lives in graph_svc.
    login_rps: int = 500
    max_request_bytes: int = 64 * 1024
    read_timeout_s: float = 2.0
    write_timeout_s: float = 5.0
    # Proxies in front of the edge whose X-Forwarded-For entries are believed
    # when working out the client address passed to services.
    trusted_hops: int = 0
    sidecar_port: int = SIDECAR_PORT
    # Requests in flight to one service (all its instances) from this Envoy;
    # past it the edge answers 503 with Retry-After at once instead of queueing
    # work that would time out. At 500 reads/s and 20 ms that is 10 in flight:
    # 32 leaves room for bursts, and an admitted request waits at most
    # 32 / throughput, well under the 1 s per-try timeout while a service
    # still does 100 reads/s (64 let queues grow past it on a busy machine,
    # and a timed-out try is retried: more load exactly when there is too much).
    max_requests: int = 32
    # The same for the argon2 calls (sign-up, login, password change), which go to a
    # cluster of their own over the same instances: a burst of them, each tens of
    # milliseconds of CPU, sheds only them, never the service's other calls.
    max_slow_requests: int = 8
    # Every access log line of a non-2xx reply (or a gRPC error) is written;
    # successful ones only this percentage (runtime key chirp.access_log.success_percent).
    access_log_success_percent: int = 10

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
            trusted_hops=num("CHIRP_EDGE_TRUSTED_HOPS", base.trusted_hops),
            max_requests=num("CHIRP_EDGE_MAX_REQUESTS", base.max_requests),
            max_slow_requests=num("CHIRP_EDGE_MAX_SLOW_REQUESTS", base.max_slow_requests),
            access_log_success_percent=num("CHIRP_EDGE_ACCESS_LOG_SUCCESS_PERCENT", base.access_log_success_percent),
        )


def _any(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": type_name, **fields}


def _header(matcher: dict[str, Any]) -> dict[str, Any]:
    return {"header_filter": {"header": matcher}}


def _all(*filters: dict[str, Any]) -> dict[str, Any]:
    return {"and_filter": {"filters": list(filters)}}


def _status_is(status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": f"chirp.local_reply.{status}"}}
        }
    }


def _flag(flag: str) -> dict[str, Any]:
    return {"response_flag_filter": {"flags": [flag]}}


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": _any(
                "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                expression=expression,
            ),
        }
    }


# A gRPC client's call, not a REST call the transcoder turned into gRPC (that
# one keeps its original path in x-envoy-original-path).
GRPC_CLIENT = _all(
    _header({"name": "content-type", "string_match": {"prefix": "application/grpc"}}),
    _header({"name": "x-envoy-original-path", "present_match": True, "invert_match": True}),
)
# Edge refusals (the RBAC filter below, which answers 403): the same tests
# pick the reply that says why.
TOKEN_IN_QUERY: dict[str, Any] = {
    "name": ":path",
    "string_match": {"safe_regex": {"regex": r"[^?]*\?(.*&)?access_token=.*"}},
}
GRPC_ENCODING_ON_REST: tuple[dict[str, Any], ...] = (
    {"name": "grpc-encoding", "present_match": True},
    {
        "name": "content-type",
        "string_match": {"prefix": "application/grpc"},
        "invert_match": True,
        "treat_missing_header_as_empty": True,
    },
)
# A gRPC library never sends one, so a client that does gets a 400 instead
# of the INTERNAL the services' gRPC layer would answer.
GRPC_TIMEOUT_MALFORMED: tuple[dict[str, Any], ...] = (
    {"name": "grpc-timeout", "present_match": True},
    {"name": "grpc-timeout", "string_match": {"safe_regex": {"regex": GRPC_TIMEOUT}}, "invert_match": True},
)


def _http_rules() -> list[tuple[str, str, Descriptor]]:
    """(verb, URL template, request message) of every REST route of the public services."""
    rules = []
    for service in SERVICE_DESCRIPTORS.values():
        for method in service.methods:
            top = method.GetOptions().Extensions[annotations_pb2.http]
            for rule in (top, *top.additional_bindings):
                verb = rule.WhichOneof("pattern")
                if verb is not None and verb != "custom":
                    rules.append((verb, getattr(rule, verb), method.input_type))
    return rules


def _query_names(message: Descriptor, field_path: str) -> set[str]:
    """The names a query may give a path field by: the transcoder takes each segment
    by its proto name or its JSON name (tweet_id or tweetId)."""
    names = {field_path}
    if field_path in message.fields_by_name:  # a top-level field (a sub-field's path has a dot)
        names.add(message.fields_by_name[field_path].json_name)
    return names


def path_field_in_query() -> list[dict[str, Any]]:
    """:path regexes of REST calls whose query names a field their URL path binds:
    the transcoder lets the query win (DELETE /v1/tweets/1?tweet_id=2 deleted 2)."""
    patterns = set()
    for _, template, message in _http_rules():
        fields = re.findall(r"\{([A-Za-z0-9_.]+)(?:=[^}]*)?\}", template)
        if not fields:
            continue
        path = "".join(
            "[^/?]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]*\})", template)
        )
        # A name may also be written as its JSON name, percent-encoded, or as a sub-field (user_id.x).
        names = "|".join(sorted(re.escape(n) for f in fields for n in _query_names(message, f)))
        patterns.add(rf"{path}\?(.*&)?({names}|[^=&]*%[^=&]*)([.=&\[].*)?")
    return [{"name": ":path", "string_match": {"safe_regex": {"regex": p}}} for p in sorted(patterns)]


@dataclass(frozen=True)
class LocalReply:
    """One kind of reply Envoy makes itself: REST clients get the JSON error
    body of API.md, gRPC clients a grpc-status and the plain message."""

    match: dict[str, Any]
    status: int | None  # None: keep Envoy's
    code: int  # gRPC code, in the JSON body and as grpc-status
    message: str
    grpc_code: int | None = None  # when a gRPC client is told otherwise
    retry_after: bool = False  # tell the client when to try again (RETRY_AFTER_S)

    @property
    def grpc_status(self) -> int:
        return self.code if self.grpc_code is None else self.grpc_code


def local_replies() -> list[LocalReply]:
    """First match wins."""
    body = "%LOCAL_REPLY_BODY%"
    return [
        LocalReply(_all(_status_is(403), _header(TOKEN_IN_QUERY)), 401, 16,
                   "send the access token in the Authorization header, never in the URL"),
        LocalReply(_all(_status_is(403), *(_header(h) for h in GRPC_ENCODING_ON_REST)), 400, 3,
                   "grpc-encoding is for gRPC calls only"),
        LocalReply(_all(_status_is(403), *(_header(h) for h in GRPC_TIMEOUT_MALFORMED)), 400, 3,
                   "grpc-timeout must be 1 to 8 digits and a unit (H, M, S, m, u or n)"),
        LocalReply(_all(_status_is(403), {"or_filter": {"filters": [_header(h) for h in path_field_in_query()]}}),
                   400, 3, "a query parameter may not name a field of the URL path"),
        LocalReply(_all(_status_is(403), _cel(f"size(request.path) > {MAX_URL_BYTES}")), 414, 3,
                   f"the URL is longer than {MAX_URL_BYTES} bytes"),
        # A gRPC client asked for a method the edge does not serve: UNIMPLEMENTED, as a server would
        # say. (Without a token it is refused first, UNAUTHENTICATED: jwt_authn runs before the router.)
        LocalReply(_flag("NR"), 404, 5, "no such endpoint", grpc_code=12),
        LocalReply(_status_is(429), 429, 8, "rate limit exceeded, slow down"),
        # jwt_authn answers 403 for a token it does not accept (wrong audience):
        # to a client that is a bad token, 401. A service's own 403 is a gRPC
        # status, not a local reply, so it is not touched.
        LocalReply(_status_is(403), 401, 16, body),
        LocalReply(_status_is(413), 413, 3, "request body is larger than the limit"),
        LocalReply(_status_is(414), 414, 3, "the URL is too long"),
        LocalReply(_status_is(431), 431, 3, f"request headers are larger than {MAX_HEADERS_KB} KiB"),
        # Before the overflow below: Envoy also flags UO a try it could not retry or
        # hedge because the retry budget was spent, and when that call then times out
        # it is a timeout (504, DEADLINE_EXCEEDED), not a shed to come back from in a
        # second (503 with Retry-After; UNAVAILABLE, which gRPC clients retry).
        LocalReply(_status_is(504), 504, 4, "the service did not answer in time"),
        # The circuit breaker's limit (EdgeSettings.max_requests): shed at once, never retried.
        LocalReply(_flag("UO"), 503, 14, "the service is over capacity, try again in a second", retry_after=True),
        LocalReply(_status_is(503), 503, 14, "the service is unavailable, try again shortly", retry_after=True),
        # The connection's request or idle timeout: the client was too slow sending it.
        LocalReply(_status_is(408), 408, 4, "the request was not received in time"),
        *(LocalReply(_status_is(status), None, code, body) for status, code in LOCAL_REPLY_CODES.items()),
    ]  # fmt: skip


def _set_header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _rest_mapper(reply: LocalReply) -> dict[str, Any]:
    mapper: dict[str, Any] = {
        "filter": reply.match,
        "body_format_override": {
            "json_format": {"code": reply.code, "message": reply.message, "details": []},
            "content_type": "application/json",
        },
    }
    if reply.status is not None:
        mapper["status_code"] = reply.status
    if reply.retry_after:
        mapper["headers_to_add"] = [_set_header("retry-after", str(RETRY_AFTER_S))]
    return mapper


def _grpc_mapper(reply: LocalReply) -> dict[str, Any]:
    # Envoy would derive grpc-status from the HTTP status (429 -> UNAVAILABLE,
    # 413 -> UNKNOWN): it keeps one that is already set.
    mapper: dict[str, Any] = {
        "filter": _all(GRPC_CLIENT, reply.match),
        "body_format_override": {"text_format_source": {"inline_string": reply.message}},
        "headers_to_add": [_set_header("grpc-status", str(reply.grpc_status))],
    }
    if reply.retry_after:
        mapper["headers_to_add"].append(_set_header("retry-after", str(RETRY_AFTER_S)))
    if reply.status is not None:
        mapper["status_code"] = reply.status
    return mapper


def _local_reply_config() -> dict[str, Any]:
    """Every reply Envoy makes itself, in the form its client reads."""
    replies = local_replies()
    return {"mappers": [*map(_grpc_mapper, replies), *map(_rest_mapper, replies)]}


def _size(field: str) -> dict[str, Any]:
    return {
        "call_expr": {
            "function": "size",
            "args": [{"select_expr": {"operand": {"ident_expr": {"name": "request"}}, "field": field}}],
        }
    }


def _refusals() -> dict[str, Any]:
    """Requests refused before anything else looks at them (see local_replies for the answers)."""
    long_url = {
        "call_expr": {"function": "_>_", "args": [_size("path"), {"const_expr": {"int64_value": MAX_URL_BYTES}}]}
    }
    any_permission = [{"any": True}]
    anyone = [{"any": True}]
    policies = {
        # A token in a URL ends up in logs and browser history; jwt_authn reads
        # only the Authorization header, this says so instead of ignoring it.
        "token_in_query": {"permissions": [{"header": TOKEN_IN_QUERY}], "principals": anyone},
        # The transcoder sends uncompressed messages: a client's grpc-encoding would mislabel them.
        "grpc_encoding_on_rest": {
            "permissions": [{"and_rules": {"rules": [{"header": h} for h in GRPC_ENCODING_ON_REST]}}],
            "principals": anyone,
        },
        "path_field_in_query": {
            "permissions": [{"or_rules": {"rules": [{"header": h} for h in path_field_in_query()]}}],
            "principals": anyone,
        },
        "grpc_timeout_malformed": {
            "permissions": [{"and_rules": {"rules": [{"header": h} for h in GRPC_TIMEOUT_MALFORMED]}}],
            "principals": anyone,
        },
        "url_too_long": {"permissions": any_permission, "principals": anyone, "condition": long_url},
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            rules={"action": "DENY", "policies": policies},
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
            # Strict: a body field may not collide with a path field; an unknown
            # parameter or a non-gRPC call to no REST route (a gRPC path sent as
            # JSON) is refused here instead of reaching a service. (A query
            # parameter naming a path field, DELETE /v1/tweets/1?tweet_id=2, is
            # refused by the RBAC policy path_field_in_query: these options let it
            # through.)
            request_validation_options={
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
        ),
    }


def _jwt_authn(jwks: str) -> dict[str, Any]:
    """Runs after the transcoder, so rules match gRPC paths for REST and gRPC alike."""
    provider = "chirp"
    rules: list[dict[str, Any]] = [{"match": {"path": f"/{method}"}} for method in NO_TOKEN]
    rules += [{"match": {"prefix": prefix}} for prefix in SIDECAR_PREFIXES]
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
                    "require_expiration": True,
                    # Only the header: the default also reads ?access_token=.
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    "clock_skew_seconds": 30,
                    "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
                    "claim_to_headers": [
                        {"header_name": USER_ID_HEADER, "claim_name": "sub"},
                        {"header_name": SESSION_ID_HEADER, "claim_name": "sid"},
                    ],
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
        rate_limited_as_resource_exhausted=True,
        response_headers_to_add=[
            {"header": {"key": "retry-after", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    )


def _edge_rate_limit(settings: EdgeSettings) -> dict[str, Any]:
    """The default bucket, and the post bucket, which every posting route's calls take
    from (and only from it): a route's own filter config would be a bucket of its own, so
    a client alternating CreateTweet's two routes was let through twice `post_rps`. The
    rule matches the gRPC path (REST calls have been transcoded to it by here) with or
    without a query, which the routes' path match ignores."""
    config = _rate_limit(settings.default_rps)
    paths = "|".join(
        re.escape(f"/{svc.grpc_service}/{method}")
        for svc in topology.SERVICES
        for method in SERVICE_DESCRIPTORS[svc.grpc_service].methods_by_name
        if method in POST_METHODS
    )
    config.update(
        descriptors=[{"entries": [POST_DESCRIPTOR], "token_bucket": _bucket(settings.post_rps)}],
        always_consume_default_token_bucket=False,
        rate_limits=[
            {
                "actions": [
                    {
                        "header_value_match": {
                            "descriptor_key": POST_DESCRIPTOR["key"],
                            "descriptor_value": POST_DESCRIPTOR["value"],
                            "headers": [
                                {"name": ":path", "string_match": {"safe_regex": {"regex": f"^({paths})(\\?.*)?$"}}}
                            ],
                        }
                    }
                ]
            }
        ],
    )
    return config


def _retry_policy(per_try_timeout_s: float) -> dict[str, Any]:
    return {
        "retry_on": "unavailable,reset,connect-failure,refused-stream",
        # Two retries, on other instances: one was not enough for a follow whose LWT
        # hit contention or a node being replaced (UNAVAILABLE twice, then a 503 to the
        # client). The retry budget (RETRY_BUDGETS) keeps them from
        # amplifying an overload, and an overflow is never retried.
        "num_retries": 2,
        "per_try_timeout": f"{per_try_timeout_s}s",
        **_on_other_hosts(),
    }


def _on_other_hosts() -> dict[str, Any]:
    """A retry goes to an instance not tried yet."""
    return {
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        # The balancer picks again while it picks a tried instance, up to this many
        # times, then sends the retry to its last pick. Least-request favours an
        # instance with no calls in flight, as a dead one that refuses them at once:
        # of two it picks the dead one 3 times in 4, so with 3 (4 picks) a retry went
        # back to it one time in 3; with 16, one in 130 (a pick is cheap).
        "host_selection_retry_max_attempts": 16,
    }


def _unsent_retry_policy() -> dict[str, Any]:
    """For a call that must not run twice: retried on another instance only when no
    byte of it reached one (a refused or failed connection, as when the edge picks
    an instance that has just stopped). Not on a refused stream: Envoy retries that
    even after the request went out, and gRPC resets a call it cancels UNAVAILABLE
    (an instance stopping with calls still running) as refused."""
    return {
        "retry_on": "connect-failure,reset-before-request",
        "num_retries": 2,
        **_on_other_hosts(),
    }


def _route(svc: topology.Service, method: str, settings: EdgeSettings) -> list[dict[str, Any]]:
    path = f"/{svc.grpc_service}/{method}"
    write = method not in RETRYABLE or method in IDEMPOTENT_WRITES
    timeout = settings.write_timeout_s if write or method in SLOW_METHODS else settings.read_timeout_s
    cluster = slow_cluster_name(svc) if method in SLOW_METHODS else svc.name
    action: dict[str, Any] = {"cluster": cluster, "timeout": f"{timeout}s"}
    route: dict[str, Any] = {"match": {"path": path}, "route": action}
    if method in LOGIN_METHODS:
        route["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": _rate_limit(settings.login_rps)}
    action["retry_policy"] = _retry_policy(timeout / 2) if method in RETRYABLE else _unsent_retry_policy()
    if not write:
        # A read past its per-try timeout is slow, not lost (a cold read: the follow list,
        # the timeline and the tweets loaded from the store in turn, as while a Redis node
        # is away): the second try starts on another instance and the first keeps going;
        # whichever answers first is the reply, where a plain retry cancelled the first.
        action["hedge_policy"] = {"hedge_on_per_try_timeout": True}
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
    # A reflection stream lasts as long as a tool's session (the idle timeout
    # bounds it) and never ends its request body: the buffer filter would hold
    # it forever. The sidecar's own gRPC message limit bounds it instead.
    unbuffered = {
        "envoy.filters.http.buffer": _any(
            "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute", disabled=True
        )
    }
    # Health checks are unary and answered within the sidecar's INSTANCE_TIMEOUT_S:
    # a stuck sidecar is a 504 within 2 s, not one at Envoy's default 15 s route timeout.
    routes += [
        {
            "match": {"prefix": prefix},
            "route": {"cluster": SIDECAR_CLUSTER, "timeout": HEALTH_TIMEOUT if prefix == HEALTH_PREFIX else "0s"},
            "typed_per_filter_config": unbuffered,
        }
        for prefix in SIDECAR_PREFIXES
    ]
    return routes


# How often the edge pings each idle upstream connection. Every ping wakes the
# instance's gRPC event-engine threads, which then back off from 15 ms to 3 s
# (hard-coded in grpc): on an idle local stack, 10 s pings on its twenty-odd
# connections cost about 0.3% of a core (docs/BENCHMARKS.md, "A quieter idle
# stack"). The pings find a connection that died without a reset (an instance
# whose host vanished) within this and the 2 s timeout; by then the health checks
# (two failed, HEALTH_RECHECK_SECONDS apart) and outlier detection have taken the
# instance out of rotation anyway.
UPSTREAM_KEEPALIVE_SECONDS = 30


def _h2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={
                "http2_protocol_options": {
                    "connection_keepalive": {"interval": f"{UPSTREAM_KEEPALIVE_SECONDS}s", "timeout": "2s"}
                }
            },
        )
    }


def _static_endpoints(name: str, ports: list[int]) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": topology.HOST, "port_value": port}}}}
                    for port in ports
                ]
            }
        ],
    }


def _sidecar_cluster(settings: EdgeSettings) -> dict[str, Any]:
    return {
        "name": SIDECAR_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _h2_options(),
        "load_assignment": _static_endpoints(SIDECAR_CLUSTER, [settings.sidecar_port]),
    }


SLOW_CLUSTER_SUFFIX = "_argon2"


def slow_cluster_name(svc: topology.Service) -> str:
    """The cluster of a service's argon2 calls (SLOW_METHODS): same instances, own limit."""
    return svc.name + SLOW_CLUSTER_SUFFIX


def cluster_service(cluster_name: str) -> str:
    """The service whose instances a cluster balances over."""
    return cluster_name.removesuffix(SLOW_CLUSTER_SUFFIX)


def _clusters(settings: EdgeSettings) -> list[dict[str, Any]]:
    clusters = []
    for svc in topology.SERVICES:
        clusters.append(_cluster(svc, settings, svc.name, settings.max_requests))
        if set(SERVICE_DESCRIPTORS[svc.grpc_service].methods_by_name) & SLOW_METHODS:
            clusters.append(_cluster(svc, settings, slow_cluster_name(svc), settings.max_slow_requests))
    return clusters


def _cluster(svc: topology.Service, settings: EdgeSettings, name: str, max_requests: int) -> dict[str, Any]:
    budget_percent, floor = RETRY_BUDGETS.get(name, READ_RETRY_BUDGET)
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": _h2_options(),
        "load_assignment": _static_endpoints(name, [inst.port for inst in topology.instances(svc)]),
        # Active health: NOT_SERVING (dependency down, or draining on SIGTERM)
        # takes an instance out at the next check (HEALTH_CHECK_SECONDS).
        "health_checks": [
            {
                "timeout": f"{HEALTH_CHECK_TIMEOUT_SECONDS}s",
                "interval": f"{HEALTH_CHECK_SECONDS}s",
                "unhealthy_edge_interval": f"{HEALTH_RECHECK_SECONDS}s",
                "unhealthy_interval": f"{HEALTH_RECHECK_SECONDS}s",
                # Envoy's default checks a cluster that never carried a request once a
                # minute: a fresh stack would look cheaper idle than one that served
                # traffic, and an instance that failed its first check would wait a
                # minute for the next.
                "no_traffic_interval": f"{HEALTH_CHECK_SECONDS}s",
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
            # Refused connections and timeouts, with no call started on the instance
            # between them. A hedged read's per-try timeout counts too, though its try
            # keeps going and may well answer: at 2, two slow reads on a busy instance
            # (cold caches, a store node away) ejected it and sent everything to the
            # other. A dead one reaches 5 at its first five calls (each retried).
            "consecutive_local_origin_failure": 5,
            "enforcing_consecutive_local_origin_failure": 100,
            "interval": "2s",
            "base_ejection_time": f"{EJECTION_SECONDS}s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    # Over max_requests (or waiting for a connection) the edge sheds
                    # at once: a 503 with Retry-After (local_replies, flag UO).
                    "max_pending_requests": max_requests,
                    "max_requests": max_requests,
                    # Retries (and hedges) in flight at most a share of the requests in
                    # flight, with a floor for when few are (RETRY_BUDGETS): an overload
                    # cannot be amplified by more than that, and an overflow is never retried.
                    "retry_budget": {"budget_percent": {"value": budget_percent}, "min_retry_concurrency": floor},
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
            response_direction_config={"common_config": {"min_content_length": COMPRESS_MIN_BYTES}},
            compressor_library={
                "name": "gzip",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
                    compression_level=GZIP_LEVEL,
                ),
            },
        ),
    }


def _access_log_filter(success_percent: int) -> dict[str, Any]:
    """Every failure (HTTP status outside 2xx, no response, a gRPC client's
    non-OK status, which comes with HTTP 200) and `success_percent` of the rest,
    picked by request id; the runtime key changes it without a restart."""

    def status(op: str, value: int) -> dict[str, Any]:
        compare = {"op": op, "value": {"default_value": value, "runtime_key": f"chirp.access_log.status_{op.lower()}"}}
        return {"status_code_filter": {"comparison": compare}}

    return {
        "or_filter": {
            "filters": [
                status("GE", 300),
                status("LE", 199),
                _all(GRPC_CLIENT, {"grpc_status_filter": {"statuses": ["OK"], "exclude": True}}),
                {
                    "runtime_filter": {
                        "runtime_key": "chirp.access_log.success_percent",
                        "percent_sampled": {"numerator": success_percent, "denominator": "HUNDRED"},
                    }
                },
            ]
        }
    }


def _access_log(settings: EdgeSettings) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.stdout",
        "filter": _access_log_filter(settings.access_log_success_percent),
        "typed_config": _any(
            "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            log_format={
                "json_format": {
                    "ts": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    # Never the query string: it may carry secrets.
                    "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "route": "%REQ_WITHOUT_QUERY(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS(NUMBER)%",
                    "flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "upstream": "%UPSTREAM_HOST%",
                    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "client": f"%REQ({CLIENT_IP_HEADER.upper()})%",
                },
                "formatters": [
                    {
                        "name": "envoy.formatter.req_without_query",
                        "typed_config": _any(
                            "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                        ),
                    }
                ],
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
        max_request_headers_kb=MAX_HEADERS_KB,
        # The client address is the peer's, or the one `trusted_hops` proxies
        # in front of the edge saw; services throttle logins per address by it.
        use_remote_address=True,
        xff_num_trusted_hops=settings.trusted_hops,
        # Identity and client address come only from the edge: drop any
        # client-sent copy before any filter runs; and what gRPC metadata
        # cannot carry (GRPC_UNSAFE_HEADER_NAME).
        early_header_mutation_extensions=[
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    mutations=[
                        {"remove": USER_ID_HEADER},
                        {"remove": SESSION_ID_HEADER},
                        {"remove": CLIENT_IP_HEADER},
                        {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": GRPC_UNSAFE_HEADER_NAME}}}},
                    ],
                ),
            }
        ],
        access_log=[_access_log(settings)],
        local_reply_config=_local_reply_config(),
        route_config={
            "name": "edge",
            "virtual_hosts": [{"name": "chirp", "domains": ["*"], "routes": _routes(settings)}],
            # Meant for the edge alone (its router has acted on it by now).
            "response_headers_to_remove": [IMMEDIATE_HEALTH_CHECK_FAIL_HEADER],
            "request_headers_to_add": [
                {
                    "header": {"key": CLIENT_IP_HEADER, "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        },
        # Order matters: refusals and the size limit first; the compressor sees
        # the JSON the transcoder makes; rate limits and auth run on the gRPC route.
        http_filters=[
            _refusals(),
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": _any(
                    "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    max_request_bytes=settings.max_request_bytes,
                ),
            },
            _compressor(),
            _transcoder(),
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": _edge_rate_limit(settings)},
            _jwt_authn(jwks),
            router,
        ],
    )
    return {
        "admin": {"address": {"socket_address": {"address": topology.HOST, "port_value": settings.admin_port}}},
        # No stats sink is configured, so nothing read the main thread's merge of
        # every stat every 5 s. With this, a read of /stats/prometheus starts the
        # merge and renders at once, so histograms and server.* gauges are one
        # scrape (15 s) old; nothing here reads Envoy's histograms.
        "stats_flush_on_admin": True,
        # The watchdogs count a thread that missed its deadline (watchdog_miss,
        # watchdog_mega_miss) and kill nothing. They checked every 200 ms, the
        # shortest threshold; a miss at 1 s is still a stall worth counting.
        "watchdogs": {
            name: {"miss_timeout": f"{WATCHDOG_MISS_SECONDS}s", "megamiss_timeout": f"{WATCHDOG_MISS_SECONDS}s"}
            for name in ("main_thread_watchdog", "worker_watchdog")
        },
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
            "clusters": [*_clusters(settings), _sidecar_cluster(settings)],
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
