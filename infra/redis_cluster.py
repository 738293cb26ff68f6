"""Join the local Redis nodes into one Redis Cluster (3 primaries, 3 replicas).

    python -m infra.redis_cluster create [redis_state]   # once; a no-op when already joined
    python -m infra.redis_cluster wait [redis_state]     # until every slot is served

Without an argument, the cache's cluster; with "redis_state", the state Redis's
(infra/topology.py).

Nodes remember the cluster in their nodes.conf, so a restarted node rejoins by
itself; `create` only acts on nodes that know no cluster yet.
"""

from __future__ import annotations

import subprocess
import sys
import time

from infra import topology

SLOTS = 16384
WAIT_SECONDS = 60.0


def cluster_info(port: int) -> dict[str, str]:
    reply = subprocess.run(
        ["redis-cli", "-h", topology.HOST, "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    fields = (line.strip().split(":", 1) for line in reply.stdout.splitlines() if ":" in line)
    return {key: value for key, value in fields}


def whole(kind: str = "redis") -> bool:
    """Every slot assigned and served, and every node known, as node 1 sees it."""
    nodes = topology.redis_nodes(kind)
    info = cluster_info(nodes[0].port)
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_slots_ok") == str(SLOTS)
        and info.get("cluster_known_nodes") == str(len(nodes))
    )


def create(kind: str = "redis") -> int:
    nodes = topology.redis_nodes(kind)
    if int(cluster_info(nodes[0].port).get("cluster_known_nodes", "1")) == 1:
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(n.address for n in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            timeout=60,
        )
    return wait(kind)


def wait(kind: str = "redis") -> int:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if whole(kind):
            return 0
        time.sleep(0.5)
    print(
        f"the Redis Cluster is not whole after {WAIT_SECONDS:.0f}s: {cluster_info(topology.redis_nodes(kind)[0].port)}"
    )
    return 1


def main() -> int:
    commands = {"create": create, "wait": wait}
    kinds = ("redis", "redis_state")
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in commands or sys.argv[2:3] not in ([], *([k] for k in kinds)):
        print(__doc__, file=sys.stderr)
        return 2
    return commands[sys.argv[1]](*sys.argv[2:3])


if __name__ == "__main__":
    sys.exit(main())
