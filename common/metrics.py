"""Prometheus metrics shared by all services; domain metrics live with their service."""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# The metrics server's thread wakes this often with nothing to do (it answers a
# scrape at once whatever this is; the wake only checks for a shutdown, which
# nothing asks of it: `shutdown()` would wait up to this long). prometheus_client's
# own server wakes every 0.5 s: about 0.024% of a core in each of the stack's 15
# processes, with nothing else to do.
METRICS_POLL_SECONDS = 60.0

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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged (prometheus_client's own server does the same)."""


def serve_metrics(host: str, port: int) -> None:
    """Expose /metrics on its own port (none when the port is 0)."""
    if port:
        metrics_server(host, port)


def metrics_server(host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's WSGI app (gzip, `name[]` filters) on its threading
    server, on a daemon thread that wakes only for a scrape; port 0 picks a free one."""

    class Server(ThreadingWSGIServer):
        # IPv4 or IPv6, as the host is written (prometheus_client's server does the same).
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    httpd = make_server(host, port, make_wsgi_app(), Server, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": METRICS_POLL_SECONDS}, name="metrics", daemon=True
    )
    thread.start()
    return httpd, thread
