"""A store node lost fails the writes in flight on it together, and the edge retries
them on another instance (idempotent writes: a follow, a like) as far as the retry
budget of their cluster lets it (envoy/render.py RETRY_BUDGETS). Run on a private
Envoy built from the real renderer whose graph_svc cluster is two stand-in
instances here: the follows' first tries fail UNAVAILABLE together, as the follows
in flight on a killed Cassandra node did, and each is answered on its second (a
failed instance is ejected after three such failures, which leaves the other)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import grpc
import httpx
import pytest
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc

from tests.conftest import unique_name
from tests.edge import cluster_stat, private_edge, render, stand_ins

PORT, ADMIN, FIRST, SECOND = 18487, 19947, 18488, 18489
SETTINGS = replace(render.EdgeSettings(), listen_port=PORT, admin_port=ADMIN)
AT_ONCE = 8  # past the read clusters' floor of 3, within the write clusters' 10
# A retry takes this long, so all of them are in flight together.
RETRY_S = 0.5


class FailsFirstTries(graph_pb2_grpc.GraphServiceServicer):
    """FollowUser: UNAVAILABLE for a request's first try (by its x-request-id, which Envoy
    keeps across tries) once all AT_ONCE first tries have arrived, so they fail together;
    OK for the next try, after RETRY_S. `retried` counts the second tries."""

    def __init__(self) -> None:
        self.tried: set[str] = set()
        self.retried = 0
        self.together = threading.Barrier(AT_ONCE)
        self._lock = threading.Lock()

    def FollowUser(
        self, request: graph_pb2.FollowUserRequest, context: grpc.ServicerContext
    ) -> graph_pb2.FollowUserResponse:
        request_id = str(dict(context.invocation_metadata())["x-request-id"])
        with self._lock:
            first = request_id not in self.tried
            self.tried.add(request_id)
            self.retried += not first
        if first:
            self.together.wait(timeout=10)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the store did not answer")
        time.sleep(RETRY_S)
        return graph_pb2.FollowUserResponse()


@contextmanager
def serving(ports: list[int]) -> Iterator[FailsFirstTries]:
    servicer = FailsFirstTries()  # type: ignore[abstract]  # FollowUser alone is called
    with stand_ins(
        ports,
        "chirp.graph.v1.GraphService",
        lambda server: graph_pb2_grpc.add_GraphServiceServicer_to_server(servicer, server),
        workers=32,
    ):
        yield servicer


@pytest.fixture(scope="module")
def stand_in() -> Iterator[FailsFirstTries]:
    with serving([FIRST, SECOND]) as servicer:
        yield servicer


@pytest.fixture(scope="module")
def edge_base(stand_in: FailsFirstTries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_edge(tmp_path_factory.mktemp("write_retries"), SETTINGS, {"graph_svc": [FIRST, SECOND]}) as base:
        yield base


def test_follows_failed_together_are_all_retried(stand_in: FailsFirstTries, edge_base: str, edge: httpx.Client) -> None:
    name = unique_name()
    edge.post("/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()
    token = edge.post("/v1/sessions", json={"username": name, "password": "correct horse"}).json()["access_token"]

    with httpx.Client(base_url=edge_base, headers={"authorization": f"Bearer {token}"}, timeout=15) as client:

        def follow(n: int) -> httpx.Response:
            return client.post(f"/v1/users/{1000 + n}/follow")

        with ThreadPoolExecutor(AT_ONCE) as pool:
            replies = list(pool.map(follow, range(AT_ONCE)))
    assert [r.status_code for r in replies] == [200] * AT_ONCE, [r.text for r in replies]
    assert stand_in.retried == AT_ONCE
    assert cluster_stat(ADMIN, "graph_svc", "upstream_rq_retry_overflow") == 0
