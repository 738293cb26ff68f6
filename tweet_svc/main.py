"""tweet_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

import asyncio

import grpc
from chirp.tweet.v1 import tweet_pb2, tweet_pb2_grpc

from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.logs import setup_logging
from common.server import Wiring, serve
from tweet_svc import config as tweet_config
from tweet_svc.service import TweetService


async def run(cfg: tweet_config.TweetConfig) -> None:
    common = cfg.common
    cql = await CqlSession.connect(common.cql_hosts, common.cql_port, common.cql_keyspace, common.cql_timeout_seconds)

    def register(server: grpc.aio.Server) -> None:
        tweet_pb2_grpc.add_TweetServiceServicer_to_server(TweetService(), server)  # type: ignore[abstract]

    async def close() -> None:
        cql.close()

    await serve(
        common,
        Wiring(
            register=register,
            service_names=[tweet_pb2.DESCRIPTOR.services_by_name["TweetService"].full_name],
            probes=[cql.ping],
            close=close,
            dependency_errors=CQL_UNAVAILABLE_ERRORS,
        ),
    )


def main() -> None:
    cfg = tweet_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    asyncio.run(run(cfg))


if __name__ == "__main__":
    main()
