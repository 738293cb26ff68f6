"""Open-loop mixed load for the fault suite (`make chaos`), and the ledger of
every write it made, for bench/chaos_check.py to verify once the faults are over.

    python -m bench.chaos_load [--users 20] [--rate 40] [--seconds 30] --out DIR

From Python (the orchestrator):

    population = await setup(EDGE, users=40)
    load = Load()
    await load.run(population, rate_per_s=40, seconds=300, on_second=tick)
    during = load.stats(fault_start, fault_end)  # time.monotonic() values
    worst = max(s.max_ms or 0 for s in load.per_second() if fault_start <= s.start < fault_end)
    population.ledger.write(out / "ledger.json")
    load.write(out / "requests.json")

Open loop: request i is sent at start + i / rate whatever became of the earlier
ones, so a stalled edge shows as latency and failures, not as a lower offered
rate. At most `max_in_flight` requests are outstanding; one that would exceed
that is not sent and counts as failed (status -1, "skipped").

Every write's outcome goes to the ledger:
- ack: a 2xx answer. It happened and must survive.
- rejected: any other answer below 500 (except 408), or a connection that could
  not be opened. It did not happen.
- ambiguous: a 5xx or 408, a timeout, a connection lost after sending. It may
  have happened, then or later; the checker neither requires nor forbids it.
Posts carry an Idempotency-Key and are retried with the same key (as a real
client would) up to `post_attempts` times; the op spans all its attempts.
Times are time.monotonic() (one clock for the whole machine on Linux, so the
orchestrator's fault times compare with them), plus the wall clock for people.

Request statistics count as success a 2xx, or a 404 on a like, unlike or delete
of a tweet whose deletion had already been sent (the client raced its own
delete and the answer is right). Everything else fails, skipped requests
included. Latency runs from the scheduled send time to the answer, so a timeout
counts as its 5 s and client-side lag is not hidden; skipped requests have none.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import random
import secrets
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.load import percentile
from infra import topology

EDGE = f"http://{topology.HOST}:{topology.EDGE_PORT}"
PASSWORD = "chaos monkey password"
TIMEOUT_S = 5.0
MAX_IN_FLIGHT = 200
POST_ATTEMPTS = 3
# Re-login this long before a token expires, so a long run never sends a stale one.
TOKEN_MARGIN_S = 300.0
SETUP_ATTEMPTS = 8
SETUP_CONCURRENCY = 4

# Share of each request kind in the mix (percent).
MIX: dict[str, float] = {
    "feed": 45,
    "user_tweets": 15,
    "post": 15,
    "like": 10,
    "unlike": 4,
    "follow": 6,
    "unfollow": 3,
    "delete": 2,
}
WRITE_KINDS = ("post", "delete", "like", "unlike", "follow", "unfollow")
ACK, REJECTED, AMBIGUOUS = "ack", "rejected", "ambiguous"
NO_ANSWER, SKIPPED = 0, -1


def classify(status: int, sent: bool) -> str:
    """What an answer says about whether a write happened."""
    if 200 <= status < 300:
        return ACK
    if not sent:
        return REJECTED
    if status == NO_ANSWER or status >= 500 or status == 408:
        return AMBIGUOUS
    return REJECTED


def is_success(kind: str, status: int, target_deletion_sent: bool) -> bool:
    if 200 <= status < 300:
        return True
    return status == 404 and kind in ("like", "unlike", "delete") and target_deletion_sent


# ---- the ledger --------------------------------------------------------------------


@dataclass
class Account:
    user_id: str
    username: str
    token: str
    expires: float  # token expiry, Unix time


@dataclass
class Op:
    """One write as the client saw it."""

    kind: str  # one of WRITE_KINDS
    user: str  # the acting user's id
    target: str  # tweet id (post once acknowledged, delete, like, unlike) or followee id
    outcome: str  # ACK, REJECTED or AMBIGUOUS
    status: int  # the last answer's HTTP status; 0: none
    start: float  # time.monotonic() as the first attempt was sent
    end: float  # time.monotonic() as the last attempt ended
    wall: float  # time.time() at `start`
    attempts: int = 1
    text: str = ""  # post
    key: str = ""  # post: its Idempotency-Key
    phase: str = "run"  # "setup" or "run"


@dataclass
class Ledger:
    accounts: list[Account]
    celebrity: str  # user id followed by every other account
    password: str = PASSWORD
    ops: list[Op] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        return cls(
            accounts=[Account(**a) for a in data["accounts"]],
            celebrity=str(data["celebrity"]),
            password=str(data["password"]),
            ops=[Op(**o) for o in data["ops"]],
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def read(cls, path: Path) -> Ledger:
        return cls.from_json(json.loads(path.read_text()))

    def counts(self) -> dict[str, int]:
        """Ops by "kind outcome", e.g. {"post ack": 120, "like ambiguous": 2}."""
        return dict(sorted(Counter(f"{op.kind} {op.outcome}" for op in self.ops).items()))


@dataclass
class Population:
    edge_url: str
    ledger: Ledger

    @property
    def accounts(self) -> list[Account]:
        return self.ledger.accounts

    @property
    def celebrity(self) -> str:
        return self.ledger.celebrity


# ---- requests and their statistics ------------------------------------------------


@dataclass
class Request:
    kind: str  # a MIX key
    due: float  # time.monotonic() it was scheduled for (a retry: when it was sent)
    wall: float  # time.time() at `due`
    status: int  # HTTP status; 0: no answer; -1: skipped for the in-flight bound
    latency_ms: float  # from `due` to the answer; 0 when skipped
    ok: bool
    attempt: int = 1
    error: str = ""


@dataclass
class WindowStats:
    start: float  # time.monotonic()
    end: float
    requests: int
    ok: int
    failed: int  # skipped included
    skipped: int
    success_rate: float | None  # None: no request in the window (not 100%)
    p50_ms: float | None  # over answered and timed-out requests, failed ones included
    p99_ms: float | None
    max_ms: float | None
    failed_by_kind: dict[str, int]
    statuses: dict[str, int]


def window_stats(requests: Iterable[Request], start: float, end: float) -> WindowStats:
    """Requests scheduled in [start, end)."""
    inside = [r for r in requests if start <= r.due < end]
    latencies = sorted(r.latency_ms for r in inside if r.status != SKIPPED)
    ok = sum(r.ok for r in inside)

    def rounded(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else round(value, 1)

    return WindowStats(
        start=start,
        end=end,
        requests=len(inside),
        ok=ok,
        failed=len(inside) - ok,
        skipped=sum(r.status == SKIPPED for r in inside),
        success_rate=round(ok / len(inside), 5) if inside else None,
        p50_ms=rounded(percentile(latencies, 0.50)) if latencies else None,
        p99_ms=rounded(percentile(latencies, 0.99)) if latencies else None,
        max_ms=rounded(latencies[-1]) if latencies else None,
        failed_by_kind=dict(sorted(Counter(r.kind for r in inside if not r.ok).items())),
        statuses=dict(sorted(Counter(str(r.status) for r in inside).items())),
    )


def per_second(requests: Sequence[Request], origin: float) -> list[WindowStats]:
    """One window per whole second since `origin`, up to the last scheduled request."""
    if not requests:
        return []
    last = max(r.due for r in requests)
    return [window_stats(requests, origin + s, origin + s + 1) for s in range(int(last - origin) + 1)]


# ---- talking to the edge ------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | None
    sent: bool  # False when the connection could not be opened: nothing reached the edge
    start: float
    end: float
    wall: float


def _parse_expiry(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def client_for(edge_url: str, transport: httpx.AsyncBaseTransport | None, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=min(connections, 50))
    return httpx.AsyncClient(base_url=edge_url, timeout=TIMEOUT_S, limits=limits, transport=transport)


class Sessions:
    """Keeps every account's token fresh (one login at a time per account)."""

    def __init__(self, client: httpx.AsyncClient, password: str) -> None:
        self._client = client
        self._password = password
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def bearer(self, account: Account, force: bool = False) -> str:
        if force or account.expires - time.time() < TOKEN_MARGIN_S:
            async with self._locks[account.user_id]:
                if force or account.expires - time.time() < TOKEN_MARGIN_S:
                    await self.log_in(account)
        return account.token

    async def log_in(self, account: Account) -> None:
        reply = await self._client.post("/v1/sessions", json={"username": account.username, "password": self._password})
        reply.raise_for_status()
        body = reply.json()
        user_id = str(body["user"]["user_id"])
        if account.user_id and user_id != account.user_id:
            raise RuntimeError(f"logging in as {account.username} gave user {user_id}, not {account.user_id}")
        account.user_id = user_id
        account.token = str(body["access_token"])
        account.expires = _parse_expiry(str(body["expires_at"]))


class Caller:
    """Sends one request and, when given a sink, records it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        sessions: Sessions,
        sink: list[Request] | None = None,
        deletion_sent: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._client = client
        self._sessions = sessions
        self._sink = sink
        self._deletion_sent = deletion_sent

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        account: Account | None,
        due: float,
        *,
        target: str = "",
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
        attempt: int = 1,
    ) -> Reply:
        wall = time.time() - (time.monotonic() - due)
        all_headers = dict(headers or {})
        start = time.monotonic()
        status, parsed, sent, error = NO_ANSWER, None, False, ""
        try:
            if account is not None:
                all_headers["authorization"] = f"Bearer {await self._sessions.bearer(account)}"
            sent = True
            reply = await self._client.request(method, path, json=body, headers=all_headers, params=params)
            status = reply.status_code
            if 200 <= status < 300:
                parsed = dict(reply.json())
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: a login (sent still False) or this call's connection failed.
            sent, error = False, type(exc).__name__
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        except (KeyError, ValueError) as exc:
            error = f"unexpected answer: {type(exc).__name__}"
        end = time.monotonic()
        if self._sink is not None:
            ok = is_success(kind, status, bool(target) and self._deletion_sent(target))
            latency = (end - due) * 1000
            self._sink.append(Request(kind, due, wall, status, round(latency, 2), ok, attempt, error))
        return Reply(status, parsed, sent, start, end, wall)

    async def write(
        self,
        kind: str,
        method: str,
        path: str,
        account: Account,
        due: float,
        attempts: int,
        backoff_s: float,
        *,
        target: str = "",
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[str, Reply, float, int]:
        """A write, retried while it may be retried; returns (outcome, last reply,
        first start, attempts made)."""
        outcomes: list[str] = []
        first_start = math.inf
        reply = Reply(NO_ANSWER, None, False, due, due, time.time())
        for attempt in range(1, attempts + 1):
            reply = await self.call(
                kind, method, path, account, due, target=target, body=body, headers=headers, attempt=attempt
            )
            first_start = min(first_start, reply.start)
            outcome = classify(reply.status, reply.sent)
            if outcome == ACK:
                return ACK, reply, first_start, attempt
            outcomes.append(outcome)
            if outcome == REJECTED and reply.sent and reply.status != 429:
                break
            if attempt < attempts:
                await asyncio.sleep(backoff_s * attempt * random.uniform(0.5, 1.5))
                due = time.monotonic()
        final = AMBIGUOUS if AMBIGUOUS in outcomes else REJECTED
        return final, reply, first_start, len(outcomes)


def _op(kind: str, account: Account, target: str, outcome: str, reply: Reply, start: float, attempts: int) -> Op:
    wall = reply.wall - (reply.start - start)
    return Op(kind, account.user_id, target, outcome, reply.status, start, reply.end, wall, attempts)


# ---- setup ---------------------------------------------------------------------------


def _name(index: int) -> str:
    return f"cx{secrets.token_hex(4)}{index}"[:15]


async def _account(client: httpx.AsyncClient, sessions: Sessions, index: int) -> Account:
    """Signs up a fresh name and logs it in. A name taken (409) after an attempt
    that may have gone through is tried as ours: logging in tells."""
    name, maybe_ours, last = _name(index), False, "no attempt"
    for attempt in range(SETUP_ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.5 * attempt)
        try:
            reply = await client.post("/v1/users", json={"username": name, "password": PASSWORD})
        except httpx.HTTPError as exc:
            maybe_ours, last = True, type(exc).__name__
            continue
        last = f"sign-up status {reply.status_code}"
        if reply.status_code == 409 and not maybe_ours:
            name = _name(index)
            continue
        if reply.status_code not in (200, 409):
            maybe_ours = maybe_ours or reply.status_code >= 500
            continue
        account = Account("", name, "", 0.0)
        try:
            await sessions.log_in(account)
        except httpx.HTTPStatusError as exc:
            last = f"login status {exc.response.status_code}"
            if exc.response.status_code == 401:  # the name was someone else's
                name, maybe_ours = _name(index), False
            continue
        except httpx.HTTPError as exc:
            last = f"login {type(exc).__name__}"
            continue
        return account
    raise RuntimeError(f"could not sign up user {index} through {client.base_url}: {last}")


async def setup(
    edge_url: str,
    users: int,
    *,
    follows_each: int = 3,
    tweets_each: int = 3,
    seed: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Population:
    """Sign up and log in `users` new accounts; accounts[0] is followed by all the
    others (a celebrity once that reaches CHIRP_CELEBRITY_THRESHOLD), and each other
    account follows `follows_each` more at random; then everyone posts `tweets_each`
    tweets. Every write here is retried until acknowledged and goes to the ledger
    (phase "setup"); failing that, this raises."""
    if users < 2:
        raise ValueError("setup needs at least 2 users")
    rng = random.Random(seed)
    async with client_for(edge_url, transport, SETUP_CONCURRENCY * 2) as client:
        sessions = Sessions(client, PASSWORD)
        slots = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one_account(index: int) -> Account:
            async with slots:
                return await _account(client, sessions, index)

        accounts = list(await asyncio.gather(*(one_account(i) for i in range(users))))
        ledger = Ledger(accounts=accounts, celebrity=accounts[0].user_id)
        caller = Caller(client, sessions)

        async def write(kind: str, method: str, path: str, who: Account, target: str, **extra: Any) -> tuple[Op, Reply]:
            async with slots:
                outcome, reply, start, attempts = await caller.write(
                    kind, method, path, who, time.monotonic(), SETUP_ATTEMPTS, 0.5, target=target, **extra
                )
            if outcome != ACK:
                raise RuntimeError(f"setup: {kind} by {who.username} failed ({reply.status}) through {edge_url}")
            op = _op(kind, who, target, outcome, reply, start, attempts)
            op.phase = "setup"
            ledger.ops.append(op)
            return op, reply

        follows: list[tuple[Account, Account]] = [(a, accounts[0]) for a in accounts[1:]]
        for account in accounts[1:]:
            others = [o for o in accounts[1:] if o is not account]
            follows += [(account, o) for o in rng.sample(others, min(follows_each, len(others)))]
        await asyncio.gather(
            *(write("follow", "POST", f"/v1/users/{b.user_id}/follow", a, b.user_id) for a, b in follows)
        )

        async def post(who: Account) -> None:
            key = secrets.token_hex(12)
            text = _text(who, key)
            op, reply = await write("post", "POST", "/v1/tweets", who, "", body={"text": text}, headers=_key(key))
            _posted(op, reply, text, key)

        # After the follows, so every setup tweet is owed to its author's followers' timelines.
        await asyncio.gather(*(post(a) for a in accounts for _ in range(tweets_each)))
    return Population(edge_url, ledger)


def _key(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def _text(who: Account, key: str) -> str:
    """Unique per post, so the checker can tell a duplicate made by a retry."""
    return f"chaos {who.username} {key}"


def _posted(op: Op, reply: Reply, text: str, key: str) -> None:
    op.text, op.key = text, key
    tweet = (reply.body or {}).get("tweet") or {}
    if op.outcome == ACK and tweet.get("tweet_id"):
        op.target = str(tweet["tweet_id"])
    elif op.outcome == ACK:  # a 2xx without the tweet: it exists, but which one is unknown
        op.outcome = AMBIGUOUS


# ---- the load ------------------------------------------------------------------------


class Beliefs:
    """What the client believes the state is, from its acknowledged writes; it picks
    targets that make each write meaningful (like what is not liked yet, delete what
    is not deleted) and keeps two writes on one (user, target) from overlapping, so
    the checker can order them."""

    def __init__(self, ledger: Ledger) -> None:
        self.accounts = {a.user_id: a for a in ledger.accounts}
        self.celebrity = ledger.celebrity
        self.following: dict[str, set[str]] = defaultdict(set)
        self.liked: dict[str, set[str]] = defaultdict(set)
        self.own: dict[str, list[str]] = defaultdict(list)  # author -> live tweet ids, oldest first
        self.alive: list[str] = []
        self.author_of: dict[str, str] = {}
        self.deletion_sent: set[str] = set()
        self.busy: set[tuple[str, str]] = set()  # (user, target) with a write in flight
        for op in sorted(ledger.ops, key=lambda o: o.end):
            if op.kind == "delete":
                self.deletion_sent.add(op.target)
            if op.outcome == ACK:
                self.apply(op)
        self.alive = [t for t in self.alive if t not in self.deletion_sent]
        for author, ids in self.own.items():
            self.own[author] = [t for t in ids if t not in self.deletion_sent]

    def apply(self, op: Op) -> None:
        if op.kind == "post" and op.target:
            self.alive.append(op.target)
            self.own[op.user].append(op.target)
            self.author_of[op.target] = op.user
        elif op.kind == "follow":
            self.following[op.user].add(op.target)
        elif op.kind == "unfollow":
            self.following[op.user].discard(op.target)
        elif op.kind == "like":
            self.liked[op.user].add(op.target)
        elif op.kind == "unlike":
            self.liked[op.user].discard(op.target)

    def send_deletion(self, tweet_id: str) -> None:
        self.deletion_sent.add(tweet_id)
        if tweet_id in self.alive:
            self.alive.remove(tweet_id)
        author = self.author_of.get(tweet_id)
        if author is not None and tweet_id in self.own[author]:
            self.own[author].remove(tweet_id)


Plan = tuple[str, Account, str]  # (kind, acting account, target)


def plan(kind: str, beliefs: Beliefs, rng: random.Random, tries: int = 8) -> Plan:
    """A request of `kind` with a target that is free; falls back to a feed read
    (kind "feed") when none is."""
    accounts = list(beliefs.accounts.values())
    for _ in range(tries):
        who = rng.choice(accounts)
        if kind in ("feed", "user_tweets", "post"):
            return kind, who, ""
        target = ""
        if kind == "like":
            target = rng.choice(beliefs.alive) if beliefs.alive else ""
            if target in beliefs.liked[who.user_id]:
                continue
        elif kind == "unlike":
            liked = sorted(beliefs.liked[who.user_id])
            target = rng.choice(liked) if liked else (rng.choice(beliefs.alive) if beliefs.alive else "")
        elif kind == "follow":
            candidates = [u for u in beliefs.accounts if u != who.user_id and u not in beliefs.following[who.user_id]]
            target = rng.choice(candidates) if candidates else ""
        elif kind == "unfollow":
            # The celebrity keeps every follower, so it stays pulled at read time.
            candidates = sorted(beliefs.following[who.user_id] - {beliefs.celebrity})
            target = rng.choice(candidates) if candidates else ""
        elif kind == "delete":
            target = rng.choice(beliefs.own[who.user_id]) if beliefs.own[who.user_id] else ""
        else:
            raise ValueError(f"unknown request kind {kind}")
        if target and (who.user_id, target) not in beliefs.busy:
            return kind, who, target
    return "feed", rng.choice(accounts), ""


OnSecond = Callable[[int], Awaitable[None] | None]


class Load:
    """The open-loop mixed load. `requests` keeps every request of every run."""

    def __init__(
        self,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        post_attempts: int = POST_ATTEMPTS,
        mix: dict[str, float] | None = None,
        seed: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.post_attempts = post_attempts
        self.mix = dict(mix or MIX)
        self.requests: list[Request] = []
        self.origin: float | None = None  # time.monotonic() the first run started
        self._rng = random.Random(seed)
        self._transport = transport
        self._in_flight = 0

    async def run(
        self, population: Population, rate_per_s: float, seconds: float, on_second: OnSecond | None = None
    ) -> None:
        """Send `rate_per_s` requests a second for `seconds`, then wait for the ones
        still in flight. `on_second(n)` is called n whole seconds after the start (n =
        1, 2, ...); a coroutine it returns runs beside the load, which never waits
        for it before the end of the run."""
        if rate_per_s <= 0 or seconds <= 0:
            raise ValueError("rate_per_s and seconds must be positive")
        beliefs = Beliefs(population.ledger)
        kinds, weights = list(self.mix), list(self.mix.values())
        start = time.monotonic()
        if self.origin is None:
            self.origin = start
        async with client_for(population.edge_url, self._transport, self.max_in_flight) as client:
            caller = Caller(
                client, Sessions(client, population.ledger.password), self.requests, beliefs.deletion_sent.__contains__
            )
            tasks: set[asyncio.Task[None]] = set()
            errors: list[BaseException] = []

            def finished(task: asyncio.Task[None]) -> None:
                tasks.discard(task)
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    errors.append(failure)

            ticker = asyncio.create_task(self._tick(start, seconds, on_second))
            try:
                for i in range(math.ceil(rate_per_s * seconds)):
                    due = start + i / rate_per_s
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    kind, who, target = plan(self._rng.choices(kinds, weights)[0], beliefs, self._rng)
                    if self._in_flight >= self.max_in_flight:
                        self.requests.append(Request(kind, due, time.time(), SKIPPED, 0.0, False))
                        continue
                    self._in_flight += 1
                    if target:
                        beliefs.busy.add((who.user_id, target))
                    task = asyncio.create_task(self._one(caller, population.ledger, beliefs, kind, who, target, due))
                    tasks.add(task)
                    task.add_done_callback(finished)
                await ticker
            finally:
                # Every write sent ends up in the ledger, even when the run is cut short.
                await asyncio.gather(*list(tasks), return_exceptions=True)
                ticker.cancel()
            if errors:
                raise errors[0]

    async def _tick(self, start: float, seconds: float, on_second: OnSecond | None) -> None:
        if on_second is None:
            return
        side: list[asyncio.Future[None]] = []
        for n in range(1, math.floor(seconds) + 1):
            await asyncio.sleep(max(0.0, start + n - time.monotonic()))
            result = on_second(n)
            if inspect.isawaitable(result):
                side.append(asyncio.ensure_future(result))
        await asyncio.gather(*side)

    async def _one(
        self, caller: Caller, ledger: Ledger, beliefs: Beliefs, kind: str, who: Account, target: str, due: float
    ) -> None:
        try:
            if kind == "feed":
                await caller.call(kind, "GET", "/v1/feed", who, due, params={"page_size": 20})
            elif kind == "user_tweets":
                author = self._rng.choice(list(beliefs.accounts))
                await caller.call(kind, "GET", f"/v1/users/{author}/tweets", who, due, params={"page_size": 20})
            elif kind == "post":
                key = secrets.token_hex(12)
                text = _text(who, key)
                outcome, reply, start, attempts = await caller.write(
                    kind,
                    "POST",
                    "/v1/tweets",
                    who,
                    due,
                    self.post_attempts,
                    0.25,
                    body={"text": text},
                    headers=_key(key),
                )
                op = _op(kind, who, "", outcome, reply, start, attempts)
                _posted(op, reply, text, key)
                self._settle(ledger, beliefs, op)
            else:
                method, path = _WRITES[kind]
                if kind == "delete":
                    beliefs.send_deletion(target)
                outcome, reply, start, attempts = await caller.write(
                    kind, method, path.format(target), who, due, 1, 0.0, target=target
                )
                self._settle(ledger, beliefs, _op(kind, who, target, outcome, reply, start, attempts))
        finally:
            beliefs.busy.discard((who.user_id, target))
            self._in_flight -= 1

    @staticmethod
    def _settle(ledger: Ledger, beliefs: Beliefs, op: Op) -> None:
        ledger.ops.append(op)
        if op.outcome == ACK:
            beliefs.apply(op)

    def stats(self, start: float, end: float) -> WindowStats:
        """Requests scheduled in [start, end) (time.monotonic() values); complete
        once `run` has returned (requests in flight are recorded when they end)."""
        return window_stats(self.requests, start, end)

    def per_second(self) -> list[WindowStats]:
        """One window per second since the first run started."""
        return per_second(self.requests, self.origin) if self.origin is not None else []

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"origin": self.origin, "requests": [asdict(r) for r in self.requests]}))


_WRITES = {
    "like": ("POST", "/v1/tweets/{}/like"),
    "unlike": ("DELETE", "/v1/tweets/{}/like"),
    "follow": ("POST", "/v1/users/{}/follow"),
    "unfollow": ("DELETE", "/v1/users/{}/follow"),
    "delete": ("DELETE", "/v1/tweets/{}"),
}


def read_requests(path: Path) -> tuple[float | None, list[Request]]:
    data = json.loads(path.read_text())
    return data["origin"], [Request(**r) for r in data["requests"]]


# ---- command line --------------------------------------------------------------------


def _line(stats: WindowStats) -> str:
    rate = "n/a" if stats.success_rate is None else f"{stats.success_rate:.2%}"
    return (
        f"{stats.requests} requests, {rate} ok, p50 {stats.p50_ms} ms, p99 {stats.p99_ms} ms, max {stats.max_ms} ms"
        f", failed by kind {stats.failed_by_kind}, statuses {stats.statuses}"
    )


async def _main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    started = time.monotonic()
    population = await setup(args.edge, args.users, seed=args.seed)
    print(f"setup: {args.users} users, {len(population.ledger.ops)} writes in {time.monotonic() - started:.1f} s")
    load = Load(seed=args.seed)

    def progress(n: int) -> None:
        if n % 10 == 0 and load.origin is not None:
            window = load.stats(load.origin + n - 10, load.origin + n)
            print(f"  {n:>4} s (answered so far): {_line(window)}", flush=True)

    await load.run(population, args.rate, args.seconds, on_second=progress)
    population.ledger.write(out / "ledger.json")
    load.write(out / "requests.json")
    assert load.origin is not None
    print(f"run: {_line(load.stats(load.origin, math.inf))}")
    worst = max((s.max_ms or 0.0 for s in load.per_second()), default=0.0)
    print(f"worst second max latency {worst} ms; writes {population.ledger.counts()}")
    print(f"ledger and request log in {out}; check with: python -m bench.chaos_check {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for ledger.json and requests.json")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--edge", default=EDGE)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
