"""Rate limits through Envoy, as a client meets them: failed logins lock an account
(known or not) with 429 and a Retry-After header, and a user posting past their
limit gets the same. Counters live in the shared state Redis, so they hold whichever
instance answers. Guessing from one client address does not lock the owner out
from another: shown through a private edge that believes one proxy hop of
X-Forwarded-For (the shared edge sees every test at 127.0.0.1). Addresses are
drawn from 198.18.0.0/15 (benchmarking), so no other test's counters move."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
import redis

from common.keys import limit_key
from common.limits import account_subject
from tests.conftest import unique_name
from tests.e2e.test_users import assert_error
from tests.edge import private_edge, render

PASSWORD = "correct horse"
# The stack's settings (`make test` starts it with the defaults).
LOGIN_FAILURES = int(os.environ.get("CHIRP_LIMIT_LOGIN_FAILURES", "5"))
LOGIN_WINDOW_SECONDS = float(os.environ.get("CHIRP_LIMIT_LOGIN_WINDOW_SECONDS", "300"))
POSTS = int(os.environ.get("CHIRP_LIMIT_POSTS", "300"))
WINDOW_SECONDS = float(os.environ.get("CHIRP_LIMIT_WINDOW_SECONDS", "300"))


BEHIND_ONE_PROXY = replace(render.EdgeSettings(), listen_port=18280, admin_port=19921, trusted_hops=1)


def fresh_address() -> str:
    return f"198.{18 + secrets.randbelow(2)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


@pytest.fixture(scope="module")
def proxied_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_edge(tmp_path_factory.mktemp("edge"), BEHIND_ONE_PROXY) as base:
        yield base


def sign_up(edge: httpx.Client) -> str:
    name = unique_name("lim")
    edge.post("/v1/users", json={"username": name, "password": PASSWORD}).raise_for_status()
    return name


def login(edge: httpx.Client, name: str, password: str) -> httpx.Response:
    return edge.post("/v1/sessions", json={"username": name, "password": password})


def retry_after(reply: httpx.Response, window_seconds: float) -> int:
    """The 429's Retry-After: whole seconds, within the window."""
    value = int(reply.headers["retry-after"])
    assert 1 <= value <= window_seconds, value
    return value


def locked_out(edge: httpx.Client, name: str) -> httpx.Response:
    """LOGIN_FAILURES wrong passwords, each a 401; then the right one is refused."""
    for _ in range(LOGIN_FAILURES):
        assert_error(login(edge, name, "wrong horse battery"), 401, 16)
    reply = login(edge, name, PASSWORD)
    assert_error(reply, 429, 8)
    retry_after(reply, LOGIN_WINDOW_SECONDS)
    return reply


def test_failed_logins_lock_an_account_with_429_and_retry_after(edge: httpx.Client) -> None:
    name = sign_up(edge)
    assert login(edge, name, PASSWORD).status_code == 200  # a success is not a failure
    reply = locked_out(edge, name)
    body = reply.json()
    assert "too many failed logins" in body["message"]
    assert [d["@type"].rsplit(".", 1)[1] for d in body["details"]] == ["ErrorInfo", "RetryInfo"]
    # Still locked, whatever the password, and other accounts are not.
    assert login(edge, name, "wrong horse battery").status_code == 429
    other = sign_up(edge)
    assert login(edge, other, PASSWORD).status_code == 200


def test_an_unknown_username_is_locked_exactly_like_a_real_one(edge: httpx.Client) -> None:
    real = locked_out(edge, sign_up(edge)).json()
    unknown = locked_out(edge, unique_name("nobody")).json()
    for body in (real, unknown):
        body["details"] = [d for d in body["details"] if not d["@type"].endswith("RetryInfo")]
    assert real == unknown


def test_a_lockout_outlives_a_flush_of_the_cache_redis(
    edge: httpx.Client, rds: redis.Redis, state_rds: redis.Redis
) -> None:
    """Failed logins are counted in the state Redis, which never evicts: no eviction or
    flush of the cache gives a password guesser a fresh allowance."""
    name = sign_up(edge)
    locked_out(edge, name)
    key = limit_key("login_account", account_subject(name))
    assert int(state_rds.get(key) or 0) == LOGIN_FAILURES
    assert not rds.exists(key)
    assert rds.flushall() is True
    assert_error(login(edge, name, PASSWORD), 429, 8)


def test_posting_past_the_per_user_limit_is_429_with_retry_after(edge: httpx.Client) -> None:
    name, other = sign_up(edge), sign_up(edge)
    token = login(edge, name, PASSWORD).json()["access_token"]
    headers = {"authorization": f"Bearer {token}"}

    def post(i: int) -> int:
        return edge.post("/v1/tweets", json={"text": f"limit {i}"}, headers=headers).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, range(POSTS)))
    assert statuses == [200] * POSTS
    reply = edge.post("/v1/tweets", json={"text": "one too many"}, headers=headers)
    body = assert_error(reply, 429, 8)
    assert "too many posts" in str(body["message"])
    retry_after(reply, WINDOW_SECONDS)
    # The limit is the user's, not everyone's.
    other_token = login(edge, other, PASSWORD).json()["access_token"]
    ok = edge.post("/v1/tweets", json={"text": "mine"}, headers={"authorization": f"Bearer {other_token}"})
    assert ok.status_code == 200, ok.text


def test_guessing_from_one_address_does_not_lock_the_owner_out_from_another(
    edge: httpx.Client, proxied_edge: str
) -> None:
    name, attacker, owner = sign_up(edge), fresh_address(), fresh_address()

    def login_from(address: str, password: str) -> httpx.Response:
        return httpx.post(
            f"{proxied_edge}/v1/sessions",
            json={"username": name, "password": password},
            headers={"x-forwarded-for": address},
            timeout=10,
        )

    for _ in range(LOGIN_FAILURES):
        assert_error(login_from(attacker, "wrong horse battery"), 401, 16)
    for _ in range(3 * LOGIN_FAILURES):  # refused attempts are not counted against the account
        reply = login_from(attacker, PASSWORD)
        assert_error(reply, 429, 8)
        retry_after(reply, LOGIN_WINDOW_SECONDS)
    assert login_from(owner, PASSWORD).status_code == 200
