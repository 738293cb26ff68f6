"""Where a slow call spent its time.

The server interceptor (common/interceptors.py) opens a record for each call; a
handler marks the end of each stage of its work with `reached("stage")`, and a
call that ran longer than the interceptor's threshold is logged with the time
of each mark since the call began. Sub-tasks share the call's record (asyncio
copies the context, not the list), so a mark made in one of them lands in order
of time among the others. Outside a call nothing is recorded.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

_marks: ContextVar[list[tuple[str, float]] | None] = ContextVar("stage_marks", default=None)


def begin() -> list[tuple[str, float]]:
    """A new record for the call running in this context (its marks, in order)."""
    marks: list[tuple[str, float]] = []
    _marks.set(marks)
    return marks


def reached(stage: str) -> None:
    """The current call has finished `stage`."""
    marks = _marks.get()
    if marks is not None:
        marks.append((stage, time.perf_counter()))


def offsets_ms(marks: list[tuple[str, float]], started: float) -> list[tuple[str, float]]:
    """Each mark as milliseconds since the call began."""
    return [(stage, round((at - started) * 1000, 1)) for stage, at in marks]
