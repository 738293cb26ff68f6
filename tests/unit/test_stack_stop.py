"""How `make down` and the fault suite stop and kill components by their pid
files: all named at once, a stubborn one killed past its timeout, and a dead
process that nobody has reaped yet counted as gone (real processes, no stack)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import stack

# Each says "ready" once its SIGTERM handling is set, then sleeps: it exits 0 on SIGTERM, or ignores it.
OBEYS_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print('ready', flush=True);"
    " time.sleep(60)"
)
IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "RUN", tmp_path)
    monkeypatch.setattr(stack, "KILL_WAIT_S", 10.0)  # a wait that never ends fails instead of hanging
    return tmp_path


def _spawn(run_dir: Path, name: str, code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    start = stack._start_time(proc.pid)
    assert start is not None
    (run_dir / f"{name}.json").write_text(json.dumps({"pid": str(proc.pid), "start": start}))
    return proc


def test_a_zombie_counts_as_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.02)
    assert stack._start_time(proc.pid) is None  # not reaped yet: still in /proc, but gone
    proc.wait()


def test_stop_together_terms_all_kills_the_stubborn_and_clears_their_pid_files(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubborn = _spawn(run_dir, "stubborn-1", IGNORES_TERM)
    polite = _spawn(run_dir, "polite-1", OBEYS_TERM)
    sent: list[tuple[int, int]] = []
    real_kill = os.kill

    def recording_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(stack.os, "kill", recording_kill)
    stopped = stack._stop_together({"stubborn-1": 0.5, "polite-1": 20.0, "absent-1": 20.0})
    assert stopped == ["stubborn-1", "polite-1"]  # what ran, in the order asked; the absent one left out
    # Both were asked to stop before the stubborn one's timeout ran out: at once, not one after the other.
    assert sent == [
        (stubborn.pid, signal.SIGTERM),
        (polite.pid, signal.SIGTERM),
        (stubborn.pid, signal.SIGKILL),
    ]
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    assert polite.wait(timeout=5) == 0  # its own SIGTERM handler: stopped gracefully
    assert not list(run_dir.glob("*.json"))


def test_kill_together_kills_every_one_and_refuses_what_does_not_run(run_dir: Path) -> None:
    first = _spawn(run_dir, "svc-1", OBEYS_TERM)
    second = _spawn(run_dir, "svc-2", OBEYS_TERM)
    assert stack.kill_together(["svc-1", "svc-2"]) == [first.pid, second.pid]
    assert first.wait(timeout=5) == -signal.SIGKILL
    assert second.wait(timeout=5) == -signal.SIGKILL
    assert not list(run_dir.glob("*.json"))
    third = _spawn(run_dir, "svc-3", OBEYS_TERM)
    with pytest.raises(RuntimeError, match="svc-1 is not running"):
        stack.kill_together(["svc-3", "svc-1"])
    assert third.poll() is None  # one name not running: nothing was killed
    stack.kill_together(["svc-3"])
    third.wait(timeout=5)


def test_down_stops_the_edge_then_every_service_then_each_store(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By name, from the pid files: an instance beyond today's count and a Kafka broker of
    the other topology (the single one runs now) are stopped with their kind."""
    monkeypatch.setenv("CHIRP_TOPOLOGY", "single")
    running = ["redis", "redis_state", "redis_state-4", "cassandra", "kafka", "kafka-3"]
    running += ["feed_svc-0", "feed_svc-7", "graph_svc-0", "envoy"]
    for name in running:
        (run_dir / f"{name}.json").write_text("{}")
    waves: list[dict[str, float]] = []

    def record(timeouts: dict[str, float]) -> list[str]:
        waves.append(timeouts)
        return list(timeouts)

    monkeypatch.setattr(stack, "_stop_together", record)
    assert stack.down() == 0
    assert [sorted(wave) for wave in waves] == [
        ["envoy"],
        ["feed_svc-0", "feed_svc-7", "graph_svc-0"],
        ["kafka", "kafka-3"],
        ["cassandra"],
        ["redis_state", "redis_state-4"],
        ["redis"],
    ]
    assert waves[2] == {"kafka": stack.STORE_STOP_TIMEOUT, "kafka-3": stack.STORE_STOP_TIMEOUT}
