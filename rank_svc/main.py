"""rank_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

import grpc
from chirp.rank.v1 import rank_pb2, rank_pb2_grpc

from common import server
from common.cache import REDIS_UNAVAILABLE_ERRORS, connect_redis, connect_state_redis, redis_ping
from common.clients import Peers
from common.hidden import HiddenAuthorsCache, RedisHiddenStore
from common.logs import setup_logging
from common.server import Wiring, serve
from rank_svc import config as rank_config
from rank_svc.reads import READ_REFRESH_SECONDS, TrendingCopy, ViewerLikes, with_current_state
from rank_svc.service import RankService
from rank_svc.store import TrendingKeys, TrendingStore, TweetCacheReader


async def run(cfg: rank_config.RankConfig) -> None:
    redis = connect_redis(cfg.common.redis_url)
    # The tallies and the computed list are in the state Redis (never evicted); tweets and
    # hidden-author sets in the cache.
    state_redis = connect_state_redis(cfg.common.redis_state_url, cfg.common.redis_url)
    store = TrendingStore(state_redis, cfg.window_hours, cfg.half_life_hours, TrendingKeys(shards=cfg.tally_shards))
    cache = TweetCacheReader(redis)
    trending = TrendingCopy(
        with_current_state(store.load, cache.tweets), min(READ_REFRESH_SECONDS, cfg.interval_seconds)
    )
    # graph_svc says whose tweets a signed-in viewer hides (cached, common/hidden.py); anonymous reads never ask.
    # A set read near its end is loaded again after the read, as feed_svc does.
    peers = Peers(graph_target=cfg.graph_target, tweet_target=cfg.tweet_target)
    hidden = HiddenAuthorsCache(RedisHiddenStore(redis), peers.hidden_author_ids, redis=redis, reload_after_reads=True)
    # A viewer's liked_by_me come from tweet_svc's cache; tweet_svc is asked only for what it misses.
    likes = ViewerLikes(cache.tweets, peers.liked_tweet_ids)

    def register(server: grpc.aio.Server) -> None:
        # A viewer blocked by more accounts than their set lists: graph_svc is asked which
        # authors about to be shown block them (RankService._visible).
        rank_pb2_grpc.add_RankServiceServicer_to_server(
            RankService(trending, hidden.hidden, likes.liked, peers.blockers_among), server
        )

    async def serving() -> bool:
        # With a copy to serve, a Redis outage does not stop this instance.
        return trending.has_copy() or await redis_ping(state_redis)

    async def close() -> None:
        await peers.close()
        await redis.aclose()
        await state_redis.aclose()

    await serve(
        cfg.common,
        Wiring(
            register=register,
            service_names=[rank_pb2.DESCRIPTOR.services_by_name["RankService"].full_name],
            probes=[serving],
            close=close,
            dependency_errors=REDIS_UNAVAILABLE_ERRORS,
        ),
    )


def main() -> None:
    cfg = rank_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
