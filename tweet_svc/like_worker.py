"""Like worker: consumes like/unlike events in batches and applies them to the
CQL store. Offsets are committed only after the writes succeed; a crash in
between re-delivers the batch, which the versioned fold turns into no-ops.

    python -m tweet_svc.like_worker
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.kafka import TOPIC_LIKES, BatchConsumer
from common.logs import setup_logging
from common.outbox import Outbox
from common.server import Wiring, serve
from tweet_svc import config as tweet_config
from tweet_svc.likes import LikeEvent, fold
from tweet_svc.store import TweetStore

log = logging.getLogger(__name__)

GROUP = "chirp-like-worker"
MAX_CONFLICT_RETRIES = 20

APPLIED = Counter("chirp_likes_applied_total", "Like/unlike events that changed a stored like.")
BATCH = Histogram("chirp_like_batch_events", "Events per like-worker batch.", buckets=(1, 10, 50, 100, 250, 500, 1000))
LAG = Gauge("chirp_consumer_lag_messages", "Messages not yet consumed by this worker.", ["group"])


class LikeWorker:
    def __init__(
        self,
        store: TweetStore,
        consumer_factory: Callable[[], BatchConsumer],
        batch_size: int,
        batch_wait_seconds: float,
    ) -> None:
        self._store = store
        self._factory = consumer_factory
        self._consumer = consumer_factory()
        self._batch_size = batch_size
        self._wait = batch_wait_seconds

    async def run_once(self) -> int:
        """Apply one batch and commit it; returns the number of events consumed."""
        messages = await self._consumer.poll_batch(self._batch_size, self._wait)
        by_tweet: dict[int, list[LikeEvent]] = defaultdict(list)
        for msg in messages:
            try:
                event = LikeEvent.decode(msg.value() or b"")
            except (ValueError, KeyError, TypeError):
                log.error("skipping malformed like event", extra={"offset": msg.offset()})
                continue
            by_tweet[event.tweet_id].append(event)
        await asyncio.gather(*(self.apply(tweet_id, events) for tweet_id, events in by_tweet.items()))
        await self._consumer.commit(messages)
        if messages:
            BATCH.observe(len(messages))
        return len(messages)

    async def apply(self, tweet_id: int, events: list[LikeEvent]) -> None:
        users = sorted({e.user_id for e in events})
        for _ in range(MAX_CONFLICT_RETRIES):
            stored_count, stored = await self._store.like_states(tweet_id, users)
            count, changed = fold(stored_count or 0, stored, events)
            if not changed:
                return
            if await self._store.write_likes(tweet_id, stored_count, max(0, count), changed):
                APPLIED.inc(len(changed))
                return
        raise RuntimeError(f"could not apply likes of tweet {tweet_id}: too much contention")

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
                LAG.labels(GROUP).set(await asyncio.get_running_loop().run_in_executor(None, self._consumer.lag))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - restart from the last committed offsets
                log.warning("like batch failed, re-reading from the last commit: %r", exc)
                self._consumer.close()
                await asyncio.sleep(1.0)
                self._consumer = self._factory()

    def close(self) -> None:
        self._consumer.close()


async def run(cfg: tweet_config.TweetConfig) -> None:
    common = cfg.common
    cql = await CqlSession.connect(common.cql_hosts, common.cql_port, common.cql_keyspace, common.cql_timeout_seconds)
    store = TweetStore(cql, Outbox(cql, None))  # the worker writes no events
    await store.prepare()
    worker = LikeWorker(
        store,
        lambda: BatchConsumer(common.kafka_bootstrap, GROUP, [TOPIC_LIKES], f"like-worker-{common.instance_id}"),
        cfg.like_batch_size,
        cfg.like_batch_wait_ms / 1000,
    )

    async def close() -> None:
        worker.close()
        cql.close()

    await serve(
        common,
        Wiring(
            register=lambda server: None,
            service_names=[],
            probes=[cql.ping],
            close=close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS,
            background=[worker.run_forever],
        ),
    )


def main() -> None:
    cfg = tweet_config.load()
    setup_logging("like_worker", cfg.common.log_level)
    asyncio.run(run(cfg))


if __name__ == "__main__":
    main()
