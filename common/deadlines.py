"""The incoming call's deadline, so every outgoing call can derive its own."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_deadline_var: ContextVar[float | None] = ContextVar("deadline", default=None)


def set_deadline(seconds_remaining: float | None) -> None:
    _deadline_var.set(None if seconds_remaining is None else time.monotonic() + seconds_remaining)


def timeout(default: float) -> float:
    """Seconds an outgoing call may take: the default, cut to what the caller has left."""
    deadline = _deadline_var.get()
    if deadline is None:
        return default
    return max(0.001, min(default, deadline - time.monotonic()))


def remaining() -> float | None:
    """Seconds the incoming call has left (negative once past), or None: no deadline."""
    deadline = _deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


def shared_task(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """`work` in a task of its own, in a copy of this context without the deadline: work
    other callers share (a load they join, a run queued behind another) would, with the
    first caller's deadline, end for all of them at that caller's time, or start with it
    spent (every statement then given a millisecond). Each caller still stops waiting at
    its own. The request id and the rest of the context are kept."""
    context = contextvars.copy_context()
    context.run(_deadline_var.set, None)
    return asyncio.get_running_loop().create_task(work, context=context)
