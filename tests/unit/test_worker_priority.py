"""Workers lower the CPU priority of every thread of theirs and of their scheduling group (common/worker.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from common.priority import DEFAULT_NICE, can_raise_priority, edge_niceness, lower_priority

# In a fresh interpreter: start a thread, lower the priority, start another, and
# print the niceness of the process and of every thread it has.
PROBE = """
import os, sys, threading
from pathlib import Path
from bench.idle import NICE, stat_fields
from common.priority import lower_priority
done = threading.Event()
before = threading.Thread(target=done.wait)
before.start()
print(lower_priority({'CHIRP_WORKER_NICE': sys.argv[1]}))
after = threading.Thread(target=done.wait)
after.start()
nices = [int(stat_fields(p)[NICE]) for p in Path('/proc/self/task').glob('*/stat')]
done.set()
print(len(nices), *sorted(set(nices)))
group = Path('/proc/self/autogroup')
print(group.read_text().split()[-1] if group.exists() else 'none')
"""


def _probe(step: str) -> tuple[int, int, set[int], str]:
    """Run PROBE in a session of its own, as the stack starts a worker."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, step],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.getcwd(),
        start_new_session=True,
    ).stdout.split("\n")
    threads, *nices = out[1].split()
    return int(out[0]), int(threads), {int(n) for n in nices}, out[2]


def test_the_process_and_every_thread_run_at_the_lower_priority() -> None:
    base = os.nice(0)
    reported, threads, nices, group = _probe("5")
    assert reported == min(base + 5, 19)
    assert threads >= 3  # the main thread, one started before and one after
    assert nices == {reported}
    # With autogroup scheduling, the session's group is what competes with other processes.
    assert group in ("none", str(reported))


def test_zero_leaves_the_priority_alone() -> None:
    base = os.nice(0)
    reported, _, nices, group = _probe("0")
    assert reported == base
    assert nices == {base}
    assert group in ("none", "0")


def test_unset_lowers_by_the_default() -> None:
    reported, _, nices, _group = _probe("")
    assert reported == min(os.nice(0) + DEFAULT_NICE, 19)
    assert nices == {reported}


@pytest.mark.parametrize("value", ["-1", "20", "ten"])
def test_a_value_outside_0_to_19_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="CHIRP_WORKER_NICE"):
        lower_priority({"CHIRP_WORKER_NICE": value})


def test_no_autogroup_is_no_error(tmp_path: Path) -> None:
    absent = tmp_path / "absent" / "autogroup"
    code = f"from pathlib import Path; from common.priority import lower_priority; print(lower_priority({{}}, Path({str(absent)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert int(out.stdout) == min(os.nice(0) + DEFAULT_NICE, 19)


# ---- the edge runs above the services ------------------------------------------------------

EDGE_PROBE = "import os; from pathlib import Path; print(os.getpriority(os.PRIO_PROCESS, 0)); g = Path('/proc/self/autogroup'); print(g.read_text().split()[-1] if g.exists() else 'none')"


def test_the_supervisor_runs_its_child_and_their_group_at_the_edge_s_niceness() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infra.supervise", "--nice", "-3", "--", sys.executable, "-c", EDGE_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.getcwd(),
        start_new_session=True,  # as the stack starts it: its own scheduling group, not this test's
    )
    nice, group = done.stdout.split()
    if can_raise_priority():  # the stack's machines, CI included, run as root with it
        assert (int(nice), group) == (-3, "-3" if Path("/proc/self/autogroup").exists() else "none")
    else:  # without it: said, and the child still runs
        assert int(nice) == os.getpriority(os.PRIO_PROCESS, 0)
        assert "CAP_SYS_NICE" in done.stderr


def test_the_capability_is_read_from_the_effective_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000800000\n")
    assert can_raise_priority(status)
    status.write_text("Name:\tx\nCapInh:\t0000000000800000\nCapEff:\t00000000007fffff\n")
    assert not can_raise_priority(status)


@pytest.mark.parametrize(("value", "nice"), [(None, -5), ("0", 0), ("-20", -20), ("-7", -7)])
def test_the_edge_s_niceness_setting(value: str | None, nice: int) -> None:
    assert edge_niceness({} if value is None else {"CHIRP_EDGE_NICE": value}) == nice


@pytest.mark.parametrize("value", ["1", "-21", "high"])
def test_an_edge_niceness_out_of_range_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="CHIRP_EDGE_NICE"):
        edge_niceness({"CHIRP_EDGE_NICE": value})
