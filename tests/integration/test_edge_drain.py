"""envoy/drain.py against a real Envoy (the binary the stack runs), started with the
drain settings of k8s/envoy/deployment.yaml: a keep-alive client is told to close at
its next answer, new connections are still taken for the drain time, then refused."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML is pinned in requirements.lock; no stubs installed

from infra.stack import VENV_BIN
from tests.unit.test_k8s_manifests import ROOT, _load_by_path

drain = _load_by_path("chirp_edge_drain", ROOT / "envoy" / "drain.py")
DRAIN_TIME_SECONDS = 2  # the manifest's is 15: the same behaviour, sooner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manifest_drain_strategy() -> str:
    (deployment,) = [
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "envoy" / "deployment.yaml").read_text())
        if d["kind"] == "Deployment"
    ]
    (envoy,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy"]
    args = envoy["args"]
    return str(args[args.index("--drain-strategy") + 1])


def config(listen: int, admin: int) -> str:
    """An edge-like listener (no traffic direction set, as envoy/render.py's) answering 200."""
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: edge
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[int, int]]:
    listen, admin = free_port(), free_port()
    path = tmp_path / "envoy.yaml"
    path.write_text(config(listen, admin))
    argv = [str(VENV_BIN / "envoy"), "-c", str(path), "--base-id", str(listen), "--log-level", "warn"]
    argv += ["--drain-strategy", manifest_drain_strategy(), "--drain-time-s", str(DRAIN_TIME_SECONDS)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{listen}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield listen, admin
    finally:
        process.terminate()
        process.wait(10)


def test_a_drained_edge_closes_keep_alive_connections_at_their_next_answer(edge: tuple[int, int]) -> None:
    listen, admin = edge
    url = f"http://127.0.0.1:{listen}/v1/feed"
    with httpx.Client() as client:
        before = client.get(url)
        assert before.status_code == 200 and before.headers.get("connection") != "close"
        assert drain.main(["--admin", f"127.0.0.1:{admin}"]) == 0
        during = client.get(url)  # the same connection: answered, and told to close
        assert during.status_code == 200 and during.headers.get("connection") == "close"
    # New connections are still taken while the load balancer catches up...
    assert httpx.get(url, timeout=2).status_code == 200
    # ...and refused once the drain time is over.
    time.sleep(DRAIN_TIME_SECONDS + 1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_a_drain_of_an_edge_already_gone_lets_the_stop_go_on() -> None:
    assert drain.main(["--admin", f"127.0.0.1:{free_port()}"]) == 0
