"""Past its limit the edge sheds instead of queueing: requests over the
circuit breaker's max_requests get an immediate 503 in the form their client
reads (REST: the JSON error body of API.md; gRPC: UNAVAILABLE with a plain
grpc-message), both with Retry-After, while the admitted ones succeed. Run on a
private Envoy whose limit is one request in flight per service, in front of the
running services; logins are the calls, because argon2id keeps each one in
flight long enough for the others to arrive while it is."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import grpc
import httpx
import pytest
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc

from tests import faults
from tests.conftest import unique_name
from tests.e2e.test_users import assert_error
from tests.edge import Edge, private_edge_with_log, render

PORT, ADMIN = 18480, 19941
# One request in flight per service; successes are not logged, so every line is a failure.
TINY = replace(
    render.EdgeSettings(),
    listen_port=PORT,
    admin_port=ADMIN,
    max_requests=1,
    max_slow_requests=1,
    access_log_success_percent=0,
)
PASSWORD = "correct horse"
CALLS = 12
T = TypeVar("T")


@pytest.fixture(scope="module")
def tiny_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with private_edge_with_log(tmp_path_factory.mktemp("tiny_edge"), TINY) as edge:
        yield edge


@pytest.fixture(scope="module")
def username(edge: httpx.Client) -> str:
    name = unique_name("ov")
    reply = edge.post("/v1/users", json={"username": name, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return name


def _at_once(call: Callable[[], T]) -> list[T]:
    """CALLS calls started together, so they are in flight at the same time."""
    start = threading.Barrier(CALLS)

    def one() -> T:
        start.wait()
        return call()

    with ThreadPoolExecutor(CALLS) as pool:
        return list(pool.map(lambda _: one(), range(CALLS)))


def test_rest_calls_over_the_limit_get_503_json_with_retry_after_and_the_rest_succeed(
    tiny_edge: Edge, username: str
) -> None:
    with httpx.Client(base_url=tiny_edge.base, timeout=10.0, limits=httpx.Limits(max_connections=CALLS)) as client:
        replies = _at_once(lambda: client.post("/v1/sessions", json={"username": username, "password": PASSWORD}))
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) == {200, 503}, statuses
    for reply in replies:
        if reply.status_code == 200:
            assert reply.json()["access_token"]
            continue
        body = assert_error(reply, 503, 14)
        assert body["message"] == "the service is over capacity, try again in a second"
        assert reply.headers["retry-after"] == "1"
    # Shed calls are failures: each has its access log line (flag UO), successes none at 0%.
    shed = statuses.count(503)

    def logged() -> list[dict[str, object]]:
        lines = tiny_edge.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"') and '"/v1/sessions"' in line]

    faults.wait_for(lambda: len(logged()) >= shed, 30, "the access log lines of the shed calls")
    lines = logged()
    assert len(lines) == shed and all(str(line["status"]) == "503" and line["flags"] == "UO" for line in lines), lines


def test_grpc_calls_over_the_limit_get_unavailable_with_a_plain_message(tiny_edge: Edge, username: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{PORT}") as channel:
        graph = graph_pb2_grpc.GraphServiceStub(channel)
        request = graph_pb2.CreateSessionRequest(username=username, password=PASSWORD)

        def login() -> graph_pb2.CreateSessionResponse | grpc.RpcError:
            try:
                reply: graph_pb2.CreateSessionResponse = graph.CreateSession(request, timeout=10)
                return reply
            except grpc.RpcError as exc:
                return exc

        replies = _at_once(login)
    errors = [r for r in replies if isinstance(r, grpc.RpcError)]
    assert errors and len(errors) < CALLS, [r.code() for r in errors if isinstance(r, grpc.Call)]
    for error in errors:
        assert isinstance(error, grpc.Call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert error.details() == "the service is over capacity, try again in a second"
        trailers = dict(error.trailing_metadata() or ())
        assert trailers.get("retry-after") == "1", trailers
    assert all(r.access_token for r in replies if isinstance(r, graph_pb2.CreateSessionResponse))
