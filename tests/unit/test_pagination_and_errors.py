import base64
import json
import stat
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from common.errors import DEPENDENCY_DOWN_MESSAGE, INTERNAL_MESSAGE, InvalidArgument, NotFound, to_status
from common.ids import IdGenerator
from common.pagination import EXPIRED_TOKEN, INVALID_TOKEN, KEY_BYTES, PageTokens, page_size, scope
from feed_svc.merge import decode_cursor, encode_cursor
from graph_svc.domain import Graph
from graph_svc.store import FollowEdge
from infra import keys
from tweet_svc.domain import Tweets

KEY = bytes(range(KEY_BYTES))
NOW = 1_900_000_000.0
TTL = 3600
TWEET_ID = 912_195_040_917_585_920
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def tokens(clock: Clock | None = None, key: bytes = KEY) -> PageTokens:
    return PageTokens(key, TTL, clock or Clock())


def refused(pages: PageTokens, token: str, list_scope: str, size: int = 1, message: str = INVALID_TOKEN) -> None:
    with pytest.raises(InvalidArgument) as caught:
        pages.decode(token, list_scope, size)
    assert caught.value.message == message, token
    assert caught.value.metadata == {"field": "page_token"}


def old_style(cursor: Any) -> str:
    """A token as the unsigned format made them: base64 of the JSON a client chose."""
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).rstrip(b"=").decode()


def test_page_size_rules() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(1000) == 100
    with pytest.raises(InvalidArgument, match=r"^page_size must not be negative$"):
        page_size(-1)


def test_tokens_round_trip_short_and_url_safe() -> None:
    pages = tokens()
    one = pages.encode(scope("tweets", 7), (TWEET_ID,))
    two = pages.encode(scope("followers", 42), (TWEET_ID, 1_750_000_000_123))
    assert pages.decode(one, scope("tweets", 7), 1) == (TWEET_ID,)
    assert pages.decode(two, scope("followers", 42), 2) == (TWEET_ID, 1_750_000_000_123)
    assert pages.decode("", scope("tweets", 7), 1) is None
    assert (len(one), len(two)) == (39, 50)
    assert set(one + two) <= set(ALPHABET)


def test_a_token_made_by_one_instance_is_honoured_by_another_with_the_same_key() -> None:
    token = tokens().encode(scope("tweets", 7), (TWEET_ID,))
    assert tokens().decode(token, scope("tweets", 7), 1) == (TWEET_ID,)
    refused(tokens(key=bytes(reversed(KEY))), token, scope("tweets", 7))


def test_a_token_is_bound_to_its_list_kind_and_owner() -> None:
    pages = tokens()
    token = pages.encode(scope("followers", 42), (5, 6))
    for other in (scope("followers", 43), scope("following", 42), scope("follower_ids", 42), scope("feed", 42)):
        refused(pages, token, other, 2)
    refused(pages, token, scope("followers", 42), 1)  # the right list, read as another shape


def test_every_altered_or_truncated_token_is_refused() -> None:
    pages = tokens()
    list_scope = scope("tweets", 7)
    token = pages.encode(list_scope, (TWEET_ID,))
    for i, char in enumerate(token):
        for other in ALPHABET:
            if other != char:
                refused(pages, token[:i] + other + token[i + 1 :], list_scope)
    for length in range(1, len(token)):
        refused(pages, token[:length], list_scope)
    refused(pages, token + "A", list_scope)
    refused(pages, token + "==", list_scope)


def test_junk_and_hostile_old_style_tokens_are_invalid_argument() -> None:
    pages = tokens()
    hostile = [
        {"k": "tweets", "before": value}
        for value in (float("inf"), float("nan"), 2**63, 10**400, True, -1, 0, 1.5, "7", None, [1], {"a": 1})
    ]
    junk = ["!!!", "bm90IGpzb24", " ", "\n", "A" * 10_000, "ÄÖÜ", "\x00", "dG9rZW4=", "%2F", "-" * 39]
    not_objects: list[Any] = [True, 7, [], "x"]
    for token in [old_style(c) for c in hostile + not_objects] + junk:
        refused(pages, token, scope("tweets", 7))


def test_an_expired_token_says_so_and_a_fresh_one_does_not() -> None:
    clock = Clock()
    pages = tokens(clock)
    token = pages.encode(scope("feed", 7), (TWEET_ID,))
    clock.now = NOW + TTL - 1
    assert pages.decode(token, scope("feed", 7), 1) == (TWEET_ID,)
    clock.now = NOW + TTL
    refused(pages, token, scope("feed", 7), message=EXPIRED_TOKEN)
    refused(pages, token, scope("feed", 8))  # not even looked at as expired: it is not this list's


@pytest.mark.parametrize("position", [(0,), (-1,), (2**63,), (True,), (1, 2, 3, 4, 5), ()])
def test_only_positive_int64_positions_are_sealed(position: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="positive int64"):
        tokens().encode(scope("tweets", 7), position)


def test_keys_shorter_than_32_bytes_and_unreadable_files_stop_the_service(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        PageTokens(b"short")
    with pytest.raises(ValueError, match="cannot be read"):
        PageTokens.from_file(tmp_path / "missing.key")
    with pytest.raises(ValueError, match="positive lifetime"):
        PageTokens(KEY, 0)


def test_the_stack_key_is_made_once_private_and_shared(tmp_path: Path) -> None:
    path = keys.ensure_page_token_key(tmp_path / "keys")
    key = path.read_bytes()
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.ensure_page_token_key(tmp_path / "keys") == path and path.read_bytes() == key
    assert sorted(p.name for p in path.parent.iterdir()) == [keys.PAGE_TOKEN_KEY]
    token = PageTokens.from_file(path).encode(scope("tweets", 7), (TWEET_ID,))
    assert PageTokens.from_file(path).decode(token, scope("tweets", 7), 1) == (TWEET_ID,)


def test_a_feed_token_is_bound_to_its_reader() -> None:
    pages = tokens()
    token = encode_cursor(TWEET_ID, 7, pages)
    assert decode_cursor(token, 7, pages) == TWEET_ID
    assert decode_cursor("", 7, pages) is None
    with pytest.raises(InvalidArgument, match=f"^{INVALID_TOKEN}$"):
        decode_cursor(token, 8, pages)
    with pytest.raises(InvalidArgument, match=f"^{INVALID_TOKEN}$"):
        decode_cursor(tokens().encode(scope("tweets", 7), (TWEET_ID,)), 7, pages)


class _Unused:
    """A dependency that reading a bad token must not reach: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a bad page token reached the dependency ({name})")


async def test_user_tweets_refuse_a_token_of_another_author_before_any_read() -> None:
    pages = tokens()
    unused = cast(Any, _Unused())
    author_tweets = Tweets(unused, unused, unused, unused, unused, IdGenerator(1), page_tokens=pages)
    for token in (pages.encode(scope("tweets", 8), (TWEET_ID,)), old_style({"k": "tweets", "before": 2**63})):
        with pytest.raises(InvalidArgument, match=f"^{INVALID_TOKEN}$"):
            await author_tweets.by_author(7, 20, token)


class FollowStore:
    """Follow lists in memory, newest first: 42 is followed by 1..5 and follows 6..9."""

    def __init__(self) -> None:
        self.edges = {
            ("followers", 42): [FollowEdge(u, 1000 + u) for u in (5, 4, 3, 2, 1)],
            ("following", 42): [FollowEdge(u, 1000 + u) for u in (9, 8, 7, 6)],
        }

    async def get_user(self, user_id: int) -> object:
        return object()

    async def get_users(self, user_ids: list[int]) -> list[int]:
        return user_ids

    async def _list(self, kind: str, user_id: int, limit: int, after: FollowEdge | None) -> list[FollowEdge]:
        edges = self.edges.get((kind, user_id), [])
        start = edges.index(after) + 1 if after else 0
        return edges[start : start + limit]

    async def followers(self, user_id: int, limit: int, after: FollowEdge | None) -> list[FollowEdge]:
        return await self._list("followers", user_id, limit, after)

    async def following(self, user_id: int, limit: int, after: FollowEdge | None) -> list[FollowEdge]:
        return await self._list("following", user_id, limit, after)


async def test_follow_lists_page_without_repeats_and_refuse_other_lists_tokens() -> None:
    unused = cast(Any, _Unused())
    graph = Graph(cast(Any, FollowStore()), unused, unused, unused, IdGenerator(1), page_tokens=tokens())
    seen: list[Any] = []
    token = ""
    while True:
        page = await graph.followers(42, 2, token)
        seen += page.accounts
        token = page.next_page_token
        if not token:
            break
        with pytest.raises(InvalidArgument, match=f"^{INVALID_TOKEN}$"):
            await graph.following(42, 2, token)
        with pytest.raises(InvalidArgument, match=f"^{INVALID_TOKEN}$"):
            await graph.followers(43, 2, token)
        with pytest.raises(InvalidArgument, match=f"^{INVALID_TOKEN}$"):
            await graph.follower_ids(42, 2, token)  # the internal walk has tokens of its own
    assert seen == [5, 4, 3, 2, 1]
    ids, token = await graph.follower_ids(42, 3, "")
    assert ids == [5, 4, 3] and (await graph.follower_ids(42, 3, token))[0] == [2, 1]


def test_domain_error_maps_to_status_with_error_info() -> None:
    code, message, details = to_status(NotFound("user 7 does not exist"), ())
    assert code == grpc.StatusCode.NOT_FOUND
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == message == "user 7 does not exist"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "NOT_FOUND"


def test_unexpected_errors_never_leak_their_text() -> None:
    code, message, _ = to_status(RuntimeError("secret at db-7.internal:9042"), ())
    assert code == grpc.StatusCode.INTERNAL
    assert message == INTERNAL_MESSAGE


def test_dependency_errors_map_to_unavailable() -> None:
    code, message, _ = to_status(ConnectionError("redis at 10.0.0.1 refused"), (ConnectionError,))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == DEPENDENCY_DOWN_MESSAGE
