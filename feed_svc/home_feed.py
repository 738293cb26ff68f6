"""Home timeline reads: hybrid fan-out merged at read time.

A page merges (a) the reader's pushed timeline (Redis, rebuilt from the CQL
store on a miss), (b) recent tweets of the celebrities they follow, pulled at
read time, and (c) the reader's own recent tweets, so they see a new tweet at
once; (b) and (c) come from tweet_svc's recent-ids sets in Redis, which a post
or delete updates before it is acknowledged. Entries are deduplicated,
tweets that are gone or whose author is no longer followed are dropped, and
the rest are hydrated, newest first, from tweet_svc's cache as common/tweet_cache.py
writes it down: encoded bodies and like counts in one Redis pipeline, the page
assembled from their bytes (no per-tweet message is built), the reader's
liked_by_me flags from the same pipeline. Only what the cache misses is asked
of tweet_svc (BatchGetTweets, ListLikedTweetIds, ListRecentTweetIds, and
BatchGetLikeCounts for cached bodies whose counts are gone), which fills it; counts
past their refresh time are served, and their rebuild asked for after the read
(BatchGetLikeCounts with refresh). Which authors
are celebrities comes from the registry the fan-out worker keeps, held in each
process's memory (CelebrityRegistry).
The merge itself is feed_svc/merge.py; what is pushed, feed_svc/fanout.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, TypeVar

from chirp.tweet.v1 import tweet_pb2
from prometheus_client import Counter, Histogram

from common import stages
from common.cache import run_claimed_reloads
from common.cql import CQL_UNAVAILABLE_ERRORS
from common.hidden import BlockersAmong, HiddenAuthorsCache, without_blockers
from common.pagination import PageTokens, unshared_tokens
from common.singleflight import BackgroundRefresh, Rebuilds, SingleFlight
from common.tweet_cache import RECENT_DEPTH, author_of, with_viewer_fields
from feed_svc.activity import pull_recent, rebuilt_timeline
from feed_svc.cache import FeedCache
from feed_svc.merge import decode_cursor, encode_cursor, merge, next_ask, visible
from feed_svc.store import CelebrityStore

log = logging.getLogger(__name__)

CELEBRITY_CACHE_DEPTH = RECENT_DEPTH  # ids a first page asks tweet_svc for per author it misses
MAX_CELEBRITIES_PER_READ = 500
MAX_ROUNDS = 4  # refills when filtering leaves a page short
AMONG_PER_CALL = 1000  # ids per "which of these does the user follow" call to graph_svc
RELOAD_RETRY_SECONDS = 1.0  # after a failed registry reload

TIMELINE_READS = Counter("chirp_timeline_cache_total", "Home timeline reads by Redis outcome.", ["result"])
# Looked up once: labels() takes a lock and a dict lookup on every call.
_TIMELINE_HITS = TIMELINE_READS.labels("hit")
_TIMELINE_MISSES = TIMELINE_READS.labels("miss")
# Follow lists loaded again after a read served them past their refresh time, by
# outcome: stored, changed (a follow or unfollow meanwhile: dropped), skipped, failed.
FOLLOWING_RELOADS = Counter(
    "chirp_following_reloads_total",
    "Follow lists a read found near their end, loaded again after it: stored; changed (a follow "
    "or unfollow applied meanwhile: nothing stored); skipped (gone, being filled by a reader, or "
    "reloaded or being reloaded by another process); failed.",
    ["result"],
)
FOLLOWING_REFRESHES = 4  # reloads from graph_svc at once, per process
CELEBRITY_PULLS = Histogram(
    "chirp_celebrity_pulls_per_read",
    "Celebrities pulled per home-feed read.",
    buckets=(0, 1, 2, 5, 10, 25, 50, 100, 500),
)

# (author ids, before tweet id or 0, limit per author) -> [(tweet id, author id)]
RecentIds = Callable[[Sequence[int], int, int], Awaitable[list[tuple[int, int]]]]
# (user id, only these accounts or () for all) -> ([(followed user id, their follower count)],
# whether the listing stopped at graph_svc's limit)
FollowingIds = Callable[[int, Sequence[int]], Awaitable[tuple[list[tuple[int, int]], bool]]]
# (tweet ids, reader id) -> tweets (missing ones left out), each with liked_by_me for
# the reader (tweet_svc BatchGetTweets with viewer_id: flags come with the bodies)
BatchTweets = Callable[[Sequence[int], int], Awaitable[list[tweet_pb2.Tweet]]]
# reader id -> authors whose tweets the reader must not see (muted, blocked, blocking them)
HiddenAuthors = Callable[[int], Awaitable[frozenset[int]]]
# (reader id, tweet ids) -> which of them the reader likes (tweet_svc ListLikedTweetIds)
LikedIds = Callable[[int, Sequence[int]], Awaitable[set[int]]]
# tweet ids -> their like counts (tweet_svc BatchGetLikeCounts), for bodies the cache holds
LikeCounts = Callable[[Sequence[int]], Awaitable[dict[int, int]]]
# author ids -> None, their recent-ids sets renewed (tweet_svc ListRecentTweetIds with refresh)
RefreshRecent = Callable[[Sequence[int]], Awaitable[None]]


class FeedTweet(NamedTuple):
    tweet_id: int
    author_id: int
    encoded: bytes  # a chirp.tweet.v1.Tweet for this reader, like_count and liked_by_me included

    def message(self) -> tweet_pb2.Tweet:
        """Decoded on demand (tests, tools); the serving path copies `encoded` instead."""
        return tweet_pb2.Tweet.FromString(self.encoded)

    @property
    def like_count(self) -> int:
        return self.message().like_count

    @property
    def liked_by_me(self) -> bool:
        return self.message().liked_by_me


@dataclass(frozen=True)
class Pulled:
    ids: list[int]
    # The newest id below which some author may have tweets not fetched yet
    # (0: every author's list is complete). Merged entries are only final down to it.
    horizon: int


class CelebrityRegistry:
    """Authors pulled at read time, held in this process's memory and reloaded every
    `refresh_seconds` (CHIRP_CELEBRITY_CACHE_SECONDS) from Redis, or from the CQL
    store when Redis has no copy. Every feed read consults it: reading it from Redis
    on each read made one key, so one cluster slot, take every read.

    A reader learns of a crossing of the threshold within `refresh_seconds`. Until
    then a newly marked author is still pulled by readers whose cached follower
    count shows it, and an author no longer marked is pulled a little longer, which
    costs some work, never a tweet (its tweets are backfilled when it is unmarked)."""

    def __init__(
        self,
        cache: FeedCache,
        store: CelebrityStore,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._store = store
        self._refresh = refresh_seconds
        self._clock = clock
        self._members: frozenset[int] | None = None
        self._loaded_at = 0.0
        self._loading = asyncio.Lock()

    async def members(self) -> frozenset[int]:
        members = self._members
        if members is not None and (self._clock() < self._loaded_at + self._refresh or self._loading.locked()):
            return members  # fresh, or being reloaded by another read: no reader waits for a reload
        async with self._loading:
            if self._members is None or self._clock() >= self._loaded_at + self._refresh:
                started = self._clock()
                try:
                    self._members = frozenset(await self._load())
                except CQL_UNAVAILABLE_ERRORS as exc:
                    if self._members is None:
                        raise
                    # Reads that need no CQL go on with the last registry; try again soon.
                    log.warning("celebrity registry not reloaded, keeping the last one: %r", exc)
                    started -= self._refresh - min(self._refresh, RELOAD_RETRY_SECONDS)
                self._loaded_at = started
            return self._members

    async def _load(self) -> set[int]:
        everyone = await self._cache.celebrities()
        if everyone is None:
            everyone = await self._store.celebrities()
            await self._cache.load_celebrities(everyone)
        return everyone


class HomeFeed:
    def __init__(
        self,
        cache: FeedCache,
        store: CelebrityStore,
        following_ids: FollowingIds,
        recent_ids: RecentIds,
        batch_tweets: BatchTweets,
        celebrity_threshold: int,
        timeline_size: int,
        registry: CelebrityRegistry | None = None,
        page_tokens: PageTokens | None = None,
        hidden_authors: HiddenAuthors | HiddenAuthorsCache | None = None,
        liked_ids: LikedIds | None = None,
        rebuilds: Rebuilds | None = None,
        like_counts: LikeCounts | None = None,
        refresh_counts: LikeCounts | None = None,
        refresh_recent: RefreshRecent | None = None,
        refresh_following: bool = False,
        blockers_among: BlockersAmong | None = None,
    ) -> None:
        self._cache = cache
        # graph_svc's GetRelations, for a reader whose hidden-author set lists only some
        # of their blockers (common/hidden.py).
        self._blockers_among = blockers_among
        if refresh_recent is not None:
            # Recent-ids sets served past their refresh time: renewed after the read.
            cache.on_recent_due = BackgroundRefresh("author_recent", refresh_recent).request
        if refresh_following:
            # Follow lists served past their refresh time: loaded again after the read.
            cache.on_following_due = BackgroundRefresh("following", self._refresh_following).request
        self._following_refreshes = asyncio.Semaphore(FOLLOWING_REFRESHES)
        # Concurrent misses of one reader's follow list or timeline share one load, and
        # loads are bounded per process, so a cold cache cannot starve warm reads.
        rebuilds = rebuilds or Rebuilds()
        self._following_loads: SingleFlight[tuple[int, str | None], tuple[list[tuple[int, int]], bool]] = SingleFlight(
            "following", rebuilds
        )
        self._timeline_loads: SingleFlight[int, list[int]] = SingleFlight("timeline", rebuilds)
        # tweet_svc's ListLikedTweetIds, for the flags the cache misses. Without it, every
        # tweet comes from BatchGetTweets, flags included (no cached body is used).
        self._liked_ids = liked_ids
        # tweet_svc's BatchGetLikeCounts, for cached bodies whose counts are gone (expired
        # unrebuilt, evicted): without it they come whole from BatchGetTweets.
        self._like_counts = like_counts
        # tweet_svc's BatchGetLikeCounts with `refresh`, for counts served past their refresh
        # time (common/tweet_cache.py): asked after the read answered, never waited for.
        self._count_refresh = BackgroundRefresh("like_count", refresh_counts) if refresh_counts else None
        # The cache of common/hidden.py is read in the read's first round trip (the set's
        # key with the follow list and timeline), its script only on a miss; any other
        # source (a fake, none) is asked alongside that round trip.
        self._hidden_cache: HiddenAuthorsCache | None = None
        self._hidden_authors: HiddenAuthors = _nobody_hidden
        if isinstance(hidden_authors, HiddenAuthorsCache):
            self._hidden_cache = hidden_authors
        elif hidden_authors is not None:
            self._hidden_authors = hidden_authors
        self._page_tokens = page_tokens or unshared_tokens()
        self._store = store
        self._registry = registry or CelebrityRegistry(cache, store, cache.celebrity_ttl_seconds)
        self._following_ids = following_ids
        self._recent_ids = recent_ids
        self._batch_tweets = batch_tweets
        self._threshold = celebrity_threshold
        self._timeline_size = timeline_size

    async def page(self, user_id: int, page_size: int, page_token: str) -> tuple[list[FeedTweet], str]:
        before = decode_cursor(page_token, user_id, self._page_tokens)
        self._cache.note_read(user_id)  # the fan-out worker pushes to readers only (feed_svc/activity.py)
        # The follow list, the first round's timeline, the reader's own newest ids and their
        # hidden-author set come in one pipeline: one round trip, and one pipeline's client
        # overhead, not four.
        want = page_size + 1
        ask = next_ask(0, want)
        # Hidden authors are asked on every page (from the versioned cache of common/hidden.py,
        # which every block and mute invalidates before it is acknowledged): a mute or block
        # hides at once, also on the next page of a walk in progress.
        reads = self._cache.home_reads(
            user_id, before, ask, want if before is None and want <= RECENT_DEPTH else 0, self._hidden_cache is not None
        )
        if self._hidden_cache is not None:
            first = await reads
            stages.reached("first reads")
            # A miss: its script. A set near its end: loaded again after the read.
            hidden = await self._hidden_cache.hidden(user_id, first.hidden, first.answered, first.hidden_pttl)
        else:
            first, hidden = await asyncio.gather(reads, self._hidden_authors(user_id))
        stages.reached("hidden authors")
        if first.following is not None:
            following, complete = first.following
        else:
            following, complete = await self.following(user_id)
            stages.reached("follow list loaded")
        hidden = hidden - {user_id}
        allowed = {a for a, _ in following} | {user_id}
        # Cached follower counts can be up to CHIRP_FOLLOWING_CACHE_SECONDS old; the
        # registry the fan-out worker keeps is current. Pulling a non-celebrity
        # too costs a little work, never a missing tweet.
        marked = await self._celebrities_among([a for a, _ in following])
        celebrities = [a for a, count in following if (count >= self._threshold or a in marked) and a not in hidden]
        if not complete:
            # The user follows more accounts than graph_svc lists at once: ask which of
            # the other celebrities they follow, and below, which unknown authors.
            others = await self._followed_among(user_id, await self._all_celebrities() - allowed - hidden)
            allowed |= others
            celebrities += sorted(others)
        celebrities = celebrities[:MAX_CELEBRITIES_PER_READ]
        CELEBRITY_PULLS.observe(len(celebrities))
        stages.reached("celebrities")

        results: list[FeedTweet] = []
        cursor = before
        asked_blockers: set[int] = set()  # for a reader whose set lists only some blockers
        for round_ in range(MAX_ROUNDS):
            if round_:
                want = page_size + 1 - len(results)
                ask = next_ask(ask, want)
                pushed, pulled = await asyncio.gather(
                    self._pushed(user_id, cursor, ask, following), self._pulled(user_id, celebrities, cursor, want)
                )
            else:
                # What `first` read is this round's (same cursor, ask and want).
                own = {user_id: first.own_recent} if first.own_read else {}
                pushing = self._pushed(user_id, cursor, ask, following, first.timeline, read=True)
                pulling = self._pulled(user_id, celebrities, cursor, want, own)
                if first.timeline is not None:  # no await in `pushing`: no task needed
                    pushed, pulled = await pushing, await pulling
                else:
                    pushed, pulled = await asyncio.gather(pushing, pulling)
            stages.reached("timeline and pulls")
            horizon = max(pulled.horizon, pushed[-1] if len(pushed) >= ask else 0)
            merged = [t for t in merge(pushed, pulled.ids, before=cursor) if t >= horizon]
            candidates = merged[:ask]
            if not candidates:
                break
            # What the page still needs is hydrated first, the slack beyond it only when
            # filtering thinned that: an unfiltered page reads `want` tweets, not `ask`
            # (each is two Redis commands), and shows the same ones.
            hydrated: dict[int, FeedTweet] = {}
            shown: list[int] = []
            for part in (candidates[:want], candidates[want:]):
                if not part:
                    break
                found = await self.hydrate(part, user_id)
                stages.reached("hydrated")
                if not complete:
                    unknown = {t.author_id for t in found.values()} - allowed - hidden
                    allowed |= await self._followed_among(user_id, unknown)
                hydrated.update(found)
                authors = {t: tweet.author_id for t, tweet in hydrated.items()}
                # A block ends the follows both ways, but the follow list cached here
                # learns it from the fan-out worker: until then `hidden` must hold the
                # blockers, and graph_svc is asked about them when it lists only some.
                shown, hidden = await without_blockers(
                    user_id,
                    hidden,
                    partial(visible, candidates, authors, allowed),
                    authors.__getitem__,
                    self._blockers_among,
                    asked_blockers,
                )
                if len(shown) >= want:
                    break
            results += [hydrated[t] for t in shown]
            if len(results) > page_size or (horizon == 0 and len(merged) <= ask):
                break
            cursor = candidates[-1]
        else:
            # Still short after every round (filtering dropped nearly everything): a
            # shorter page that continues below the last entry examined, never a gap.
            token = encode_cursor(cursor, user_id, self._page_tokens) if cursor is not None else ""
            return results, token
        page = results[:page_size]
        token = encode_cursor(page[-1].tweet_id, user_id, self._page_tokens) if len(results) > page_size else ""
        return page, token

    async def _refresh_following(self, user_ids: list[int]) -> None:
        """Load again, from graph_svc, the follow lists reads served past their refresh
        time (`FeedCache.following_due`), each stored only over the write fingerprinted
        before its load: a follow or unfollow applied meanwhile deletes the key, and the
        load is dropped."""

        await run_claimed_reloads(
            user_ids,
            self._cache.following_fingerprint,
            self._reload_following,
            self._cache.end_following_reload,
            self._following_refreshes,
            FOLLOWING_RELOADS,
            "follow-list",
        )

    async def _reload_following(self, user_id: int, fingerprint: tuple[str, int]) -> bool:
        accounts, truncated = await self._following_ids(user_id, ())
        return await self._cache.refresh_following(user_id, fingerprint, accounts, not truncated)

    async def following(self, user_id: int) -> tuple[list[tuple[int, int]], bool]:
        """Accounts the user follows with their follower counts, and whether that is all of them."""
        claimed = await self._cache.claim_following(user_id)
        if claimed is not None and not isinstance(claimed, str):
            return claimed
        token = claimed

        async def load() -> tuple[list[tuple[int, int]], bool]:
            accounts, truncated = await self._following_ids(user_id, ())
            if token is not None:  # kept only if no follow or unfollow was applied since the claim
                await self._cache.set_following(user_id, accounts, not truncated, token)
            return accounts, not truncated

        # Readers that took the same token share a load: one that starts after a follow
        # or unfollow was applied takes another token, so it never joins a load from before.
        return await self._following_loads.load((user_id, token), load)

    async def _followed_among(self, user_id: int, candidates: set[int]) -> set[int]:
        ids = sorted(candidates)
        replies = await asyncio.gather(
            *(self._following_ids(user_id, ids[i : i + AMONG_PER_CALL]) for i in range(0, len(ids), AMONG_PER_CALL))
        )
        return {a for accounts, _ in replies for a, _ in accounts}

    async def _all_celebrities(self) -> set[int]:
        return set(await self._registry.members())

    async def _celebrities_among(self, author_ids: list[int]) -> set[int]:
        if not author_ids:
            return set()
        return set(await self._registry.members() & set(author_ids))

    async def _pushed(
        self,
        user_id: int,
        before: int | None,
        limit: int,
        following: Sequence[tuple[int, int]],
        cached: list[int] | None = None,
        read: bool = False,
    ) -> list[int]:
        """The pushed timeline below `before`: `cached` when `read` (already read from
        Redis, None a miss), else read now; a miss rebuilds it."""
        ids = cached if read else await self._cache.timeline(user_id, before, limit)
        if ids is not None:
            _TIMELINE_HITS.inc()
            return ids
        _TIMELINE_MISSES.inc()
        # The follow list comes from the caller: a rebuild holds a rebuild slot, and
        # waiting in it for another load that waits for a slot could deadlock them all.
        followed = list(following)
        rebuilt = await self._timeline_loads.load(user_id, lambda: self._rebuild_timeline(user_id, followed))
        stages.reached("timeline rebuilt")  # also for a read that joined another's rebuild
        return [t for t in rebuilt if before is None or t < before][:limit]

    async def _rebuild_timeline(self, user_id: int, following: Sequence[tuple[int, int]]) -> list[int]:
        """Redis lost the timeline, or the reader was away and not pushed to
        (feed_svc/activity.py): the newest tweets of every followed account that is
        pushed, not pulled: every one `page` does not pull (celebrities by their follower
        count or the registry). Pushes that land meanwhile are kept: `rebuild` adds to them."""
        # Recorded as read first, so every tweet handled after the pull is pushed.
        marked_read = await self._cache.mark_read(user_id)
        marked = await self._registry.members()
        pushed_authors = [a for a, count in following if count < self._threshold and a not in marked]
        rebuilt = rebuilt_timeline(await pull_recent(self._recent_ids, pushed_authors), self._timeline_size)
        stages.reached("timeline pulled")
        if not marked_read:
            # Redis does not answer (down, or its pool is full): this read is served
            # from the pull, and nothing is written, so the next read rebuilds in full.
            return rebuilt
        stored = await self._cache.rebuild(user_id, rebuilt)
        stages.reached("timeline stored")
        return rebuilt if stored is None else stored

    async def _pulled(
        self,
        user_id: int,
        celebrities: list[int],
        before: int | None,
        want: int,
        read: Mapping[int, tuple[list[int], bool] | None] | None = None,
    ) -> Pulled:
        """Own and celebrities' tweets below `before`. A first page reads every author's newest
        ids from tweet_svc's recent-ids sets in one pipeline (a post adds to its author's set
        and a delete removes from it before they are acknowledged) and asks tweet_svc only
        for the authors it misses, which fills their sets. `read`: authors whose set was
        read already for this `want` (None a miss)."""
        authors = [user_id, *celebrities]
        read = read or {}
        found = {a: ids for a, ids in read.items() if ids is not None}
        unread = [a for a in authors if a not in read]
        if unread and before is None and want <= RECENT_DEPTH:
            found.update(await self._cache.recent_ids(unread, want))
        asked = [a for a in authors if a not in found]
        limit = max(want, CELEBRITY_CACHE_DEPTH) if before is None else want
        fetched: dict[int, list[int]] = {a: [] for a in asked}
        if asked:
            # The reader and up to MAX_CELEBRITIES_PER_READ authors: more than one call takes.
            for tweet_id, author in await pull_recent(self._recent_ids, asked, limit, before or 0):
                fetched[author].append(tweet_id)
        # (ids newest first, whether the author has no older tweet than the last of them)
        lists = list(found.values()) + [(v, len(v) < limit) for v in fetched.values()]
        ids: list[int] = []
        horizon = 0
        for author_ids, complete in lists:
            taken = author_ids[:want]
            ids += taken
            if taken and (len(author_ids) > want or not complete):
                horizon = max(horizon, taken[-1])  # this author may have older tweets not fetched
        return Pulled(ids, horizon)

    async def hydrate(self, tweet_ids: Sequence[int], reader_id: int) -> dict[int, FeedTweet]:
        """The tweets still there, encoded for this reader. Bodies, deletion markers, like
        counts and the reader's like flags come from tweet_svc's cache in one pipeline (a
        delete writes its marker there before it is acknowledged, so a deleted tweet is gone
        at once; a like writes the reader's flag before it is acknowledged); tweet_svc is
        asked only for what that misses, and fills it. The result carries the reader's
        liked_by_me, so it is this reader's alone: nothing here caches it."""
        if self._liked_ids is None:
            return {t.tweet_id: _encoded(t) for t in await self._batch_tweets(tweet_ids, reader_id)}
        cached = await self._cache.tweets(tweet_ids, reader_id)
        ready: dict[int, tuple[int, bytes, int]] = {}
        # Cached bodies whose counts are gone: only their counts are asked for (a count
        # lives up to twice CHIRP_LIKE_COUNT_CACHE_SECONDS, a body minutes).
        uncounted: dict[int, tuple[int, bytes]] = {}
        for tweet_id, body in cached.bodies.items():
            author = author_of(body)
            count = cached.counts.get(tweet_id)
            if author is None:
                continue
            if count is not None:
                ready[tweet_id] = (author, body, count)
            elif self._like_counts is not None:
                uncounted[tweet_id] = (author, body)
        missing = [t for t in tweet_ids if t not in ready and t not in uncounted and t not in cached.deleted]
        unflagged = [t for t in (*ready, *uncounted) if t not in cached.liked and t not in cached.not_liked]
        fetched: list[tweet_pb2.Tweet] = []
        liked: set[int] = set()
        counts: dict[int, int] = {}
        # A warm read makes none of the three calls (and no task); one that needs some
        # makes those at once.
        if missing or unflagged or uncounted:
            fetched, liked, counts = await asyncio.gather(
                self._batch_tweets(missing, reader_id) if missing else _nothing(fetched),
                self._liked_ids(reader_id, unflagged) if unflagged else _nothing(liked),
                self._like_counts(list(uncounted)) if uncounted and self._like_counts else _nothing(counts),
            )
        if cached.due and self._count_refresh is not None:
            self._count_refresh.request(t for t in ready if t in cached.due)
        for tweet_id, (author, body) in uncounted.items():
            ready[tweet_id] = (author, body, counts.get(tweet_id, 0))
        liked |= cached.liked
        found = {
            t: FeedTweet(t, author, with_viewer_fields(body, count, t in liked))
            for t, (author, body, count) in ready.items()
        }
        found.update((t.tweet_id, _encoded(t)) for t in fetched)
        return found


_T = TypeVar("_T")


async def _nothing(empty: _T) -> _T:
    """A call a read did not need, in the place of its answer."""
    return empty


async def _nobody_hidden(user_id: int) -> frozenset[int]:
    return frozenset()


def _encoded(tweet: tweet_pb2.Tweet) -> FeedTweet:
    return FeedTweet(tweet.tweet_id, tweet.author_id, tweet.SerializeToString())
