"""Seed a synthetic social graph straight into the CQL store, in the schema the
services use (so every read path works on it as on organic data).

    python -m bench.seed [--users 100000] [--edges 2000000] [--tweets-per-user 2]

Follower counts follow a power law: a handful of celebrities get 10k to 100k
followers (scaled to --users), everyone else's followers come from a Zipf
distribution over popularity ranks, and out-degrees are heavy-tailed too.
A sample of users is named as readers for the benchmarks. Writes are grouped per partition into unlogged
batches. A manifest for the benchmarks goes to .state/bench/seed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher, Type
from cassandra.query import BatchStatement, BatchType

from common.buckets import bucket_of
from common.cql import CqlSession
from common.ids import CHIRP_EPOCH_MS, INSTANCE_BITS, SEQUENCE_BITS, id_time_ms
from common.outbox import Outbox
from graph_svc.store import GraphStore
from infra import topology

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / ".state" / "bench" / "seed.json"
PASSWORD = "bench password"
SEED_INSTANCE = 1001  # a Snowflake instance id no running service uses
CONCURRENCY = 128
BATCH_ROWS = 50


def snowflake(unix_ms: int, sequence: int) -> int:
    """An id as a service would have made it at `unix_ms`, from the seed's own instance id."""
    return (
        ((unix_ms - CHIRP_EPOCH_MS) << (INSTANCE_BITS + SEQUENCE_BITS))
        | (SEED_INSTANCE << SEQUENCE_BITS)
        | (sequence & ((1 << SEQUENCE_BITS) - 1))
    )


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.started = label, max(total, 1), 0, time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed else 0.0
        filled = int(30 * self.done / self.total)
        sys.stderr.write(
            f"\r{self.label:<16} [{'#' * filled}{'.' * (30 - filled)}] {self.done:>9}/{self.total} {rate:8.0f}/s"
        )
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class Writer:
    """Runs statements with bounded concurrency, grouped into per-partition batches."""

    def __init__(self, cql: CqlSession) -> None:
        self._cql = cql
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def _one(self, statement: Any, params: Any) -> None:
        async with self._slots:
            for attempt in range(5):
                try:
                    await self._cql.execute(statement, params)
                    return
                except Exception:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    async def rows(self, label: str, query: Any, rows: Sequence[tuple[Any, ...]], key: int = 0) -> None:
        """Insert `rows`, batching those that share partition key column `key`."""
        by_partition: dict[Any, list[tuple[Any, ...]]] = defaultdict(list)
        for row in rows:
            by_partition[row[key]].append(row)
        batches: list[tuple[BatchStatement, int]] = []
        for group in by_partition.values():
            for start in range(0, len(group), BATCH_ROWS):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for row in group[start : start + BATCH_ROWS]:
                    batch.add(query, row)
                batches.append((batch, len(group[start : start + BATCH_ROWS])))
        progress = Progress(label, len(rows))
        for start in range(0, len(batches), 2 * CONCURRENCY):
            chunk = batches[start : start + 2 * CONCURRENCY]
            await asyncio.gather(*(self._one(batch, None) for batch, _ in chunk))
            progress.add(sum(n for _, n in chunk))

    async def each(self, label: str, query: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        progress = Progress(label, len(rows))
        for start in range(0, len(rows), 4 * CONCURRENCY):
            chunk = rows[start : start + 4 * CONCURRENCY]
            await asyncio.gather(*(self._one(query, row) for row in chunk))
            progress.add(len(chunk))


def power_law_graph(users: int, edges: int, rng: random.Random) -> dict[int, set[int]]:
    """follower index -> followee indexes (indexes 0-4 are the planted celebrities)."""
    scale = min(1.0, users / 100_000)
    celebrity_targets = [max(50, int(t * scale)) for t in (90_000, 60_000, 35_000, 20_000, 10_000)]
    celebrities = list(range(len(celebrity_targets)))
    follows: dict[int, set[int]] = defaultdict(set)
    for celebrity, target in zip(celebrities, celebrity_targets, strict=True):
        for follower in rng.sample(range(users), min(target, users - 1)):
            if follower != celebrity:
                follows[follower].add(celebrity)
    placed = sum(len(v) for v in follows.values())
    # Everyone else: followee popularity ~ Zipf(0.9) over ranks, out-degree ~ Pareto.
    weights = [1.0 / (rank**0.9) for rank in range(1, users - len(celebrities) + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    out_weights = list(itertools.accumulate(rng.paretovariate(1.3) for _ in range(users)))
    remaining = max(0, edges - placed)
    followers = rng.choices(range(users), cum_weights=out_weights, k=remaining)
    for follower in followers:
        followee = len(celebrities) + bisect.bisect_left(cumulative, rng.random() * total)
        if followee != follower:
            follows[follower].add(min(followee, users - 1))
    return follows


async def seed(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    cql = await CqlSession.connect([topology.HOST], topology.CQL_PORT, "chirp", 30.0)
    writer = Writer(cql)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - 7 * 24 * 3600 * 1000

    if await cql.execute("SELECT user_id FROM users_by_name WHERE username_key = %s", (f"{args.prefix}0",)):
        cql.close()
        raise SystemExit(f"already seeded (user {args.prefix}0 exists); `make clean` first, or use another --prefix")
    password_hash = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.ID).hash(PASSWORD)
    user_ids = [snowflake(start_ms + (i >> SEQUENCE_BITS), i) for i in range(args.users)]
    names = [f"{args.prefix}{i}" for i in range(args.users)]
    created = datetime.fromtimestamp(start_ms / 1000, UTC)
    t0 = time.monotonic()

    q = {name: await cql.prepare(query) for name, query in {
        "user": "INSERT INTO users (user_id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
        "name": "INSERT INTO users_by_name (username_key, user_id) VALUES (?, ?)",
        "follows": "INSERT INTO follows (follower_id, followee_id, followed_at) VALUES (?, ?, ?)",
        "following": "INSERT INTO following_by_time (user_id, followed_at, followee_id) VALUES (?, ?, ?)",
        "followers": "INSERT INTO followers_by_time (user_id, bucket, followed_at, follower_id) VALUES (?, ?, ?, ?)",
        "fbucket": "INSERT INTO follower_buckets (user_id, bucket) VALUES (?, ?)",
        "tweet": "INSERT INTO tweets (tweet_id, author_id, author_username, text, created_at) VALUES (?, ?, ?, ?, ?)",
        "user_tweet": "INSERT INTO user_tweets (author_id, bucket, tweet_id) VALUES (?, ?, ?)",
        "tbucket": "INSERT INTO user_tweet_buckets (author_id, bucket) VALUES (?, ?)",
        "celebrity": "INSERT INTO celebrities (shard, author_id) VALUES (0, ?)",
    }.items()}  # fmt: skip

    await writer.each(
        "users", q["user"], [(u, n, password_hash, created) for u, n in zip(user_ids, names, strict=True)]
    )
    await writer.each("usernames", q["name"], [(n.lower(), u) for u, n in zip(user_ids, names, strict=True)])

    follows = power_law_graph(args.users, args.edges, rng)
    edges = [(f, e) for f, es in follows.items() for e in es]
    followed_at = [datetime.fromtimestamp((start_ms + rng.randrange(6 * 24 * 3600 * 1000)) / 1000, UTC) for _ in edges]
    at_ms = [int(d.timestamp() * 1000) for d in followed_at]
    await writer.rows(
        "follows", q["follows"], [(user_ids[f], user_ids[e], at) for (f, e), at in zip(edges, followed_at, strict=True)]
    )
    await writer.rows(
        "following",
        q["following"],
        [(user_ids[f], at, user_ids[e]) for (f, e), at in zip(edges, followed_at, strict=True)],
    )
    follower_rows = [
        (user_ids[e], bucket_of(ms), at, user_ids[f]) for (f, e), at, ms in zip(edges, followed_at, at_ms, strict=True)
    ]
    await writer.rows("followers", q["followers"], follower_rows, key=0)
    await writer.each("follower months", q["fbucket"], sorted({(r[0], r[1]) for r in follower_rows}))
    in_degree: dict[int, int] = defaultdict(int)
    for _, e in edges:
        in_degree[e] += 1
    # Follow counts are derived from the lists (graph_svc/store.py): recount them all once.
    graph_store = GraphStore(cql, Outbox(cql, None))
    await graph_store.prepare()
    await graph_store.recount_everyone()
    threshold = args.celebrity_threshold
    celebrities = [i for i in range(args.users) if in_degree.get(i, 0) >= threshold]
    await writer.each("celebrities", q["celebrity"], [(user_ids[i],) for i in celebrities])

    # Tweets: spread over the last week, ids made at their creation time.
    tweets: list[tuple[int, int]] = []  # (tweet id, author index)
    sequence = itertools.count()
    for author in range(args.users):
        for _ in range(args.tweets_per_user):
            ms = start_ms + rng.randrange(now_ms - start_ms - 60_000)
            tweets.append((snowflake(ms, next(sequence)), author))
    await writer.each(
        "tweets",
        q["tweet"],
        [
            (
                t,
                user_ids[a],
                names[a],
                f"seeded tweet {n} by {names[a]}",
                datetime.fromtimestamp(id_time_ms(t) / 1000, UTC),
            )
            for n, (t, a) in enumerate(tweets)
        ],
    )
    await writer.rows(
        "author lists", q["user_tweet"], [(user_ids[a], bucket_of(id_time_ms(t)), t) for t, a in tweets], key=0
    )
    await writer.each(
        "author months", q["tbucket"], sorted({(user_ids[a], bucket_of(id_time_ms(t))) for t, a in tweets})
    )

    # Readers whose feeds the benchmarks read: their timelines are built (pulled) at
    # their first read, as for any timeline Redis does not hold.
    readers = [i for i in rng.sample(range(args.users), min(args.readers, args.users)) if follows.get(i)]
    cql.close()

    return {
        "users": args.users,
        "edges": len(edges),
        "tweets": len(tweets),
        "password": PASSWORD,
        "celebrity_threshold": threshold,
        "celebrities": [{"user_id": user_ids[i], "username": names[i], "followers": in_degree[i]} for i in celebrities],
        "readers": [{"user_id": user_ids[i], "username": names[i], "following": len(follows[i])} for i in readers],
        "authors": [
            {"user_id": user_ids[i], "username": names[i], "followers": in_degree.get(i, 0)}
            for i in rng.sample(range(args.users), min(2000, args.users))
            if 0 < in_degree.get(i, 0) < threshold
        ],
        "seconds": round(time.monotonic() - t0, 1),
        "max_followers": max(in_degree.values()) if in_degree else 0,
    }


async def _usernames_taken(usernames: list[str]) -> list[bool]:
    cql = await CqlSession.connect([topology.HOST], topology.CQL_PORT, "chirp", 30.0)
    try:
        query = "SELECT user_id FROM users_by_name WHERE username_key = %s"
        return [bool(await cql.execute(query, (name.lower(),))) for name in usernames]
    finally:
        cql.close()


def ensure_seeded(argv: list[str]) -> dict[str, Any]:
    """The manifest of the seeded graph. With none, or one whose users are no longer
    in the store (the data was wiped, the manifest kept), seeds a graph with `argv`."""
    if MANIFEST.exists():
        manifest: dict[str, Any] = json.loads(MANIFEST.read_text())
        probe = next((u["username"] for u in (*manifest["readers"], *manifest["authors"])), None)
        if probe and asyncio.run(_usernames_taken([probe]))[0]:
            return manifest
        print(f"the graph in {MANIFEST.relative_to(ROOT)} is gone from the store: seeding one", flush=True)
    else:
        print(f"no seeded graph: seeding one ({' '.join(argv)})", flush=True)
    # A graph whose manifest was lost still holds its usernames: take a prefix no user
    # has. Letters, not digits, after the "s": prefix s1's users would be s's s10, s11...
    prefixes = ["s", *(f"s{letter}" for letter in "abcdefghij")]
    taken = asyncio.run(_usernames_taken([f"{p}0" for p in prefixes]))
    prefix = next((p for p, used in zip(prefixes, taken, strict=True) if not used), None)
    if prefix is None:
        raise SystemExit(f"every seed prefix ({', '.join(prefixes)}) is taken: `make clean` first")
    main([*argv, "--prefix", prefix])
    loaded: dict[str, Any] = json.loads(MANIFEST.read_text())
    return loaded


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=2_000_000)
    parser.add_argument("--tweets-per-user", type=int, default=2)
    parser.add_argument("--readers", type=int, default=2000, help="users the benchmarks read the home feeds of")
    parser.add_argument("--celebrity-threshold", type=int, default=10_000)
    parser.add_argument("--prefix", default="s", help="username prefix (usernames are PREFIX + index)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if len(f"{args.prefix}{args.users}") > 15:
        parser.error("prefix + index must fit a 15-character username")
    manifest = asyncio.run(seed(args))
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(json.dumps(manifest, indent=1))
    print(
        f"seeded {manifest['users']} users, {manifest['edges']} follows, {manifest['tweets']} tweets, "
        f"{len(manifest['celebrities'])} celebrities (max {manifest['max_followers']} followers) "
        f"in {manifest['seconds']}s; manifest {MANIFEST.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
