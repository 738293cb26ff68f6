"""Checks, through the edge, every write bench/chaos_load.py saw acknowledged.

    python -m bench.chaos_check DIR [--deadline 120]

reads DIR/ledger.json, writes DIR/check.json, prints the table and exits 0 only
when everything owed was seen. From Python: `report = await check(EDGE,
ledger, deadline_s=120)`; `report.passed`, `report.to_json()`.

What is owed comes from the ledger alone (`expect`):
- tweet_readable: every acknowledged tweet not deleted reads back (GET
  /v1/tweets/{id}) with its author and text; delete_gone: every acknowledged
  delete answers 404.
- like_count: a live tweet's like_count is the number of users whose like
  stands. Each (user, tweet) is a register set by likes and cleared by unlikes
  (`settle`); one whose final value the ledger cannot decide widens the
  allowed range by one instead of being required.
- follow_edge: a follow that stands is in GET /v1/users/{id}/following, an
  unfollow that stands is not; follow_count: follower and following counts
  within the range the same registers allow.
- author_timeline: a live tweet is in its author's GET /v1/users/{id}/tweets, a
  deleted one is not; idempotency: no text (unique per post) appears there
  twice, or beside another id than the acknowledged one: a retried
  Idempotency-Key made one tweet.
- home_timeline: a follower's GET /v1/feed holds their own live tweets and the
  live tweets of those they surely follow, posted after that follow was
  acknowledged (and with no unfollow that might come after it);
  feed_deleted: no acknowledged delete shows in the feed of its author or of
  anyone who ever touched a follow of its author.

A register's value is decided when some acknowledged write was surely the
last of opposite value: every write of the other value ended before it
started. An ambiguous write (5xx, timeout) may take effect at any time after
it started, `grace_s` at most after it ended (default: never known to be over).
Rejected writes did not happen.

Checks poll until they pass or `deadline_s` runs out (eventual consistency:
the like worker, fan-out). An item ends as pass, lost (seen and wrong at the
last look) or unverified (the edge did not answer well enough to tell).
`passed` means at least one item was checked and none is lost or unverified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_load import ACK, AMBIGUOUS, EDGE, Ledger, Op, Sessions, client_for

CATEGORIES = (
    "tweet_readable",
    "delete_gone",
    "like_count",
    "follow_edge",
    "follow_count",
    "author_timeline",
    "idempotency",
    "home_timeline",
    "feed_deleted",
)
PASS, LOST, UNVERIFIED = "pass", "lost", "unverified"
PAGE_SIZE = 100
MAX_PAGES = 50
MAX_DETAILS = 100
CONCURRENCY = 8


# ---- what the ledger says is owed ----------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One write to a two-valued register (liked, following)."""

    value: bool
    start: float
    end: float
    acked: bool  # False: ambiguous


@dataclass(frozen=True)
class Settled:
    value: bool | None  # None: the ledger cannot tell
    since: float  # the value surely held from this time on (monotonic)


def settle(changes: Iterable[Change], grace_s: float = math.inf) -> Settled:
    """The register's final value, starting from False before any write."""
    changes = list(changes)
    initial = Change(False, -math.inf, -math.inf, True)

    def surely_before(earlier: Change, later: Change) -> bool:
        done = earlier.end if earlier.acked else earlier.end + grace_s
        return done < later.start

    for value in (True, False):
        opposite = [c for c in changes if c.value != value]
        deciding = [
            c
            for c in [initial, *changes]
            if c.acked and c.value == value and all(surely_before(o, c) for o in opposite)
        ]
        if deciding:
            return Settled(value, min(c.end for c in deciding))
    return Settled(None, math.inf)


@dataclass(frozen=True)
class TweetFact:
    tweet_id: str
    author: str
    text: str
    start: float


@dataclass(frozen=True)
class LikeRange:
    low: int
    high: int
    likers: tuple[str, ...]  # users whose like surely stands
    unsure: tuple[str, ...]  # users whose like may or may not stand


@dataclass(frozen=True)
class PostFact:
    text: str
    tweet_id: str  # "" when the post was ambiguous


@dataclass
class Expected:
    alive: dict[str, TweetFact] = field(default_factory=dict)
    deleted: dict[str, TweetFact] = field(default_factory=dict)
    likes: dict[str, LikeRange] = field(default_factory=dict)
    edges: dict[tuple[str, str], bool] = field(default_factory=dict)  # (follower, followee) -> follows
    following: dict[str, tuple[int, int]] = field(default_factory=dict)  # user -> allowed count range
    followers: dict[str, tuple[int, int]] = field(default_factory=dict)
    posts: dict[str, list[PostFact]] = field(default_factory=dict)  # author -> posts
    feeds: dict[str, set[str]] = field(default_factory=dict)  # user -> tweet ids owed in their feed
    feed_forbidden: dict[str, set[str]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)  # not owed because of ambiguous writes


def _changes(ops: Iterable[Op], on: str, off: str) -> dict[tuple[str, str], list[Change]]:
    registers: dict[tuple[str, str], list[Change]] = defaultdict(list)
    for op in ops:
        if op.kind in (on, off) and op.outcome in (ACK, AMBIGUOUS):
            registers[op.user, op.target].append(Change(op.kind == on, op.start, op.end, op.outcome == ACK))
    return registers


def _count_range(settled: Iterable[Settled]) -> tuple[int, int]:
    values = [s.value for s in settled]
    low = values.count(True)
    return low, low + values.count(None)


def expect(ledger: Ledger, grace_s: float = math.inf) -> Expected:
    exp = Expected()
    ops = ledger.ops
    created: dict[str, TweetFact] = {}
    for op in ops:
        if op.kind != "post":
            continue
        exp.posts.setdefault(op.user, []).append(PostFact(op.text, op.target if op.outcome == ACK else ""))
        if op.outcome == ACK:
            created[op.target] = TweetFact(op.target, op.user, op.text, op.start)
        elif op.outcome == AMBIGUOUS:
            exp.skipped["tweet_readable"] += 1
    deletes: dict[str, set[str]] = defaultdict(set)
    for op in ops:
        if op.kind == "delete" and op.outcome in (ACK, AMBIGUOUS):
            deletes[op.target].add(op.outcome)
    for tweet_id, fact in created.items():
        if ACK in deletes[tweet_id]:
            exp.deleted[tweet_id] = fact
        elif deletes[tweet_id]:
            exp.skipped["tweet_readable"] += 1
        else:
            exp.alive[tweet_id] = fact

    by_tweet: dict[str, dict[str, Settled]] = defaultdict(dict)
    for (user, tweet_id), changes in _changes(ops, "like", "unlike").items():
        if tweet_id in exp.alive:
            by_tweet[tweet_id][user] = settle(changes, grace_s)
    for tweet_id in exp.alive:
        registers = by_tweet.get(tweet_id, {})
        low, high = _count_range(registers.values())
        likers = tuple(sorted(u for u, s in registers.items() if s.value is True))
        unsure = tuple(sorted(u for u, s in registers.items() if s.value is None))
        exp.likes[tweet_id] = LikeRange(low, high, likers, unsure)
        exp.skipped["like_count"] += len(unsure)

    follows = {pair: settle(changes, grace_s) for pair, changes in _changes(ops, "follow", "unfollow").items()}
    for pair, state in follows.items():
        if state.value is None:
            exp.skipped["follow_edge"] += 1
        else:
            exp.edges[pair] = state.value
    users = [a.user_id for a in ledger.accounts]
    for user in users:
        exp.following[user] = _count_range(s for (f, _), s in follows.items() if f == user)
        exp.followers[user] = _count_range(s for (_, a), s in follows.items() if a == user)

    by_author: dict[str, list[TweetFact]] = defaultdict(list)
    for fact in exp.alive.values():
        by_author[fact.author].append(fact)
    for user in users:
        owed = {t.tweet_id for t in by_author[user]}
        for (follower, author), state in follows.items():
            if follower != user:
                continue
            if state.value is None:
                exp.skipped["home_timeline"] += len(by_author[author])
            elif state.value:
                owed |= {t.tweet_id for t in by_author[author] if t.start > state.since}
        exp.feeds[user] = owed
        touched = {user} | {a for (f, a) in follows if f == user}
        exp.feed_forbidden[user] = {t for t, fact in exp.deleted.items() if fact.author in touched}
    return exp


Item = tuple[str, tuple[str, ...]]  # (category, key)


def items(exp: Expected) -> list[Item]:
    out: list[Item] = []
    out += [("tweet_readable", (t,)) for t in exp.alive]
    out += [("delete_gone", (t,)) for t in exp.deleted]
    out += [("like_count", (t,)) for t in exp.likes]
    out += [("follow_edge", pair) for pair in exp.edges]
    out += [("follow_count", (u,)) for u in exp.following]
    out += [("author_timeline", (f.author, t)) for t, f in [*exp.alive.items(), *exp.deleted.items()]]
    out += [("idempotency", (author, p.text)) for author, posts in exp.posts.items() for p in posts]
    out += [("home_timeline", (u, t)) for u, owed in exp.feeds.items() for t in sorted(owed)]
    out += [("feed_deleted", (u, t)) for u, gone in exp.feed_forbidden.items() for t in sorted(gone)]
    return out


# ---- what the edge says ---------------------------------------------------------------


@dataclass
class Snapshot:
    """One look at the edge; a str value is why the look failed."""

    tweets: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # status, tweet
    following: dict[str, set[str] | str] = field(default_factory=dict)
    profiles: dict[str, tuple[int, int] | str] = field(default_factory=dict)  # followers, following
    authored: dict[str, list[tuple[str, str]] | str] = field(default_factory=dict)  # (id, text), newest first
    feeds: dict[str, tuple[list[str], bool] | str] = field(default_factory=dict)  # ids newest first, reached end


Verdict = tuple[str, str]  # (PASS | LOST | UNVERIFIED, detail)


def _covers(walk: tuple[list[str], bool], tweet_id: str) -> bool:
    ids, reached_end = walk
    return reached_end or (bool(ids) and int(ids[-1]) < int(tweet_id))


def judge(item: Item, exp: Expected, snap: Snapshot) -> Verdict:
    category, key = item
    if category in ("tweet_readable", "delete_gone", "like_count"):
        (tweet_id,) = key
        if tweet_id not in snap.tweets:
            return UNVERIFIED, "not read"
        status, tweet = snap.tweets[tweet_id]
        if category == "delete_gone":
            if status == 404:
                return PASS, ""
            return (LOST, "still readable after its delete was acknowledged") if status == 200 else _bad(status)
        if status == 404 and category == "tweet_readable":
            return LOST, f"404 for an acknowledged tweet of user {exp.alive[tweet_id].author}"
        if status != 200:
            return _bad(status)
        if category == "tweet_readable":
            fact = exp.alive[tweet_id]
            if tweet.get("text") != fact.text or str(tweet.get("author_id")) != fact.author:
                return LOST, f"reads back as author {tweet.get('author_id')} text {tweet.get('text')!r}"
            return PASS, ""
        want = exp.likes[tweet_id]
        count = int(tweet.get("like_count", -1))
        if want.low <= count <= want.high:
            return PASS, ""
        wanted = str(want.low) if want.low == want.high else f"{want.low}..{want.high}"
        return (
            LOST,
            f"like_count {count}, expected {wanted}; likes stand by {list(want.likers)}, unsure {list(want.unsure)}",
        )
    if category == "follow_edge":
        follower, followee = key
        listed = snap.following.get(follower, "not read")
        if isinstance(listed, str):
            return UNVERIFIED, listed
        if (followee in listed) == exp.edges[follower, followee]:
            return PASS, ""
        if exp.edges[follower, followee]:
            return LOST, f"user {follower} no longer lists {followee} among those followed"
        return LOST, f"user {follower} still follows {followee} after the unfollow was acknowledged"
    if category == "follow_count":
        (user,) = key
        profile = snap.profiles.get(user, "not read")
        if isinstance(profile, str):
            return UNVERIFIED, profile
        followers, following = profile
        (f_low, f_high), (g_low, g_high) = exp.followers[user], exp.following[user]
        if f_low <= followers <= f_high and g_low <= following <= g_high:
            return PASS, ""
        return (
            LOST,
            f"follower_count {followers} (expected {f_low}..{f_high}), following_count {following} (expected {g_low}..{g_high})",
        )
    if category in ("author_timeline", "idempotency"):
        author, what = key
        listed_tweets = snap.authored.get(author, "not read")
        if isinstance(listed_tweets, str):
            return UNVERIFIED, listed_tweets
        if category == "author_timeline":
            present = what in {t for t, _ in listed_tweets}
            if present == (what in exp.alive):
                return PASS, ""
            return LOST, "missing from its author's tweets" if what in exp.alive else "deleted, still listed"
        same_text = {t for t, text in listed_tweets if text == what}
        acked = next((p.tweet_id for p in exp.posts[author] if p.text == what and p.tweet_id), "")
        extra = same_text - {acked} if acked else (same_text if len(same_text) > 1 else set())
        return (PASS, "") if not extra else (LOST, f"duplicate tweets {sorted(extra)} beside {acked or 'none'}")
    if category in ("home_timeline", "feed_deleted"):
        user, tweet_id = key
        walk = snap.feeds.get(user, "not read")
        if isinstance(walk, str):
            return UNVERIFIED, walk
        present = tweet_id in walk[0]
        if category == "home_timeline":
            if present:
                return PASS, ""
            if not _covers(walk, tweet_id):
                return UNVERIFIED, f"feed walk stopped after {len(walk[0])} entries"
            author = exp.alive[tweet_id].author
            return LOST, f"tweet of {'their own' if author == user else 'followed user ' + author} missing"
        if present:
            return LOST, "deleted tweet still in the feed"
        return (PASS, "") if _covers(walk, tweet_id) else (UNVERIFIED, "feed walk stopped early")
    raise ValueError(f"unknown category {category}")


def _bad(status: int) -> Verdict:
    return UNVERIFIED, f"status {status}" if status else "no answer"


class Reader:
    """Reads what pending items need, a bounded number of requests at a time."""

    def __init__(self, client: httpx.AsyncClient, ledger: Ledger, concurrency: int) -> None:
        self._client = client
        self._sessions = Sessions(client, ledger.password)
        self._accounts = {a.user_id: a for a in ledger.accounts}
        self._slots = asyncio.Semaphore(concurrency)

    async def _get(self, path: str, params: dict[str, Any] | None = None, user: str = "") -> tuple[int, Any]:
        account = self._accounts.get(user)
        async with self._slots:
            for fresh_token in (False, True):
                headers = {}
                try:
                    if account is not None:
                        headers["authorization"] = f"Bearer {await self._sessions.bearer(account, fresh_token)}"
                    reply = await self._client.get(path, params=params, headers=headers)
                except (httpx.HTTPError, KeyError, ValueError):
                    return 0, None
                if reply.status_code == 401 and account is not None and not fresh_token:
                    continue
                if reply.status_code != 200:
                    return reply.status_code, None
                try:
                    return 200, reply.json()
                except ValueError:
                    return 0, None
        return 0, None

    async def walk(
        self, path: str, field_name: str, user: str = "", stop: Callable[[list[dict[str, Any]]], bool] | None = None
    ) -> tuple[list[dict[str, Any]], bool] | str:
        """Pages of a list, until its end (True) or until `stop` holds (False)."""
        found: list[dict[str, Any]] = []
        token = ""
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"page_size": PAGE_SIZE}
            if token:
                params["page_token"] = token
            status, body = await self._get(path, params, user)
            if status != 200:
                return f"{path}: status {status}" if status else f"{path}: no answer"
            if not isinstance(body, dict) or not isinstance(body.get(field_name), list):
                return f"{path}: answer without {field_name}"
            found += body[field_name]
            token = str(body.get("next_page_token", ""))
            if not token:
                return found, True
            if stop is not None and stop(found):
                return found, False
        return found, False

    async def tweet(self, snap: Snapshot, tweet_id: str) -> None:
        status, body = await self._get(f"/v1/tweets/{tweet_id}")
        snap.tweets[tweet_id] = (status, dict(body["tweet"]) if status == 200 else {})

    async def following(self, snap: Snapshot, user: str) -> None:
        walked = await self.walk(f"/v1/users/{user}/following", "users")
        snap.following[user] = walked if isinstance(walked, str) else {str(u["user_id"]) for u in walked[0]}

    async def profile(self, snap: Snapshot, user: str) -> None:
        status, body = await self._get(f"/v1/users/{user}")
        snap.profiles[user] = (
            (int(body["user"]["follower_count"]), int(body["user"]["following_count"]))
            if status == 200
            else f"status {status}"
        )

    async def authored(self, snap: Snapshot, user: str) -> None:
        walked = await self.walk(f"/v1/users/{user}/tweets", "tweets")
        snap.authored[user] = (
            walked if isinstance(walked, str) else [(str(t["tweet_id"]), str(t["text"])) for t in walked[0]]
        )

    async def feed(self, snap: Snapshot, user: str, floor: int) -> None:
        walked = await self.walk(
            "/v1/feed", "tweets", user, lambda seen: bool(seen) and int(seen[-1]["tweet_id"]) < floor
        )
        snap.feeds[user] = walked if isinstance(walked, str) else ([str(t["tweet_id"]) for t in walked[0]], walked[1])

    async def look(self, pending: Sequence[Item]) -> Snapshot:
        snap = Snapshot()
        tweets: set[str] = set()
        following: set[str] = set()
        profiles: set[str] = set()
        authored: set[str] = set()
        floors: dict[str, int] = {}
        for category, key in pending:
            if category in ("tweet_readable", "delete_gone", "like_count"):
                tweets.add(key[0])
            elif category == "follow_edge":
                following.add(key[0])
            elif category == "follow_count":
                profiles.add(key[0])
            elif category in ("author_timeline", "idempotency"):
                authored.add(key[0])
            else:
                floors[key[0]] = min(floors.get(key[0], int(key[1])), int(key[1]))
        await asyncio.gather(
            *(self.tweet(snap, t) for t in tweets),
            *(self.following(snap, u) for u in following),
            *(self.profile(snap, u) for u in profiles),
            *(self.authored(snap, u) for u in authored),
            *(self.feed(snap, u, floor) for u, floor in floors.items()),
        )
        return snap


# ---- the report ----------------------------------------------------------------------


@dataclass
class CategoryResult:
    checked: int = 0
    passed: int = 0
    lost: int = 0  # seen wrong at the last look: lost, or counted wrong
    unverified: int = 0  # the edge never answered well enough to tell
    skipped: int = 0  # not owed: an ambiguous write makes either answer right
    details: list[str] = field(default_factory=list)


@dataclass
class Report:
    categories: dict[str, CategoryResult]
    rounds: int
    elapsed_s: float
    writes: dict[str, int]  # ledger ops by "kind outcome"

    @property
    def checked(self) -> int:
        return sum(c.checked for c in self.categories.values())

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.categories.values())

    @property
    def unverified(self) -> int:
        return sum(c.unverified for c in self.categories.values())

    @property
    def passed(self) -> bool:
        return self.checked > 0 and self.lost == 0 and self.unverified == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checked": self.checked,
            "lost": self.lost,
            "unverified": self.unverified,
            **asdict(self),
        }

    def table(self) -> str:
        lines = [f"{'category':<16} {'checked':>8} {'passed':>8} {'lost':>6} {'unverif':>8} {'skipped':>8}"]
        for name, c in self.categories.items():
            lines.append(f"{name:<16} {c.checked:>8} {c.passed:>8} {c.lost:>6} {c.unverified:>8} {c.skipped:>8}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {self.checked} checked, {self.lost} lost, {self.unverified} unverified")
        lines.append(f"in {self.elapsed_s:.1f} s over {self.rounds} rounds; writes {self.writes}")
        for name, c in self.categories.items():
            lines += [f"  {name}: {d}" for d in c.details]
        return "\n".join(lines)


def report(
    exp: Expected, verdicts: dict[Item, Verdict], rounds: int, elapsed_s: float, writes: dict[str, int]
) -> Report:
    categories = {name: CategoryResult(skipped=exp.skipped[name]) for name in CATEGORIES}
    for (category, key), (verdict, detail) in sorted(verdicts.items()):
        result = categories[category]
        result.checked += 1
        if verdict == PASS:
            result.passed += 1
            continue
        if verdict == LOST:
            result.lost += 1
        else:
            result.unverified += 1
        if len(result.details) < MAX_DETAILS:
            result.details.append(f"{verdict} {'/'.join(key)}: {detail}")
    return Report(categories, rounds, round(elapsed_s, 1), writes)


async def check(
    edge_url: str,
    ledger: Ledger,
    deadline_s: float,
    *,
    grace_s: float = math.inf,
    poll_s: float = 1.0,
    concurrency: int = CONCURRENCY,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Report:
    """Looks until every owed item passes or `deadline_s` has passed (at least one look)."""
    started = time.monotonic()
    exp = expect(ledger, grace_s)
    pending = items(exp)
    verdicts: dict[Item, Verdict] = {}
    rounds = 0
    async with client_for(edge_url, transport, concurrency) as client:
        reader = Reader(client, ledger, concurrency)
        while pending:
            rounds += 1
            snap = await reader.look(pending)
            for item in pending:
                verdicts[item] = judge(item, exp, snap)
            pending = [i for i in pending if verdicts[i][0] != PASS]
            if not pending or time.monotonic() - started >= deadline_s:
                break
            await asyncio.sleep(poll_s)
    return report(exp, verdicts, rounds, time.monotonic() - started, ledger.counts())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="directory chaos_load wrote ledger.json to")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds to wait for eventual consistency")
    parser.add_argument("--edge", default=EDGE)
    args = parser.parse_args()
    folder = Path(args.dir)
    ledger = Ledger.read(folder / "ledger.json")
    result = asyncio.run(check(args.edge, ledger, args.deadline))
    (folder / "check.json").write_text(json.dumps(result.to_json(), indent=1))
    print(result.table())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
