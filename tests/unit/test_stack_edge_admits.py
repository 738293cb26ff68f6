"""`make up` waits until the edge routes to every instance (infra/stack.py): the
routing read from Envoy's /clusters, per cluster, with a fake admin answer."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from infra import stack, topology


class _Reply(io.BytesIO):
    status = 200

    def __enter__(self) -> _Reply:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _host(port: int, **flags: Any) -> dict[str, Any]:
    return {
        "address": {"socket_address": {"port_value": port}},
        "health_status": {"eds_health_status": "HEALTHY", **flags},
    }


def _admin(monkeypatch: pytest.MonkeyPatch, hosts: dict[str, list[dict[str, Any]]]) -> None:
    clusters = {"cluster_statuses": [{"name": name, "host_statuses": h} for name, h in hosts.items()]}

    def urlopen(url: str, timeout: float) -> _Reply:
        return _Reply(json.dumps(clusters).encode() if "/clusters" in url else b"LIVE")

    monkeypatch.setattr(stack.urllib.request, "urlopen", urlopen)


def _whole() -> dict[str, list[dict[str, Any]]]:
    hosts = {svc.name: [_host(inst.port) for inst in topology.instances(svc)] for svc in topology.SERVICES}
    hosts["graph_svc_argon2"] = [_host(inst.port) for inst in topology.instances(topology.SERVICES[0])]
    return hosts


def test_every_instance_routed_in_every_cluster_of_a_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIRP_INSTANCES", "2")
    assert topology.SERVICES[0].name == "graph_svc" and topology.instance_count() == 2
    _admin(monkeypatch, _whole())
    assert stack.edge_routes_every_instance() and stack._envoy_ready()
    assert stack.edge_short_clusters() == []


@pytest.mark.parametrize(
    "flags",
    [{"failed_active_health_check": True}, {"failed_outlier_check": True}, {"eds_health_status": "UNHEALTHY"}],
    ids=["failed-check", "outlier", "unhealthy"],
)
def test_an_instance_the_edge_does_not_route_to_is_not_admitted(
    monkeypatch: pytest.MonkeyPatch, flags: dict[str, Any]
) -> None:
    monkeypatch.setenv("CHIRP_INSTANCES", "2")
    hosts = _whole()
    hosts["graph_svc_argon2"][1]["health_status"].update(flags)  # only the password cluster's copy
    _admin(monkeypatch, hosts)
    assert not stack.edge_routes_every_instance()
    assert stack.edge_short_clusters() == ["graph_svc_argon2"]
    assert stack._envoy_ready(), "the other instance still serves every service"
    assert stack.edge_routed() == {name: 2 - (name == "graph_svc_argon2") for name in hosts}


def test_a_cluster_with_no_routed_instance_counts_as_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIRP_INSTANCES", "2")
    hosts = _whole()
    for host in hosts["feed_svc"]:
        host["health_status"]["failed_active_health_check"] = True
    _admin(monkeypatch, hosts)
    assert stack.edge_routed()["feed_svc"] == 0  # type: ignore[index]
    assert stack.edge_short_clusters() == ["feed_svc"]
    assert not stack.edge_routes_every_instance() and not stack._envoy_ready()


def test_no_answer_from_envoy_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIRP_INSTANCES", "2")

    def refused(url: str, timeout: float) -> _Reply:
        raise ConnectionRefusedError(url)

    monkeypatch.setattr(stack.urllib.request, "urlopen", refused)
    assert stack.edge_routed() is None
    assert stack.edge_short_clusters() is None
    assert not stack.edge_routes_every_instance() and not stack._envoy_ready()
