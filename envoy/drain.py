"""Drain the edge before its pod stops: the preStop of the edge sidecar's
container (k8s/envoy/deployment.yaml), which shares the pod's network with Envoy.

Envoy closes its listeners at once on SIGTERM: every request in flight is reset
and every keep-alive client finds its connection gone, with no way to tell
whether a write it sent went through. Asked to drain first (its admin
interface's POST /drain_listeners?graceful), it answers each request on an open
connection with `Connection: close` (HTTP/1.1) or a GOAWAY (HTTP/2), so clients
reconnect to another pod between requests; it still accepts new connections
for its --drain-time-s, then closes its listeners. Not `inboundonly`: that
drains only listeners marked inbound, and the edge's are not (none drained).

    python envoy/drain.py [--admin 127.0.0.1:9901] [--after SECONDS] [--hold SECONDS]

--after: time for the load balancer and the endpoints to stop sending new
connections before the drain; --hold: how long to keep the sidecar running
after it (the sidecar serves health and reflection until Envoy stops).
Standard library only: it runs in the app image with no project imports.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Sequence

DRAIN_PATH = "/drain_listeners?graceful"


def drain(admin: str, timeout: float = 2.0) -> None:
    """Ask the Envoy whose admin interface listens at `admin` (host:port) to drain."""
    request = urllib.request.Request(f"http://{admin}{DRAIN_PATH}", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin", default="127.0.0.1:9901", help="Envoy's admin address, host:port")
    parser.add_argument("--after", type=float, default=0.0, help="seconds to wait before draining")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to wait after asking")
    args = parser.parse_args(argv)
    time.sleep(args.after)
    try:
        drain(args.admin)
    except OSError as error:  # Envoy gone already: nothing to drain, the stop goes on
        print(f"could not drain the edge at {args.admin}: {error}", file=sys.stderr)
    time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
