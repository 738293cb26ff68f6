"""tweet_svc business rules: posting, reading and deleting tweets, and likes."""

from __future__ import annotations

import asyncio
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from common import stages
from common.errors import InvalidArgument, NotFound, PermissionDenied
from common.events import LikeEvent
from common.ids import IdGenerator, id_time_ms
from common.kafka import TOPIC_LIKES, TOPIC_TWEETS, AsyncProducer
from common.limits import UserLimits
from common.outbox import Event, Outbox
from common.pagination import PageTokens, scope, unshared_tokens
from common.singleflight import BackgroundRefresh, Rebuilds, SingleFlight
from tweet_svc.cache import RECENT_DEPTH, TweetCache
from tweet_svc.likes import NEVER, count_after
from tweet_svc.store import TweetRecord, TweetStore
from tweet_svc.text import normalize_text

IDEMPOTENCY_KEY_MAX = 128
_KEY_CHARS = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
USERNAME_CACHE_SIZE = 100_000

UsernameLookup = Callable[[int], Awaitable[str]]
BLOCKED = "this user has blocked you"


class ViewerRelation(Protocol):
    """What graph_svc's GetRelations says of a viewer and one user (chirp.graph.v1.Relation)."""

    @property
    def blocked_by(self) -> bool: ...


# (viewer, user ids) -> one relation per id, in order (common.clients.Peers.relations).
RelationLookup = Callable[[int, Sequence[int]], Awaitable[Sequence[ViewerRelation]]]


@dataclass(frozen=True)
class TweetPage:
    tweets: list[TweetRecord]
    next_page_token: str


class Usernames:
    """Usernames never change, so a bounded in-process cache in front of graph_svc is exact."""

    def __init__(self, fetch: UsernameLookup, size: int = USERNAME_CACHE_SIZE) -> None:
        self._fetch = fetch
        self._size = size
        self._cache: OrderedDict[int, str] = OrderedDict()

    async def get(self, user_id: int) -> str:
        name = self._cache.get(user_id)
        if name is None:
            name = await self._fetch(user_id)
            self._cache[user_id] = name
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return name


class Tweets:
    def __init__(
        self,
        store: TweetStore,
        cache: TweetCache,
        outbox: Outbox,
        producer: AsyncProducer,
        usernames: Usernames,
        ids: IdGenerator,
        page_tokens: PageTokens | None = None,
        limits: UserLimits | None = None,
        relations: RelationLookup | None = None,
        rebuilds: Rebuilds | None = None,
    ) -> None:
        # Cache fills: concurrent misses of a key wait on one load, and at most
        # `rebuilds.limit` loads run at once (common/singleflight.py).
        rebuilds = rebuilds or Rebuilds()
        self._body_loads: SingleFlight[int, TweetRecord] = SingleFlight("tweet_body", rebuilds)
        self._recent_loads: SingleFlight[int, list[int]] = SingleFlight("author_recent", rebuilds)
        self._count_loads: SingleFlight[int, int] = SingleFlight("like_count", rebuilds)
        # Counts served past their refresh time are rebuilt after the read answered.
        self._count_refresh: BackgroundRefresh[int] = BackgroundRefresh("like_count", self.refresh_like_counts)
        # So are authors' recent-ids sets (common/tweet_cache.py).
        if isinstance(cache, TweetCache):
            cache.on_recent_due = BackgroundRefresh("author_recent", self.refresh_recent).request
        self._relations = relations
        self._page_tokens = page_tokens or unshared_tokens()
        self._limits = limits or UserLimits.unlimited()
        self._store = store
        self._cache = cache
        self._outbox = outbox
        self._producer = producer
        self._usernames = usernames
        self._ids = ids
        # Like versions: moved past another instance's when its clock is ahead (`set_like`),
        # which must not date this instance's tweets in the future.
        self._versions = ids.fork()

    async def create(self, author_id: int, text: str, idempotency_key: str) -> TweetRecord:
        text = normalize_text(text)
        retried = False
        # Counted before the idempotency claim: a retry is one more request to answer.
        await self._limits.take("post", author_id)
        tweet_id = self._ids.next_id()
        if idempotency_key:
            _check_key(idempotency_key)
            claimed = await self._store.claim_idempotency_key(author_id, idempotency_key, tweet_id)
            # Our own fresh id was claimed: the key is new and no tweet can have it yet,
            # so only a key seen before costs a read.
            if claimed != tweet_id:
                existing = await self.hydrate([claimed])
                if existing:
                    await self._cache.add_recent(author_id, claimed)  # should the first attempt have died before it
                    return existing[0]
                # Its tweet was written and deleted since: the delete was acknowledged,
                # so the retry must not write it again.
                if await self._store.was_deleted(claimed):
                    raise NotFound(f"the tweet this Idempotency-Key created ({claimed}) was deleted")
                # The first attempt died before writing, or is still writing: write
                # under the claimed id, so every retry yields the same tweet.
                tweet_id = claimed
                retried = True
        created_ms = id_time_ms(tweet_id)
        tweet = TweetRecord(
            tweet_id=tweet_id,
            author_id=author_id,
            author_username=await self._usernames.get(author_id),
            text=text,
            created_at=datetime.fromtimestamp(created_ms // 1000, UTC).replace(microsecond=created_ms % 1000 * 1000),
        )
        event = self._tweet_event("tweet_created", tweet)
        await self._store.insert_tweet(tweet, event)
        if retried and await self._store.was_deleted(tweet_id):
            # The first attempt was still writing when this one looked, and its tweet was
            # deleted since. Its rows stay deleted (they carry the tweet's own time, older
            # than any delete: TweetStore.insert_tweet), but this write's tweet_created event
            # is out: delete again, so a tweet_deleted event follows it, and answer 404.
            self._outbox.publish_soon(event)
            await self._remove(tweet)
            raise NotFound(f"the tweet this Idempotency-Key created ({tweet_id}) was deleted")
        # Only once the write succeeded: a timeline rebuilt from the recent ids would keep
        # the id of a failed post for good (feed_svc/activity.py).
        await self._cache.add_recent(author_id, tweet_id)
        self._outbox.publish_soon(event)
        return tweet

    async def get(self, tweet_id: int, viewer: int | None = None) -> TweetRecord:
        """`viewer`: who asks, when the request has a token; refused if the author blocks them."""
        _check_id(tweet_id, "tweet_id")
        found = await self.hydrate([tweet_id])
        if not found:
            raise NotFound(f"tweet {tweet_id} does not exist")
        await self._refuse_if_blocked(viewer, found[0].author_id)
        return found[0]

    async def _refuse_if_blocked(self, viewer: int | None, author_id: int) -> None:
        """PermissionDenied when `author_id` blocks `viewer`. One graph_svc call, and only for a
        viewer with a token: anonymous reads cannot be told apart, so they stay allowed."""
        if viewer is None or viewer == author_id or self._relations is None:
            return
        (relation,) = await self._relations(viewer, [author_id])
        if relation.blocked_by:
            raise PermissionDenied(BLOCKED, reason="BLOCKED")

    async def get_many(self, tweet_ids: list[int]) -> list[TweetRecord]:
        _check_ids(tweet_ids, "tweet_ids")
        return await self.hydrate(list(dict.fromkeys(tweet_ids)))

    async def delete(self, user_id: int, tweet_id: int) -> None:
        tweet = await self.get(tweet_id)
        if tweet.author_id != user_id:
            raise PermissionDenied("only the author can delete a tweet")
        await self._remove(tweet)

    async def _remove(self, tweet: TweetRecord) -> None:
        event = self._tweet_event("tweet_deleted", tweet)
        await self._store.delete_tweet(tweet, event)
        await self._cache.mark_deleted(tweet.tweet_id)
        await self._cache.remove_recent(tweet.author_id, tweet.tweet_id)
        self._outbox.publish_soon(event)

    async def by_author(self, author_id: int, page_size: int, page_token: str, viewer: int | None = None) -> TweetPage:
        _check_id(author_id, "user_id")  # ListUserTweetsRequest.user_id
        list_scope = scope("tweets", author_id)
        cursor = self._page_tokens.decode(page_token, list_scope, 1)  # a bad token: before any read
        # An unknown user is NOT_FOUND, not an empty list: graph_svc's GetUser says so
        # (usernames never change, so a known user costs no call after the first).
        await self._usernames.get(author_id)
        await self._refuse_if_blocked(viewer, author_id)
        before = cursor[0] if cursor else None
        if before is None:  # the first page, from the cached recent ids where they reach
            ids = [t for t, _ in await self.recent_ids([author_id], 0, page_size + 1)]
        else:
            ids = await self._store.author_tweet_ids(author_id, page_size + 1, before)
        tweets = await self.hydrate(ids[:page_size])
        token = self._page_tokens.encode(list_scope, (ids[page_size - 1],)) if len(ids) > page_size else ""
        return TweetPage(tweets, token)

    async def recent_ids(self, author_ids: list[int], before: int, limit: int) -> list[tuple[int, int]]:
        """(tweet id, author id) of each author's newest tweets below `before` (0: no bound)."""
        _check_ids(author_ids, "author_ids")
        if before < 0:
            raise InvalidArgument("before_tweet_id must not be negative", field="before_tweet_id")
        authors = list(dict.fromkeys(author_ids))
        # The newest tweets (no `before`) come from Redis where the cache answers.
        newest = not before and limit <= RECENT_DEPTH
        found = await self._cache.recent(authors, limit) if newest else {}
        stages.reached("recent ids cached")
        missing = [a for a in authors if a not in found]
        if newest:
            found.update(await self._filled_recent(missing, limit))
        else:
            lists = await asyncio.gather(*(self._store.author_tweet_ids(a, limit, before or None) for a in missing))
            found.update(zip(missing, lists, strict=True))
        stages.reached("recent ids loaded")
        return [(tweet_id, author) for author in authors for tweet_id in found[author]]

    async def refresh_recent(self, author_ids: Sequence[int]) -> set[int]:
        """Merges the store's newest ids into these authors' cached recent-ids sets that are
        past their refresh time, and renews them (tweet_svc/cache.py); returns those renewed."""
        _check_batch(author_ids, "author_ids")
        held = await self._cache.recent_due(list(dict.fromkeys(author_ids)))
        if not held:
            return set()
        read_at_ms = time.time() * 1000
        lists = await self._store.newest_tweet_ids(list(held), RECENT_DEPTH)
        return await self._cache.refresh_recent(lists, held, read_at_ms)

    async def _filled_recent(self, authors: list[int], limit: int) -> dict[int, list[int]]:
        """The newest `limit` ids of authors the cache missed, each author loaded and
        filled once however many reads miss it at once."""
        if not authors:
            return {}

        async def load(keys: list[int]) -> dict[int, list[int]]:
            loaded = await self._store.newest_tweet_ids(keys, RECENT_DEPTH)
            await self._cache.fill_recent(loaded)
            return loaded

        loaded = await self._recent_loads.load_many(authors, load)
        # A load begun before this read may predate a post acknowledged since; the post
        # (added before its acknowledgement) and the load's fill are both cached by now.
        again = await self._cache.recent(sorted(loaded.joined), limit) if loaded.joined else {}
        return {a: again.get(a, loaded.values[a])[:limit] for a in authors}

    async def set_like(self, user_id: int, tweet_id: int, liked: bool) -> int:
        """Acknowledged once the event is on Kafka (acks=all); returns the count with every
        like acknowledged so far (tweet_svc/cache.py), or while Redis is unreachable the
        stored count with this change."""
        await self._limits.take("like", user_id)  # before any read: a refused like costs one Redis call
        await self.get(tweet_id, viewer=user_id)
        # Read before the event is sent, so the worker cannot have folded it into what is read.
        (stored_count, rows), last = await asyncio.gather(
            self._store.like_states(tweet_id, [user_id]), self._store.user_like_version(user_id, tweet_id)
        )
        stored = rows.get(user_id, NEVER)
        # Above the user's last change of this tweet's like that may have been sent, even
        # one made by an instance whose clock is ahead of this one's: versions order the
        # changes, and a newer change with an older version would be dropped as stale
        # everywhere.
        version = self._versions.next_id_after(max(stored.version, last))
        event = LikeEvent(tweet_id=tweet_id, user_id=user_id, liked=liked, version=version)
        # A send that timed out (CHIRP_LIKE_ACK_TIMEOUT_MS) is answered UNAVAILABLE but may
        # have been written (librdkafka cannot tell): then it is applied, as the retry the
        # caller is told to make would have been. Its version is claimed before the send,
        # since nothing else records it until the worker folds it: without the claim, an
        # unlike right after it on an instance whose clock is behind was versioned below
        # it, and the like won.
        await self._store.claim_like_version(user_id, tweet_id, version)
        await self._producer.send(TOPIC_LIKES, str(tweet_id).encode(), event.encode())
        # After the acknowledgement (a like Kafka refused must not show), for read-your-writes:
        # the worker writes the same cell again when it folds the event (tweet_svc/viewer.py).
        await self._store.record_user_like(user_id, tweet_id, liked, event.version)
        await self._cache.record_liked(user_id, tweet_id, event.version, liked)  # feed_svc reads flags there
        count = await self._cache.acknowledged_like(tweet_id, user_id, event.version, liked, stored_count or 0, stored)
        if count is None:
            count = count_after(stored_count or 0, stored.liked, liked)
        return max(0, count)

    async def liked_by(self, user_id: int | None, tweet_ids: Sequence[int]) -> set[int]:
        """Which of `tweet_ids` `user_id` likes, acknowledged likes included (one read in
        their partition); none without a user."""
        _check_batch(tweet_ids, "tweet_ids")
        if user_id is None or not tweet_ids:
            return set()
        _check_id(user_id, "user_id")
        # Taken before the read, so the fill of the cached flags feed_svc reads
        # (common/tweet_cache.py) cannot land over a like acknowledged meanwhile.
        token = await self._cache.liked_fill_token(user_id)
        liked = await self._store.liked_among(user_id, tweet_ids)
        if token is not None:
            await self._cache.fill_liked(user_id, token, tweet_ids, liked)
        return liked

    async def hydrate(self, tweet_ids: list[int]) -> list[TweetRecord]:
        """Tweets in the order asked, with current like counts; deleted ones left out."""
        cached, deleted = await self._cache.get(tweet_ids)
        stages.reached("bodies cached")
        missing = [t for t in tweet_ids if t not in cached and t not in deleted]
        if missing:
            # Joining a load begun before a delete is safe: the delete's marker was cached
            # before it was acknowledged, so a later read finds it and does not get here.
            cached.update((await self._body_loads.load_many(missing, self._load_bodies)).values)
            stages.reached("bodies loaded")
        present = [t for t in tweet_ids if t in cached]
        counts = await self._counts(present)
        stages.reached("like counts")
        return [replace(cached[t], like_count=counts.get(t, 0)) for t in present]

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """Like counts, acknowledged likes included, of tweets the caller has the bodies of:
        the cache's, the store's where it misses (which fills it)."""
        _check_ids(tweet_ids, "tweet_ids")
        return await self._counts(list(dict.fromkeys(tweet_ids)))

    async def refresh_like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """Rebuilds from the store the like counts of these tweets that are past their
        refresh time and unchanged since (tweet_svc/cache.py); returns those rebuilt.
        Their cached bodies, being read, get a whole lifetime again (bodies filled
        together, by a warm-up or a cold start, would otherwise expire together, and
        every read would wait on the store for them at once), but only those the store
        still has: a deleted tweet whose marker Redis lost (a restart from its
        snapshot, a failover) must still leave the cache within a lifetime."""
        _check_ids(tweet_ids, "tweet_ids")
        ids = list(dict.fromkeys(tweet_ids))
        due, stored_ids = await asyncio.gather(self._cache.refresh_due(ids), self._store.existing(ids))
        await self._cache.renew_bodies([t for t in ids if t in stored_ids])
        if not due:
            return {}
        stored = await self._store.like_counts(list(due))
        rebuilt = await self._cache.refresh_like_counts({t: (stored.get(t, 0), m) for t, m in due.items()})
        return {t: stored.get(t, 0) for t in rebuilt}

    async def _counts(self, tweet_ids: list[int]) -> dict[int, int]:
        counts, due = await self._cache.like_counts_due(tweet_ids)
        if due:
            self._count_refresh.request(due)
        uncounted = [t for t in tweet_ids if t not in counts]
        if uncounted:
            # Counts expire together (a warm-up or a cold cache fills them within seconds):
            # concurrent misses of one count share one store read and fill.
            loaded = await self._count_loads.load_many(uncounted, self._load_counts)
            counts.update(loaded.values)
            if loaded.joined:
                # A joined load read the store before this call began, and a like may
                # have been acknowledged since: its state is in the cache (the load's fill
                # never covers a newer one), so the cache answers for those counts.
                counts.update(await self._cache.like_counts(list(loaded.joined)))
        return counts

    async def _load_counts(self, tweet_ids: list[int]) -> dict[int, int]:
        stored = await self._store.like_counts(tweet_ids)
        stored = {t: stored.get(t, 0) for t in tweet_ids}
        await self._cache.fill_like_counts(stored)
        return stored

    async def _load_bodies(self, tweet_ids: list[int]) -> dict[int, TweetRecord]:
        loaded = await self._store.bodies(tweet_ids)
        await self._cache.put(list(loaded.values()))
        return loaded

    def _tweet_event(self, kind: str, tweet: TweetRecord) -> Event:
        return Event(
            event_id=self._ids.next_id(),
            topic=TOPIC_TWEETS,
            key=tweet.author_id,
            payload={
                "type": kind,
                "tweet_id": tweet.tweet_id,
                "author_id": tweet.author_id,
                "created_at_ms": id_time_ms(tweet.tweet_id),
            },
        )


BATCH_MAX = 500  # ids per internal batch call


def _check_batch(ids: Sequence[int], field: str) -> None:
    """An internal call's ids: at most BATCH_MAX of them."""
    if len(ids) > BATCH_MAX:
        raise InvalidArgument(f"at most {BATCH_MAX} {field.replace('_', ' ')} per call", field=field)


def _check_ids(ids: Sequence[int], field: str) -> None:
    """An internal call's ids: at most BATCH_MAX of them, each positive."""
    _check_batch(ids, field)
    for value in ids:
        _check_id(value, field)


def _check_id(value: int, field: str) -> None:
    """`field` is the request field the value came from: the client is told which one is wrong."""
    if value <= 0:
        raise InvalidArgument(f"{field} must be a positive integer", field=field)


def _check_key(key: str) -> None:
    if len(key) > IDEMPOTENCY_KEY_MAX or not set(key) <= _KEY_CHARS:
        raise InvalidArgument(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
            field="idempotency_key",
        )
