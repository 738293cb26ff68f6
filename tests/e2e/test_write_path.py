"""The write path through Envoy REST, as an external app calls it: sessions and
tokens, identity spoofing, follows, tweets (text rules, idempotency, delete,
paging) and likes. Every rule and error status here is from ../shared/API.md.

Asynchronous effects (likes are applied by a worker) are awaited with polling
helpers that have deadlines; nothing relies on a fixed sleep."""

from __future__ import annotations

import base64
import json
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.jwk import key_id
from infra import keys
from tests.conftest import ROOT, unique_name
from tests.e2e.test_users import assert_error

PASSWORD = "correct horse"
ISSUER, AUDIENCE = "chirp", "chirp-api"
USER_ID_HEADER = "x-chirp-user-id"
LIKE_DEADLINE = 20.0  # room for a slow 2-core machine
COUNT_DEADLINE = 5.0

T = TypeVar("T")


# ---- helpers -----------------------------------------------------------------


class Account(NamedTuple):
    user_id: str
    token: str
    username: str


def sign_up(edge: httpx.Client, prefix: str = "w") -> tuple[str, str]:
    """A new user; returns (user_id, username)."""
    name = unique_name(prefix)
    reply = edge.post("/v1/users", json={"username": name, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["user"]["user_id"]), name


def log_in(edge: httpx.Client, username: str, password: str = PASSWORD) -> dict[str, Any]:
    reply = edge.post("/v1/sessions", json={"username": username, "password": password})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def new_account(edge: httpx.Client, prefix: str = "w") -> Account:
    """Sign up and log in through the edge; returns (user_id, token, username)."""
    user_id, name = sign_up(edge, prefix)
    session = log_in(edge, name)
    assert session["user"]["user_id"] == user_id
    return Account(user_id, str(session["access_token"]), name)


def new_accounts(edge: httpx.Client, count: int, prefix: str = "w") -> list[Account]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: new_account(edge, prefix), range(count)))


def auth(who: Account | str, **extra: str) -> dict[str, str]:
    token = who.token if isinstance(who, Account) else who
    return {"authorization": f"Bearer {token}", **extra}


def post_tweet(edge: httpx.Client, who: Account, text: str, **headers: str) -> dict[str, Any]:
    reply = edge.post("/v1/tweets", json={"text": text}, headers=auth(who, **headers))
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["tweet"])


def get_user(edge: httpx.Client, user_id: str) -> dict[str, Any]:
    reply = edge.get(f"/v1/users/{user_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["user"])


def like_count(edge: httpx.Client, tweet_id: str) -> int:
    reply = edge.get(f"/v1/tweets/{tweet_id}")
    assert reply.status_code == 200, reply.text
    return int(reply.json()["tweet"]["like_count"])


def tweet_ids_of(edge: httpx.Client, user_id: str, page_size: int = 100) -> list[str]:
    """All of a user's tweet ids, newest first, walking every page."""
    return [str(t["tweet_id"]) for t in walk(edge, f"/v1/users/{user_id}/tweets", "tweets", page_size)]


def walk(edge: httpx.Client, path: str, field: str, page_size: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = ""
    for _ in range(1000):
        params: dict[str, str | int] = {"page_size": page_size}
        if token:
            params["page_token"] = token
        reply = edge.get(path, params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        page = body[field]
        assert len(page) <= page_size
        items += page
        token = body["next_page_token"]
        if not token:
            return items
        assert page, "a page with a next_page_token must not be empty"
    raise AssertionError(f"{path} never reached its last page")


def eventually(
    probe: Callable[[], T], done: Callable[[T], bool], what: str, deadline: float = LIKE_DEADLINE, interval: float = 0.1
) -> T:
    """Probe until `done` holds; fails with the last value once the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: still {value!r} after {deadline} s")
        time.sleep(interval)


def wait_like_count(edge: httpx.Client, tweet_id: str, expected: int) -> None:
    eventually(lambda: like_count(edge, tweet_id), lambda n: n == expected, f"like_count of {tweet_id} != {expected}")


def wait_counts(edge: httpx.Client, user_id: str, followers: int, following: int) -> None:
    def counts() -> tuple[int, int]:
        user = get_user(edge, user_id)
        return int(user["follower_count"]), int(user["following_count"])

    eventually(counts, lambda c: c == (followers, following), f"counts of {user_id}", deadline=COUNT_DEADLINE)
    assert counts() == (followers, following)


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def real_signing_key() -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((ROOT / ".state" / "keys" / keys.PRIVATE_KEY).read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def kid_of(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def mint(
    user_id: str,
    key: Ed25519PrivateKey | None = None,
    kid: str | None = None,
    lifetime: timedelta = timedelta(minutes=10),
    issued: timedelta = timedelta(0),
    **overrides: str,
) -> str:
    """A token for `user_id`; signed with the edge's real key unless `key` is given."""
    real = real_signing_key()
    now = datetime.now(UTC) - issued
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        **overrides,
    }
    return jwt.encode(claims, key or real, algorithm="EdDSA", headers={"kid": kid or kid_of(real)})


# ---- sessions and tokens -------------------------------------------------------


def test_session_returns_bearer_token_expiry_and_user(edge: httpx.Client) -> None:
    user_id, name = sign_up(edge)
    before = datetime.now(UTC)
    session = log_in(edge, name)
    assert set(session) >= {"access_token", "token_type", "expires_at", "user"}
    assert isinstance(session["access_token"], str) and session["access_token"]
    assert session["token_type"] == "Bearer"
    assert parse_time(session["expires_at"]) > before + timedelta(minutes=1)
    user = session["user"]
    assert user["user_id"] == user_id and user["username"] == name
    assert user["follower_count"] == 0 and user["following_count"] == 0
    parse_time(user["created_at"])

    # The token works and acts as that user.
    tweet = post_tweet(edge, Account(user_id, session["access_token"], name), "my first chirp")
    assert tweet["author_id"] == user_id


def test_wrong_password_and_unknown_user_get_the_same_401(edge: httpx.Client) -> None:
    _, name = sign_up(edge)
    wrong = edge.post("/v1/sessions", json={"username": name, "password": "wrong horse battery"})
    unknown = edge.post("/v1/sessions", json={"username": unique_name("nobody"), "password": PASSWORD})
    wrong_body = assert_error(wrong, 401, 16)
    unknown_body = assert_error(unknown, 401, 16)
    assert wrong_body == unknown_body
    assert "access_token" not in wrong.text


CALLS_NEEDING_A_TOKEN = [
    ("POST", "/v1/tweets", {"text": "hello"}),
    ("DELETE", "/v1/tweets/{tweet}", None),
    ("POST", "/v1/tweets/{tweet}/like", None),
    ("DELETE", "/v1/tweets/{tweet}/like", None),
    ("POST", "/v1/users/{user}/follow", None),
    ("DELETE", "/v1/users/{user}/follow", None),
    ("GET", "/v1/feed", None),
]


@pytest.fixture(scope="module")
def target(edge: httpx.Client) -> tuple[Account, dict[str, Any]]:
    """A user with one tweet, for calls that need something to act on."""
    owner = new_account(edge, "tgt")
    return owner, post_tweet(edge, owner, "a tweet to act on")


@pytest.mark.parametrize(("method", "path", "body"), CALLS_NEEDING_A_TOKEN)
def test_calls_without_a_token_are_401(
    edge: httpx.Client, target: tuple[Account, dict[str, Any]], method: str, path: str, body: dict[str, str] | None
) -> None:
    owner, tweet = target
    url = path.format(tweet=tweet["tweet_id"], user=owner.user_id)
    assert_error(edge.request(method, url, json=body), 401, 16)
    # A client-sent identity header is no substitute for a token.
    assert_error(edge.request(method, url, json=body, headers={USER_ID_HEADER: owner.user_id}), 401, 16)
    assert_error(edge.request(method, url, json=body, headers={"authorization": "Bearer"}), 401, 16)
    assert_error(edge.request(method, url, json=body, headers={"authorization": "Basic dXNlcjpwYXNz"}), 401, 16)
    # Nothing happened on the owner's behalf.
    assert tweet_ids_of(edge, owner.user_id) == [tweet["tweet_id"]]
    assert like_count(edge, tweet["tweet_id"]) == 0
    user = get_user(edge, owner.user_id)
    assert user["follower_count"] == 0 and user["following_count"] == 0


def test_token_minted_with_the_real_key_is_accepted(edge: httpx.Client) -> None:
    """Control for the forged/expired tests: the test's minting itself is right."""
    user_id, _ = sign_up(edge)
    reply = edge.post("/v1/tweets", json={"text": "minted"}, headers=auth(mint(user_id)))
    assert reply.status_code == 200, reply.text
    assert reply.json()["tweet"]["author_id"] == user_id


def _forged_tokens(victim: str, attacker: Account) -> dict[str, str]:
    other_key = Ed25519PrivateKey.generate()
    header, _, signature = attacker.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(attacker.token.split(".")[1] + "=="))
    claims["sub"] = victim
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{none_header}.{b64(json.dumps(claims).encode())}."
    real = real_signing_key()
    return {
        "other key, real kid": mint(victim, key=other_key, kid=kid_of(real)),
        "other key, own kid": mint(victim, key=other_key, kid=kid_of(other_key)),
        "payload changed": tampered,
        "alg none": unsigned,
        "wrong issuer": mint(victim, iss="someone-else"),
        "garbage": "not.a.jwt",
        "expired": mint(victim, issued=timedelta(hours=2), lifetime=timedelta(hours=1)),
        "expired two minutes ago": mint(victim, issued=timedelta(minutes=12), lifetime=timedelta(minutes=10)),
    }


def test_forged_and_expired_tokens_are_401(edge: httpx.Client) -> None:
    victim, _ = sign_up(edge, "victim")
    attacker = new_account(edge, "attk")
    followee, _ = sign_up(edge)
    for label, token in _forged_tokens(victim, attacker).items():
        reply = edge.post("/v1/tweets", json={"text": f"forged {label}"}, headers=auth(token))
        assert_error(reply, 401, 16)
        follow = edge.post(f"/v1/users/{followee}/follow", headers=auth(token))
        assert_error(follow, 401, 16)
    assert tweet_ids_of(edge, victim) == []
    assert tweet_ids_of(edge, attacker.user_id) == []
    assert get_user(edge, followee)["follower_count"] == 0


def test_token_for_another_audience_is_401(edge: httpx.Client) -> None:
    """Signed with the real key but not issued for this API: not a valid token."""
    victim, _ = sign_up(edge, "victim")
    reply = edge.post("/v1/tweets", json={"text": "wrong audience"}, headers=auth(mint(victim, aud="other-api")))
    assert tweet_ids_of(edge, victim) == []
    assert_error(reply, 401, 16)


@pytest.mark.parametrize("sub", ["abc", "0", "-5", ""])
def test_real_signature_with_unusable_subject_is_401(edge: httpx.Client, sub: str) -> None:
    assert_error(edge.post("/v1/tweets", json={"text": "who?"}, headers=auth(mint(sub))), 401, 16)


# ---- identity cannot be spoofed ---------------------------------------------------


def test_identity_header_with_a_token_still_acts_as_the_token_user(edge: httpx.Client) -> None:
    me = new_account(edge, "me")
    other, _ = sign_up(edge, "other")
    for header in (USER_ID_HEADER, "X-Chirp-User-Id"):
        tweet = post_tweet(edge, me, "who am i", **{header: other})
        assert tweet["author_id"] == me.user_id
        assert tweet["author_username"] == me.username
    # Body and query tricks either fail or still act as the token's user.
    body = edge.post("/v1/tweets", json={"text": "body trick", "author_id": other}, headers=auth(me))
    assert body.status_code in (200, 400), body.text
    if body.status_code == 200:
        assert body.json()["tweet"]["author_id"] == me.user_id
    query = edge.post(f"/v1/tweets?author_id={other}", json={"text": "query trick"}, headers=auth(me))
    assert query.status_code in (200, 400), query.text
    if query.status_code == 200:
        assert query.json()["tweet"]["author_id"] == me.user_id
    assert tweet_ids_of(edge, other) == []


def test_identity_header_without_a_token_is_401_and_creates_nothing(edge: httpx.Client) -> None:
    victim, _ = sign_up(edge, "victim")
    reply = edge.post("/v1/tweets", json={"text": "spoofed"}, headers={USER_ID_HEADER: victim})
    assert_error(reply, 401, 16)
    assert tweet_ids_of(edge, victim) == []


def test_cannot_delete_someone_elses_tweet_even_with_their_id_header(edge: httpx.Client) -> None:
    author = new_account(edge, "auth")
    intruder = new_account(edge, "intr")
    tweet = post_tweet(edge, author, "mine, not yours")
    for headers in (auth(intruder), auth(intruder, **{USER_ID_HEADER: author.user_id})):
        body = assert_error(edge.delete(f"/v1/tweets/{tweet['tweet_id']}", headers=headers), 403, 7)
        assert body["message"]
    still = edge.get(f"/v1/tweets/{tweet['tweet_id']}")
    assert still.status_code == 200 and still.json()["tweet"]["text"] == "mine, not yours"
    assert tweet_ids_of(edge, author.user_id) == [tweet["tweet_id"]]


def test_cannot_like_as_someone_else(edge: httpx.Client) -> None:
    author = new_account(edge, "auth")
    me = new_account(edge, "me")
    other = new_account(edge, "other")
    tweet_id = post_tweet(edge, author, "like me")["tweet_id"]

    spoofed = edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(me, **{USER_ID_HEADER: other.user_id}))
    assert spoofed.status_code == 200, spoofed.text
    assert spoofed.json() == {"like_count": 1}
    # If that like had counted as `other`, their own like would change nothing.
    assert edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(other)).status_code == 200
    wait_like_count(edge, tweet_id, 2)

    # Unliking "as other" removes my like, not theirs.
    unlike = edge.delete(f"/v1/tweets/{tweet_id}/like", headers=auth(me, **{USER_ID_HEADER: other.user_id}))
    assert unlike.status_code == 200, unlike.text
    assert unlike.json() == {"like_count": 1}
    wait_like_count(edge, tweet_id, 1)
    theirs = edge.delete(f"/v1/tweets/{tweet_id}/like", headers=auth(other))
    assert theirs.status_code == 200, theirs.text
    assert theirs.json() == {"like_count": 0}, "other's like should still have been there"
    wait_like_count(edge, tweet_id, 0)


def test_cannot_follow_as_someone_else(edge: httpx.Client) -> None:
    me = new_account(edge, "me")
    other, _ = sign_up(edge, "other")
    star, _ = sign_up(edge, "star")
    reply = edge.post(
        f"/v1/users/{star}/follow",
        json={"follower_id": other},
        headers=auth(me, **{USER_ID_HEADER: other}),
    )
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 400:  # the body was refused; follow plainly, still spoofing the header
        reply = edge.post(f"/v1/users/{star}/follow", headers=auth(me, **{USER_ID_HEADER: other}))
        assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    followers = edge.get(f"/v1/users/{star}/followers").json()["users"]
    assert [u["user_id"] for u in followers] == [me.user_id]
    wait_counts(edge, star, followers=1, following=0)
    wait_counts(edge, me.user_id, followers=0, following=1)
    wait_counts(edge, other, followers=0, following=0)
    assert edge.get(f"/v1/users/{other}/following").json()["users"] == []


# ---- follow / unfollow ----------------------------------------------------------


def test_follow_and_unfollow_are_idempotent_and_counts_are_exact(edge: httpx.Client) -> None:
    a, b, c = new_accounts(edge, 3, "fol")

    for _ in range(2):
        reply = edge.post(f"/v1/users/{b.user_id}/follow", headers=auth(a))
        assert reply.status_code == 200, reply.text
        assert reply.json() == {}
    wait_counts(edge, b.user_id, followers=1, following=0)
    wait_counts(edge, a.user_id, followers=0, following=1)

    assert edge.post(f"/v1/users/{b.user_id}/follow", headers=auth(c)).json() == {}
    wait_counts(edge, b.user_id, followers=2, following=0)
    wait_counts(edge, c.user_id, followers=0, following=1)

    for _ in range(2):
        reply = edge.delete(f"/v1/users/{b.user_id}/follow", headers=auth(a))
        assert reply.status_code == 200, reply.text
        assert reply.json() == {}
    wait_counts(edge, b.user_id, followers=1, following=0)
    wait_counts(edge, a.user_id, followers=0, following=0)

    # Unfollowing someone never followed is fine and changes nothing.
    never = edge.delete(f"/v1/users/{a.user_id}/follow", headers=auth(b))
    assert never.status_code == 200, never.text
    assert never.json() == {}
    wait_counts(edge, a.user_id, followers=0, following=0)
    wait_counts(edge, b.user_id, followers=1, following=0)

    # Follow, unfollow, follow, follow in a row ends followed, counted once.
    for method in ("POST", "DELETE", "POST", "POST"):
        reply = edge.request(method, f"/v1/users/{b.user_id}/follow", headers=auth(a))
        assert reply.status_code == 200, reply.text
    wait_counts(edge, b.user_id, followers=2, following=0)
    wait_counts(edge, a.user_id, followers=0, following=1)
    followers = edge.get(f"/v1/users/{b.user_id}/followers").json()["users"]
    assert [u["user_id"] for u in followers] == [a.user_id, c.user_id]


def test_cannot_follow_yourself(edge: httpx.Client) -> None:
    me = new_account(edge)
    body = assert_error(edge.post(f"/v1/users/{me.user_id}/follow", headers=auth(me)), 400, 3)
    assert "yourself" in str(body["message"])
    wait_counts(edge, me.user_id, followers=0, following=0)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize(
    ("user_id", "status", "code"),
    [
        ("12345", 404, 5),
        ("9223372036854775807", 404, 5),
        ("not-a-number", 400, 3),
        ("1.5", 400, 3),
        ("0", 400, 3),
        ("-7", 400, 3),
        ("99999999999999999999", 400, 3),
    ],
)
def test_follow_unknown_or_malformed_user(
    edge: httpx.Client, target: tuple[Account, dict[str, Any]], method: str, user_id: str, status: int, code: int
) -> None:
    me, _ = target
    assert_error(edge.request(method, f"/v1/users/{user_id}/follow", headers=auth(me)), status, code)


def test_followers_and_following_are_newest_first_and_page_without_repeats(edge: httpx.Client) -> None:
    star = new_account(edge, "star")
    fans = new_accounts(edge, 3, "fan")
    fans.sort(key=lambda f: int(f.user_id))
    for fan in fans:
        assert edge.post(f"/v1/users/{star.user_id}/follow", headers=auth(fan)).status_code == 200
    for fan in fans:
        assert edge.post(f"/v1/users/{fan.user_id}/follow", headers=auth(star)).status_code == 200
    newest_first = [f.user_id for f in reversed(fans)]

    for kind in ("followers", "following"):
        path = f"/v1/users/{star.user_id}/{kind}"
        first = edge.get(path, params={"page_size": 2})
        assert first.status_code == 200, first.text
        page1 = first.json()
        assert [u["user_id"] for u in page1["users"]] == newest_first[:2]
        assert page1["next_page_token"]
        second = edge.get(path, params={"page_size": 2, "page_token": page1["next_page_token"]})
        assert second.status_code == 200, second.text
        page2 = second.json()
        assert [u["user_id"] for u in page2["users"]] == newest_first[2:]
        assert page2["next_page_token"] == ""
        walked = walk(edge, path, "users", 1)
        assert [u["user_id"] for u in walked] == newest_first
        everything = edge.get(path).json()
        assert [u["user_id"] for u in everything["users"]] == newest_first
        assert everything["next_page_token"] == ""
        user = everything["users"][0]
        assert set(user) >= {"user_id", "username", "created_at", "follower_count", "following_count"}
        assert user["username"] == fans[-1].username

    # A re-follow after an unfollow makes that follower the newest.
    oldest = fans[0]
    assert edge.delete(f"/v1/users/{star.user_id}/follow", headers=auth(oldest)).status_code == 200
    assert edge.post(f"/v1/users/{star.user_id}/follow", headers=auth(oldest)).status_code == 200
    walked = walk(edge, f"/v1/users/{star.user_id}/followers", "users", 2)
    assert [u["user_id"] for u in walked] == [oldest.user_id, *newest_first[:2]]
    wait_counts(edge, star.user_id, followers=3, following=3)


def test_follow_lists_default_to_20_and_cap_at_100(edge: httpx.Client) -> None:
    hub = new_account(edge, "hub")
    crowd = new_accounts(edge, 101, "crd")

    def link(member: Account) -> None:
        assert edge.post(f"/v1/users/{hub.user_id}/follow", headers=auth(member)).status_code == 200
        assert edge.post(f"/v1/users/{member.user_id}/follow", headers=auth(hub)).status_code == 200

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(link, crowd))
    everyone = {m.user_id for m in crowd}

    for kind in ("followers", "following"):
        path = f"/v1/users/{hub.user_id}/{kind}"
        for params in ({}, {"page_size": 0}):
            page = edge.get(path, params=params).json()
            assert len(page["users"]) == 20 and page["next_page_token"]
        capped = edge.get(path, params={"page_size": 1000}).json()
        assert len(capped["users"]) == 100 and capped["next_page_token"]
        rest = edge.get(path, params={"page_size": 1000, "page_token": capped["next_page_token"]}).json()
        assert len(rest["users"]) == 1 and rest["next_page_token"] == ""
        ids = [u["user_id"] for u in capped["users"] + rest["users"]]
        assert len(ids) == len(set(ids)) and set(ids) == everyone
    wait_counts(edge, hub.user_id, followers=101, following=101)


@pytest.mark.parametrize("kind", ["followers", "following", "tweets"])
@pytest.mark.parametrize(
    "params",
    [
        {"page_size": "-1"},
        {"page_token": "garbage!!"},
        {"page_token": "bm90IGpzb24"},  # base64 of "not json"
        {"page_token": b64(b'{"k":"other","id":1,"t":1}')},
        {"page_size": "ten"},
    ],
)
def test_bad_page_size_or_token_is_400(
    edge: httpx.Client, target: tuple[Account, dict[str, Any]], kind: str, params: dict[str, str]
) -> None:
    owner, _ = target
    assert_error(edge.get(f"/v1/users/{owner.user_id}/{kind}", params=params), 400, 3)


@pytest.mark.parametrize("kind", ["followers", "following", "tweets"])
def test_lists_of_unknown_or_malformed_user(edge: httpx.Client, kind: str) -> None:
    assert_error(edge.get(f"/v1/users/12345/{kind}"), 404, 5)
    assert_error(edge.get(f"/v1/users/abc/{kind}"), 400, 3)


# ---- tweets ------------------------------------------------------------------------


def test_create_and_get_tweet(edge: httpx.Client) -> None:
    me = new_account(edge)
    before = datetime.now(UTC) - timedelta(seconds=5)
    reply = edge.post("/v1/tweets", json={"text": "hello, chirp"}, headers=auth(me))
    assert reply.status_code == 200, reply.text
    tweet = reply.json()["tweet"]
    assert set(tweet) >= {"tweet_id", "author_id", "author_username", "text", "created_at", "like_count"}
    assert isinstance(tweet["tweet_id"], str) and int(tweet["tweet_id"]) > 0
    assert isinstance(tweet["author_id"], str) and tweet["author_id"] == me.user_id
    assert tweet["author_username"] == me.username
    assert tweet["text"] == "hello, chirp"
    assert tweet["like_count"] == 0
    assert before < parse_time(tweet["created_at"]) < datetime.now(UTC) + timedelta(seconds=5)

    fetched = edge.get(f"/v1/tweets/{tweet['tweet_id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["tweet"] == tweet
    assert tweet_ids_of(edge, me.user_id) == [tweet["tweet_id"]]


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        pytest.param("e\u0301", "\u00e9", id="nfc-combining"),
        pytest.param("e\u0301" * 140, "\u00e9" * 140, id="140-after-nfc-280-before"),
        pytest.param("a" * 140, "a" * 140, id="140-ascii"),
        pytest.param("\U0001f426" * 140, "\U0001f426" * 140, id="140-astral-code-points"),
        pytest.param("first line\nsecond line", "first line\nsecond line", id="newline"),
        pytest.param("  padded  ", "  padded  ", id="inner-and-outer-spaces"),
        pytest.param("\u65e5\u672c\u8a9e \u0645\u0631\u062d\u0628\u0627", None, id="cjk-arabic"),
    ],
)
def test_tweet_text_accepted_and_stored_nfc(edge: httpx.Client, text: str, stored: str | None) -> None:
    me = new_account(edge)
    expected = stored if stored is not None else unicodedata.normalize("NFC", text)
    tweet = post_tweet(edge, me, text)
    assert tweet["text"] == expected
    assert edge.get(f"/v1/tweets/{tweet['tweet_id']}").json()["tweet"]["text"] == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a" * 141, id="141-ascii"),
        pytest.param("e\u0301" * 141, id="141-after-nfc"),
        pytest.param("\U0001f426" * 141, id="141-astral"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="spaces"),
        pytest.param(" \n\n \u3000", id="only-white-space"),
        pytest.param("ding \u0007", id="bell"),
        pytest.param("tab\there", id="tab"),
        pytest.param("cr\r\nlf", id="carriage-return"),
        pytest.param("nul\u0000", id="nul"),
        pytest.param("del\u007f", id="del"),
        pytest.param("c1\u0085", id="c1-control"),
        pytest.param("non\ufffe", id="noncharacter-fffe"),
        pytest.param("non\ufdd0", id="noncharacter-fdd0"),
        pytest.param("non\U0010ffff", id="noncharacter-10ffff"),
        pytest.param("unassigned\u0378", id="unassigned-0378"),
    ],
)
def test_bad_tweet_text_is_400(edge: httpx.Client, target: tuple[Account, dict[str, Any]], text: str) -> None:
    owner, first = target
    assert_error(edge.post("/v1/tweets", json={"text": text}, headers=auth(owner)), 400, 3)
    assert tweet_ids_of(edge, owner.user_id) == [first["tweet_id"]]


def test_missing_text_or_malformed_json_is_400(edge: httpx.Client, target: tuple[Account, dict[str, Any]]) -> None:
    owner, first = target
    assert_error(edge.post("/v1/tweets", json={}, headers=auth(owner)), 400, 3)
    malformed = edge.post(
        "/v1/tweets", content=b'{"text": "x",', headers=auth(owner, **{"content-type": "application/json"})
    )
    assert_error(malformed, 400, 3)
    assert tweet_ids_of(edge, owner.user_id) == [first["tweet_id"]]


def test_idempotency_key_returns_the_original_tweet(edge: httpx.Client) -> None:
    me = new_account(edge, "idem")
    other = new_account(edge, "idem")
    key = f"retry-{unique_name()}"

    first = post_tweet(edge, me, "only once please", **{"Idempotency-Key": key})
    again = post_tweet(edge, me, "only once please", **{"Idempotency-Key": key})
    assert again["tweet_id"] == first["tweet_id"]
    assert again == first
    changed = post_tweet(edge, me, "a different text", **{"Idempotency-Key": key})
    assert changed["tweet_id"] == first["tweet_id"] and changed["text"] == "only once please"
    assert tweet_ids_of(edge, me.user_id) == [first["tweet_id"]]

    # The same key from another user is another tweet.
    theirs = post_tweet(edge, other, "only once please", **{"Idempotency-Key": key})
    assert theirs["tweet_id"] != first["tweet_id"]
    assert theirs["author_id"] == other.user_id
    assert tweet_ids_of(edge, other.user_id) == [theirs["tweet_id"]]

    # Without a key (or with a new one), each post is a new tweet.
    plain1 = post_tweet(edge, me, "no key")
    plain2 = post_tweet(edge, me, "no key")
    fresh = post_tweet(edge, me, "only once please", **{"Idempotency-Key": key + "-2"})
    assert len({plain1["tweet_id"], plain2["tweet_id"], fresh["tweet_id"], first["tweet_id"]}) == 4
    assert tweet_ids_of(edge, me.user_id) == [
        fresh["tweet_id"],
        plain2["tweet_id"],
        plain1["tweet_id"],
        first["tweet_id"],
    ]


def test_a_retry_after_the_tweet_was_deleted_does_not_bring_it_back(edge: httpx.Client) -> None:
    """The key lives 24 h; the delete was acknowledged: a retried post answers 404 and
    writes nothing, where it wrote the deleted tweet again (after its cached deletion
    marker expired, it could be read again)."""
    me = new_account(edge, "idemdel")
    key = f"retry-{unique_name()}"
    first = post_tweet(edge, me, "then deleted", **{"Idempotency-Key": key})
    assert edge.delete(f"/v1/tweets/{first['tweet_id']}", headers=auth(me)).status_code == 200

    again = edge.post("/v1/tweets", json={"text": "then deleted"}, headers=auth(me, **{"Idempotency-Key": key}))
    body = assert_error(again, 404, 5)
    assert "was deleted" in str(body["message"])
    assert_error(edge.get(f"/v1/tweets/{first['tweet_id']}"), 404, 5)
    assert tweet_ids_of(edge, me.user_id) == []


def test_concurrent_retries_with_one_idempotency_key_make_one_tweet(edge: httpx.Client) -> None:
    me = new_account(edge, "idem")
    key = f"burst-{unique_name()}"
    with ThreadPoolExecutor(max_workers=6) as pool:
        tweets = list(pool.map(lambda _: post_tweet(edge, me, "burst", **{"Idempotency-Key": key}), range(6)))
    assert len({t["tweet_id"] for t in tweets}) == 1
    assert tweet_ids_of(edge, me.user_id) == [tweets[0]["tweet_id"]]


def test_author_deletes_tweet(edge: httpx.Client) -> None:
    me = new_account(edge)
    keep = post_tweet(edge, me, "keep me")
    gone = post_tweet(edge, me, "delete me")
    assert tweet_ids_of(edge, me.user_id) == [gone["tweet_id"], keep["tweet_id"]]

    reply = edge.delete(f"/v1/tweets/{gone['tweet_id']}", headers=auth(me))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    assert_error(edge.get(f"/v1/tweets/{gone['tweet_id']}"), 404, 5)
    assert tweet_ids_of(edge, me.user_id) == [keep["tweet_id"]]
    assert_error(edge.delete(f"/v1/tweets/{gone['tweet_id']}", headers=auth(me)), 404, 5)
    assert_error(edge.post(f"/v1/tweets/{gone['tweet_id']}/like", headers=auth(me)), 404, 5)
    assert edge.get(f"/v1/tweets/{keep['tweet_id']}").status_code == 200


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("POST", "/like"), ("DELETE", "/like")])
@pytest.mark.parametrize(
    ("tweet_id", "status", "code"),
    [
        ("12345", 404, 5),
        ("9223372036854775807", 404, 5),
        ("abc", 400, 3),
        ("0", 400, 3),
        ("-3", 400, 3),
        ("99999999999999999999", 400, 3),
    ],
)
def test_unknown_or_malformed_tweet_id(
    edge: httpx.Client,
    target: tuple[Account, dict[str, Any]],
    method: str,
    suffix: str,
    tweet_id: str,
    status: int,
    code: int,
) -> None:
    me, _ = target
    body = assert_error(edge.request(method, f"/v1/tweets/{tweet_id}{suffix}", headers=auth(me)), status, code)
    if status == 404:
        assert tweet_id in str(body["message"])


def test_user_tweets_newest_first_with_default_and_capped_pages(edge: httpx.Client) -> None:
    me = new_account(edge, "many")
    with ThreadPoolExecutor(max_workers=8) as pool:
        posted = list(pool.map(lambda i: post_tweet(edge, me, f"tweet {i}")["tweet_id"], range(101)))
    newest_first = sorted(posted, key=int, reverse=True)
    path = f"/v1/users/{me.user_id}/tweets"

    for params in ({}, {"page_size": 0}):
        page = edge.get(path, params=params).json()
        assert [t["tweet_id"] for t in page["tweets"]] == newest_first[:20]
        assert page["next_page_token"]
    capped = edge.get(path, params={"page_size": 1000}).json()
    assert [t["tweet_id"] for t in capped["tweets"]] == newest_first[:100]
    assert capped["next_page_token"]
    rest = edge.get(path, params={"page_size": 1000, "page_token": capped["next_page_token"]}).json()
    assert [t["tweet_id"] for t in rest["tweets"]] == newest_first[100:]
    assert rest["next_page_token"] == ""
    tweets = capped["tweets"] + rest["tweets"]
    times = [parse_time(t["created_at"]) for t in tweets]
    assert times == sorted(times, reverse=True)
    assert all(t["author_id"] == me.user_id and t["like_count"] == 0 for t in tweets)
    assert tweet_ids_of(edge, me.user_id, page_size=7) == newest_first


def test_walking_tweet_pages_while_new_tweets_arrive_never_repeats_or_skips(edge: httpx.Client) -> None:
    me = new_account(edge, "walk")
    older = [post_tweet(edge, me, f"older {i}")["tweet_id"] for i in range(5)]
    path = f"/v1/users/{me.user_id}/tweets"

    walked: list[str] = []
    token = ""
    for round_ in range(10):
        params: dict[str, str | int] = {"page_size": 2}
        if token:
            params["page_token"] = token
        reply = edge.get(path, params=params)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        walked += [t["tweet_id"] for t in body["tweets"]]
        token = body["next_page_token"]
        if not token:
            break
        # New tweets arrive between page fetches.
        post_tweet(edge, me, f"newer {round_}a")
        post_tweet(edge, me, f"newer {round_}b")
    else:
        raise AssertionError("never reached the last page")
    assert walked == list(reversed(older))


# ---- likes -------------------------------------------------------------------------


def test_like_counts_once_per_user_and_unlike_drops_it(edge: httpx.Client) -> None:
    author, fan, other = new_accounts(edge, 3, "lk")
    tweet_id = post_tweet(edge, author, "like this")["tweet_id"]

    first = edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(fan))
    assert first.status_code == 200, first.text
    assert first.json() == {"like_count": 1}
    second = edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(fan))
    assert second.status_code == 200, second.text
    assert second.json() == {"like_count": 1}
    wait_like_count(edge, tweet_id, 1)

    # A second user's like: 2, not 3 (it is applied after both of fan's likes).
    assert edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(other)).status_code == 200
    wait_like_count(edge, tweet_id, 2)

    unlike = edge.delete(f"/v1/tweets/{tweet_id}/like", headers=auth(other))
    assert unlike.status_code == 200, unlike.text
    assert unlike.json() == {"like_count": 1}
    wait_like_count(edge, tweet_id, 1)
    again = edge.delete(f"/v1/tweets/{tweet_id}/like", headers=auth(other))
    assert again.status_code == 200, again.text
    assert again.json() == {"like_count": 1}
    fetched = edge.get(f"/v1/tweets/{tweet_id}").json()["tweet"]
    assert fetched["like_count"] == 1
    listed = edge.get(f"/v1/users/{author.user_id}/tweets").json()["tweets"]
    assert [t["like_count"] for t in listed] == [1]


def test_like_unlike_like_quickly_converges_to_one(edge: httpx.Client) -> None:
    author, fan, witness = new_accounts(edge, 3, "lk")
    tweet_id = post_tweet(edge, author, "flip flop")["tweet_id"]
    for method in ("POST", "DELETE", "POST"):
        reply = edge.request(method, f"/v1/tweets/{tweet_id}/like", headers=auth(fan))
        assert reply.status_code == 200, reply.text
    wait_like_count(edge, tweet_id, 1)
    # A later like from someone else is applied after the flip-flop: exactly 2.
    assert edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(witness)).status_code == 200
    wait_like_count(edge, tweet_id, 2)
    # And fan's like is the one that stands: unliking it drops the count.
    assert edge.delete(f"/v1/tweets/{tweet_id}/like", headers=auth(fan)).json() == {"like_count": 1}
    wait_like_count(edge, tweet_id, 1)


def test_like_of_unknown_tweet_is_404_and_without_token_401(
    edge: httpx.Client, target: tuple[Account, dict[str, Any]]
) -> None:
    me, tweet = target
    assert_error(edge.post("/v1/tweets/12345/like", headers=auth(me)), 404, 5)
    assert_error(edge.post(f"/v1/tweets/{tweet['tweet_id']}/like"), 401, 16)
    assert_error(edge.delete(f"/v1/tweets/{tweet['tweet_id']}/like"), 401, 16)
    assert like_count(edge, tweet["tweet_id"]) == 0
