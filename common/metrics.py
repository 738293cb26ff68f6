"""Prometheus metrics shared by all services; domain metrics live with their service."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def serve_metrics(host: str, port: int) -> None:
    """Expose /metrics on its own port (a daemon thread of prometheus_client)."""
    if port:
        start_http_server(port, addr=host)
