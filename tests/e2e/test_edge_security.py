"""The edge refuses what it cannot pass on faithfully and answers in the form
each client reads: REST clients the JSON error body of API.md, gRPC clients a
grpc-status with a plain message. It serves reflection of the public API and
health for gRPC tools. Run on a private Envoy rendered by the same template, in
front of the running services and edge sidecar."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import grpc
import httpx
import jwt
import pytest
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc
from chirp.tweet.v1 import tweet_pb2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from common.jwk import key_id
from infra import stack
from tests import faults
from tests.conftest import unique_name
from tests.e2e.test_users import assert_error
from tests.edge import Edge, private_edge_with_log, render

PORT, ADMIN = 18180, 19911
# Every request logged: the access log tests read the line of a successful call.
STRICT = replace(
    render.EdgeSettings(),
    listen_port=PORT,
    admin_port=ADMIN,
    login_rps=1,
    trusted_hops=1,
    access_log_success_percent=100,
)
PUBLIC = {
    "chirp.graph.v1.GraphService",
    "chirp.tweet.v1.TweetService",
    "chirp.feed.v1.FeedService",
    "chirp.rank.v1.RankService",
}
INTERNAL = ("chirp.graph.v1.GraphInternalService", "chirp.tweet.v1.TweetInternalService")


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str


@pytest.fixture(scope="module")
def strict_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with private_edge_with_log(tmp_path_factory.mktemp("strict_edge"), STRICT) as edge:
        yield edge


@pytest.fixture(scope="module")
def channel(strict_edge: Edge) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{PORT}") as chan:
        yield chan


@pytest.fixture(scope="module")
def account(edge: httpx.Client) -> Account:
    name = unique_name("es")
    user = edge.post("/v1/users", json={"username": name, "password": "correct horse"}).json()["user"]
    token = edge.post("/v1/sessions", json={"username": name, "password": "correct horse"}).json()["access_token"]
    return Account(user["user_id"], token)


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _grpc_error(call: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    assert isinstance(call, grpc.Call)
    trailers = {k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)}
    return call.code(), call.details() or "", trailers


def _plain(message: str) -> str:
    """A message a person reads: no JSON document, no Envoy internals."""
    assert message and not message.lstrip().startswith("{"), message
    assert "upstream" not in message and "x-envoy" not in message, message
    return message


# ---- strict transcoding ---------------------------------------------------------


def test_a_query_parameter_cannot_override_a_path_field(strict_edge: Edge, account: Account) -> None:
    tweets = [
        httpx.post(f"{strict_edge.base}/v1/tweets", json={"text": f"keep me {i}"}, headers=_auth(account.token))
        for i in range(2)
    ]
    first, second = (r.json()["tweet"]["tweet_id"] for r in tweets)
    reply = httpx.delete(f"{strict_edge.base}/v1/tweets/{first}?tweet_id={second}", headers=_auth(account.token))
    assert_error(reply, 400, 3)
    # Its percent-encoded and JSON names too: the transcoder takes ?tweetId= as tweet_id.
    for encoded in (f"tweet%5Fid={second}", f"page_size=1&tweet_id={second}", f"tweetId={second}"):
        assert_error(
            httpx.delete(f"{strict_edge.base}/v1/tweets/{first}?{encoded}", headers=_auth(account.token)), 400, 3
        )
    # Neither tweet was deleted.
    for tweet_id in (first, second):
        assert httpx.get(f"{strict_edge.base}/v1/tweets/{tweet_id}").status_code == 200
    assert_error(httpx.get(f"{strict_edge.base}/v1/users/{account.user_id}?verbose=1"), 400, 3)
    assert_error(httpx.get(f"{strict_edge.base}/v1/users/{account.user_id}?userId=1"), 400, 3)


def test_grpc_encoding_on_a_rest_call_is_400(strict_edge: Edge, account: Account) -> None:
    reply = httpx.get(f"{strict_edge.base}/v1/users/{account.user_id}", headers={"grpc-encoding": "bogus"})
    assert "grpc-encoding" in str(assert_error(reply, 400, 3)["message"])


def test_metadata_grpc_cannot_carry_is_dropped_or_refused_at_the_edge(strict_edge: Edge, account: Account) -> None:
    """Else the services' gRPC layer would fail the call with INTERNAL (a 500) before any of our code runs."""
    url = f"{strict_edge.base}/v1/users/{account.user_id}"
    for name, value in (("x-odd*name", "1"), ("x-odd-bin", "!!!"), ("x-fine-bin", "AAEC")):
        reply = httpx.get(url, headers={name: value})
        assert reply.status_code == 200, (name, reply.text)
    for value in ("soon", "123456789S", "1s", "-1S"):
        reply = httpx.get(url, headers={"grpc-timeout": value})
        assert "grpc-timeout" in str(assert_error(reply, 400, 3)["message"]), value
    assert httpx.get(url, headers={"grpc-timeout": "12345678m"}).status_code == 200


def test_a_grpc_path_sent_as_json_is_404_without_envoy_internals(strict_edge: Edge, account: Account) -> None:
    reply = httpx.post(
        f"{strict_edge.base}/chirp.graph.v1.GraphService/GetUser",
        json={"user_id": account.user_id},
        headers={"content-type": "application/json"},
    )
    _plain(str(assert_error(reply, 404, 5)["message"]))


# ---- size limits -------------------------------------------------------------------


def test_long_url_is_414_and_large_headers_431_with_json_and_no_internals(strict_edge: Edge) -> None:
    url = f"{strict_edge.base}/v1/users/1/tweets?page_token={'a' * (render.MAX_URL_BYTES + 100)}"
    assert "x-" not in _plain(str(assert_error(httpx.get(url), 414, 3)["message"]))
    for size in (20_000, 70_000):
        reply = httpx.get(f"{strict_edge.base}/v1/users/1", headers={"x-big": "a" * size})
        assert "x-big" not in _plain(str(assert_error(reply, 431, 3)["message"]))


def test_local_replies_give_grpc_clients_a_status_and_a_plain_message(
    strict_edge: Edge, channel: grpc.Channel, account: Account
) -> None:
    graph = graph_pb2_grpc.GraphServiceStub(channel)
    cases: list[tuple[str, grpc.StatusCode]] = []

    def expect(code: grpc.StatusCode, call: object) -> tuple[str, dict[str, str]]:
        assert isinstance(call, grpc.RpcError), call
        got, message, trailers = _grpc_error(call)
        assert got == code, (got, message)
        cases.append((_plain(message), got))
        return message, trailers

    def fail(fn: object, *args: object, **kwargs: object) -> object:
        assert callable(fn)
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            return exc

    # 401: no token.
    expect(grpc.StatusCode.UNAUTHENTICATED, fail(graph.FollowUser, graph_pb2.FollowUserRequest(user_id=1), timeout=5))
    # 404 no route: an internal service is not routed at the edge.
    internal = channel.unary_unary(f"/{INTERNAL[0]}/BatchGetUsers", None, None)
    expect(grpc.StatusCode.UNIMPLEMENTED, fail(internal, b"", metadata=tuple(_auth(account.token).items()), timeout=5))
    # 413: a message over the body limit.
    big = graph_pb2.CreateUserRequest(username="x" * (STRICT.max_request_bytes + 10), password="correct horse")
    expect(grpc.StatusCode.INVALID_ARGUMENT, fail(graph.CreateUser, big, timeout=5))
    # 414: a method path with a long query.
    long_path = channel.unary_unary(
        f"/chirp.graph.v1.GraphService/GetUser?x={'a' * (render.MAX_URL_BYTES + 100)}", None, None
    )
    expect(grpc.StatusCode.INVALID_ARGUMENT, fail(long_path, b"", timeout=5))
    # 429 with Retry-After: the login bucket (1/s, burst 2). A fresh name each run, so the
    # few attempts that pass the bucket stay under graph_svc's own failed-login limit.
    login = graph_pb2.CreateSessionRequest(username=unique_name("nb"), password="wrong password")
    replies = [fail(graph.CreateSession, login, timeout=5) for _ in range(6)]
    limited = [
        r for r in replies if isinstance(r, grpc.RpcError) and _grpc_error(r)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    ]
    assert limited, [_grpc_error(r)[:2] for r in replies if isinstance(r, grpc.RpcError)]
    _, trailers = expect(grpc.StatusCode.RESOURCE_EXHAUSTED, limited[0])
    assert trailers.get("retry-after") == "1"
    assert len(cases) == 5


def test_rest_429_carries_retry_after(strict_edge: Edge) -> None:
    name = unique_name("nb")  # fresh: only the edge's bucket may answer 429 here
    replies = [
        httpx.post(f"{strict_edge.base}/v1/sessions", json={"username": name, "password": "wrong password"})
        for _ in range(6)
    ]
    limited = [r for r in replies if r.status_code == 429]
    assert limited, [r.status_code for r in replies]
    assert_error(limited[0], 429, 8)
    assert limited[0].headers["retry-after"] == "1"


# ---- tokens ------------------------------------------------------------------------------


def _mint(claims: dict[str, object]) -> str:
    key = serialization.load_pem_private_key((stack.KEYS / "token_ed25519.pem").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": key_id(raw)})


def test_a_token_without_exp_is_rejected(strict_edge: Edge, channel: grpc.Channel, account: Account) -> None:
    now = int(time.time())
    claims: dict[str, object] = {"iss": "chirp", "aud": "chirp-api", "sub": account.user_id, "iat": now}
    forever, expiring = _mint(claims), _mint({**claims, "exp": now + 600})
    follow = f"{strict_edge.base}/v1/users/{account.user_id}/follow"
    # Same key and claims with exp: accepted (following yourself is refused by the service, not the edge).
    assert (
        httpx.post(f"{strict_edge.base}/v1/tweets", json={"text": "signed well"}, headers=_auth(expiring)).status_code
        == 200
    )
    assert_error(httpx.post(follow, headers=_auth(forever)), 401, 16)
    stub = graph_pb2_grpc.GraphServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.FollowUser(graph_pb2.FollowUserRequest(user_id=1), metadata=tuple(_auth(forever).items()), timeout=5)
    assert _grpc_error(caught.value)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_in_the_query_string_is_refused_over_rest_and_grpc(
    strict_edge: Edge, channel: grpc.Channel, account: Account
) -> None:
    reply = httpx.post(f"{strict_edge.base}/v1/tweets?access_token={account.token}", json={"text": "in the url"})
    assert_error(reply, 401, 16)
    create = channel.unary_unary(
        f"/chirp.tweet.v1.TweetService/CreateTweet?access_token={account.token}",
        request_serializer=tweet_pb2.CreateTweetRequest.SerializeToString,
        response_deserializer=tweet_pb2.CreateTweetResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        create(tweet_pb2.CreateTweetRequest(text="in the url"), timeout=5)
    code, message, _ = _grpc_error(caught.value)
    assert code == grpc.StatusCode.UNAUTHENTICATED, message


def _access_log(edge: Edge, path: str) -> dict[str, object]:
    """The access log line of the one request made to `path` (the edge makes its own request ids)."""
    found: list[dict[str, object]] = []

    def logged() -> bool:
        lines = edge.log.read_text(errors="replace").splitlines()
        found[:] = [json.loads(line) for line in lines if line.startswith("{") and f'"{path}"' in line]
        return bool(found)

    faults.wait_for(logged, 30, f"the access log line of {path}")
    return found[0]


def test_query_strings_stay_out_of_the_access_log(strict_edge: Edge, account: Account) -> None:
    marker = f"secret{unique_name()}"
    path = f"/v1/users/{account.user_id}/tweets"
    reply = httpx.get(f"{strict_edge.base}{path}?page_size=1&page_token={marker}")
    assert reply.status_code in (200, 400)
    line = _access_log(strict_edge, path)
    assert line["path"] == path
    assert marker not in json.dumps(line)


def test_services_get_the_client_address_behind_trusted_hops_never_a_client_copy(strict_edge: Edge) -> None:
    path = f"/v1/users/{secrets.randbelow(2**62)}"
    httpx.get(f"{strict_edge.base}{path}", headers={"x-forwarded-for": "203.0.113.7", "x-chirp-client-ip": "6.6.6.6"})
    # One trusted hop: the address that proxy saw (the last X-Forwarded-For entry) is the client.
    assert _access_log(strict_edge, path)["client"] == "203.0.113.7"


# ---- gRPC tooling: reflection and health ------------------------------------------------


def _v1_list(channel: grpc.Channel) -> set[str]:
    """grpc.reflection.v1 (what grpcurl asks first); its messages are v1alpha's on the wire."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    return {s.name for s in replies[0].list_services_response.service}


def test_the_edge_serves_reflection_of_the_public_api_only(channel: grpc.Channel, account: Account) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    listed = set(database.get_services())
    assert listed >= PUBLIC and not set(INTERNAL) & listed, listed
    assert _v1_list(channel) == listed
    for name in INTERNAL:
        with pytest.raises(KeyError):
            database.FindFileContainingSymbol(name)
    # Describe a message and call a public method with descriptors fetched by reflection alone.
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("chirp.graph.v1.GraphService").methods_by_name["GetUser"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    assert [f.name for f in method.input_type.fields] == ["user_id"]
    call = channel.unary_unary(
        "/chirp.graph.v1.GraphService/GetUser",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    reply = call(request_class(user_id=int(account.user_id)), timeout=5)
    assert str(reply.user.user_id) == account.user_id


def test_the_edge_answers_health_from_the_services(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", *sorted(PUBLIC)):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service=INTERNAL[0]), timeout=5)
    assert _grpc_error(caught.value)[0] == grpc.StatusCode.NOT_FOUND


def test_service_ports_offer_reflection_v1_and_v1alpha() -> None:
    from infra import topology

    port = topology.instances(topology.SERVICES[0])[0].port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as direct:
        alpha = reflection_pb2_grpc.ServerReflectionStub(direct).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        alpha_names = {s.name for s in next(iter(alpha)).list_services_response.service}
        assert topology.SERVICES[0].grpc_service in alpha_names
        assert _v1_list(direct) == alpha_names
