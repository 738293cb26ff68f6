"""CPU priority on a shared machine: what the request path must not wait behind.

The fan-out and rank workers run at a lower priority than the services (the
like worker does not: it keeps the services' priority, so that under a fault
its Cassandra writes do not time out for want of CPU): a burst's fan-out then
waits for idle CPU instead of taking it from reads (docs/BENCHMARKS.md,
"Workers yield the CPU"). Lag grows while the request path is busy and drains
when it is not.

The edge runs at a higher priority than everything behind it: past saturation
its answer to the excess is a 503 within milliseconds only if it gets the CPU
to give it, rather than queueing behind the work it admitted (docs/BENCHMARKS.md,
"The edge sheds first").

Linux keeps a niceness per thread and new threads inherit their creator's.
Where the kernel groups processes by session for scheduling (autogroup, on by
default on desktops and many servers; the local stack starts each process in a
session of its own), a thread's niceness only ranks it within its own group,
and groups share the CPU by the group's niceness: both are set. In Kubernetes
each of these is a pod of its own, and its CPU requests and limits do this job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from common.config import ConfigError, env_int

NICE_ENV = "CHIRP_WORKER_NICE"
DEFAULT_NICE = 10
MAX_NICE = 19
EDGE_NICE_ENV = "CHIRP_EDGE_NICE"
DEFAULT_EDGE_NICE = -5
MIN_NICE = -20

AUTOGROUP = Path("/proc/self/autogroup")
CAP_SYS_NICE = 23  # its bit in a capability set (linux/capability.h)
# Without CAP_SYS_ADMIN the kernel takes one write of a group's niceness per 100 ms
# (EAGAIN otherwise): workers started together try again rather than stay at 0.
GROUP_WRITE_ATTEMPTS = 5
GROUP_WRITE_PAUSE_SECONDS = 0.11


def can_raise_priority(status: Path = Path("/proc/self/status")) -> bool:
    """Whether the process whose status this is holds CAP_SYS_NICE (a higher priority needs it)."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    return False


def _set_group_nice(autogroup: Path, nice: int) -> None:
    """The niceness of this process's scheduling group; nothing where there is no autogroup."""
    for _ in range(GROUP_WRITE_ATTEMPTS):
        try:
            autogroup.write_text(str(nice))
            return
        except BlockingIOError:  # EAGAIN: another write of the last 100 ms
            time.sleep(GROUP_WRITE_PAUSE_SECONDS)
        except OSError:  # no autogroup scheduling, or not allowed
            return


def lower_priority(env: Mapping[str, str] = os.environ, autogroup: Path = AUTOGROUP) -> int:
    """Raise this process's niceness by CHIRP_WORKER_NICE (0 leaves it); return the
    niceness it runs at. Every thread already running (importing the Cassandra
    driver starts one) is lowered too, and the scheduling group."""
    step = env_int(env, NICE_ENV, DEFAULT_NICE)
    if step > MAX_NICE:
        raise ConfigError(f"{NICE_ENV} must be at most {MAX_NICE}, got {step}")
    nice = os.nice(step)
    if step:
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        # Without autogroup scheduling (no such file) the threads' niceness is all there is.
        _set_group_nice(autogroup, nice)
    return nice


def edge_niceness(env: Mapping[str, str] = os.environ) -> int:
    """CHIRP_EDGE_NICE: the niceness the edge runs at (-20 to 0; 0 = the services')."""
    nice = env_int(env, EDGE_NICE_ENV, DEFAULT_EDGE_NICE, minimum=MIN_NICE)
    if nice > 0:
        raise ConfigError(f"{EDGE_NICE_ENV} must be between {MIN_NICE} and 0, got {nice}")
    return nice


def raise_priority(nice: int, autogroup: Path = AUTOGROUP) -> int:
    """Run this single-threaded process, the children it starts next and its scheduling
    group at `nice` (at most 0). A higher priority needs CAP_SYS_NICE: without it this
    says so on stderr and leaves the priority as it was. Returns the niceness it runs at."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        kept = os.getpriority(os.PRIO_PROCESS, 0)
        print(f"cannot run at niceness {nice} without CAP_SYS_NICE; staying at {kept}", file=sys.stderr)
        return kept
    _set_group_nice(autogroup, nice)
    return nice
