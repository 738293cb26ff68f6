"""What syncing the commit log before acknowledging costs: single-row CQL
writes against the running local Cassandra, as the services make them.

    python -m bench.commitlog [--writes 4000] [--concurrency 32]

Run it once with the stack started as usual (batch) and once after
`CHIRP_CQL_COMMITLOG_SYNC=group` (or `periodic`) and a restart of Cassandra; it prints
writes/s, latency percentiles and Cassandra's CPU per write, and the mode it
measured (read from the node's rendered config).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench import idle
from bench.load import percentile
from common.cql import CqlSession
from infra import stack, topology

KEYSPACE = "chirp_bench"


def _cpu_seconds(pid: int) -> float:
    fields = idle.stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[idle.UTIME]) + int(fields[idle.STIME])) / idle.CLK_TCK


async def run(writes: int, concurrency: int) -> None:
    node = topology.cassandra_nodes()[0]
    mode = next(
        line.split(":", 1)[1].strip()
        for line in (stack.CONF / f"{node.name}.yaml").read_text().splitlines()
        if line.startswith("commitlog_sync:")
    )
    cql = await CqlSession.connect(topology.cql_hosts(), topology.CQL_PORT, "system", 10.0)
    await cql.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    await cql.execute(f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.w (k bigint PRIMARY KEY, v text)")
    insert = await cql.prepare(f"INSERT INTO {KEYSPACE}.w (k, v) VALUES (?, ?)")
    pid = int(stack._read_pid(node.name)["pid"])  # type: ignore[index]
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(k: int) -> None:
        async with slots:
            started = time.perf_counter()
            await cql.execute(insert, (k, "x" * 140))
            latencies.append((time.perf_counter() - started) * 1000)

    cpu_before, started = _cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(writes)))
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds(pid) - cpu_before
    latencies.sort()
    await cql.execute(f"DROP KEYSPACE {KEYSPACE}")
    cql.close()
    print(
        f"commitlog_sync {mode}: {writes} writes at concurrency {concurrency}: {writes / elapsed:.0f} writes/s, "
        f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
        f"mean {statistics.fmean(latencies):.1f} ms, Cassandra CPU {cpu / writes * 1000:.3f} ms per write"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.writes, args.concurrency))


if __name__ == "__main__":
    main()
