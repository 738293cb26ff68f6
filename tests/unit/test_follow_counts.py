"""Follower and following counts are derived from the follow lists and heal after
a crash at any step of a follow or unfollow (graph_svc/domain.py docstring).

The fake store keeps the same rows as the real one (edge, lists, the outbox
event written with the lists) and recounts the way graph_svc/store.py does:
a recount reads the rows when it starts and writes what it read.

An end-to-end test of the same would: through the edge, create A and B; write
for "A follows B" exactly what a follow that died after its list batch leaves
(the edge, both list rows and the outbox event, by CQL, no count); read B's
follower_count (still the old number); wait for the outbox relay and the count
repair consumer (a few seconds); read it again through the edge: one more. And
a repeated POST /v1/users/B/follow by A right after the crash gives the same
count, not one more.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cassandra import OperationTimedOut, Unavailable, WriteTimeout, WriteType
from prometheus_client import REGISTRY

from common.cql import named_rows
from common.ids import IdGenerator
from common.outbox import Event
from graph_svc.accounts import Account
from graph_svc.domain import COUNTS_GROUP, Graph, SharedRuns
from graph_svc.store import STATEMENTS, GraphStore, follow_bucket


class Crash(Exception):
    """The process died right after the named step's write reached the store."""


class FakeGraphStore:
    def __init__(self, users: Sequence[int]) -> None:
        created = datetime(2026, 1, 1, tzinfo=UTC)
        self.accounts = {u: Account(u, f"user{u}", created) for u in users}
        self.edges: dict[tuple[int, int], datetime] = {}
        self.following_rows: dict[int, set[tuple[datetime, int]]] = {}
        self.follower_rows: dict[tuple[int, int], set[tuple[datetime, int]]] = {}
        self.outbox: list[Event] = []  # events written with the lists: durable, relayed even after a crash
        self.bucket_counts: dict[tuple[int, int], int] = {}
        self.follower_count: dict[int, int] = {}
        self.following_count: dict[int, int] = {}
        self.calls: Counter[str] = Counter()
        self.crash_after: str | None = None
        self.recount_gate: asyncio.Event | None = None  # holds recounts between reading and writing
        self.recounts_waiting = 0

    def _done(self, step: str) -> None:
        self.calls[step] += 1
        if self.crash_after == step:
            self.crash_after = None
            raise Crash(step)

    # ---- what the domain calls ----------------------------------------------------------

    async def get_user(self, user_id: int) -> Account | None:
        account = self.accounts.get(user_id)
        if account is None:
            return None
        return replace(
            account,
            follower_count=self.follower_count.get(user_id, 0),
            following_count=self.following_count.get(user_id, 0),
        )

    async def add_edge(self, follower: int, followee: int, at: datetime) -> tuple[bool, datetime]:
        created = (follower, followee) not in self.edges
        self.edges.setdefault((follower, followee), at)
        self._done("add_edge")
        return created, self.edges[(follower, followee)]

    async def edge_time(self, follower: int, followee: int) -> datetime | None:
        self.calls["edge_read"] += 1
        return self.edges.get((follower, followee))

    async def follow_listed(self, follower: int, followee: int, at: datetime) -> bool:
        return (at, followee) in self.following_rows.get(follower, set())

    async def remove_edge(self, follower: int, followee: int, at: datetime) -> bool:
        existed = self.edges.get((follower, followee)) == at
        if existed:
            del self.edges[(follower, followee)]
        self._done("remove_edge")
        return existed

    async def write_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        self.following_rows.setdefault(follower, set()).add((at, followee))
        self.follower_rows.setdefault((followee, follow_bucket(at)), set()).add((at, follower))
        self.outbox.append(event)
        self._done("write_follow_lists")

    async def delete_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        self.following_rows.get(follower, set()).discard((at, followee))
        self.follower_rows.get((followee, follow_bucket(at)), set()).discard((at, follower))
        self.outbox.append(event)
        self._done("delete_follow_lists")

    async def recount_followers(self, user_id: int, buckets: Sequence[int]) -> int:
        read = {b: len(self.follower_rows.get((user_id, b), set())) for b in buckets}
        if self.recount_gate is not None:
            self.recounts_waiting += 1
            await self.recount_gate.wait()
        self.bucket_counts.update({(user_id, b): n for b, n in read.items()})
        total = sum(n for (u, _), n in self.bucket_counts.items() if u == user_id)
        self.follower_count[user_id] = total
        self._done("recount_followers")
        return total

    async def recount_following(self, user_id: int) -> int:
        count = len(self.following_rows.get(user_id, set()))
        self.following_count[user_id] = count
        self._done("recount_following")
        return count

    async def following_ids(self, user_id: int, limit: int) -> list[int]:
        return sorted(followee for follower, followee in self.edges if follower == user_id)[:limit]

    async def follower_counts(self, user_ids: Sequence[int]) -> dict[int, int]:
        self.calls["follower_counts"] += 1
        return {u: self.follower_count[u] for u in user_ids if u in self.follower_count}

    # ---- what the test checks -------------------------------------------------------------

    def listed_followers(self, user_id: int) -> int:
        return sum(len(rows) for (u, _), rows in self.follower_rows.items() if u == user_id)

    def listed_following(self, user_id: int) -> int:
        return len(self.following_rows.get(user_id, set()))


class FakeOutbox:
    def __init__(self) -> None:
        self.published: list[Event] = []

    def publish_soon(self, event: Event) -> None:
        self.published.append(event)


class Clock:
    """Every follow at its own millisecond, some in another month (bucket)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(days=3, milliseconds=1)
        return self.now


def build(users: Sequence[int]) -> tuple[Graph, FakeGraphStore]:
    store = FakeGraphStore(users)
    unused = cast(Any, None)
    graph = Graph(cast(Any, store), cast(Any, FakeOutbox()), unused, unused, IdGenerator(3), clock=Clock())
    return graph, store


async def counts(graph: Graph, user_id: int) -> tuple[int, int]:
    account = await graph.get_user(user_id)
    return account.follower_count, account.following_count


async def repair_from_outbox(graph: Graph, store: FakeGraphStore) -> None:
    await graph.repair_counts(e.payload for e in store.outbox)


async def test_a_follow_that_dies_before_its_recount_is_repaired_by_its_event() -> None:
    graph, store = build([1, 2])
    store.crash_after = "write_follow_lists"
    with pytest.raises(Crash):
        await graph.follow(1, 2)
    assert store.listed_followers(2) == 1  # the follow happened ...
    assert await counts(graph, 2) == (0, 0)  # ... and the count missed it
    assert await counts(graph, 1) == (0, 0)

    await repair_from_outbox(graph, store)
    assert await counts(graph, 2) == (1, 0)
    assert await counts(graph, 1) == (0, 1)


async def test_a_follow_retried_after_a_crash_counts_once() -> None:
    graph, store = build([1, 2])
    store.crash_after = "write_follow_lists"
    with pytest.raises(Crash):
        await graph.follow(1, 2)
    await graph.follow(1, 2)
    await graph.follow(1, 2)
    assert await counts(graph, 2) == (1, 0)
    await repair_from_outbox(graph, store)  # and a repair on top changes nothing
    assert await counts(graph, 2) == (1, 0)


async def test_an_unfollow_that_dies_between_lists_and_edge_is_finished_by_a_retry() -> None:
    graph, store = build([1, 2])
    await graph.follow(1, 2)
    store.crash_after = "delete_follow_lists"
    with pytest.raises(Crash):
        await graph.unfollow(1, 2)
    assert (1, 2) in store.edges  # the edge is left, so a retry can find the list rows again
    await graph.unfollow(1, 2)
    assert (1, 2) not in store.edges
    assert store.listed_followers(2) == 0
    assert await counts(graph, 2) == (0, 0) and await counts(graph, 1) == (0, 0)


async def test_an_unfollow_that_dies_before_its_recount_is_repaired_by_its_event() -> None:
    graph, store = build([1, 2, 3])
    await graph.follow(1, 2)
    await graph.follow(3, 2)
    store.crash_after = "delete_follow_lists"
    with pytest.raises(Crash):
        await graph.unfollow(1, 2)
    assert await counts(graph, 2) == (2, 0)  # stale
    await repair_from_outbox(graph, store)
    assert await counts(graph, 2) == (1, 0)
    assert await counts(graph, 1) == (0, 0)


async def test_a_malformed_follow_event_is_skipped_and_the_others_repair_counts() -> None:
    graph, store = build([1, 2])
    store.crash_after = "write_follow_lists"
    with pytest.raises(Crash):
        await graph.follow(1, 2)
    good = [e.payload for e in store.outbox]
    bad: list[dict[str, Any]] = [
        {"type": "follow", "follower_id": 1},
        {"type": "unfollow", "follower_id": 1, "followee_id": "two", "followed_at_ms": 5},
        {"type": "follow", "follower_id": 1, "followee_id": 2, "followed_at_ms": 10**30},
        {"type": "follow", "follower_id": 0, "followee_id": 2, "followed_at_ms": 5},  # no such id: CQL took it
        {"type": "block", "follower_id": 1, "followee_id": 2, "followed_at_ms": 5},
    ]
    before = {reason: skipped(reason) for reason in ("malformed", "unknown_type")}
    await graph.repair_counts([*bad, *good])
    assert await counts(graph, 2) == (1, 0) and await counts(graph, 1) == (0, 1)
    assert skipped("malformed") == before["malformed"] + 4
    assert skipped("unknown_type") == before["unknown_type"] + 1


def skipped(reason: str) -> float:
    labels = {"group": COUNTS_GROUP, "reason": reason}
    return REGISTRY.get_sample_value("chirp_consumer_skipped_total", labels) or 0.0


STEPS = ("add_edge", "write_follow_lists", "delete_follow_lists", "remove_edge", "recount_followers", None)


@pytest.mark.parametrize("seed", range(5))
async def test_counts_converge_to_the_lists_whatever_step_crashes(seed: int) -> None:
    rng = random.Random(seed)
    users = [1, 2, 3, 4, 5, 6]
    graph, store = build(users)
    for _ in range(300):
        follower, followee = rng.sample(users, 2)
        store.crash_after = rng.choice(STEPS)
        try:
            if rng.random() < 0.6:
                await graph.follow(follower, followee)
            else:
                await graph.unfollow(follower, followee)
        except Crash:
            pass  # the client gave up: nobody retries
    store.crash_after = None
    events = [e.payload for e in store.outbox]
    rng.shuffle(events)  # redelivered out of order and twice
    await graph.repair_counts(events + events[: len(events) // 2])
    for user in users:
        assert await counts(graph, user) == (store.listed_followers(user), store.listed_following(user)), user


@pytest.mark.parametrize("seed", range(5))
async def test_with_client_retries_counts_equal_the_follow_graph(seed: int) -> None:
    """Each call retried until it succeeds (as a client getting 503 does): counts match the
    intended follow graph with no repair pass at all."""
    rng = random.Random(seed)
    users = [1, 2, 3, 4, 5]
    graph, store = build(users)
    intended: set[tuple[int, int]] = set()
    for _ in range(200):
        follower, followee = rng.sample(users, 2)
        follow = rng.random() < 0.6
        store.crash_after = rng.choice(STEPS)
        while True:
            try:
                await (graph.follow if follow else graph.unfollow)(follower, followee)
                break
            except Crash:
                continue
        (intended.add if follow else intended.discard)((follower, followee))
    assert set(store.edges) == intended
    for user in users:
        followers = sum(1 for _, e in intended if e == user)
        following = sum(1 for f, _ in intended if f == user)
        assert await counts(graph, user) == (followers, following), user


class PausingStore(FakeGraphStore):
    """Holds the first call that has just written the named step until released."""

    def __init__(self, users: Sequence[int]) -> None:
        super().__init__(users)
        self.pause_after: str | None = None
        self.edge_reads_fail = False
        self.paused = asyncio.Event()
        self.release = asyncio.Event()

    async def _maybe_pause(self, step: str) -> None:
        if step == self.pause_after:
            self.pause_after = None
            self.paused.set()
            await self.release.wait()

    async def add_edge(self, follower: int, followee: int, at: datetime) -> tuple[bool, datetime]:
        claimed = await super().add_edge(follower, followee, at)
        await self._maybe_pause("add_edge")
        return claimed

    async def edge_time(self, follower: int, followee: int) -> datetime | None:
        if self.edge_reads_fail:
            raise OperationTimedOut("the edge read timed out")
        return await super().edge_time(follower, followee)

    async def delete_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        await super().delete_follow_lists(follower, followee, at, event)
        await self._maybe_pause("delete_follow_lists")


async def _interleaved(store: PausingStore, first: Any, second: Any) -> None:
    """`first` runs until the store pauses it, `second` runs to its end, then `first` ends."""
    held = asyncio.create_task(first)
    await store.paused.wait()
    await second
    store.release.set()
    await held


def _build_pausing(users: Sequence[int]) -> tuple[Graph, PausingStore]:
    store = PausingStore(users)
    unused = cast(Any, None)
    graph = Graph(cast(Any, store), cast(Any, FakeOutbox()), unused, unused, IdGenerator(3), clock=Clock())
    return graph, store


@pytest.mark.parametrize(
    ("held", "pause_after"),
    [
        # The unfollow has deleted the rows; the repeated follow finds the edge still there
        # and writes them again; then the unfollow removes the edge. It looks for the rows after.
        ("unfollow", "delete_follow_lists"),
        # The repeated follow read the edge, then the whole unfollow ran before it wrote its
        # rows: it reads the edge again after writing them, finds it gone, and deletes them.
        ("follow", "add_edge"),
    ],
)
async def test_a_follow_repeated_while_an_unfollow_runs_leaves_no_rows_without_an_edge(
    held: str, pause_after: str
) -> None:
    graph, store = _build_pausing([1, 2])
    await graph.follow(1, 2)
    store.pause_after = pause_after
    follow, unfollow = graph.follow(1, 2), graph.unfollow(1, 2)
    await (_interleaved(store, unfollow, follow) if held == "unfollow" else _interleaved(store, follow, unfollow))

    assert not store.edges and store.listed_followers(2) == 0 and store.listed_following(1) == 0
    assert await counts(graph, 2) == (0, 0) and await counts(graph, 1) == (0, 0)
    assert [e.payload["type"] for e in store.outbox][-1] == "unfollow"  # the fan-out ends unfollowed
    await graph.follow(1, 2)  # and the pair can follow again, counted once
    assert await counts(graph, 2) == (1, 0) and await counts(graph, 1) == (0, 1)


class TombstoningStore(PausingStore):
    """Rows written again at the time of a follow whose rows were deleted stay deleted, as
    in the CQL store, where list rows carry the follow's time and deletes go above it."""

    def __init__(self, users: Sequence[int]) -> None:
        super().__init__(users)
        self.deleted: set[tuple[int, int, datetime]] = set()

    async def delete_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        self.deleted.add((follower, followee, at))
        await super().delete_follow_lists(follower, followee, at, event)

    async def write_follow_lists(self, follower: int, followee: int, at: datetime, event: Event) -> None:
        await super().write_follow_lists(follower, followee, at, event)
        if (follower, followee, at) in self.deleted:  # under the delete's tombstone
            self.following_rows[follower].discard((at, followee))
            self.follower_rows[(followee, follow_bucket(at))].discard((at, follower))


async def test_a_follow_repeated_during_an_unfollow_is_not_undone_by_its_edge_removal() -> None:
    """The unfollow deleted the rows and has not removed the edge; the repeated follow
    finds the rows gone, finishes that unfollow and follows anew; then the unfollow's
    edge removal, which read the old follow, must leave the new one."""
    store = TombstoningStore([1, 2])
    unused = cast(Any, None)
    graph = Graph(cast(Any, store), cast(Any, FakeOutbox()), unused, unused, IdGenerator(3), clock=Clock())
    await graph.follow(1, 2)
    store.pause_after = "delete_follow_lists"
    await _interleaved(store, graph.unfollow(1, 2), graph.follow(1, 2))

    assert list(store.edges) == [(1, 2)]
    assert store.listed_following(1) == 1 and store.listed_followers(2) == 1
    assert await counts(graph, 2) == (1, 0) and await counts(graph, 1) == (0, 1)


async def test_an_unfollow_whose_edge_read_fails_still_drops_the_rows_it_found() -> None:
    """Its edge is already gone, so a retry would return at once: the rows found after it
    are dropped anyway, with a follow event (extra timeline entries, which reads filter out
    for an author not followed, rather than entries taken away from a follower)."""
    graph, store = _build_pausing([1, 2])
    await graph.follow(1, 2)
    store.pause_after = "delete_follow_lists"

    async def follow_then_fail_edge_reads() -> None:
        await graph.follow(1, 2)
        store.edge_reads_fail = True

    await _interleaved(store, graph.unfollow(1, 2), follow_then_fail_edge_reads())
    assert not store.edges and store.listed_followers(2) == 0 and store.listed_following(1) == 0
    assert await counts(graph, 2) == (0, 0) and await counts(graph, 1) == (0, 0)


async def test_a_follow_undone_after_a_newer_follow_of_the_pair_leaves_it_followed() -> None:
    """The repeated follow read the edge, then a whole unfollow and a new follow ran before it
    wrote its rows: it drops its own rows, and its event says "follow", so the fan-out does
    not take the followee's tweets out of the timeline of a follower who follows them."""
    graph, store = _build_pausing([1, 2])
    await graph.follow(1, 2)
    store.pause_after = "add_edge"

    async def unfollow_then_follow() -> None:
        await graph.unfollow(1, 2)
        await graph.follow(1, 2)

    await _interleaved(store, graph.follow(1, 2), unfollow_then_follow())

    (at,) = [at for pair, at in store.edges.items() if pair == (1, 2)]
    assert store.following_rows[1] == {(at, 2)} and store.listed_followers(2) == 1
    assert await counts(graph, 2) == (1, 0) and await counts(graph, 1) == (0, 1)
    assert [e.payload["type"] for e in store.outbox][-1] == "follow"


async def test_a_follow_reads_its_edge_once_more_and_an_unfollow_adds_one_row_read() -> None:
    graph, store = build([1, 2])
    await graph.follow(1, 2)
    assert store.calls["edge_read"] == 1  # a quorum read (edge_time has no serial read)
    await graph.unfollow(1, 2)
    assert (store.calls["edge_read"], store.calls["delete_follow_lists"]) == (2, 1)  # the unfollow's own


async def test_a_burst_of_follows_of_one_user_shares_recounts_and_counts_each() -> None:
    fans = list(range(2, 22))
    graph, store = build([1, *fans])
    gate = store.recount_gate = asyncio.Event()
    # Every fan follows in the same month bucket, so all share one recount key.
    start = datetime(2026, 5, 1, tzinfo=UTC)
    graph._clock = lambda: start

    first = asyncio.create_task(graph.follow(fans[0], 1))
    while store.recounts_waiting == 0:  # the first recount has read one follower and is stuck
        await asyncio.sleep(0)
    rest = asyncio.gather(*(graph.follow(fan, 1) for fan in fans[1:]))
    while store.listed_followers(1) < len(fans):
        await asyncio.sleep(0)
    gate.set()
    await first
    await rest
    assert await counts(graph, 1) == (len(fans), 0)
    # The 19 follows that came while the first recount ran all waited for the single next one.
    assert store.calls["recount_followers"] == 2


async def test_shared_runs_start_after_the_call_and_survive_a_caller_giving_up() -> None:
    started: list[int] = []
    release = asyncio.Event()
    runs = 0

    async def run(key: str) -> None:
        nonlocal runs
        runs += 1
        started.append(runs)
        await release.wait()

    shared: SharedRuns[str] = SharedRuns(run)
    first = asyncio.create_task(shared("k"))
    await asyncio.sleep(0.01)
    assert started == [1]
    later = [asyncio.create_task(shared("k")) for _ in range(5)]
    await asyncio.sleep(0.01)
    later[0].cancel()  # one caller's deadline passes: the run it shared goes on for the others
    release.set()
    await first
    await asyncio.gather(*later[1:])
    assert started == [1, 2]  # the five later callers shared one run, begun after the first ended
    other = asyncio.create_task(shared("other key"))
    await other
    assert started == [1, 2, 3]


async def test_a_failed_shared_run_fails_its_callers_and_the_next_run_still_happens() -> None:
    attempts = 0

    async def run(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("store down")

    shared: SharedRuns[str] = SharedRuns(run)
    with pytest.raises(ConnectionError):
        await shared("k")
    await shared("k")
    assert attempts == 2


async def test_reading_counts_never_recounts() -> None:
    graph, store = build([1, 2, 3])
    await graph.follow(1, 2)
    await graph.follow(1, 3)
    await graph.follow(3, 2)
    before = Counter(store.calls)
    followed, truncated = await graph.following_ids(1)
    assert (followed, truncated) == ([(2, 2), (3, 1)], False)
    assert await counts(graph, 2) == (2, 0)
    delta = store.calls - before
    assert delta == Counter({"follower_counts": 1})


# ---- a follow's edge claim that timed out (graph_svc/store.py) ----------------------------------


class TimingOutCql:
    """The edge claim times out; `committed` says what a serial read finds afterwards."""

    def __init__(self, committed: datetime | None, read_fails: bool = False) -> None:
        self.committed = committed
        self.read_fails = read_fails
        self.serial_reads = 0

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        if statement == "follow_edge":
            raise WriteTimeout("timed out", write_type=WriteType.CAS)
        assert statement == "edge_now", statement
        self.serial_reads += 1
        if self.read_fails:
            raise Unavailable("no quorum")
        return named_rows(["followed_at"], [(self.committed,)] if self.committed else [])


def _store(cql: TimingOutCql) -> GraphStore:
    store = GraphStore(cast(Any, cql), cast(Any, None))
    store._q = {name: cast(Any, name) for name in STATEMENTS}
    return store


async def test_an_edge_claim_that_timed_out_is_settled_by_a_serial_read() -> None:
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    earlier = at - timedelta(days=1)
    # Applied after all: the follow goes on (lists, event, recount) instead of failing.
    assert await _store(TimingOutCql(at)).add_edge(1, 2, at) == (True, at)
    # An earlier follow's edge was there: not created now, and its time is the follow's.
    assert await _store(TimingOutCql(earlier)).add_edge(1, 2, at) == (False, earlier)
    # Not applied (the serial read settled it as not): the timeout stands.
    with pytest.raises(WriteTimeout):
        await _store(TimingOutCql(None)).add_edge(1, 2, at)
    with pytest.raises(WriteTimeout):  # and when the read cannot answer either
        await _store(TimingOutCql(at, read_fails=True)).add_edge(1, 2, at)
