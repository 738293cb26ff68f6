"""feed_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

import grpc
from chirp.feed.v1 import feed_pb2, feed_pb2_grpc

from common import server
from common.cache import REDIS_UNAVAILABLE_ERRORS
from common.cql import CQL_UNAVAILABLE_ERRORS
from common.logs import setup_logging
from common.pagination import PageTokens
from common.server import Wiring, serve
from feed_svc import config as feed_config
from feed_svc.home_feed import HomeFeed
from feed_svc.service import FeedService
from feed_svc.wiring import build


async def run(cfg: feed_config.FeedConfig) -> None:
    page_tokens = PageTokens.from_file(cfg.page_token_key_file, cfg.page_token_ttl_seconds)
    parts = await build(cfg)
    feed = HomeFeed(
        parts.cache,
        parts.store,
        parts.peers.following_ids,
        parts.peers.recent_ids,
        parts.peers.batch_tweets,
        cfg.celebrity_threshold,
        cfg.timeline_size,
        page_tokens=page_tokens,
        hidden_authors=parts.hidden,
        liked_ids=parts.peers.liked_tweet_ids,
        rebuilds=parts.rebuilds,
        like_counts=parts.peers.like_counts,
        refresh_counts=parts.peers.refresh_like_counts,
        refresh_recent=parts.peers.refresh_recent,
        refresh_following=True,
        blockers_among=parts.peers.blockers_among,
    )

    def register(server: grpc.aio.Server) -> None:
        feed_pb2_grpc.add_FeedServiceServicer_to_server(FeedService(feed), server)

    await serve(
        cfg.common,
        Wiring(
            register=register,
            service_names=[feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name],
            # Redis is not a probe: without it reads are served from the CQL store.
            probes=[parts.cql.ping],
            close=parts.close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS + REDIS_UNAVAILABLE_ERRORS,
        ),
    )


def main() -> None:
    cfg = feed_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
