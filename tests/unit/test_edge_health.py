"""The edge's grpc.health.v1 Check (envoy/sidecar.py) answers from the service
instances, and shares each service's answer for ANSWER_SECONDS: Check needs no
token, so it must not cost the instances a call per anonymous request."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2

from tests.unit.test_k8s_manifests import ROOT, _load_by_path

sidecar = _load_by_path("chirp_edge_sidecar", ROOT / "envoy" / "sidecar.py")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Instance:
    """One service instance's health endpoint, as the sidecar's channel reaches it."""

    def __init__(self) -> None:
        self.asked = 0
        self.serving = True
        self.gate: asyncio.Event | None = None  # holds answers until set

    def unary_unary(self, *_args: Any, **_kwargs: Any) -> Any:
        async def check(_request: health_pb2.HealthCheckRequest, timeout: float) -> health_pb2.HealthCheckResponse:
            self.asked += 1
            if self.gate is not None:
                await self.gate.wait()
            return health_pb2.HealthCheckResponse(status=SERVING if self.serving else NOT_SERVING)

        return check

    def unary_stream(self, *_args: Any, **_kwargs: Any) -> Any:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _edge(instances: dict[str, list[Instance]], clock: Clock) -> Any:
    return sidecar.EdgeHealth(cast(dict[str, list[grpc.aio.Channel]], instances), clock)


async def _check(edge: Any, service: str = "") -> int:
    reply = await edge.Check(health_pb2.HealthCheckRequest(service=service), cast(Any, None))
    return int(reply.status)


async def test_checks_within_a_second_share_one_round_of_instance_calls() -> None:
    feed, graph = [Instance(), Instance()], [Instance(), Instance()]
    clock = Clock()
    edge = _edge({"feed": feed, "graph": graph}, clock)
    gate = asyncio.Event()
    for instance in feed + graph:
        instance.gate = gate

    checks = [asyncio.create_task(_check(edge)) for _ in range(200)]
    checks.append(asyncio.create_task(_check(edge, "feed")))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*checks) == [SERVING] * 201
    assert [i.asked for i in feed + graph] == [1, 1, 1, 1]

    clock.now += sidecar.ANSWER_SECONDS - 0.01
    assert await _check(edge) == SERVING
    assert [i.asked for i in feed + graph] == [1, 1, 1, 1]

    for instance in feed:
        instance.serving = False
    clock.now += 0.01  # the shared answer is a second old: asked again
    assert await _check(edge) == NOT_SERVING
    assert await _check(edge, "graph") == SERVING
    assert [i.asked for i in feed + graph] == [2, 2, 2, 2]


async def test_a_caller_giving_up_leaves_the_shared_answer_to_the_others() -> None:
    instance = Instance()
    instance.gate = asyncio.Event()
    edge = _edge({"feed": [instance]}, Clock())
    first = asyncio.create_task(_check(edge))
    second = asyncio.create_task(_check(edge))
    await asyncio.sleep(0)
    first.cancel()
    instance.gate.set()
    assert await second == SERVING
    assert instance.asked == 1
