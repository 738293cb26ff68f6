"""The edge's own gRPC endpoints, routed by Envoy (envoy/render.py): server
reflection (v1 and v1alpha) that lists and describes the public services only,
and grpc.health.v1 Check answering from the service instances' own health.
Internal services (chirp.*.v1.*InternalService) are in the descriptor set the
transcoder reads but never in what this serves.

    python envoy/sidecar.py [--host ADDR] [--port N] [--target SERVICE=TARGET ...]

Without --target it asks every local instance (infra/topology.py) on
127.0.0.1; in Kubernetes, one --target per public service names its headless
Service (k8s/envoy/deployment.yaml).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common import clients
from common.logs import setup_logging
from common.server import SERVER_OPTIONS, add_reflection, run
from infra import topology

log = logging.getLogger(__name__)


def _load_renderer() -> ModuleType:
    """envoy/render.py by path: the name `envoy` belongs to the Envoy wheel's package."""
    spec = importlib.util.spec_from_file_location("chirp_envoy_render", Path(__file__).with_name("render.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


render = sys.modules.get("chirp_envoy_render") or _load_renderer()

PUBLIC_SERVICES = tuple(render.SERVICE_DESCRIPTORS)
# --target names: the topology's service names (graph_svc, ...).
PUBLIC_BY_NAME = {svc.name: svc for svc in topology.SERVICES if svc.grpc_service in PUBLIC_SERVICES}
# Error details the services send (google.rpc.ErrorInfo): tools decode them by reflection.
EXTRA_FILES = ("google/rpc/error_details.proto",)
INSTANCE_TIMEOUT_S = 0.5
# A service's health is asked of its instances at most this often; every Check in
# between (and every one while the asking runs) shares that answer. Health needs no
# token, so without this each anonymous Check cost a call to every instance.
ANSWER_SECONDS = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def public_files(
    files: Iterable[descriptor_pb2.FileDescriptorProto], services: Iterable[str], extra: Iterable[str] = ()
) -> list[descriptor_pb2.FileDescriptorProto]:
    """The files defining `services`, the `extra` ones, and what they import, dependencies first."""
    by_name = {f.name: f for f in files}
    wanted = set(services)
    roots = [f.name for f in by_name.values() if any(f"{f.package}.{s.name}" in wanted for s in f.service)]
    roots += [name for name in extra if name in by_name]
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dependency in by_name[name].dependency:
            visit(dependency)
        ordered.append(by_name[name])

    for root in sorted(roots):
        visit(root)
    return ordered


def public_pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(render.DESCRIPTOR.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for proto in public_files(files, PUBLIC_SERVICES, EXTRA_FILES):
        pool.Add(proto)
    health_file = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(health_file)
    pool.Add(health_file)
    return pool


def health_targets(targets: Mapping[str, str]) -> dict[str, list[str]]:
    """Public gRPC service -> the gRPC targets whose health makes up its own.

    `targets` ({topology service name: target}) names every public service or
    none; none means each local instance on its own port. A dns:/// target of
    a headless Service is one round-robin channel over its pods, and the
    service counts as SERVING when the one pod a call lands on says so: an
    approximation of "any instance", close because the headless Service
    lists only pods whose readiness probe (a health check of that service)
    passes, and cheap (one call, no per-pod channels or resolution here).
    """
    if not targets:
        return {
            svc.grpc_service: [f"{topology.HOST}:{inst.port}" for inst in topology.instances(svc)]
            for svc in PUBLIC_BY_NAME.values()
        }
    unknown = sorted(set(targets) - set(PUBLIC_BY_NAME))
    if unknown:
        raise ValueError(f"not a public service: {', '.join(unknown)} (known: {', '.join(sorted(PUBLIC_BY_NAME))})")
    missing = sorted(set(PUBLIC_BY_NAME) - set(targets))
    if missing:
        raise ValueError(f"no --target for {', '.join(missing)}: give one for every public service or none")
    return {PUBLIC_BY_NAME[name].grpc_service: [target] for name, target in targets.items()}


class EdgeHealth(health_pb2_grpc.HealthServicer):
    """A public service is SERVING while any of its targets says so; "" while all of them are.
    Each service's answer is shared for ANSWER_SECONDS."""

    def __init__(
        self, channels: dict[str, list[grpc.aio.Channel]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stubs = {name: [health_pb2_grpc.HealthStub(ch) for ch in chs] for name, chs in channels.items()}
        self._clock = clock
        self._answers: dict[str, tuple[float, asyncio.Future[bool]]] = {}

    async def _instance(self, stub: health_pb2_grpc.HealthStub, service: str) -> bool:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=INSTANCE_TIMEOUT_S)
        except grpc.RpcError:
            return False
        return bool(reply.status == SERVING)

    async def _ask(self, service: str) -> bool:
        return any(await asyncio.gather(*(self._instance(stub, service) for stub in self._stubs[service])))

    async def _service(self, service: str) -> bool:
        now = self._clock()
        answer = self._answers.get(service)
        if answer is None or now - answer[0] >= ANSWER_SECONDS:
            answer = self._answers[service] = (now, asyncio.ensure_future(self._ask(service)))
        return await asyncio.shield(answer[1])  # a caller giving up leaves the others' answer alone

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service and request.service not in self._stubs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        names = [request.service] if request.service else list(self._stubs)
        up = all(await asyncio.gather(*(self._service(name) for name in names)))
        return health_pb2.HealthCheckResponse(status=SERVING if up else NOT_SERVING)


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    targets: dict[str, list[str]]  # health_targets()


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--host", default=topology.HOST, help="address to listen on (in a pod 0.0.0.0: the kubelet probes the pod IP)"
    )
    parser.add_argument("--port", type=int, default=render.SIDECAR_PORT)
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="SERVICE=TARGET",
        help="gRPC target of a public service, e.g. graph_svc=dns:///graph-svc-headless.chirp.svc.cluster.local:50051",
    )
    args = parser.parse_args(argv)
    targets: dict[str, str] = {}
    for pair in args.target:
        name, _, target = pair.partition("=")
        if not target or name in targets:
            parser.error(f"--target {pair!r}: expected SERVICE=TARGET, once per service")
        targets[name] = target
    try:
        return Options(args.host, args.port, health_targets(targets))
    except ValueError as e:
        parser.error(str(e))


async def serve(options: Options) -> None:
    # Channels connect on the first Check and make no calls of their own: idle costs nothing.
    channels = {name: [clients.channel(target) for target in targets] for name, targets in options.targets.items()}
    # The services' options: Envoy pings this server too (envoy/render.py), which gRPC's
    # defaults answer with GOAWAY "too many pings" on an idle connection.
    server = grpc.aio.server(options=list(SERVER_OPTIONS))
    health_pb2_grpc.add_HealthServicer_to_server(EdgeHealth(channels), server)
    add_reflection(server, (*PUBLIC_SERVICES, health.SERVICE_NAME), public_pool())
    address = f"{options.host}:{options.port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"could not bind the edge sidecar to {address}")
    await server.start()
    log.info("listening", extra={"grpc_port": options.port, "targets": options.targets})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    for group in channels.values():
        for channel in group:
            await channel.close(None)


def main() -> None:
    options = parse_args()
    setup_logging("edge_sidecar", "INFO")
    run(serve(options))


if __name__ == "__main__":
    main()
