"""Rate limits (common/limits.py) with in-memory counters: per-user action limits,
failed-login throttling per (account, address), per account and per address, and
how a limit becomes a 429 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from common.errors import DETAILS_KEY, RETRY_AFTER_KEY, ResourceExhausted, Unauthenticated, classify
from common.ids import IdGenerator
from common.limits import (
    LOGIN_REFUSED,
    UNKNOWN_ADDRESS,
    Hit,
    Limit,
    LocalCounters,
    LoginGuard,
    LoginLimits,
    UserLimits,
    client_address,
    limit_key,
    normalize_address,
)
from graph_svc.accounts import Account, Passwords
from graph_svc.domain import Graph
from tweet_svc.domain import Tweets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DownCounters:
    """Counters whose store cannot answer (Redis down)."""

    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, keys: Sequence[tuple[str, int]]) -> list[Hit] | None:
        self.calls += 1
        return None

    async def give_back(self, keys: Sequence[str]) -> None:
        return None


def refused(error: pytest.ExceptionInfo[ResourceExhausted], window_seconds: float) -> int:
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1 <= error.value.retry_after_seconds <= window_seconds
    return error.value.retry_after_seconds


# ---- counters and per-user limits ------------------------------------------------------


async def test_local_counters_count_within_a_window_and_start_over_after_it() -> None:
    clock = Clock()
    counters = LocalCounters(clock)
    assert await counters.hit([("k", 10_000)]) == [Hit(1, 10_000)]
    clock.now += 4
    assert await counters.hit([("k", 10_000)]) == [Hit(2, 6_000)]
    await counters.give_back(["k"])
    assert await counters.hit([("k", 10_000)]) == [Hit(2, 6_000)]
    clock.now += 6
    assert await counters.hit([("k", 10_000)]) == [Hit(1, 10_000)]


async def test_local_counters_stay_bounded() -> None:
    clock = Clock()
    counters = LocalCounters(clock, max_keys=3)
    for i in range(10):
        await counters.hit([(f"k{i}", 1000)])
    assert len(counters._counts) == 3
    assert await counters.hit([("k9", 1000)]) == [Hit(2, 1000)]  # the newest are kept


async def test_user_limit_refuses_past_its_count_until_the_window_ends() -> None:
    clock = Clock()
    limits = UserLimits(LocalCounters(clock), {"post": Limit(3, 60)})
    for _ in range(3):
        await limits.take("post", 7)
    clock.now += 20
    with pytest.raises(ResourceExhausted) as error:
        await limits.take("post", 7)
    assert refused(error, 60) == 40
    assert "too many posts" in error.value.message
    await limits.take("post", 8)  # another user has a counter of their own
    await limits.take("like", 7)  # and so has another action (no limit set here)
    clock.now += 40
    await limits.take("post", 7)


async def test_user_limits_fail_open_and_zero_means_no_limit() -> None:
    down = DownCounters()
    limits = UserLimits(down, {"post": Limit(1, 60), "like": Limit(0, 60)})
    for _ in range(5):
        await limits.take("post", 1)
        await limits.take("like", 1)
    assert down.calls == 5  # only posts are counted


# ---- failed logins -----------------------------------------------------------------------

LOGINS = LoginLimits(window_seconds=300, per_account_address=5, per_account=12, per_address=20)


async def fail(guard: LoginGuard, account: str, address: str, times: int) -> None:
    for _ in range(times):
        await guard.begin(account, address)  # counted, never given back: a wrong password


async def test_an_account_locks_for_one_address_after_five_failures() -> None:
    clock = Clock()
    guard = LoginGuard(LocalCounters(clock), LOGINS)
    await fail(guard, "alice", "10.0.0.1", 5)
    clock.now += 100
    with pytest.raises(ResourceExhausted) as error:
        await guard.begin("alice", "10.0.0.1")
    assert refused(error, 300) == 200
    assert error.value.message == LOGIN_REFUSED
    # The owner, elsewhere, is not locked out by guessing from one address.
    await guard.give_back(await guard.begin("alice", "10.0.0.2"))
    # Nor is anyone else from the guessing address.
    await guard.give_back(await guard.begin("bob", "10.0.0.1"))
    clock.now += 200
    await guard.begin("alice", "10.0.0.1")


async def test_refused_attempts_from_one_address_never_reach_the_account_cap() -> None:
    guard = LoginGuard(LocalCounters(Clock()), LOGINS)
    await fail(guard, "alice", "10.0.0.1", 5)
    for _ in range(100):
        with pytest.raises(ResourceExhausted):
            await guard.begin("alice", "10.0.0.1")
    await guard.begin("alice", "10.0.0.2")  # the account cap (12) was not reached


class SlowCounters(LocalCounters):
    """Redis-like: every call takes a round trip, so concurrent attempts interleave."""

    async def hit(self, keys: Sequence[tuple[str, int]]) -> list[Hit] | None:
        await asyncio.sleep(0.01)
        return await super().hit(keys)

    async def give_back(self, keys: Sequence[str]) -> None:
        await asyncio.sleep(0.01)
        await super().give_back(keys)


async def test_a_burst_from_one_address_never_locks_the_owner_out_elsewhere() -> None:
    guard = LoginGuard(SlowCounters(Clock()), LOGINS)

    async def guess() -> None:
        with contextlib.suppress(ResourceExhausted):
            await guard.begin("alice", "10.0.0.66")

    async def owner() -> None:
        await asyncio.sleep(0.015)  # while the burst's refused attempts are in flight
        await guard.give_back(await guard.begin("alice", "10.0.0.2"))

    await asyncio.gather(*(guess() for _ in range(60)), owner())


async def test_guessing_spread_over_addresses_hits_the_account_cap() -> None:
    guard = LoginGuard(LocalCounters(Clock()), LOGINS)
    for i in range(3):
        await fail(guard, "alice", f"10.0.1.{i}", 4)
    with pytest.raises(ResourceExhausted) as error:
        await guard.begin("alice", "10.0.2.1")
    assert error.value.message == LOGIN_REFUSED  # the same answer whichever counter refused
    await guard.begin("bob", "10.0.2.1")


async def test_one_address_spraying_many_accounts_hits_the_address_cap() -> None:
    guard = LoginGuard(LocalCounters(Clock()), LOGINS)
    for i in range(20):
        await fail(guard, f"user{i}", "10.0.0.9", 1)
    with pytest.raises(ResourceExhausted) as error:
        await guard.begin("fresh", "10.0.0.9")
    assert error.value.message == LOGIN_REFUSED
    await guard.begin("fresh", "10.0.0.10")


async def test_successful_logins_are_not_counted() -> None:
    guard = LoginGuard(LocalCounters(Clock()), LOGINS)
    for _ in range(30):  # past every cap, were they counted
        await guard.give_back(await guard.begin("alice", "10.0.0.1"))
    await fail(guard, "alice", "10.0.0.1", 5)
    with pytest.raises(ResourceExhausted):
        await guard.begin("alice", "10.0.0.1")


async def test_logins_are_counted_in_memory_while_redis_is_down() -> None:
    down = DownCounters()
    guard = LoginGuard(down, LOGINS, fallback=LocalCounters(Clock()))
    await fail(guard, "alice", "10.0.0.1", 5)
    with pytest.raises(ResourceExhausted):
        await guard.begin("alice", "10.0.0.1")
    assert down.calls == 6


class FailingAfter(LocalCounters):
    """Counters that answer `answers` hits, then cannot (a state shard lost between the
    two steps of a login's count, on a cluster)."""

    def __init__(self, answers: int) -> None:
        super().__init__(Clock())
        self.answers = answers

    async def hit(self, keys: Sequence[tuple[str, int]]) -> list[Hit] | None:
        self.answers -= 1
        return await super().hit(keys) if self.answers >= 0 else None


async def test_a_login_is_given_back_to_the_counters_that_counted_each_step() -> None:
    shared = FailingAfter(answers=1)  # the (account, address) step counted there, the wider one not
    guard = LoginGuard(shared, LOGINS, fallback=LocalCounters(Clock()))
    attempt = await guard.begin("alice", "10.0.0.1")
    await guard.give_back(attempt)
    assert all(shared.kept(key) == (0, 0) for key in attempt.keys)
    for _ in range(LOGINS.per_account_address + 1):  # the owner logging in again and again
        shared.answers = 1
        await guard.give_back(await guard.begin("alice", "10.0.0.1"))


async def test_odd_usernames_are_counted_under_a_bounded_key() -> None:
    counters = LocalCounters(Clock())
    guard = LoginGuard(counters, LOGINS)
    await fail(guard, "x" * 10_000, "10.0.0.1", 5)
    with pytest.raises(ResourceExhausted):
        await guard.begin("x" * 10_000, "10.0.0.1")
    assert all(len(key) < 120 and "{" not in key for key in counters._counts)


# ---- sign-in: a locked account looks the same whether it exists or not -------------------


class Store:
    def __init__(self, account: Account) -> None:
        self.account = account
        self.lookups = 0

    async def user_id_by_name(self, key: str) -> int | None:
        self.lookups += 1
        return self.account.user_id if key == self.account.username else None

    async def get_user(self, user_id: int) -> Account | None:
        return self.account if user_id == self.account.user_id else None


async def graph_with(guard: LoginGuard) -> tuple[Graph, Store]:
    passwords = Passwords(19456, 2, 1)
    account = Account(7, "alice", datetime.now(UTC), await passwords.hash("correct horse"))
    store = Store(account)
    unused = cast(Any, None)
    # No signer: a test that reached a token would fail; these stop at the password.
    graph = Graph(cast(Any, store), unused, passwords, unused, IdGenerator(1), logins=guard)
    return graph, store


async def test_sign_in_locks_known_and_unknown_names_alike() -> None:
    graph, store = await graph_with(LoginGuard(LocalCounters(Clock()), LOGINS))
    for name in ("alice", "nobody"):
        for _ in range(5):
            with pytest.raises(Unauthenticated):
                await graph.sign_in(name, "wrong horse", "10.0.0.1")
    lookups = store.lookups
    answers = []
    for name in ("alice", "nobody"):
        with pytest.raises(ResourceExhausted) as error:
            await graph.sign_in(name, "correct horse", "10.0.0.1")  # even the right password
        answers.append((error.value.message, error.value.reason))
    assert answers[0] == answers[1] == (LOGIN_REFUSED, "RATE_LIMITED")
    assert store.lookups == lookups  # refused before the account is looked up
    with pytest.raises(Unauthenticated):  # the owner, elsewhere, gets their password checked
        await graph.sign_in("ALICE", "wrong horse", "10.0.0.2")


async def test_sign_in_gives_an_attempt_back_when_the_store_fails() -> None:
    graph, store = await graph_with(LoginGuard(LocalCounters(Clock()), LOGINS))

    async def down(key: str) -> int | None:
        raise ConnectionError("store down")

    store.user_id_by_name = down  # type: ignore[method-assign]
    for _ in range(10):
        with pytest.raises(ConnectionError):
            await graph.sign_in("alice", "correct horse", "10.0.0.1")
    del store.user_id_by_name
    with pytest.raises(Unauthenticated):  # checked, not refused: the outage counted nothing
        await graph.sign_in("alice", "wrong horse", "10.0.0.1")


async def test_a_login_cut_short_is_not_a_failed_login() -> None:
    """A call that ends before its password is checked (its deadline, the client gone)
    is cancelled: it told no one anything, so it must not count towards a lockout."""
    graph, store = await graph_with(LoginGuard(LocalCounters(Clock()), LOGINS))
    hung = asyncio.Event()

    async def slow(key: str) -> int | None:
        await hung.wait()
        return None

    store.user_id_by_name = slow  # type: ignore[method-assign]
    for _ in range(10):
        login = asyncio.create_task(graph.sign_in("alice", "correct horse", "10.0.0.1"))
        await asyncio.sleep(0.01)
        login.cancel()
        with pytest.raises(asyncio.CancelledError):
            await login
    del store.user_id_by_name
    with pytest.raises(Unauthenticated):  # checked, not refused: nothing was counted
        await graph.sign_in("alice", "wrong horse", "10.0.0.1")


# ---- the 429 itself ----------------------------------------------------------------------


def test_resource_exhausted_carries_retry_after_and_retry_info() -> None:
    status = classify(ResourceExhausted("too many posts", 42), ()).grpc_status()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "too many posts"
    metadata = dict(status.trailing_metadata)
    assert metadata[RETRY_AFTER_KEY] == "42"
    rich = status_pb2.Status.FromString(cast(bytes, metadata[DETAILS_KEY]))
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert rich.details[0].Unpack(info) and info.reason == "RATE_LIMITED"
    assert rich.details[1].Unpack(retry) and retry.retry_delay.seconds == 42
    assert RETRY_AFTER_KEY not in dict(classify(Unauthenticated("no"), ()).grpc_status().trailing_metadata)


def test_retry_after_is_at_least_one_second() -> None:
    assert ResourceExhausted("slow down", 0).retry_after_seconds == 1


# ---- keys and client addresses -----------------------------------------------------------


def test_keys_have_no_hash_tags() -> None:
    assert limit_key("post", 12) == "rl:post:12"
    assert limit_key("login_pair", "alice:10.0.0.1") == "lf:pair:alice:10.0.0.1"


class Context:
    def __init__(self, metadata: Sequence[tuple[str, str]], peer: str) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("metadata", "peer", "expected"),
    [
        ([("x-chirp-client-ip", "203.0.113.7")], "ipv4:127.0.0.1:5000", "203.0.113.7"),
        ([], "ipv4:10.1.2.3:45678", "10.1.2.3"),
        ([], "ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ([], "ipv6:%5B2001:db8:1:2:3:4:5:6%5D:443", "2001:db8:1:2::/64"),  # as gRPC's peer() gives it
        ([("x-chirp-client-ip", "2001:db8:1:2:ffff::1")], "ipv4:127.0.0.1:5000", "2001:db8:1:2::/64"),
        ([("x-chirp-client-ip", "::ffff:198.51.100.4")], "", "198.51.100.4"),
        ([("x-chirp-client-ip", "not an address")], "ipv4:127.0.0.1:5000", UNKNOWN_ADDRESS),
        ([], "unix:/tmp/sock", UNKNOWN_ADDRESS),
    ],
)
def test_client_address(metadata: list[tuple[str, str]], peer: str, expected: str) -> None:
    assert client_address(cast(grpc.aio.ServicerContext, Context(metadata, peer))) == expected


def test_normalize_address_groups_ipv6_by_64() -> None:
    assert normalize_address("2001:db8::1") == normalize_address("2001:db8::ffff:1") == "2001:db8::/64"


# ---- the domain counts before it reads or writes anything --------------------------------


async def test_follows_and_unfollows_past_the_limit_are_refused_before_any_read() -> None:
    unused = cast(Any, None)  # any use of the store would fail the test with AttributeError
    limits = UserLimits(LocalCounters(Clock()), {"follow": Limit(1, 60)})
    await limits.take("follow", 5)
    graph = Graph(unused, unused, unused, unused, IdGenerator(1), limits=limits)
    with pytest.raises(ResourceExhausted):
        await graph.follow(5, 9)
    with pytest.raises(ResourceExhausted):
        await graph.unfollow(5, 9)


async def test_likes_and_posts_past_the_limit_are_refused_before_any_read() -> None:
    unused = cast(Any, None)
    limits = UserLimits(LocalCounters(Clock()), {"like": Limit(1, 60), "post": Limit(1, 60)})
    await limits.take("like", 5)
    await limits.take("post", 5)
    tweets = Tweets(unused, unused, unused, unused, unused, IdGenerator(1), limits=limits)
    with pytest.raises(ResourceExhausted) as error:
        await tweets.set_like(5, 123, liked=True)
    assert "too many likes" in error.value.message
    with pytest.raises(ResourceExhausted):
        await tweets.set_like(5, 123, liked=False)
    with pytest.raises(ResourceExhausted) as error:
        await tweets.create(5, "hello", "")
    assert "too many posts" in error.value.message
