"""How `make down` and the fault suite stop and kill components by their pid
files: all named at once, a stubborn one killed past its timeout, and a dead
process that nobody has reaped yet counted as gone (real processes, no stack)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import stack

# Sleeps until SIGTERM (exits 0), or ignores it.
OBEYS_TERM = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"
IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "RUN", tmp_path)
    return tmp_path


def _spawn(run_dir: Path, name: str, code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.3)  # its signal handler is set
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


def test_stop_together_terms_all_kills_the_stubborn_and_clears_their_pid_files(run_dir: Path) -> None:
    stubborn = _spawn(run_dir, "stubborn-1", IGNORES_TERM)
    polite = _spawn(run_dir, "polite-1", OBEYS_TERM)
    stopped = stack._stop_together({"stubborn-1": 0.5, "polite-1": 20.0, "absent-1": 20.0})
    assert stopped == ["stubborn-1", "polite-1"]  # what ran, in the order asked; the absent one left out
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
    with pytest.raises(RuntimeError, match="svc-1 is not running"):
        stack.kill_together(["svc-1"])
