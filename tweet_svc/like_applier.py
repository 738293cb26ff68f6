"""What the like worker does with a batch of like/unlike events (the fold by
version is in tweet_svc/likes.py; the process is tweet_svc/like_worker.py).
Re-delivery and replay change nothing, because the fold skips versions
already applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from functools import partial

from confluent_kafka import Message
from prometheus_client import Counter

from common.cql import CQL_UNAVAILABLE_ERRORS
from common.events import MALFORMED, LikeEvent
from common.worker import apply_each, retry_pause, skip_event
from tweet_svc.cache import TweetCache
from tweet_svc.likes import fold
from tweet_svc.store import TweetStore

log = logging.getLogger(__name__)

GROUP = "chirp-like-worker"

MAX_CONFLICT_RETRIES = 20
# Tweets of one batch applied at once: each is a few reads, a conditional write and a
# write per user. All of a 500-event batch at once swamped a store that was already
# slow (a node restarting), and a timeout anywhere failed the whole batch again.
CONCURRENT_TWEETS = 16
# A tweet whose store calls time out is tried again where it stands, this many times
# in all, before its batch fails: the fold and the conditional write make a retry
# exact even when the write that timed out was applied after all. A failed batch is
# re-read and every tweet of it applied again, which on an overloaded store adds the
# load that made it fail, so a tweet waits out a few seconds of overload in place
# (pauses of 0.5, 1, 2, 4, 4 s).
STORE_ATTEMPTS = 6
STORE_RETRY_SECONDS = 0.5
STORE_RETRY_MAX_SECONDS = 4.0

APPLIED = Counter("chirp_likes_applied_total", "Like/unlike events that changed a stored like.")


class LikeApplier:
    """Applies one batch of like events: per tweet, fold by version, write
    conditionally, then write the new count and the folded users' rows through
    to the like state in Redis (tweet_svc/cache.py)."""

    def __init__(self, store: TweetStore, cache: TweetCache | None) -> None:
        self._store = store
        self._cache = cache
        # The events of failed batches whose tweets were applied all the same. A failed
        # batch is read again from the last commit; these are skipped then, so the retry
        # redoes only the tweets that failed and a store that is overloaded but answering
        # sees each retry do less, not all of it again. Known by content (an event's
        # version is unique), so a skipped event is one this worker applied. Emptied once
        # a batch goes through (its commit follows; a commit that fails re-applies the
        # batch, which is harmless).
        self._applied: set[LikeEvent] = set()

    async def __call__(self, messages: Sequence[Message]) -> None:
        by_tweet: dict[int, list[LikeEvent]] = defaultdict(list)
        for msg in messages:
            try:
                event = LikeEvent.decode(msg.value() or b"")
            except MALFORMED:
                skip_event(GROUP, "malformed", "a malformed like event", partition=msg.partition(), offset=msg.offset())
                continue
            if event not in self._applied:
                by_tweet[event.tweet_id].append(event)
        await apply_each([partial(self._apply_remembered, t, e) for t, e in by_tweet.items()], CONCURRENT_TWEETS)
        self._applied.clear()

    async def _apply_remembered(self, tweet_id: int, events: list[LikeEvent]) -> None:
        await self.apply_retrying(tweet_id, events)
        self._applied.update(events)

    async def apply_retrying(self, tweet_id: int, events: list[LikeEvent]) -> None:
        """`apply`, tried again after a store timeout (STORE_ATTEMPTS in all)."""
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                return await self.apply(tweet_id, events)
            except CQL_UNAVAILABLE_ERRORS as exc:
                if attempt == STORE_ATTEMPTS:
                    raise
                log.info("likes of tweet %d: store call failed (%r), trying again", tweet_id, exc)
                await asyncio.sleep(retry_pause(attempt - 1, STORE_RETRY_SECONDS, STORE_RETRY_MAX_SECONDS))

    async def apply(self, tweet_id: int, events: list[LikeEvent]) -> None:
        users = sorted({e.user_id for e in events})
        for _ in range(MAX_CONFLICT_RETRIES):
            stored_count, stored = await self._store.like_states(tweet_id, users)
            count, changed = fold(stored_count or 0, stored, events)
            if not changed or await self._store.write_likes(tweet_id, stored_count, max(0, count), changed, stored):
                APPLIED.inc(len(changed))
                # Every folded user's newest state, changed or not: repairs the acknowledgement's
                # write of user_likes should it have been lost (tweet_svc/viewer.py).
                await self._store.record_user_likes(tweet_id, {**stored, **changed})
                if self._cache is not None:
                    # Also when nothing changed (a re-delivered batch): that repeats a write-through
                    # an earlier attempt may have lost, so these likes stop counting as pending.
                    folded = {**stored, **changed}
                    await self._cache.folded_likes(tweet_id, max(0, count), folded)
                    # The same repair for the readers' like flags (`ul:<user>`, common/tweet_cache.py).
                    await asyncio.gather(
                        *(
                            self._cache.record_liked(user_id, tweet_id, state.version, state.liked)
                            for user_id, state in folded.items()
                            if state.version > 0
                        )
                    )
                return
        raise RuntimeError(f"could not apply likes of tweet {tweet_id}: too much contention")
