"""The shared server bootstrap against the real CQL store: health, reflection,
error mapping and graceful shutdown, over a real channel on a free port; and
graph_svc's internal reads of hidden authors as their readers' client sees them."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import grpc
from chirp.graph.v1 import graph_internal_pb2_grpc, graph_pb2, graph_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.clients import Peers, channel
from common.cql import CQL_UNAVAILABLE_ERRORS, CqlSession
from common.hidden import BLOCKERS_UNLISTED
from common.ids import IdGenerator
from common.interceptors import IMMEDIATE_HEALTH_CHECK_FAIL
from common.server import Served, Wiring, check_probes, create_server
from graph_svc.relations import Relations, RelationStore
from graph_svc.service import GraphInternalService, GraphService
from infra import stack
from tests.conftest import build_graph, unique_name

SERVICE = "chirp.graph.v1.GraphService"


async def _graph_server(cql: CqlSession) -> Served:
    graph = await build_graph(cql, IdGenerator(900))
    relation_store = RelationStore(cql)
    await relation_store.prepare()
    relations = Relations(relation_store, graph)

    async def close() -> None:
        return None

    wiring = Wiring(
        register=lambda server: graph_pb2_grpc.add_GraphServiceServicer_to_server(
            GraphService(graph, relations), server
        ),
        service_names=[SERVICE],
        probes=[cql.ping],
        close=close,
        dependency_errors=CQL_UNAVAILABLE_ERRORS,
    )
    served = create_server("127.0.0.1:0", wiring)
    await served.server.start()
    assert await check_probes(wiring.probes)
    await served.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return served


async def test_graph_service_serves_health_reflection_and_errors(cql: CqlSession) -> None:
    server, port, health, interceptor = await _graph_server(cql)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING

            stub = graph_pb2_grpc.GraphServiceStub(channel)
            name = unique_name()
            created = await stub.CreateUser(
                graph_pb2.CreateUserRequest(username=name, password="correct horse"), timeout=5
            )
            get = stub.GetUser(graph_pb2.GetUserRequest(user_id=created.user.user_id), timeout=5)
            assert (await get).user == created.user
            (header,) = IMMEDIATE_HEALTH_CHECK_FAIL
            assert header not in tuple(await get.initial_metadata() or ())

            try:
                await stub.GetUser(graph_pb2.GetUserRequest(user_id=1), timeout=5)
                raise AssertionError("expected NOT_FOUND")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                assert "grpc-status-details-bin" in [m[0] for m in (err.trailing_metadata() or ())]  # type: ignore[index]

            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            async for reply in replies:
                names = {s.name for s in reply.list_services_response.service}
                assert SERVICE in names and "grpc.health.v1.Health" in names
                break

            interceptor.start_draining()
            await health.enter_graceful_shutdown()
            status = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
            )
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Draining, it still serves, and every answer, success or refusal, tells the
            # edge to stop routing to it at once.
            get = stub.GetUser(graph_pb2.GetUserRequest(user_id=created.user.user_id), timeout=5)
            assert (await get).user == created.user
            assert header in tuple(await get.initial_metadata() or ())
            # A refusal's mark rides with its status and details (one frame, which the
            # edge reads its retry decision from), no headers ahead of them.
            missing = stub.GetUser(graph_pb2.GetUserRequest(user_id=1), timeout=5)
            try:
                await missing
                raise AssertionError("expected NOT_FOUND")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                trailing = tuple(err.trailing_metadata() or ())
                assert header in trailing
                assert "grpc-status-details-bin" in [m[0] for m in trailing]  # type: ignore[index]
            assert header not in tuple(await missing.initial_metadata() or ())
    finally:
        await server.stop(1)


async def test_sign_up_is_unique_ignoring_case_under_a_race(cql: CqlSession) -> None:
    import asyncio

    from common.errors import AlreadyExists

    graph = await build_graph(cql, IdGenerator(901))
    name = unique_name("Race")
    results = await asyncio.gather(
        graph.sign_up(name, "correct horse"),
        graph.sign_up(name.upper(), "correct horse"),
        graph.sign_up(name.lower(), "correct horse"),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    # A store that times out (a loaded single-node Cassandra under the whole suite) is a
    # 503 to the client, not a second account: never two winners, and every other answer
    # is "taken" or that timeout.
    timed_out = [e for e in errors if isinstance(e, CQL_UNAVAILABLE_ERRORS)]
    assert all(isinstance(e, (AlreadyExists, *CQL_UNAVAILABLE_ERRORS)) for e in errors), results
    assert len(winners) == 1 or (len(winners) == 0 and timed_out), results


async def test_peers_read_a_bounded_hidden_set_and_ask_about_the_blockers_past_it(cql: CqlSession) -> None:
    """graph_svc lists a user's blockers in their hidden set up to its bound and says
    when there are more (ListHiddenAuthorIds over the real CQL rows); the readers'
    client marks such a set and asks about the others (GetRelations)."""
    graph = await build_graph(cql, IdGenerator(902))
    relation_store = RelationStore(cql)
    await relation_store.prepare()
    relations = Relations(relation_store, graph, blockers_listed=2)
    users = [(await graph.sign_up(unique_name("Bnd"), "correct horse")).user_id for _ in range(4)]
    me, blockers = users[0], users[1:]
    for blocker in blockers[:2]:
        await relations.block(blocker, me)

    server = grpc.aio.server()
    graph_internal_pb2_grpc.add_GraphInternalServiceServicer_to_server(GraphInternalService(graph, relations), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    peers = Peers(graph_target=f"127.0.0.1:{port}")
    try:
        assert await peers.hidden_author_ids(me) == frozenset(blockers[:2])  # all listed: no mark
        await relations.block(blockers[2], me)
        hidden = await peers.hidden_author_ids(me)
        assert BLOCKERS_UNLISTED in hidden and len(hidden - {BLOCKERS_UNLISTED}) == 2
        assert hidden - {BLOCKERS_UNLISTED} < set(blockers)
        assert await peers.blockers_among(me, [*users, *users]) == set(blockers)
        await relations.unblock(blockers[0], me)
        assert await peers.hidden_author_ids(me) == frozenset(blockers[1:])
    finally:
        await peers.close()
        await server.stop(0)


async def _peer_server(max_connection_age_seconds: float) -> Served:
    """A server whose one method answers, after the number of seconds asked, with the caller's address."""

    async def peer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await asyncio.sleep(float(request or b"0"))
        return context.peer().encode()

    handler = grpc.method_handlers_generic_handler("test.Peer", {"Get": grpc.unary_unary_rpc_method_handler(peer)})

    async def close() -> None:
        return None

    wiring = Wiring(
        register=lambda server: server.add_generic_rpc_handlers((handler,)), service_names=[], probes=[], close=close
    )
    served = create_server("127.0.0.1:0", wiring, max_connection_age_seconds=max_connection_age_seconds)
    await served.server.start()
    return served


async def test_a_connection_past_its_age_is_replaced_and_its_calls_finish() -> None:
    """A client dials again after the server's connection age, so it resolves its
    target again (an added instance gets calls), and a call in flight across the
    age finishes on the old connection."""
    served = await _peer_server(1.0)
    try:
        async with channel(f"127.0.0.1:{served.port}") as client:  # the services' channel settings
            get = client.unary_unary("/test.Peer/Get", None, None)
            first = await get(b"", timeout=2)
            assert await get(b"", timeout=2) == first  # one connection while it is young
            slow = asyncio.ensure_future(get(b"2.5", timeout=5))  # still running at the age
            await asyncio.sleep(2.0)
            assert await get(b"", timeout=2) != first
            assert await slow == first
    finally:
        await served.server.stop(0)


async def test_a_connection_age_of_zero_keeps_connections() -> None:
    served = await _peer_server(0)
    try:
        async with channel(f"127.0.0.1:{served.port}") as client:
            get = client.unary_unary("/test.Peer/Get", None, None)
            first = await get(b"", timeout=2)
            await asyncio.sleep(1.5)
            assert await get(b"", timeout=2) == first
    finally:
        await served.server.stop(0)


SERVES_THROUGH_SHUTDOWN = """
import asyncio
import grpc
from common import server
from common.config import load_common

async def main(port):
    alive = [True]

    async def background():
        try:
            await asyncio.Event().wait()
        finally:
            alive[0] = False

    async def slow(request, context):
        await asyncio.sleep(1.5)
        return b"alive" if alive[0] else b"cancelled"

    handler = grpc.method_handlers_generic_handler("test.Slow", {"Get": grpc.unary_unary_rpc_method_handler(slow)})

    async def close():
        return None

    env = {"CHIRP_GRPC_PORT": port, "CHIRP_METRICS_PORT": "0", "CHIRP_DRAIN_SECONDS": "0.2"}
    wiring = server.Wiring(
        register=lambda s: s.add_generic_rpc_handlers((handler,)),
        service_names=[], probes=[], close=close, background=[background],
    )
    await server.serve(load_common(env, "test", 0), wiring)

import sys
server.run(main(sys.argv[1]))
"""


async def test_background_tasks_run_until_the_calls_in_flight_at_a_stop_finish() -> None:
    """A call may need what the background keeps up (the id reservation's renewals): a
    SIGTERM during a call cancels the background only after the call ended."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", SERVES_THROUGH_SHUTDOWN, str(port)], cwd=stack.ROOT)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
            await asyncio.wait_for(client.channel_ready(), 20)
            call = asyncio.ensure_future(client.unary_unary("/test.Slow/Get", None, None)(b"", timeout=10))
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert await call == b"alive"
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
