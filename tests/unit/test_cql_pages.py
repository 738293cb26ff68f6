"""A statement's rows are each returned once, though the driver may pass an answer on
twice: with speculative execution two replicas answer the same request, and the
driver hands each answer to the callbacks (a read by primary key once returned its
one row twice, right after a node came back). Each page is a request of its own,
with its timeout: a logged batch's is longer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.query import BatchStatement, BatchType, SimpleStatement

from common.cql import LOGGED_BATCH_TIMEOUT_SECONDS, READ_PROFILE, CqlSession

Rows = list[tuple[Any, ...]]


class Answer:
    """A ResponseFuture for one page; `twice` answers it a second time."""

    def __init__(self, rows: Rows, next_state: bytes | None) -> None:
        self.rows = rows
        self._paging_state = next_state
        self.has_more_pages = next_state is not None
        self.on_rows: Callable[[Rows], None] = lambda rows: None

    def add_callbacks(self, on_rows: Callable[[Rows], None], on_error: Callable[[BaseException], None]) -> None:
        self.on_rows = on_rows
        on_rows(self.rows)


class PagedDriver:
    """Serves `pages` by paging state (the page's index). The pages in `twice` are
    answered again: the last one at once, the others late, when the next page has
    already been asked for."""

    def __init__(self, pages: list[Rows], twice: set[int]) -> None:
        self.pages, self.twice = pages, twice
        self.states: list[bytes | None] = []
        self.previous: Answer | None = None

    def execute_async(
        self, statement: Any, params: Any, timeout: float, execution_profile: object, paging_state: bytes | None
    ) -> Answer:
        self.states.append(paging_state)
        page = int(paging_state or b"0")
        if self.previous is not None and page - 1 in self.twice:
            self.previous.on_rows(self.previous.rows)  # the slow replica's answer to the page before
        more = str(page + 1).encode() if page + 1 < len(self.pages) else None
        answer = Answer(self.pages[page], more)
        self.previous = answer
        if more is None and page in self.twice:
            original = answer.add_callbacks

            def answered_twice(on_rows: Callable[[Rows], None], on_error: Callable[[BaseException], None]) -> None:
                original(on_rows, on_error)
                on_rows(answer.rows)

            answer.add_callbacks = answered_twice  # type: ignore[method-assign]
        return answer


async def rows_of(driver: PagedDriver) -> list[Any]:
    return await CqlSession(None, driver, 1.0).execute("SELECT * FROM t WHERE k = 1")


async def test_one_page_answered_twice_is_returned_once() -> None:
    assert await rows_of(PagedDriver([[(1, "ada")]], twice={0})) == [(1, "ada")]


async def test_pages_answered_twice_are_each_returned_once_and_in_order() -> None:
    pages = [[(1, "a"), (2, "b")], [(3, "c")], [(4, "d"), (5, "e")], [(6, "f")]]
    driver = PagedDriver(pages, twice={0, 1, 2, 3})
    assert await rows_of(driver) == [row for page in pages for row in page]
    assert driver.states == [None, b"1", b"2", b"3"]  # each page asked for once, after the one before


async def test_pages_with_equal_rows_are_all_returned() -> None:
    # A projection without the whole key (a column of counts) can give equal pages;
    # empty pages (all tombstones) come with more to follow.
    pages: list[Rows] = [[(5,)], [(5,)], [], [], [(5,)]]
    assert await rows_of(PagedDriver(pages, twice=set())) == [(5,), (5,), (5,)]


class TimedDriver:
    """Records each request's timeout and answers it with no rows."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.profiles: list[object] = []

    def execute_async(
        self, statement: Any, params: Any, timeout: float, execution_profile: object, paging_state: bytes | None
    ) -> Answer:
        self.timeouts.append(timeout)
        self.profiles.append(execution_profile)
        return Answer([], None)


async def test_a_logged_batch_has_room_for_another_batchlog_pick() -> None:
    driver = TimedDriver()
    session = CqlSession(None, driver, 2.0)
    logged, unlogged = BatchStatement(BatchType.LOGGED), BatchStatement(BatchType.UNLOGGED)
    for statement in (logged, unlogged, "INSERT INTO t (k) VALUES (1)"):
        await session.execute(statement)
    assert driver.timeouts == [LOGGED_BATCH_TIMEOUT_SECONDS, 2.0, 2.0]
    assert LOGGED_BATCH_TIMEOUT_SECONDS > 2.0
    # A longer default is kept.
    await CqlSession(None, driver, 5.0).execute(logged)
    assert driver.timeouts[-1] == 5.0


async def test_a_read_at_a_serial_consistency_is_sent_without_speculation() -> None:
    """Each speculative copy of a serial read would be a Paxos round of its own."""
    driver = TimedDriver()
    session = CqlSession(None, driver, 2.0)
    read = SimpleStatement("SELECT a FROM t WHERE k = 1")
    await session.execute(read)
    read.consistency_level = ConsistencyLevel.LOCAL_SERIAL
    await session.execute(read)
    assert driver.profiles == [READ_PROFILE, EXEC_PROFILE_DEFAULT]
