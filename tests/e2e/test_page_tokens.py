"""Page tokens through Envoy REST, as an attacker or a careless client sends them:
every list endpoint's page_token fuzzed with random, truncated, bit-flipped and
old-style (unsigned base64 JSON, hostile values) tokens, and with valid tokens
of another list or of another user's feed. Each must be 400 with the JSON error
body, never a 500 and never a page; valid tokens still walk every item once.

The expired case signs a token with the stack's own page-token key (as any
instance would have, a TTL ago): the TTL is a service setting that this shared
stack cannot shorten for one test. Its rules are unit-tested with a clock in
tests/unit/test_pagination_and_errors.py."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from common.pagination import EXPIRED_TOKEN, INVALID_TOKEN, PageTokens, scope
from infra import keys
from tests.conftest import ROOT
from tests.e2e.test_users import assert_error
from tests.e2e.test_write_path import Account, auth, eventually, new_account, new_accounts, post_tweet, walk

FEED_DEADLINE = 20.0  # "followers see it within a few seconds"; room for a slow 2-core machine
STACK_KEY = ROOT / ".state" / "keys" / keys.PAGE_TOKEN_KEY
HOSTILE_VALUES: list[Any] = [float("inf"), float("-inf"), 2**63, 2**64 + 1, 10**30, True, -1, 0, 1.5, "7", None, [7]]


@dataclass(frozen=True)
class World:
    owner: Account  # follows three users, is followed by three, has posted three tweets
    other: Account  # another user, with a list of each kind of their own
    tweet_ids: list[str]  # the owner's, newest first


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str  # the list kind the services bind tokens to
    path: str
    field: str
    reader: Account | None  # who calls it (the home feed is the caller's own)

    def get(self, edge: httpx.Client, **params: str | int) -> httpx.Response:
        return edge.get(self.path, params=params, headers=auth(self.reader) if self.reader else {})


@pytest.fixture(scope="module")
def world(edge: httpx.Client) -> World:
    owner, other = new_account(edge, "pt"), new_account(edge, "pt")
    friends = new_accounts(edge, 3, "pt")
    for friend in friends:
        for who, whom in ((owner, friend), (friend, owner), (other, friend), (friend, other)):
            reply = edge.post(f"/v1/users/{whom.user_id}/follow", headers=auth(who))
            assert reply.status_code == 200, reply.text
    posted = [str(post_tweet(edge, owner, f"page token test {i}")["tweet_id"]) for i in range(3)]
    others = [str(post_tweet(edge, who, "another list's tweet")["tweet_id"]) for who in (other, other, *friends)]
    # Fan-out is asynchronous: the feeds are only compared once it has delivered.
    for reader, wanted in ((owner, posted + others[2:]), (other, others)):
        eventually(partial(feed_ids, edge, reader), set(wanted).issubset, "tweets in the feeds", FEED_DEADLINE)
    return World(owner, other, posted[::-1])


def feed_ids(edge: httpx.Client, reader: Account) -> set[str]:
    return {str(t["tweet_id"]) for t in walk_as(edge, endpoint_of("feed", reader), 100)}


def endpoints(whose: Account) -> list[Endpoint]:
    """The four public list endpoints, each for `whose` lists (the feed: as `whose`)."""
    return [
        Endpoint("followers", "followers", f"/v1/users/{whose.user_id}/followers", "users", None),
        Endpoint("following", "following", f"/v1/users/{whose.user_id}/following", "users", None),
        Endpoint("tweets", "tweets", f"/v1/users/{whose.user_id}/tweets", "tweets", None),
        Endpoint("feed", "feed", "/v1/feed", "tweets", whose),
    ]


ENDPOINT_NAMES = ["followers", "following", "tweets", "feed"]


def endpoint_of(name: str, whose: Account) -> Endpoint:
    (found,) = [e for e in endpoints(whose) if e.name == name]
    return found


def endpoint(world: World, name: str, whose: Account | None = None) -> Endpoint:
    return endpoint_of(name, whose or world.owner)


def first_token(edge: httpx.Client, at: Endpoint) -> str:
    reply = at.get(edge, page_size=1)
    assert reply.status_code == 200, reply.text
    token = str(reply.json()["next_page_token"])
    assert token, f"{at.path} has more than one item, so page 1 of 1 item has a next_page_token"
    return token


def assert_refused(edge: httpx.Client, at: Endpoint, token: str, message: str = INVALID_TOKEN) -> None:
    reply = at.get(edge, page_size=1, page_token=token)
    body = assert_error(reply, 400, 3)
    assert body["message"] == message, (at.path, token, body)
    assert body["details"][0]["metadata"] == {"field": "page_token"}, body  # type: ignore[index]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def old_style(cursor: Any) -> str:
    """A token the way the unsigned format made them, holding whatever a client chose."""
    return b64(json.dumps(cursor).encode())


def hostile_cursors(kind: str) -> Iterator[Any]:
    for value in HOSTILE_VALUES:
        yield {"k": kind, "before": value}
        yield {"k": kind, "id": value, "t": value}
    yield from (True, 7, [], "feed", None)


@pytest.mark.parametrize("name", ENDPOINT_NAMES)
def test_valid_tokens_walk_every_item_once(edge: httpx.Client, world: World, name: str) -> None:
    at = endpoint(world, name)
    one_by_one = walk(edge, at.path, at.field, 1) if at.reader is None else walk_as(edge, at, 1)
    everything = at.get(edge, page_size=100).json()[at.field]
    key = "user_id" if at.field == "users" else "tweet_id"
    assert [i[key] for i in one_by_one] == [i[key] for i in everything]
    assert len(everything) >= 3 and len({i[key] for i in everything}) == len(everything)
    if name == "tweets":
        assert [i["tweet_id"] for i in everything] == world.tweet_ids


def walk_as(edge: httpx.Client, at: Endpoint, page_size: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = ""
    for _ in range(100):
        params: dict[str, str | int] = {"page_size": page_size, **({"page_token": token} if token else {})}
        reply = at.get(edge, **params)
        assert reply.status_code == 200, reply.text
        items += reply.json()[at.field]
        token = reply.json()["next_page_token"]
        if not token:
            return items
    raise AssertionError(f"{at.path} never reached its last page")


@pytest.mark.parametrize("name", ENDPOINT_NAMES)
def test_random_truncated_and_bit_flipped_tokens_are_400(edge: httpx.Client, world: World, name: str) -> None:
    at = endpoint(world, name)
    token = first_token(edge, at)
    raw = unb64(token)
    rng = random.Random(f"page-tokens-{name}")
    fuzzed = {b64(rng.randbytes(n)) for n in (1, 8, len(raw) - 1, len(raw), len(raw) + 1, 64)}
    fuzzed |= {"".join(rng.choices("!#$&'()*+,/:;=?@[] ~.é😀\t", k=n)) for n in (1, 10, 40)}
    fuzzed |= {token[:n] for n in (1, len(token) // 2, len(token) - 1)}
    fuzzed |= {token + "A", token + "=", " " + token, token.upper(), token[::-1]}
    # One bit flipped in every byte: version, expiry, position and tag alike.
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 1 << rng.randrange(8)
        fuzzed.add(b64(bytes(flipped)))
    # The last character also spells bits no byte uses: a token differently spelt is altered too.
    fuzzed.add(token[:-1] + ("B" if token[-1] == "A" else "A"))
    fuzzed.discard(token)
    for bad in sorted(fuzzed):
        assert_refused(edge, at, bad)


@pytest.mark.parametrize("name", ENDPOINT_NAMES)
def test_old_style_tokens_with_hostile_values_are_400(edge: httpx.Client, world: World, name: str) -> None:
    at = endpoint(world, name)
    # Even a well-formed cursor pointing at a real item: no token is taken unless we sealed it.
    honest = {"k": at.kind, "before": int(world.tweet_ids[0])}
    for cursor in [honest, *hostile_cursors(at.kind)]:
        assert_refused(edge, at, old_style(cursor))


@pytest.mark.parametrize("name", ENDPOINT_NAMES)
def test_a_token_of_another_list_is_400(edge: httpx.Client, world: World, name: str) -> None:
    at = endpoint(world, name)
    for other in endpoints(world.owner) + endpoints(world.other):
        if (other.name, other.reader, other.path) != (at.name, at.reader, at.path):
            assert_refused(edge, at, first_token(edge, other))


def test_a_feed_token_is_refused_on_another_users_feed(edge: httpx.Client, world: World) -> None:
    mine = endpoint(world, "feed", world.owner)
    theirs = endpoint(world, "feed", world.other)
    token = first_token(edge, mine)
    assert mine.get(edge, page_size=1, page_token=token).status_code == 200
    assert_refused(edge, theirs, token)


@pytest.mark.parametrize("name", ENDPOINT_NAMES)
def test_an_expired_token_is_400_and_a_fresh_one_from_the_same_key_is_honoured(
    edge: httpx.Client, world: World, name: str
) -> None:
    at = endpoint(world, name)
    owner = int(world.owner.user_id)
    # Where page 1 of 1 item ends, as the services themselves would seal it.
    if at.field == "tweets":
        position: tuple[int, ...] = (int(at.get(edge, page_size=1).json()["tweets"][0]["tweet_id"]),)
    else:
        position = tuple(unb64_position(first_token(edge, at), 2))
    key = STACK_KEY.read_bytes()
    fresh = PageTokens(key, 3600).encode(scope(at.kind, owner), position)
    expired = PageTokens(key, 60, clock=lambda: time.time() - 3600).encode(scope(at.kind, owner), position)
    page = at.get(edge, page_size=1, page_token=fresh)
    assert page.status_code == 200, page.text  # the stack does use this key: the expiry alone is refused
    assert page.json()[at.field], page.text
    assert_refused(edge, at, expired, EXPIRED_TOKEN)


def unb64_position(token: str, size: int) -> list[int]:
    """The positions inside a token (readable, never forgeable: the tag covers them)."""
    raw = unb64(token)
    return [int.from_bytes(raw[5 + 8 * i : 13 + 8 * i], "big", signed=True) for i in range(size)]


@pytest.mark.parametrize("name", ENDPOINT_NAMES)
def test_a_page_token_that_is_not_utf8_is_400(edge: httpx.Client, world: World, name: str) -> None:
    at = endpoint(world, name)
    reply = edge.get(f"{at.path}?page_size=1&page_token=%FF%FE%00%01", headers=auth(at.reader) if at.reader else {})
    assert_error(reply, 400, 3)
