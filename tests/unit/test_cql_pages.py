"""A statement's rows are each returned once, though the driver may hand a page over
twice: with speculative execution two replicas answer the same request, and the
driver passes each answer to the callbacks (a read by primary key once returned
its one row twice, right after a node came back)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.cql import CqlSession

Rows = list[tuple[int, str]]


class AnsweredTwice:
    """A ResponseFuture over `pages`; the pages listed in `twice` are answered a second
    time: a middle page while the next is being fetched, the last one right away,
    both before the event loop has run anything."""

    def __init__(self, pages: list[Rows], twice: set[int]) -> None:
        self.pages, self.twice = pages, twice
        self.page = 0
        self.has_more_pages = False
        self.on_rows: Callable[[Rows], None] = lambda rows: None

    def add_callbacks(self, on_rows: Callable[[Rows], None], on_error: Callable[[BaseException], None]) -> None:
        self.on_rows = on_rows
        self._answer(self.page)

    def _answer(self, page: int) -> None:
        self.has_more_pages = page < len(self.pages) - 1
        self.on_rows(self.pages[page])
        if page in self.twice and not self.has_more_pages:
            self.on_rows(self.pages[page])

    def start_fetching_next_page(self) -> None:
        if self.page in self.twice:  # the stale answer comes first, taken for the next page
            self.has_more_pages = True
            self.on_rows(self.pages[self.page])
        self.page += 1
        self._answer(self.page)


class Driver:
    def __init__(self, future: AnsweredTwice) -> None:
        self.future = future

    def execute_async(self, statement: Any, params: Any, timeout: float, execution_profile: object) -> AnsweredTwice:
        return self.future


async def rows_of(pages: list[Rows], twice: set[int]) -> list[Any]:
    return await CqlSession(None, Driver(AnsweredTwice(pages, twice)), 1.0).execute("SELECT * FROM t WHERE k = 1")


async def test_one_page_answered_twice_is_returned_once() -> None:
    assert await rows_of([[(1, "ada")]], twice={0}) == [(1, "ada")]


async def test_pages_answered_twice_are_each_returned_once_and_in_order() -> None:
    pages = [[(1, "a"), (2, "b")], [(3, "c")], [(4, "d"), (5, "e")], [(6, "f")]]
    assert await rows_of(pages, twice={0, 2, 3}) == [row for page in pages for row in page]


async def test_empty_pages_do_not_stop_the_read() -> None:
    # Pages that are all tombstones come back empty with more to come: they are not
    # second answers, and the read goes on to the rows after them.
    assert await rows_of([[], [], [(7, "g")]], twice=set()) == [(7, "g")]
