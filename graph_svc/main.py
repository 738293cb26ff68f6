"""graph_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

import asyncio
import logging

import grpc
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc

from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.ids import IdGenerator
from common.logs import setup_logging
from common.server import Wiring, serve
from graph_svc import config as graph_config
from graph_svc.accounts import Passwords
from graph_svc.domain import Graph
from graph_svc.service import GraphService
from graph_svc.store import GraphStore

log = logging.getLogger(__name__)


async def run(cfg: graph_config.GraphConfig) -> None:
    common = cfg.common
    cql = await CqlSession.connect(common.cql_hosts, common.cql_port, common.cql_keyspace, common.cql_timeout_seconds)
    store = GraphStore(cql)
    await store.prepare()
    graph = Graph(
        store,
        Passwords(cfg.argon2_memory_kib, cfg.argon2_time_cost, cfg.argon2_parallelism),
        IdGenerator(common.instance_id),
    )

    def register(server: grpc.aio.Server) -> None:
        graph_pb2_grpc.add_GraphServiceServicer_to_server(GraphService(graph), server)  # type: ignore[abstract]

    async def close() -> None:
        cql.close()

    wiring = Wiring(
        register=register,
        service_names=[graph_pb2.DESCRIPTOR.services_by_name["GraphService"].full_name],
        probes=[cql.ping],
        close=close,
        dependency_errors=CQL_UNAVAILABLE_ERRORS,
    )
    await serve(common, wiring)


def main() -> None:
    cfg = graph_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    asyncio.run(run(cfg))


if __name__ == "__main__":
    main()
