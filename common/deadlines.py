"""The incoming call's deadline, so every outgoing call can derive its own."""

from __future__ import annotations

import contextvars
import time
from contextvars import ContextVar

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


def shared() -> contextvars.Context:
    """A copy of this context without the deadline, for a task whose work other callers
    share (a load they join, a run queued behind another): with the first caller's
    deadline it would end for all of them at that caller's time, or start with it spent
    (every statement then given a millisecond). Each caller still stops waiting at its own."""
    context = contextvars.copy_context()
    context.run(_deadline_var.set, None)
    return context
