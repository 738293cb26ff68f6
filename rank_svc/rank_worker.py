"""Rank worker entry point: folds like events into hourly tallies and, every
CHIRP_RANK_INTERVAL_SECONDS (one instance at a time), recomputes the trending
list into Redis. The rules live in rank_svc/tallies.py and rank_svc/domain.py.

    python -m rank_svc.rank_worker
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from common import server
from common.cache import REDIS_UNAVAILABLE_ERRORS, connect_state_redis, redis_ping
from common.clients import Peers
from common.kafka import TOPIC_LIKES
from common.logs import setup_logging
from common.priority import lower_priority
from common.redis_memory import MemoryWatch
from common.server import Wiring, serve
from rank_svc import config as rank_config
from rank_svc.domain import Ranker
from rank_svc.events import FoldingLoop, LikesConsumer
from rank_svc.store import TrendingKeys, TrendingStore
from rank_svc.tallies import GROUP, LikeFolder, Partition

BATCH_SIZE = 1000
BATCH_WAIT_SECONDS = 0.2


async def run(cfg: rank_config.RankConfig) -> None:
    common = cfg.common
    redis = connect_state_redis(common.redis_state_url, common.redis_url)  # the tallies: never evicted
    memory = MemoryWatch(common.redis_state_url)  # how close it is to refusing writes
    peers = Peers(graph_target=cfg.graph_target, tweet_target=cfg.tweet_target)
    store = TrendingStore(redis, cfg.window_hours, cfg.half_life_hours, TrendingKeys(shards=cfg.tally_shards))
    ranker = Ranker(store, peers.batch_tweets, peers.users, cfg.follower_weight)
    holder = f"{socket.gethostname()}-{common.instance_id}"

    def consumer(on_revoke: Callable[[list[Partition]], None]) -> LikesConsumer:
        return LikesConsumer(
            common.kafka_bootstrap,
            GROUP,
            [TOPIC_LIKES],
            f"rank-{common.instance_id}",
            on_revoke,
            common.kafka_client_rack,
        )

    loop = FoldingLoop(GROUP, consumer, LikeFolder(store, cfg.window_hours), BATCH_SIZE, BATCH_WAIT_SECONDS)

    async def recompute_forever() -> None:
        await ranker.recompute_forever(holder, cfg.interval_seconds)

    async def close() -> None:
        loop.close()
        await peers.close()
        await redis.aclose()
        await memory.close()

    await serve(
        common,
        Wiring(
            register=lambda server: None,
            service_names=[],
            probes=[lambda: redis_ping(redis)],
            close=close,
            dependency_errors=REDIS_UNAVAILABLE_ERRORS,
            background=[loop.run_forever, recompute_forever, memory.run_forever],
        ),
    )


def main() -> None:
    cfg = rank_config.load()
    lower_priority()  # first: the threads the worker starts inherit it
    setup_logging("rank_worker", cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
