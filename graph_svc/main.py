"""graph_svc entry point: config, logging, wiring, run."""

from __future__ import annotations

from datetime import timedelta

import grpc
from chirp.graph.v1 import graph_internal_pb2, graph_internal_pb2_grpc, graph_pb2, graph_pb2_grpc

from common import server
from common.cache import connect_redis, connect_state_redis
from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.hidden import HiddenInvalidator, RedisHiddenStore
from common.id_reservations import IdReservations
from common.ids import IdGenerator
from common.kafka import TOPIC_FOLLOWS, AsyncProducer, BatchConsumer
from common.limits import LocalCounters, LoginGuard, RedisCounters, UserLimits
from common.logs import setup_logging
from common.outbox import Outbox
from common.pagination import PageTokens
from common.server import Wiring, serve
from common.worker import ConsumerLoop
from graph_svc import config as graph_config
from graph_svc.accounts import Passwords
from graph_svc.domain import COUNTS_GROUP, Graph
from graph_svc.relations import Relations, RelationStore
from graph_svc.service import GraphInternalService, GraphService
from graph_svc.sessions import CqlSessionStore, Sessions
from graph_svc.store import GraphStore
from graph_svc.tokens import TokenSigner


async def run(cfg: graph_config.GraphConfig) -> None:
    common = cfg.common
    signer = TokenSigner.from_file(cfg.token_key_file, timedelta(seconds=cfg.token_ttl_seconds))
    page_tokens = PageTokens.from_file(cfg.page_token_key_file, cfg.page_token_ttl_seconds)
    cql = await CqlSession.from_config(common)
    producer = AsyncProducer(
        common.kafka_bootstrap, f"graph_svc-{common.instance_id}", on_fatal=server.stop_with_failure
    )
    outbox = Outbox(cql, producer)
    await outbox.prepare()
    store = GraphStore(cql, outbox)
    await store.prepare()
    relation_store = RelationStore(cql)
    await relation_store.prepare()
    session_store = CqlSessionStore(cql, store)
    await session_store.prepare()
    # One generator for every id this process makes: two with the same instance id could repeat an id.
    ids = IdGenerator(common.instance_id)
    id_reservations = IdReservations(cql, common.instance_id, ids)
    await id_reservations.start()
    # Neither is a probe: rate limits lose nothing while their Redis is down (common/limits.py);
    # blocks and mutes answer 503 while the cache is (they must invalidate the hidden-author
    # cache, common/hidden.py), and every other call keeps working.
    redis = connect_redis(common.redis_url)
    state_redis = connect_state_redis(common.redis_state_url, common.redis_url)  # counters: never evicted
    # One count in memory: the hits a full Redis refused, and the logins counted while it is down.
    kept = LocalCounters()
    counters = RedisCounters(state_redis, overflow=kept)
    limits = UserLimits(counters, {"follow": cfg.follow_limit, "signup": cfg.signup_limit})
    graph = Graph(
        store,
        outbox,
        Passwords(cfg.argon2_memory_kib, cfg.argon2_time_cost, cfg.argon2_parallelism),
        signer,
        ids,
        following_ids_limit=cfg.following_list_limit,
        page_tokens=page_tokens,
        limits=limits,
        logins=LoginGuard(counters, cfg.login_limits, fallback=kept),
        blocks=relation_store,
        sessions=Sessions(session_store, signer, ids, timedelta(seconds=cfg.refresh_ttl_seconds)),
    )
    hidden_cache = HiddenInvalidator(RedisHiddenStore(redis))
    relations = Relations(relation_store, graph, page_tokens, hidden_cache=hidden_cache, limits=limits)

    # Follow events are written with the edge's list rows: recounting from them
    # repairs a count that a crash between the edge and its recount left wrong.
    counts = ConsumerLoop(
        COUNTS_GROUP,
        lambda: BatchConsumer(
            common.kafka_bootstrap,
            COUNTS_GROUP,
            [TOPIC_FOLLOWS],
            f"follow-counts-{common.instance_id}",
            common.kafka_client_rack,
        ),
        graph.repair_counts_from,
        500,
        0.2,
    )

    def register(server: grpc.aio.Server) -> None:
        graph_pb2_grpc.add_GraphServiceServicer_to_server(GraphService(graph, relations), server)
        graph_internal_pb2_grpc.add_GraphInternalServiceServicer_to_server(
            GraphInternalService(graph, relations), server
        )

    async def close() -> None:
        # No call runs any more: record the last id, so the successor need not wait.
        await id_reservations.stop()
        counts.close()
        await redis.aclose()
        await state_redis.aclose()
        producer.close()
        # Mark what the fast path delivered while closing, and hand the relay's
        # shards over now rather than when their leases expire.
        await outbox.wait_marked()
        await outbox.release_shards()
        cql.close()

    wiring = Wiring(
        register=register,
        service_names=[
            graph_pb2.DESCRIPTOR.services_by_name["GraphService"].full_name,
            graph_internal_pb2.DESCRIPTOR.services_by_name["GraphInternalService"].full_name,
        ],
        # Kafka is not a probe: follows are durable in the outbox while it is down.
        probes=[cql.ping],
        close=close,
        dependency_errors=CQL_UNAVAILABLE_ERRORS,
        background=[outbox.relay_forever, counts.run_forever, id_reservations.renew_forever],
    )
    await serve(common, wiring)


def main() -> None:
    cfg = graph_config.load()
    setup_logging(cfg.common.service, cfg.common.log_level)
    server.run(run(cfg))


if __name__ == "__main__":
    main()
