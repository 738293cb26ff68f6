"""Fan-out on write: what the fan-out worker does with each event.

tweet_created: an author below the celebrity threshold has the tweet pushed
into every follower's Redis timeline. At or above the threshold nothing is
pushed; readers pull it. tweet_deleted: tweet_svc's
deletion marker is written (again) and the tweet removed from followers'
timelines. follow: the followee's recent
tweets join the follower's timeline. unfollow: they leave it; and when the
followee drops below CHIRP_CELEBRITY_DEMOTE_BELOW, its newest CROSSING_BACKFILL
tweets are pushed to its followers (older ones from its time as a celebrity are
not: a bound on what one crossing writes). Every step is idempotent, so a
re-delivered event changes nothing.

Between the two bounds an author stays what it was: a marked celebrity is still
pulled (nothing pushed), any other author still pushed. Without that band an
account hovering at the threshold crossed at every follow and unfollow, and each
crossing down pushed CROSSING_BACKFILL tweets to up to a threshold's worth of
followers.

Only followers who read their home feed within CHIRP_ACTIVE_DAYS are pushed to
(feed_svc/activity.py); the others' Redis timelines are dropped, and rebuilt
when they read again.

There is no durable copy of the timelines: one cost a CQL row per entry
through the coordinator and the worker's driver work (measured in the README
section "No durable copy of timelines"), and what it protected, a timeline
Redis lost, is rebuilt from the durable follow graph and the authors' tweets
at the next read (feed_svc/home_feed.py `_rebuild_timeline`), as for a
returning reader.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
from confluent_kafka import Message
from prometheus_client import Counter, Histogram

from common import deadlines
from common.events import MALFORMED, event_int
from common.worker import apply_each, skip_event
from feed_svc.activity import ActiveReaders
from feed_svc.cache import FeedCache
from feed_svc.store import CelebrityStore

log = logging.getLogger(__name__)

FOLLOW_BACKFILL = 20  # recent tweets of a newly followed account
UNFOLLOW_SWEEP = 200  # recent tweets removed on unfollow
CROSSING_BACKFILL = 50  # recent tweets pushed when an account stops being a celebrity

LAG = Histogram(
    "chirp_fanout_lag_seconds",
    "Time from a tweet being created to it being pushed to its followers' timelines.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PUSHED = Histogram(
    "chirp_fanout_pushed_per_tweet",
    "Timelines a tweet was pushed into (0 for celebrities).",
    buckets=(0, 1, 10, 100, 1000, 10000, 100000),
)
SKIPPED = Counter("chirp_fanout_skipped_total", "Timeline entries not pushed: the follower stopped reading.")
EVENTS = Counter("chirp_fanout_events_total", "Events handled by the fan-out worker.", ["type"])
GROUP = "chirp-fanout"

# The events the worker acts on and the fields each must carry, as positive integers.
# Any other event is skipped (logged and counted): failing on it would fail its batch,
# and every batch after, for good.
EVENT_FIELDS = {
    "tweet_created": ("tweet_id", "author_id", "created_at_ms"),
    "tweet_deleted": ("tweet_id", "author_id"),
    "follow": ("follower_id", "followee_id"),
    "unfollow": ("follower_id", "followee_id"),
}

# user id -> follower count
FollowerCount = Callable[[int], Awaitable[int]]
# (user id, page token) -> (follower ids, next page token, follower count on a first
# page or None)
FollowerPage = Callable[[int, str], Awaitable[tuple[list[int], str, int | None]]]
# (author ids, before or 0, limit per author) -> [(tweet id, author id)]
RecentIds = Callable[[Sequence[int], int, int], Awaitable[list[tuple[int, int]]]]
# (follower id, followee id) -> whether the follow edge exists now
Follows = Callable[[int, int], Awaitable[bool]]


class Fanout:
    def __init__(
        self,
        cache: FeedCache,
        store: CelebrityStore,
        follower_count: FollowerCount,
        follower_page: FollowerPage,
        recent_ids: RecentIds,
        celebrity_threshold: int,
        keys_at_once: int = 4,
        activity: ActiveReaders | None = None,
        demote_below: int | None = None,
        follows: Follows | None = None,
    ) -> None:
        self._cache = cache
        self._store = store
        self._follower_count = follower_count
        self._follower_page = follower_page
        self._recent_ids = recent_ids
        self._threshold = celebrity_threshold
        self._demote_below = celebrity_threshold if demote_below is None else demote_below
        self._keys_at_once = keys_at_once
        self._backfills: dict[int, asyncio.Future[None]] = {}  # running, by author (`_backfill_once`)
        self._marks: dict[int, asyncio.Future[None]] = {}  # running, by author (`_mark`)
        self._activity = activity
        self._follows = follows

    async def __call__(self, messages: Sequence[Message]) -> None:
        """Apply a batch. Events with the same key (one author's tweets, one user's
        follows) are applied in their order on the partition; different keys run
        concurrently, up to CHIRP_FANOUT_KEYS_AT_ONCE, so one author's large fan-out
        does not hold up everybody else's tweets; the bound keeps this background
        work from starving the request path where they share machines."""
        by_key: dict[tuple[str, bytes], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for msg in messages:
            where = {"topic": msg.topic(), "offset": msg.offset()}
            try:
                event = json.loads(msg.value() or b"")
                kind = event["type"]
                for name in EVENT_FIELDS.get(kind, ()):
                    event[name] = event_int(event[name])
            except MALFORMED:
                skip_event(GROUP, "malformed", "a malformed event", **where)
                continue
            if kind not in EVENT_FIELDS:
                skip_event(GROUP, "unknown_type", "an event of a type this worker does not know", **where)
                continue
            by_key[(str(msg.topic()), bytes(msg.key() or b""))].append((kind, event))

        async def in_order(events: list[tuple[str, dict[str, Any]]]) -> None:
            for kind, event in events:
                await self.handle(kind, event)
                EVENTS.labels(kind).inc()

        # One failure cancels the rest and fails the batch, which is applied again from the last commit.
        await apply_each((functools.partial(in_order, events) for events in by_key.values()), self._keys_at_once)

    async def handle(self, kind: str, event: dict[str, Any]) -> None:
        try:
            await self._handle(kind, event)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            # A user the event names does not exist: applied again, it would fail the same
            # way, and hold back every event after it in its partition for good.
            skip_event(
                GROUP,
                "not_found",
                "an event that names a user who does not exist",
                kind=kind,
                event=str(event)[:200],
                error=error.details(),
            )

    async def _handle(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "tweet_created":
            await self.tweet_created(int(event["tweet_id"]), int(event["author_id"]), int(event["created_at_ms"]))
        elif kind == "tweet_deleted":
            await self.tweet_deleted(int(event["tweet_id"]), int(event["author_id"]))
        elif kind == "follow":
            await self.follow(int(event["follower_id"]), int(event["followee_id"]))
        elif kind == "unfollow":
            await self.unfollow(int(event["follower_id"]), int(event["followee_id"]))

    async def tweet_created(self, tweet_id: int, author_id: int, created_at_ms: int) -> None:
        # The first page of followers carries the count: one call to graph_svc per
        # tweet of a normal author (a celebrity's first page is read for nothing).
        first, token, count = await self._follower_page(author_id, "")
        if count is None:
            count = await self._follower_count(author_id)
        if await self._pulled(author_id, count):
            PUSHED.observe(0)
            return
        pushed = await self._deliver(first, [(tweet_id, author_id)]) if first else 0
        async for followers in self._followers(author_id, token):
            pushed += await self._deliver(followers, [(tweet_id, author_id)])
        PUSHED.observe(pushed)
        LAG.observe(max(0.0, time.time() - created_at_ms / 1000))

    async def tweet_deleted(self, tweet_id: int, author_id: int) -> None:
        # tweet_svc writes this marker at the delete but drops it when Redis is
        # unreachable, and Redis may come back still holding the body. Here it is
        # durable: while Redis is unavailable this raises, the batch fails and is
        # re-applied from Kafka, so the cached body stops being served once Redis is back.
        await self._cache.mark_tweet_deleted(tweet_id)
        first, token, count = await self._follower_page(author_id, "")
        if count is None:
            count = await self._follower_count(author_id)
        if await self._pulled(author_id, count):
            # Not pushed while pulled, and a walk of millions of followers outlasts the
            # group's poll interval: the batch would be applied again for ever. Timelines
            # it was pushed to before the author crossed leave it out when read (the mark).
            return
        if first:
            await self._cache.remove(first, [tweet_id])
        async for followers in self._followers(author_id, token):
            await self._cache.remove(followers, [tweet_id])

    async def follow(self, follower_id: int, followee_id: int) -> None:
        await self._cache.drop_following(follower_id)
        if not await self._edge_is(follower_id, followee_id, True):
            return  # unfollowed since: the unfollow's event swept, or sweeps, these tweets
        if await self._pulled(followee_id, await self._follower_count(followee_id)):
            return  # readers pull it: nothing to push
        recent = await self._recent_ids([followee_id], 0, FOLLOW_BACKFILL)
        await self._cache.push([follower_id], [t for t, _ in recent])

    async def unfollow(self, follower_id: int, followee_id: int) -> None:
        await self._cache.drop_following(follower_id)
        # Not when followed again since: the sweep would take out tweets the new follow pushed.
        if await self._edge_is(follower_id, followee_id, False):
            recent = [t for t, _ in await self._recent_ids([followee_id], 0, UNFOLLOW_SWEEP)]
            await self._cache.remove([follower_id], recent)
        # Either way: an unfollow applied again after a failed backfill relies on this check.
        count, begun = await asyncio.gather(self._follower_count(followee_id), self._store.backfill_begun(followee_id))
        if begun and count >= self._threshold:
            # A backfill cut short, and followed back over the threshold since: pulled again.
            # The record stays (only a finished backfill ends it): a backfill in another
            # worker may be under way, its unmark landing after this mark, and a kill of it
            # must still be redone.
            await self._mark(followee_id, celebrity=True, read_first=False)
        elif begun or (count < self._demote_below and await self._store.is_celebrity(followee_id)):
            # Begun: cut short (a kill, a cancelled batch) with the author unmarked already,
            # whatever the count is now.
            await self._backfill_once(followee_id)

    async def _backfill_once(self, author_id: int) -> None:
        """One backfill of an author at a time in this process. The unfollows that demote
        an author come in waves, keyed by their followers and so applied side by side,
        and each one after the first finds the backfill begun."""
        await _one_at_a_time(self._backfills, author_id, lambda: self._backfill(author_id), _log_backfill_failure)

    async def _edge_is(self, follower_id: int, followee_id: int, following: bool) -> bool:
        """Whether the edge is as the event says. Events of one pair can come out of order
        (a fast send that failed and went again after the next event, the outbox relay
        after a crash, a repeat after a lost published mark, two graph_svc instances), and
        an unfollow applied after the follow that undid it took the followee's tweets out
        of a timeline that follows them, for good: timelines are rebuilt only when missing.
        Each event removes or adds its edge before it is sent, so acting only when the
        edge is as it says leaves the timeline as the last change of the pair wants it."""
        if self._follows is None:
            return True
        return await self._follows(follower_id, followee_id) == following

    async def _pulled(self, author_id: int, count: int) -> bool:
        """Whether readers pull the author's tweets: at or above the threshold (marked
        now, if it was not), or below it but not below the demotion bound and marked
        already (only authors in that band cost the registry read)."""
        if count >= self._threshold:
            await self._mark(author_id, celebrity=True)
            return True
        return count >= self._demote_below and await self._store.is_celebrity(author_id)

    async def _backfill(self, author_id: int) -> None:
        """The author just stopped being pulled: push its recent tweets to its followers.

        Unmarked first: a tweet handled after that is pushed as usual, and one handled
        before it was written before the recent ids are read, so the backfill has it.
        The backfill is recorded as begun before the unmark and as done after the last
        page: one cut short anywhere (a kill, its batch cancelled, the store down) is
        done again when the unfollow is applied again from the last commit.
        """
        await self._store.begin_backfill(author_id)
        await self._mark(author_id, celebrity=False)
        try:
            recent = await self._recent_ids([author_id], 0, CROSSING_BACKFILL)
            async for followers in self._followers(author_id):
                await self._deliver(followers, recent)
        except Exception:
            # Marked again, so readers pull it until the unfollow, applied again, backfills.
            await self._mark(author_id, celebrity=True, read_first=False)
            raise
        await self._store.end_backfill(author_id)
        log.info("author dropped below the celebrity threshold; backfilled", extra={"author_id": author_id})

    async def _deliver(self, followers: list[int], tweets: Sequence[tuple[int, int]]) -> int:
        """Tweets into the timelines of the followers who read; returns how many timelines."""
        readers, gone = await self._activity.split(followers) if self._activity else (followers, [])
        if gone:
            # Dropped, not left stale: a missing timeline is rebuilt at the next read.
            await self._cache.drop_timelines(gone)
            SKIPPED.inc(len(gone) * len(tweets))
        if readers:
            await self._cache.push(readers, [t for t, _ in tweets])
        return len(readers)

    async def _mark(self, author_id: int, celebrity: bool, read_first: bool = True) -> None:
        """The registry readers consult: durable in CQL, served from Redis.

        One plain mark per author at a time in this process: when an author crosses the
        threshold, every event in flight for it finds it unmarked, and each mark would be
        a transaction on the same registry partition, contending until some time out. The
        others wait for the one under way (its failure is theirs)."""
        if celebrity and read_first:
            await _one_at_a_time(self._marks, author_id, lambda: self._write_mark(author_id, True, True))
            return
        await self._write_mark(author_id, celebrity, read_first)

    async def _write_mark(self, author_id: int, celebrity: bool, read_first: bool) -> None:
        if not celebrity:
            self._marks.pop(author_id, None)  # a mark wanted after this unmark runs anew
        await self._store.set_celebrity(author_id, celebrity, read_first)
        await self._cache.mark_celebrity(author_id, celebrity)

    async def _followers(self, author_id: int, after: str | None = None) -> AsyncIterator[list[int]]:
        """Pages of follower ids: all of them, or those after the page that gave `after`
        (nothing when that was the last page: "")."""
        token = after or ""
        if after == "":
            return
        while True:
            ids, token, _ = await self._follower_page(author_id, token)
            if ids:
                yield ids
            if not token:
                return


async def _one_at_a_time(
    running: dict[int, asyncio.Future[None]],
    key: int,
    start: Callable[[], Coroutine[Any, Any, None]],
    on_failure: Callable[[int, BaseException], None] | None = None,
) -> None:
    """One run of `start()` per key at a time in this process: a caller while one is under way
    waits for it (its failure is theirs). Shielded: a waiter cancelled (its batch failed)
    leaves the run to the others."""
    run = running.get(key)
    if run is None or run.done():
        run = deadlines.shared_task(start())
        running[key] = run
        run.add_done_callback(functools.partial(_ended, running, key, on_failure))
    await asyncio.shield(run)


def _ended(
    running: dict[int, asyncio.Future[None]],
    key: int,
    on_failure: Callable[[int, BaseException], None] | None,
    done: asyncio.Future[None],
) -> None:
    """The key's entry goes, unless a newer run took it; the outcome is retrieved (its
    waiters, all cancelled maybe, may not)."""
    if running.get(key) is done:
        del running[key]
    failure = None if done.cancelled() else done.exception()
    if failure is not None and on_failure is not None:
        on_failure(key, failure)


def _log_backfill_failure(author_id: int, failure: BaseException) -> None:
    log.warning("a demotion backfill failed: %r", failure, extra={"author_id": author_id})
