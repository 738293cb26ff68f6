"""Identity and content rules as pure logic: look-alike usernames, the acting-user
metadata, invisible-only tweet text, and what the like worker tells the cache."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from common.errors import InvalidArgument, Unauthenticated
from common.events import LikeEvent
from common.identity import USER_ID_HEADER, acting_user
from graph_svc.accounts import login_key, username_key
from tweet_svc.cache import TweetCache
from tweet_svc.like_applier import LikeApplier
from tweet_svc.likes import LikeState
from tweet_svc.store import TweetStore
from tweet_svc.text import is_blank, normalize_text

# ---- usernames ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\u212aate", "\u212aATE", "ad\u017f", "\uff4bate", "\u0130da", "kat\u0435"])
def test_a_look_alike_name_has_no_login_key_and_keeps_its_own_key(name: str) -> None:
    assert login_key(name) is None
    assert not username_key(name).isascii()


def test_an_ascii_name_folds_case_for_login_and_uniqueness() -> None:
    assert login_key("KaTe_9") == username_key("kate_9") == "kate_9"
    assert login_key("") is None
    assert login_key("a" * 16) is None


# ---- the acting-user metadata -------------------------------------------------------------


class Context:
    def __init__(self, *metadata: tuple[str, str | bytes]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata


def acting(*metadata: tuple[str, str | bytes]) -> int:
    return acting_user(cast(grpc.aio.ServicerContext, Context(*metadata)))


@pytest.mark.parametrize("value", ["1", "42", str(2**63 - 1), b"7"])
def test_a_positive_64_bit_id_is_the_acting_user(value: str | bytes) -> None:
    assert acting((USER_ID_HEADER, value)) == int(value)


@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 5), "9" * 30, "9" * 5000])
def test_an_out_of_range_acting_user_is_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match=USER_ID_HEADER):
        acting((USER_ID_HEADER, value))


@pytest.mark.parametrize("value", ["-5", "0", "abc", "", " 5", "+5", "5_0", "05", "\u0663", "1.0", "0x10", b"\xff"])
def test_an_acting_user_that_is_no_positive_number_is_unauthenticated(value: str | bytes) -> None:
    """What a token whose subject is no user id gives through the edge: 401, as a bad token."""
    with pytest.raises(Unauthenticated):
        acting((USER_ID_HEADER, value))


def test_two_acting_users_are_invalid_and_none_is_unauthenticated() -> None:
    with pytest.raises(InvalidArgument, match="once"):
        acting((USER_ID_HEADER, "1"), (USER_ID_HEADER, "2"))
    with pytest.raises(Unauthenticated):
        acting(("x-request-id", "1"))


# ---- tweet text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\u2800",
        "\u3164",
        "\u115f",
        "\u1160",
        "\uffa0",
        "\u0301",
        "\u20dd",  # a lone enclosing mark
        "\u200b\u200c\u200d\u2060\ufeff",
        "\u00ad\u034f\u180e\ufe0f",
        "\U000e0041",  # a tag character
        " \u2800\n\u3164\t\u3000",
    ],
)
def test_invisible_only_text_is_blank(text: str) -> None:
    assert is_blank(text)
    with pytest.raises(InvalidArgument, match="empty"):
        normalize_text(text)


@pytest.mark.parametrize("text", ["a\u2800", "\u3164b", "x\u0301", "\u0e01\u0e34", "\u2764\ufe0f", "\u00b7", "\u3131"])
def test_one_visible_character_is_enough(text: str) -> None:
    assert not is_blank(text)
    assert normalize_text(text) == text


# ---- the like worker's write-through ------------------------------------------------------


class FakeStore:
    def __init__(self, count: int, rows: dict[int, LikeState]) -> None:
        self.count, self.rows, self.writes = count, rows, 0

    async def like_states(self, tweet_id: int, user_ids: list[int]) -> tuple[int, dict[int, LikeState]]:
        return self.count, {u: s for u, s in self.rows.items() if u in user_ids}

    async def write_likes(
        self, tweet_id: int, expected: int, count: int, changed: dict[int, LikeState], *_: Any
    ) -> bool:
        self.count, self.writes = count, self.writes + 1
        self.rows.update(changed)
        return True

    async def record_user_likes(self, tweet_id: int, states: dict[int, LikeState]) -> None:
        pass


class FakeCache:
    def __init__(self) -> None:
        self.folds: list[tuple[int, int, dict[int, LikeState]]] = []
        self.flags: list[tuple[int, int, int, bool]] = []

    async def folded_likes(self, tweet_id: int, count: int, states: dict[int, LikeState]) -> None:
        self.folds.append((tweet_id, count, states))

    async def record_liked(self, user_id: int, tweet_id: int, version: int, liked: bool) -> None:
        self.flags.append((user_id, tweet_id, version, liked))


async def test_the_worker_reports_each_folded_users_row_even_when_a_batch_is_redelivered() -> None:
    store, cache = FakeStore(1, {7: LikeState(True, 5)}), FakeCache()
    applier = LikeApplier(cast(TweetStore, store), cast(TweetCache, cache))
    events = [LikeEvent(1, 8, True, 10), LikeEvent(1, 9, True, 11), LikeEvent(1, 7, True, 12)]
    await applier.apply(1, events)
    await applier.apply(1, events)  # re-delivered: nothing to write, the write-through again
    assert store.writes == 1
    expected = {7: LikeState(True, 12), 8: LikeState(True, 10), 9: LikeState(True, 11)}
    assert cache.folds == [(1, 3, expected), (1, 3, expected)]
    # The readers' like flags get the same repair, each time (a lost write at ack heals).
    flags = sorted((user, tweet, state.version, state.liked) for user, state in expected.items() for tweet in [1])
    assert sorted(cache.flags) == sorted(flags * 2)
