"""A private Envoy edge for tests: the real config renderer and binary, its own
ports and limits, in front of the running service instances."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from infra import stack
from tests import faults


def load_renderer() -> ModuleType:
    """envoy/render.py by path: the name `envoy` belongs to the Envoy wheel's package."""
    spec = importlib.util.spec_from_file_location("chirp_envoy_render", stack.ROOT / "envoy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


render = load_renderer()


@dataclass(frozen=True)
class Edge:
    """A running private edge: where to send requests, and the file its output
    (the access log among it) goes to."""

    base: str
    log: Path


@contextmanager
def private_edge(tmp: Path, settings: Any, upstream_ports: dict[str, list[int]] | None = None) -> Iterator[str]:
    """Yields the base URL of an edge built from `settings` (a render.EdgeSettings)."""
    with private_edge_with_log(tmp, settings, upstream_ports) as edge:
        yield edge.base


@contextmanager
def private_edge_with_log(
    tmp: Path, settings: Any, upstream_ports: dict[str, list[int]] | None = None
) -> Iterator[Edge]:
    """As `private_edge`, for tests that also read what the edge logged.
    `upstream_ports` sends a cluster (by name) to other ports than its service's
    instances: a test's own server standing in for them."""
    config = tmp / "envoy.json"
    jwks = (stack.KEYS / "jwks.json").read_text()
    built = render.build(jwks, settings)
    for cluster in built["static_resources"]["clusters"]:
        ports = (upstream_ports or {}).get(cluster["name"])
        if ports is not None:
            cluster["load_assignment"] = render._static_endpoints(cluster["name"], ports)
    config.write_text(json.dumps(built))
    log_path = tmp / "envoy.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.supervise", "--", str(stack.VENV_BIN / "envoy"), "-c", str(config),
         "--base-id", str(settings.listen_port), "--log-level", "warn", "--concurrency", "1"],
        cwd=stack.ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{settings.listen_port}"

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{settings.admin_port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        faults.wait_for(ready, 20, "the private Envoy to start")
        yield Edge(base, log_path)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@contextmanager
def stand_ins(
    ports: list[int], grpc_service: str, add_servicer: Callable[[grpc.Server], None], workers: int = 16
) -> Iterator[None]:
    """A test's own gRPC server on each of `ports`, for a private edge's cluster to point
    at (`upstream_ports`): `add_servicer` adds the stand-in servicer, and each answers the
    edge's health checks for `grpc_service` SERVING."""
    servers = []
    try:
        for port in ports:
            server = grpc.server(futures.ThreadPoolExecutor(workers))
            add_servicer(server)
            checks = health.HealthServicer()
            checks.set(grpc_service, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(checks, server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            server.start()
            servers.append(server)
        yield
    finally:
        for server in servers:
            server.stop(None)


def cluster_stat(admin_port: int, cluster: str, name: str) -> int:
    """A counter of one of a private edge's clusters (0 before it first counts)."""
    prefix = f"cluster.{cluster}."
    text = httpx.get(f"http://127.0.0.1:{admin_port}/stats", params={"filter": f"^{re.escape(prefix)}"}, timeout=5).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == prefix + name:
            return int(value)
    return 0
