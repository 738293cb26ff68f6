"""The edge tells an instance how long the call has left: Envoy sends
x-envoy-expected-rq-timeout-ms with each try (the route's timeout, or its
per-try timeout when a try is not hedged), and the services' interceptor makes
it the call's deadline (common/interceptors.py). Run on a private Envoy built
from the real renderer whose rank_svc cluster points at a stand-in RankService
here, which records what each call arrived with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import grpc
import httpx
import pytest
from chirp.rank.v1 import rank_pb2, rank_pb2_grpc

from common.interceptors import EDGE_TIMEOUT_HEADER
from tests.edge import private_edge, render, stand_ins

PORT, ADMIN, UPSTREAM = 18482, 19943, 18483
SETTINGS = replace(render.EdgeSettings(), listen_port=PORT, admin_port=ADMIN)


class StandIn(rank_pb2_grpc.RankServiceServicer):
    """Answers ListTrending after `delay_s`, recording what each call arrived with."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], float | None]] = []
        self.delay_s = 0.0

    def ListTrending(
        self, request: rank_pb2.ListTrendingRequest, context: grpc.ServicerContext
    ) -> rank_pb2.ListTrendingResponse:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append((metadata, context.time_remaining()))
        time.sleep(self.delay_s)
        return rank_pb2.ListTrendingResponse()


@contextmanager
def serving(port: int) -> Iterator[StandIn]:
    """A stand-in rank_svc instance on `port`, SERVING to the edge's health checks."""
    servicer = StandIn()
    with stand_ins(
        [port],
        "chirp.rank.v1.RankService",
        lambda server: rank_pb2_grpc.add_RankServiceServicer_to_server(servicer, server),
    ):
        yield servicer


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    with serving(UPSTREAM) as servicer:
        yield servicer


@pytest.fixture(scope="module")
def edge_base(stand_in: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_edge(tmp_path_factory.mktemp("deadline_edge"), SETTINGS, {"rank_svc": [UPSTREAM]}) as base:
        yield base


def test_a_rest_call_reaches_the_instance_with_the_time_the_edge_gives_it(stand_in: StandIn, edge_base: str) -> None:
    stand_in.seen.clear()
    reply = httpx.get(f"{edge_base}/v1/feed/trending", timeout=5)
    assert reply.status_code == 200, reply.text
    ((metadata, grpc_deadline),) = stand_in.seen
    # A hedged read: its first try may run for the route's whole timeout. No gRPC
    # deadline comes with it, so the services take this one.
    assert metadata[EDGE_TIMEOUT_HEADER] == str(int(SETTINGS.read_timeout_s * 1000))
    assert grpc_deadline is None or grpc_deadline > 3600  # how a sync server says "none"


def test_a_grpc_callers_own_deadline_goes_on_beside_the_edges(stand_in: StandIn, edge_base: str) -> None:
    stand_in.seen.clear()
    with grpc.insecure_channel(f"127.0.0.1:{PORT}") as channel:
        rank_pb2_grpc.RankServiceStub(channel).ListTrending(rank_pb2.ListTrendingRequest(), timeout=0.75)
    ((metadata, grpc_deadline),) = stand_in.seen
    # The shorter of the two is the call's deadline in the services (_time_left).
    assert metadata[EDGE_TIMEOUT_HEADER] == str(int(SETTINGS.read_timeout_s * 1000))
    assert grpc_deadline is not None and 0 < grpc_deadline <= 0.75
