"""The chaos load's ledger and the checker's rules, with an in-memory edge
(httpx.MockTransport) standing in for Envoy: what is owed after acknowledged,
rejected and ambiguous writes, and that a lost write is reported, not passed."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_check import Change, Settled, check, expect, settle
from bench.chaos_load import (
    ACK,
    AMBIGUOUS,
    REJECTED,
    SKIPPED,
    Account,
    Beliefs,
    Ledger,
    Load,
    Op,
    Request,
    classify,
    is_success,
    read_requests,
    setup,
    window_stats,
)

EDGE = "http://edge.test"


# ---- an in-memory edge ----------------------------------------------------------------


@dataclass
class FakeEdge:
    """Just enough of the REST contract for the load and the checker."""

    honour_keys: bool = True
    # Called before answering a write; returning a status makes the answer that
    # status, after (apply=True) or instead of (False) applying the write.
    fault: Callable[[str, str], tuple[int, bool] | None] = lambda method, path: None
    users: dict[str, str] = field(default_factory=dict)  # id -> name
    tokens: dict[str, str] = field(default_factory=dict)
    follows: set[tuple[str, str]] = field(default_factory=set)
    tweets: dict[str, dict[str, str]] = field(default_factory=dict)
    likes: set[tuple[str, str]] = field(default_factory=set)
    extra_likes: dict[str, int] = field(default_factory=dict)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    next_id: int = 1000

    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def tweet_json(self, tweet_id: str) -> dict[str, Any]:
        t = self.tweets[tweet_id]
        count = sum(1 for _, liked in self.likes if liked == tweet_id) + self.extra_likes.get(tweet_id, 0)
        return {"tweet_id": tweet_id, "author_id": t["author"], "text": t["text"], "like_count": count}

    def user_json(self, user_id: str) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "username": self.users[user_id],
            "follower_count": sum(1 for _, a in self.follows if a == user_id),
            "following_count": sum(1 for f, _ in self.follows if f == user_id),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        auth = request.headers.get("authorization", "")
        me = self.tokens.get(auth.removeprefix("Bearer "), "")
        write = method != "GET" and path not in ("/v1/users", "/v1/sessions")
        if write and not me:
            return httpx.Response(401, json={"code": 16})
        injected = self.fault(method, path) if write else None
        if injected is not None and not injected[1]:
            return httpx.Response(injected[0])
        reply = self.route(request, method, path, me)
        return httpx.Response(injected[0]) if injected is not None else reply

    def page(self, request: httpx.Request, items: list[dict[str, Any]], field_name: str) -> httpx.Response:
        size = int(request.url.params.get("page_size", 20) or 20)
        offset = int(request.url.params.get("page_token", 0) or 0)
        chunk = items[offset : offset + size]
        token = str(offset + size) if offset + size < len(items) else ""
        return httpx.Response(200, json={field_name: chunk, "next_page_token": token})

    def newest_first(self, authors: set[str]) -> list[dict[str, Any]]:
        ids = sorted((t for t, v in self.tweets.items() if v["author"] in authors), key=int, reverse=True)
        return [self.tweet_json(t) for t in ids]

    def route(self, request: httpx.Request, method: str, path: str, me: str) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        if (method, path) == ("POST", "/v1/users"):
            if body["username"] in self.users.values():
                return httpx.Response(409)
            user_id = self.new_id()
            self.users[user_id] = body["username"]
            return httpx.Response(200, json={"user": self.user_json(user_id)})
        if (method, path) == ("POST", "/v1/sessions"):
            user_id = next(u for u, n in self.users.items() if n == body["username"])
            token = f"t{self.new_id()}"
            self.tokens[token] = user_id
            expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            return httpx.Response(
                200, json={"access_token": token, "expires_at": expires, "user": {"user_id": user_id}}
            )
        if (method, path) == ("POST", "/v1/tweets"):
            key = (me, request.headers.get("idempotency-key", ""))
            if self.honour_keys and key[1] and key in self.keys:
                return httpx.Response(200, json={"tweet": self.tweet_json(self.keys[key])})
            tweet_id = self.new_id()
            self.tweets[tweet_id] = {"author": me, "text": body["text"]}
            self.keys[key] = tweet_id
            return httpx.Response(200, json={"tweet": self.tweet_json(tweet_id)})
        if (method, path) == ("GET", "/v1/feed"):
            followed = {a for f, a in self.follows if f == me} | {me}
            return self.page(request, self.newest_first(followed), "tweets")
        if match := re.fullmatch(r"/v1/tweets/(\d+)(/like)?", path):
            tweet_id, like = match.group(1), match.group(2)
            if tweet_id not in self.tweets:
                return httpx.Response(404)
            if like:
                (self.likes.add if method == "POST" else self.likes.discard)((me, tweet_id))
                return httpx.Response(200, json={"like_count": self.tweet_json(tweet_id)["like_count"]})
            if method == "DELETE":
                del self.tweets[tweet_id]
                return httpx.Response(200, json={})
            return httpx.Response(200, json={"tweet": self.tweet_json(tweet_id)})
        if match := re.fullmatch(r"/v1/users/(\d+)(/\w+)?", path):
            user_id, rest = match.group(1), match.group(2)
            if rest == "/follow":
                (self.follows.add if method == "POST" else self.follows.discard)((me, user_id))
                return httpx.Response(200, json={})
            if rest == "/following":
                users = [self.user_json(a) for f, a in sorted(self.follows) if f == user_id]
                return self.page(request, users, "users")
            if rest == "/tweets":
                return self.page(request, self.newest_first({user_id}), "tweets")
            return httpx.Response(200, json={"user": self.user_json(user_id)})
        return httpx.Response(404)


def transport(edge: FakeEdge) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        return edge.handle(request)

    return httpx.MockTransport(handler)


async def load_on(edge: FakeEdge, users: int = 6, rate: float = 200.0, seconds: float = 0.5) -> Ledger:
    population = await setup(EDGE, users, seed=7, transport=transport(edge))
    load = Load(seed=7, transport=transport(edge))
    await load.run(population, rate, seconds)
    return population.ledger


# ---- outcomes and statistics ------------------------------------------------------------


def test_an_answer_says_whether_a_write_happened() -> None:
    assert classify(200, True) == ACK
    assert classify(404, True) == REJECTED
    assert classify(429, True) == REJECTED
    assert classify(503, True) == AMBIGUOUS
    assert classify(504, True) == AMBIGUOUS
    assert classify(0, True) == AMBIGUOUS  # timed out or cut off after sending
    assert classify(0, False) == REJECTED  # the connection never opened


def test_a_404_succeeds_only_when_the_client_raced_its_own_delete() -> None:
    assert is_success("like", 404, target_deletion_sent=True)
    assert not is_success("like", 404, target_deletion_sent=False)
    assert not is_success("feed", 404, target_deletion_sent=True)
    assert not is_success("post", 503, target_deletion_sent=False)


def test_window_stats_count_skipped_as_failed_without_latency() -> None:
    requests = [Request("feed", 10.0 + i / 100, 0.0, 200, float(i + 1), True) for i in range(100)]
    requests += [Request("post", 10.5, 0.0, SKIPPED, 0.0, False), Request("like", 10.6, 0.0, 503, 5000.0, False)]
    requests.append(Request("feed", 11.0, 0.0, 200, 1.0, True))  # outside [10, 11)
    stats = window_stats(requests, 10.0, 11.0)
    assert (stats.requests, stats.ok, stats.failed, stats.skipped) == (102, 100, 2, 1)
    assert stats.success_rate == round(100 / 102, 5)
    assert stats.p50_ms == 51.0
    assert stats.max_ms == 5000.0
    assert stats.failed_by_kind == {"like": 1, "post": 1}
    empty = window_stats(requests, 20.0, 21.0)
    assert empty.requests == 0 and empty.success_rate is None and empty.p99_ms is None


# ---- settling a register ------------------------------------------------------------------


def test_settle_orders_only_writes_that_surely_did_not_overlap() -> None:
    assert settle([]).value is False
    follow = Change(True, 1.0, 2.0, acked=True)
    assert settle([follow]) == settle([follow, Change(True, 1.5, 3.0, acked=True)]) == Settled(True, 2.0)
    unfollow_after = Change(False, 3.0, 4.0, acked=True)
    assert settle([follow, unfollow_after]).value is False
    overlapping = Change(False, 1.5, 2.5, acked=True)
    assert settle([follow, overlapping]).value is None
    refollow = Change(True, 5.0, 6.0, acked=True)
    assert settle([follow, unfollow_after, refollow]) == Settled(True, 6.0)


def test_an_ambiguous_write_may_land_any_time_after_it_started() -> None:
    lost_unfollow = Change(False, 1.0, 6.0, acked=False)
    follow = Change(True, 10.0, 11.0, acked=True)
    assert settle([lost_unfollow, follow]).value is None
    assert settle([lost_unfollow, follow], grace_s=3.0).value is True
    assert settle([lost_unfollow, follow], grace_s=5.0).value is None
    assert settle([Change(True, 1.0, 2.0, acked=False)]).value is None
    # One of the same value changes nothing.
    assert settle([Change(True, 1.0, 2.0, acked=False), follow]).value is True


# ---- what is owed ---------------------------------------------------------------------------


def op(kind: str, user: str, target: str, start: float, outcome: str = ACK, text: str = "") -> Op:
    return Op(kind, user, target, outcome, 200, start, start + 0.5, 0.0, text=text)


def ledger_of(*ops: Op) -> Ledger:
    accounts = [Account(u, f"n{u}", "", 0.0) for u in ("1", "2", "3")]
    return Ledger(accounts=accounts, celebrity="1", ops=list(ops))


def test_feed_owes_tweets_posted_after_the_follow_was_acknowledged() -> None:
    exp = expect(
        ledger_of(
            op("post", "2", "100", 0.0, text="before"),
            op("follow", "1", "2", 1.0),
            op("post", "2", "101", 2.0, text="after"),
            op("post", "1", "102", 3.0, text="own"),
            op("post", "3", "103", 3.0, text="not followed"),
        )
    )
    assert exp.feeds["1"] == {"101", "102"}
    assert exp.feeds["2"] == {"100", "101"}
    assert exp.edges == {("1", "2"): True}
    assert exp.followers["2"] == (1, 1) and exp.following["1"] == (1, 1)


def test_ambiguous_writes_are_neither_owed_nor_forbidden() -> None:
    exp = expect(
        ledger_of(
            op("post", "2", "100", 0.0, text="a"),
            op("post", "2", "101", 0.0, text="b"),
            op("post", "2", "", 0.0, outcome=AMBIGUOUS, text="c"),
            op("delete", "2", "100", 1.0, outcome=AMBIGUOUS),
            op("delete", "2", "101", 1.0),
            op("follow", "1", "2", 1.0, outcome=AMBIGUOUS),
            op("follow", "3", "2", 1.0, outcome=REJECTED),
            op("post", "3", "104", 2.0, text="d"),
            op("like", "1", "104", 3.0),
            op("like", "2", "104", 3.0, outcome=AMBIGUOUS),
            op("like", "3", "104", 3.0),
            op("unlike", "3", "104", 4.0),
        )
    )
    assert set(exp.alive) == {"104"} and set(exp.deleted) == {"101"}
    assert exp.skipped["tweet_readable"] == 2  # the ambiguous post and the ambiguous delete
    assert exp.likes["104"].low == 1 and exp.likes["104"].high == 2
    assert exp.likes["104"].likers == ("1",) and exp.likes["104"].unsure == ("2",)
    assert ("1", "2") not in exp.edges and ("3", "2") not in exp.edges
    assert exp.followers["2"] == (0, 1)
    assert exp.feeds["1"] == set() and exp.feeds["3"] == {"104"}
    assert exp.feed_forbidden["1"] == {"101"} and exp.feed_forbidden["3"] == set()


def test_beliefs_skip_deleted_tweets_and_follow_the_last_acknowledged_write() -> None:
    beliefs = Beliefs(
        ledger_of(
            op("post", "2", "100", 0.0),
            op("post", "2", "101", 0.0),
            op("delete", "2", "100", 1.0, outcome=AMBIGUOUS),
            op("follow", "1", "2", 1.0),
            op("follow", "1", "3", 1.0),
            op("unfollow", "1", "3", 2.0),
        )
    )
    assert beliefs.alive == ["101"] and beliefs.own["2"] == ["101"]
    assert beliefs.following["1"] == {"2"}


# ---- load and check against the in-memory edge -------------------------------------------------


async def test_a_clean_run_passes_every_category(tmp_path: Path) -> None:
    edge = FakeEdge()
    population = await setup(EDGE, 6, seed=3, transport=transport(edge))
    load = Load(seed=3, transport=transport(edge))
    seconds: list[int] = []
    await load.run(population, 300.0, 1.0, on_second=seconds.append)
    assert seconds == [1]
    assert len(load.requests) == 300 and all(r.ok for r in load.requests)
    assert {r.kind for r in load.requests} >= {"feed", "user_tweets", "post", "like", "follow", "delete"}
    assert load.origin is not None and [s.requests for s in load.per_second()] == [300]

    population.ledger.write(tmp_path / "ledger.json")
    load.write(tmp_path / "requests.json")
    ledger = Ledger.read(tmp_path / "ledger.json")
    assert ledger == population.ledger
    assert read_requests(tmp_path / "requests.json") == (load.origin, load.requests)

    report = await check(EDGE, ledger, deadline_s=0, transport=transport(edge))
    assert report.passed, report.table()
    for name in ("tweet_readable", "delete_gone", "like_count", "follow_edge", "home_timeline", "idempotency"):
        assert report.categories[name].checked > 0, name
    assert report.categories["home_timeline"].checked > len(edge.tweets)  # followers owe others' tweets


async def test_lost_writes_are_reported_with_details() -> None:
    edge = FakeEdge()
    ledger = await load_on(edge)
    exp = expect(ledger)
    followed = next(pair for pair, follows in exp.edges.items() if follows and pair[1] != ledger.celebrity)
    lost_tweet = next(t for t in exp.alive if exp.alive[t].author == ledger.celebrity)
    liked_tweet = next(t for t in exp.alive if t != lost_tweet)
    del edge.tweets[lost_tweet]
    edge.extra_likes[liked_tweet] = 1
    edge.follows.discard(followed)
    edge.tweets[next(iter(exp.deleted))] = {"author": "999", "text": "back from the dead"}

    report = await check(EDGE, ledger, deadline_s=0.5, poll_s=0.1, transport=transport(edge))
    assert not report.passed
    cats = report.categories
    assert cats["tweet_readable"].lost == 1
    assert f"lost {lost_tweet}: 404" in cats["tweet_readable"].details[0]
    assert cats["author_timeline"].lost == 1
    # Every account follows the celebrity, so every feed lost that tweet.
    assert cats["home_timeline"].lost >= len(ledger.accounts)
    assert cats["like_count"].lost == 1
    assert any(d.startswith(f"lost {liked_tweet}: like_count") for d in cats["like_count"].details)
    assert cats["like_count"].unverified == 1  # the lost tweet's count cannot be read
    assert cats["follow_edge"].lost == 1
    assert cats["follow_count"].lost == 2  # the follower's following and the followee's followers
    assert cats["delete_gone"].lost == 1
    assert report.rounds > 1  # it kept looking until the deadline


async def test_ambiguous_answers_are_not_counted_as_lost() -> None:
    calls = {"n": 0}

    def flaky(method: str, path: str) -> tuple[int, bool] | None:
        """A third of the writes answer 503, half of those after applying the write."""
        calls["n"] += 1
        return (503, calls["n"] % 2 == 0) if calls["n"] % 3 == 0 else None

    edge = FakeEdge()
    population = await setup(EDGE, 6, seed=5, transport=transport(edge))
    edge.fault = flaky
    await Load(seed=5, post_attempts=1, transport=transport(edge)).run(population, 200.0, 1.0)
    ledger = population.ledger
    assert sum(o.outcome == AMBIGUOUS for o in ledger.ops) > 10
    report = await check(EDGE, ledger, deadline_s=0, transport=transport(edge))
    assert report.passed, report.table()
    assert sum(c.skipped for c in report.categories.values()) > 0


async def test_a_retry_that_makes_a_second_tweet_breaks_idempotency() -> None:
    posts = {"n": 0}

    def first_post_fails_after_applying(method: str, path: str) -> tuple[int, bool] | None:
        if path == "/v1/tweets":
            posts["n"] += 1
            if posts["n"] == 25:  # after setup's 18 posts
                return 503, True
        return None

    edge = FakeEdge(honour_keys=False, fault=first_post_fails_after_applying)
    ledger = await load_on(edge, rate=150.0, seconds=1.0)
    retried = [o for o in ledger.ops if o.kind == "post" and o.attempts == 2]
    assert len(retried) == 1 and retried[0].outcome == ACK
    report = await check(EDGE, ledger, deadline_s=0, transport=transport(edge))
    assert report.categories["idempotency"].lost == 1, report.table()
    assert "duplicate tweets" in report.categories["idempotency"].details[0]
    assert not report.passed


async def test_nothing_checked_is_not_a_pass() -> None:
    edge = FakeEdge()
    report = await check(EDGE, Ledger(accounts=[], celebrity=""), deadline_s=0, transport=transport(edge))
    assert report.checked == 0 and not report.passed
    assert math.isfinite(report.elapsed_s)
