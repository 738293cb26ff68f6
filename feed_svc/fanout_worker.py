"""Fan-out worker: consumes tweet and follow events and updates home timelines.

python -m feed_svc.fanout_worker
"""

from __future__ import annotations

from common import server
from common.cache import redis_ping
from common.cql import CQL_UNAVAILABLE_ERRORS
from common.kafka import TOPIC_FOLLOWS, TOPIC_TWEETS, BatchConsumer
from common.logs import setup_logging
from common.priority import lower_priority
from common.server import Wiring, serve
from common.worker import ConsumerLoop
from feed_svc import config as feed_config
from feed_svc.activity import ActiveReaders
from feed_svc.fanout import GROUP, Fanout
from feed_svc.wiring import build

COMMIT_INTERVAL_SECONDS = 1.0


async def run(cfg: feed_config.FeedConfig) -> None:
    common = cfg.common
    parts = await build(cfg, replicated_writes=True)
    fanout = Fanout(
        parts.cache,
        parts.store,
        parts.peers.follower_count,
        parts.peers.follower_page,
        parts.peers.recent_ids,
        cfg.celebrity_threshold,
        cfg.fanout_keys_at_once,
        ActiveReaders(parts.cache, cfg.active_days),
        cfg.celebrity_demote_below,
        parts.peers.follows,
    )
    loop = ConsumerLoop(
        GROUP,
        lambda: BatchConsumer(
            common.kafka_bootstrap,
            GROUP,
            [TOPIC_TWEETS, TOPIC_FOLLOWS],
            f"fanout-{common.instance_id}",
            common.kafka_client_rack,
        ),
        fanout,
        cfg.fanout_batch_size,
        0.05,
        # Every step of the fan-out is idempotent (feed_svc/fanout.py): committing once a
        # second instead of after every batch costs a restarted worker a second of re-applied events.
        commit_interval_seconds=COMMIT_INTERVAL_SECONDS,
    )

    async def close() -> None:
        loop.close()
        await parts.close()

    await serve(
        common,
        Wiring(
            register=lambda server: None,
            service_names=[],
            probes=[parts.cql.ping, lambda: redis_ping(parts.redis)],
            close=close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS,
            background=[loop.run_forever],
        ),
    )


def main() -> None:
    cfg = feed_config.load()
    lower_priority()  # first: the threads the worker starts inherit it
    setup_logging("fanout_worker", cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
