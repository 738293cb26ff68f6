"""feed_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

import asyncio

import grpc
from chirp.feed.v1 import feed_pb2, feed_pb2_grpc

from common.cache import REDIS_UNAVAILABLE_ERRORS, connect_redis, redis_ping
from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.logs import setup_logging
from common.server import Wiring, serve
from feed_svc import config as feed_config
from feed_svc.service import FeedService


async def run(cfg: feed_config.FeedConfig) -> None:
    common = cfg.common
    cql = await CqlSession.connect(common.cql_hosts, common.cql_port, common.cql_keyspace, common.cql_timeout_seconds)
    redis = connect_redis(common.redis_url)

    def register(server: grpc.aio.Server) -> None:
        feed_pb2_grpc.add_FeedServiceServicer_to_server(FeedService(), server)  # type: ignore[abstract]

    async def close() -> None:
        await redis.aclose()
        cql.close()

    await serve(
        common,
        Wiring(
            register=register,
            service_names=[feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name],
            probes=[cql.ping, lambda: redis_ping(redis)],
            close=close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS + REDIS_UNAVAILABLE_ERRORS,
        ),
    )


def main() -> None:
    cfg = feed_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    asyncio.run(run(cfg))


if __name__ == "__main__":
    main()
