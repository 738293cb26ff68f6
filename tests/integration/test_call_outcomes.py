"""How the shared server counts a call that never answered, over a real channel on a
free port: one whose deadline passed while its handler worked is DEADLINE_EXCEEDED
(the availability rule of infra/prometheus/recording_rules.yml counts it), one its
client cancelled is CANCELLED; neither is OK, as both were before."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from common.server import Wiring, create_server

SERVICE = "chirp.test.v1.OutcomeService"


def handled(method: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def _server(started: asyncio.Event) -> tuple[grpc.aio.Server, int]:
    async def stall(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started.set()
        await asyncio.sleep(10)
        return b""

    async def close() -> None:
        return None

    def register(server: grpc.aio.Server) -> None:
        handlers = {name: grpc.unary_unary_rpc_method_handler(stall) for name in ("Expire", "Abandon")}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    server, port, _, _ = create_server(
        "127.0.0.1:0", Wiring(register=register, service_names=[SERVICE], probes=[], close=close)
    )
    await server.start()
    return server, port


async def _counted(method: str, code: str, before: float) -> None:
    """The server counts a call when its handler ends, a moment after the client saw it end."""
    async with asyncio.timeout(5):
        while handled(method, code) - before < 1:
            await asyncio.sleep(0.02)


async def test_a_call_whose_deadline_passed_is_deadline_exceeded_and_one_cancelled_is_cancelled() -> None:
    started = asyncio.Event()
    server, port = await _server(started)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 5)  # the deadline is the call's alone
            expire = channel.unary_unary(f"/{SERVICE}/Expire", None, None)
            expired_before, ok_before = handled("Expire", "DEADLINE_EXCEEDED"), handled("Expire", "OK")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await expire(b"", timeout=1.0)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert started.is_set()  # the handler was running when the deadline passed
            await _counted("Expire", "DEADLINE_EXCEEDED", expired_before)
            assert handled("Expire", "OK") == ok_before

            started.clear()
            abandon = channel.unary_unary(f"/{SERVICE}/Abandon", None, None)
            cancelled_before, ok_before = handled("Abandon", "CANCELLED"), handled("Abandon", "OK")
            call = abandon(b"", timeout=30)
            await asyncio.wait_for(started.wait(), 5)  # the handler runs, then its client gives up
            call.cancel()
            await _counted("Abandon", "CANCELLED", cancelled_before)
            assert handled("Abandon", "OK") == ok_before
    finally:
        await server.stop(0)
