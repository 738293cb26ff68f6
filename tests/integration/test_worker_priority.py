"""The fan-out and rank workers run at a lower CPU priority than the services, every thread
of them; the like worker keeps the services' priority; the edge runs above them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.idle import NICE, stat_fields
from common.priority import DEFAULT_NICE, NICE_ENV, can_raise_priority, edge_niceness
from infra import topology

RUN = Path(__file__).resolve().parents[2] / ".state" / "run"
# Workers that keep the services' priority.
SERVICE_PRIORITY = {"like_worker"}


def _proc(name: str) -> Path:
    record = json.loads((RUN / f"{name}.json").read_text())
    proc = Path(f"/proc/{record['pid']}")
    assert proc.exists(), f"{name} (pid {record['pid']}) is not running: is the stack up?"
    return proc


def _nices(proc: Path) -> set[int]:
    """The niceness of every thread of a process."""
    return {int(stat_fields(stat)[NICE]) for stat in (proc / "task").glob("*/stat")}


def _thread_nices(name: str) -> set[int]:
    return _nices(_proc(name))


def _group_nice(name: str) -> int | None:
    """The niceness of the process's scheduling group (its session), where the kernel has autogroup."""
    group = _proc(name) / "autogroup"
    return int(group.read_text().split()[-1]) if group.exists() else None


def test_every_worker_thread_runs_below_the_services() -> None:
    step = int(os.environ.get(NICE_ENV) or DEFAULT_NICE)
    service_nices = set().union(
        *(_thread_nices(inst.name) for svc in topology.SERVICES for inst in topology.instances(svc))
    )
    assert len(service_nices) == 1, service_nices
    (base,) = service_nices
    for worker in topology.WORKERS:
        nice = base if worker.name in SERVICE_PRIORITY else min(base + step, 19)
        for inst in topology.instances(worker):
            assert _thread_nices(inst.name) == {nice}, inst.name
            # Each process runs in a session of its own: its group competes with the services' groups.
            assert _group_nice(inst.name) in (None, nice), inst.name


def test_the_edge_runs_above_the_services() -> None:
    """Envoy (the supervisor's child) and its scheduling group run at CHIRP_EDGE_NICE
    (common/priority.py), every thread of it; at the services' niceness where the
    supervisor may not raise it (no CAP_SYS_NICE)."""
    nice = edge_niceness()
    (base,) = {n for inst in topology.instances(topology.SERVICES[0]) for n in _thread_nices(inst.name)}
    supervisor = _proc("envoy")
    children = (supervisor / "task" / supervisor.name / "children").read_text().split()
    assert len(children) == 1, children
    envoy = Path(f"/proc/{children[0]}")
    assert "envoy" in (envoy / "cmdline").read_bytes().split(b"\0")[0].decode()
    expected = nice if can_raise_priority(supervisor / "status") else base
    assert _nices(envoy) == {expected}
    assert _group_nice("envoy") in (None, expected)
