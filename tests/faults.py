"""Stopping and restarting real components of the running stack, for fault
tests. Only processes `make up` started (by their pid files) are touched."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from infra import stack, topology
from tests.worker_groups import wait_assigned


def stop(name: str) -> None:
    """Stop one component of the stack (SIGTERM by pid, as `make down` does)."""
    timeouts = {c.name: c.stop_timeout for c in stack.components(prepare=False)}
    assert stack._stop(name, timeouts.get(name, 30.0)), f"{name} was not running"


def restore() -> None:
    """Start whatever is down again (`make up` is idempotent), then wait until the edge
    routes to every instance and every worker group consumes every partition again,
    as the tests after a fault assume:
    a worker whose broker went away rejoins its group, and its events wait meanwhile."""
    result = subprocess.run(
        [sys.executable, "-m", "infra.stack", "up"], cwd=stack.ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A restarted instance is admitted at the edge's next check (up waits 30 s for it,
    # then only warns); an instance whose store just came back passes its probes first.
    wait_for(stack.edge_routes_every_instance, 60, "the edge to route to every instance of every service")
    wait_assigned(topology.kafka_bootstrap())


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_for_async(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """`wait_for` inside an event loop: the check is awaited, and the wait lets the loop run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Proxy:
    """A TCP proxy in front of one Redis node: cut() refuses and drops connections, as a
    dead node does; stall() swallows traffic, as a node that stopped answering does;
    `reply_delay` holds the next reply back that long (once), as a node or a loop too
    slow for a moment does, while the commands still reach the node."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.stalled = False
        self.reply_delay = 0.0

    async def start(self) -> None:
        self.stalled = False
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    def stall(self) -> None:
        self.stalled = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, replies=True))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool = False) -> None:
        try:
            while data := await source.read(65536):
                if replies and self.reply_delay:
                    delay, self.reply_delay = self.reply_delay, 0.0
                    await asyncio.sleep(delay)
                if not self.stalled:
                    sink.write(data)
                    await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()
