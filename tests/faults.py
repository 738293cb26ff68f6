"""Stopping and restarting real components of the running stack, for fault
tests. Only processes `make up` started (by their pid files) are touched."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from infra import stack, topology
from tests.worker_groups import wait_assigned


def stop(name: str) -> None:
    """Stop one component of the stack (SIGTERM by pid, as `make down` does)."""
    timeouts = {c.name: c.stop_timeout for c in stack.components(prepare=False)}
    assert stack._stop(name, timeouts.get(name, 30.0)), f"{name} was not running"


def restore() -> None:
    """Start whatever is down again (`make up` is idempotent), then wait until every
    worker group consumes every partition again, as the tests after a fault assume:
    a worker whose broker went away rejoins its group, and its events wait meanwhile."""
    result = subprocess.run(
        [sys.executable, "-m", "infra.stack", "up"], cwd=stack.ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wait_assigned(topology.kafka_bootstrap())


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
