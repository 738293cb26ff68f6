"""How infra/stack.py starts a component: the JVMs with a longer timer slack,
which the process and the threads it starts inherit (real processes, no stack)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from infra import jvm, stack

# Prints its own slack and that of a thread it starts, then exits.
SHOW_SLACK = (
    "import threading; r = lambda: print(open(f'/proc/{threading.get_native_id()}/timerslack_ns').read()"
    ".strip(), flush=True); r(); t = threading.Thread(target=r); t.start(); t.join()"
)


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "RUN", tmp_path)
    monkeypatch.setattr(stack, "LOGS", tmp_path)
    return tmp_path


def _run(dirs: Path, slack: int) -> list[str]:
    comp = stack.Component(
        name="probe",
        argv=functools.partial(list, [sys.executable, "-c", SHOW_SLACK]),
        ready=lambda: True,
        timeout=5,
        timer_slack_ns=slack,
    )
    pid = stack._start(comp)
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the probe did not exit")
        time.sleep(0.05)
    return (dirs / "probe.log").read_text().split()


def test_a_component_runs_with_its_timer_slack_and_so_do_its_threads(dirs: Path) -> None:
    assert _run(dirs, 777_000) == ["777000", "777000"]


def test_without_one_it_keeps_the_default(dirs: Path) -> None:
    default = Path("/proc/self/timerslack_ns").read_text().strip()
    assert _run(dirs, 0) == [default, default]


def test_the_stores_jvms_are_started_with_the_longer_slack() -> None:
    jvms = [c for c in stack._store_components() if not c.name.startswith("redis")]
    assert jvms and {c.timer_slack_ns for c in jvms} == {jvm.JVM_TIMER_SLACK_NS}


def test_starting_one_leaves_the_starters_own_slack_as_it_was(dirs: Path) -> None:
    mine = Path(f"/proc/{threading.get_native_id()}/timerslack_ns").read_text()
    _run(dirs, 777_000)
    assert Path(f"/proc/{threading.get_native_id()}/timerslack_ns").read_text() == mine
