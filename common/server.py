"""Server bootstrap: gRPC server, health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc
import uvloop
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from common.config import DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS, CommonConfig
from common.interceptors import ServerInterceptor
from common.metrics import serve_metrics

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
# grpcio-reflection serves only v1alpha; current tools (grpcurl, Postman) ask v1
# first. The two protocols' messages are the same on the wire.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
# Probes run every HEALTH_INTERVAL_SECONDS while they pass (each is a store
# round trip in every process: at 2 s, then at 5 s, they were a visible part of
# an idle stack's CPU), and every HEALTH_RECHECK_SECONDS from the first failure
# until one passes: a store outage turns an instance NOT_SERVING within about
# 22 s (a probe may pass on a statement answered up to PING_FRESH_SECONDS before
# the outage; the next, 15 s later, fails, then two rechecks 1 s apart, each up to
# PROBE_TIMEOUT_SECONDS), and it serves again within 1 s of the store. The edge's
# outlier detection ejects an instance whose calls fail long before that.
HEALTH_INTERVAL_SECONDS = 15.0
HEALTH_RECHECK_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.5
FAILED_PROBES_BEFORE_NOT_SERVING = 3
# The health name a liveness probe asks for: SERVING from start to shutdown, whatever the
# stores. "" turns NOT_SERVING while a store is down, which a restart does not fix: a
# liveness probe on it restarted every pod after a minute of a store outage, and a pod
# started while its store is down exits (crash loop, backing off to 5 minutes). Answered
# on the event loop, so a hung loop still fails it.
LIVENESS_SERVICE = "chirp.liveness"
# A client's connection is closed (GOAWAY) after its age, give or take 10%, and its
# calls in flight get MAX_CONNECTION_AGE_GRACE_SECONDS to finish: the client dials
# again and, in Kubernetes, resolves the headless Service again. gRPC's DNS resolver
# resolves only when a connection drops, so without it an instance added by a scale-up
# or a rolling update took none of its peers' internal calls until one did. Calls
# sent as the GOAWAY comes are retried on the new connection by gRPC itself. The age
# is CHIRP_GRPC_MAX_CONNECTION_AGE_SECONDS (common/config.py).
MAX_CONNECTION_AGE_GRACE_SECONDS = 30.0


@dataclass
class Wiring:
    """What a service plugs into the shared server."""

    register: Callable[[grpc.aio.Server], None]
    service_names: Sequence[str]
    probes: Sequence[Probe]
    close: Callable[[], Awaitable[None]]
    # Store errors that mean "unreachable or overloaded" (503, retried by the edge), e.g.
    # common.cql.CQL_UNAVAILABLE_ERRORS. Any other error is INTERNAL; a peer service's
    # error (grpc.aio.AioRpcError) is mapped by its status code and need not be listed.
    dependency_errors: tuple[type[BaseException], ...] = ()
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=tuple)


# Every gRPC server's options but the connection age (services only).
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # Envoy (UPSTREAM_KEEPALIVE_SECONDS) and the services' channels (common/clients.py) ping
    # idle connections every 30 s; gRPC's default (a ping at most every 5 min without data,
    # two strikes) answered that with GOAWAY "too many pings", failing calls in flight.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    # The edge forwards up to 16 KiB of client headers plus its own (the
    # original path again, identity, request id); gRPC's defaults (8 KiB
    # soft, 16 KiB hard) would refuse some of those calls at random.
    ("grpc.max_metadata_size", 64 * 1024),
    ("grpc.absolute_max_metadata_size", 64 * 1024),
)


class Served(NamedTuple):
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    interceptor: ServerInterceptor


def create_server(
    address: str, wiring: Wiring, max_connection_age_seconds: float = DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS
) -> Served:
    interceptor = ServerInterceptor(wiring.dependency_errors)
    aging: list[tuple[str, int]] = []
    if max_connection_age_seconds > 0:  # 0: connections never age
        aging = [
            # gRPC's option is a C int: past 2^31 - 1 ms (24.8 days) it would not be taken.
            ("grpc.max_connection_age_ms", min(int(max_connection_age_seconds * 1000), 2**31 - 1)),
            ("grpc.max_connection_age_grace_ms", int(MAX_CONNECTION_AGE_GRACE_SECONDS * 1000)),
        ]
    server = grpc.aio.server(interceptors=[interceptor], options=[*aging, *SERVER_OPTIONS])
    wiring.register(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (*wiring.service_names, health.SERVICE_NAME))
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind gRPC server to {address}")
    return Served(server, port, health_servicer, interceptor)


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str], pool: DescriptorPool | None = None) -> None:
    """Server reflection, v1 and v1alpha, describing `service_names` from `pool` (default: all linked protos)."""
    servicer = reflection_aio.ReflectionServicer((*service_names, reflection.SERVICE_NAME, REFLECTION_V1), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


async def check_probes(probes: Sequence[Probe]) -> bool:
    async def one(probe: Probe) -> bool:
        try:
            return await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
        except Exception:  # noqa: BLE001 - a failing probe is "not healthy"
            return False

    results = await asyncio.gather(*(one(p) for p in probes))
    return all(results)


@dataclass
class ProbeRecord:
    """What the probes said so far: whether to serve, and when to probe next."""

    failures: int = 0
    serving: bool | None = None  # None until the first probe

    def record(self, passed: bool) -> tuple[bool, float]:
        """Take one probe's result; returns (serve?, seconds until the next probe)."""
        self.failures = 0 if passed else self.failures + 1
        # One slow probe on a busy machine is not an outage: every instance would
        # leave the edge at once. A store that is really gone fails every probe.
        if self.serving is None:
            self.serving = self.failures == 0
        else:
            self.serving = self.failures < FAILED_PROBES_BEFORE_NOT_SERVING
        return self.serving, HEALTH_INTERVAL_SECONDS if self.failures == 0 else HEALTH_RECHECK_SECONDS


async def watch_health(health_servicer: HealthServicer, wiring: Wiring, service: str) -> None:
    """Keep "" and the service names SERVING while the probes pass; LIVENESS_SERVICE
    serves throughout."""
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    record = ProbeRecord()
    last: bool | None = None
    while True:
        ok, delay = record.record(await check_probes(wiring.probes))
        if ok != last:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *wiring.service_names):
                await health_servicer.set(name, status)
            log.info("health changed", extra={"serving": ok, "component": service})
            last = ok
        await asyncio.sleep(delay)


_exit_status = 0


def stop_with_failure() -> None:
    """Stop as on SIGTERM (drain, finish in-flight calls, close clients), then exit with
    status 1: for a failure the process cannot recover from (the platform restarts it).
    Safe from any thread."""
    global _exit_status
    _exit_status = 1
    os.kill(os.getpid(), signal.SIGTERM)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop (libuv: less event-loop overhead per call)."""
    uvloop.run(main)
    if _exit_status:
        sys.exit(_exit_status)


async def serve(config: CommonConfig, wiring: Wiring) -> None:
    """Run until SIGTERM/SIGINT, then drain: NOT_SERVING, finish in-flight, close clients."""
    serve_metrics(config.grpc_host, config.metrics_port)
    server, port, health_servicer, interceptor = create_server(
        f"{config.grpc_host}:{config.grpc_port}", wiring, config.grpc_max_connection_age_seconds
    )
    await server.start()
    log.info("listening", extra={"grpc_port": port, "metrics_port": config.metrics_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(watch_health(health_servicer, wiring, config.service))]
    tasks += [asyncio.create_task(job()) for job in wiring.background]
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    log.info("shutting down")
    # The edge stops routing here at this instance's first answer from now on (with
    # traffic), or at its next health check (NOT_SERVING); calls it sent before
    # either are served during the drain.
    interceptor.start_draining()
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(config.drain_seconds)
    await server.stop(config.shutdown_grace_seconds)
    # After the calls in flight: they may need what the background keeps up (the id
    # reservation's renewals: a call late in the grace was refused its ids).
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await wiring.close()
    log.info("stopped")
