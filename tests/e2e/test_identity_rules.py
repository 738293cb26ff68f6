"""Identity and content rules through the edge (issue 12, points 6 and 7):
look-alike usernames never reach an ASCII account, unfollowing yourself is the
contract's `{}`, invisible-only tweets are blank, and the count a like or unlike
answers includes every like acknowledged before it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import unique_name
from tests.e2e.test_users import assert_error
from tests.e2e.test_write_path import (
    PASSWORD,
    Account,
    auth,
    get_user,
    like_count,
    new_account,
    new_accounts,
    post_tweet,
    wait_like_count,
)

KELVIN, LONG_S = "\u212a", "\u017f"  # str.lower() maps the Kelvin sign to "k"; casefold() maps long s to "s"


def fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


# ---- look-alike usernames ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ks_user(edge: httpx.Client) -> str:
    """A user whose name starts with "ks", so both look-alikes have something to stand for."""
    name = unique_name("ks")
    assert edge.post("/v1/users", json={"username": name, "password": PASSWORD}).status_code == 200
    assert edge.post("/v1/sessions", json={"username": name.upper(), "password": PASSWORD}).status_code == 200
    return name


@pytest.mark.parametrize(
    "disguise",
    [
        lambda n: KELVIN + n[1:],
        lambda n: KELVIN + n[1:].upper(),
        lambda n: n[0] + LONG_S + n[2:],
        lambda n: KELVIN + LONG_S + n[2:],
        fullwidth,
        lambda n: fullwidth(n[:1]) + n[1:],
    ],
    ids=["kelvin", "kelvin-upper", "long-s", "both", "fullwidth", "fullwidth-k"],
)
def test_a_look_alike_username_is_a_wrong_login_not_the_ascii_account(
    edge: httpx.Client, ks_user: str, disguise: object
) -> None:
    assert callable(disguise)
    name = disguise(ks_user)
    assert name != ks_user and not name.isascii()
    reply = edge.post("/v1/sessions", json={"username": name, "password": PASSWORD})
    body = assert_error(reply, 401, 16)
    assert "access_token" not in body
    assert "user" not in body


@pytest.mark.parametrize("name", [KELVIN + "elvin", "ad" + LONG_S + "a", fullwidth("kate")])
def test_signing_up_with_a_look_alike_username_is_invalid(edge: httpx.Client, name: str) -> None:
    assert_error(edge.post("/v1/users", json={"username": name, "password": PASSWORD}), 400, 3)


# ---- unfollowing yourself -----------------------------------------------------------------


def test_unfollowing_yourself_is_the_empty_answer_following_yourself_is_invalid(edge: httpx.Client) -> None:
    me = new_account(edge, "uy")
    before = get_user(edge, me.user_id)
    unfollow = edge.delete(f"/v1/users/{me.user_id}/follow", headers=auth(me))
    assert unfollow.status_code == 200, unfollow.text
    assert unfollow.json() == {}
    assert_error(edge.post(f"/v1/users/{me.user_id}/follow", headers=auth(me)), 400, 3)
    after = get_user(edge, me.user_id)
    assert (after["follower_count"], after["following_count"]) == (before["follower_count"], 0)
    assert edge.get(f"/v1/users/{me.user_id}/following", headers=auth(me)).json()["users"] == []


# ---- invisible-only tweets ----------------------------------------------------------------

INVISIBLE_ONLY = [
    "\u2800",  # braille pattern blank
    "\u3164",  # hangul filler
    "\u115f\u1160",  # hangul choseong and jungseong fillers
    "\uffa0",  # halfwidth hangul filler
    "\u0301",  # a lone combining mark
    "\u200b\u200c\u200d",  # zero-width space, non-joiner, joiner
    "\u2060\ufeff",  # word joiner, zero-width no-break space
    " \u2800 \n\u3164\u3000",  # mixed with white space
    "\u2800" * 140,
]


@pytest.mark.parametrize("text", INVISIBLE_ONLY, ids=[f"U+{ord(t.strip()[0]):04X}x{len(t)}" for t in INVISIBLE_ONLY])
def test_a_tweet_of_only_invisible_characters_is_blank(edge: httpx.Client, text: str) -> None:
    author = new_account(edge, "iv")
    body = assert_error(edge.post("/v1/tweets", json={"text": text}, headers=auth(author)), 400, 3)
    assert "empty" in str(body["message"])
    assert edge.get(f"/v1/users/{author.user_id}/tweets").json()["tweets"] == []


def test_visible_text_with_invisible_characters_is_kept_as_written(edge: httpx.Client) -> None:
    author = new_account(edge, "iv")
    texts = ["hi\u2800there", "\u3164a", "x\u0301\u0301", "\U0001f468\u200d\U0001f469", "x\u200b"]
    for text in texts:
        assert post_tweet(edge, author, text)["text"] == text
    listed = edge.get(f"/v1/users/{author.user_id}/tweets").json()["tweets"]
    assert [t["text"] for t in listed] == list(reversed(texts))


# ---- like counts in the like response ------------------------------------------------------


def like(edge: httpx.Client, who: Account, tweet_id: str, method: str = "POST") -> int:
    reply = edge.request(method, f"/v1/tweets/{tweet_id}/like", headers=auth(who))
    assert reply.status_code == 200, reply.text
    return int(reply.json()["like_count"])


def test_each_like_in_turn_counts_every_like_before_it(edge: httpx.Client) -> None:
    author, *fans = new_accounts(edge, 7, "lc")
    tweet_id = post_tweet(edge, author, "count us one by one")["tweet_id"]
    assert [like(edge, fan, tweet_id) for fan in fans] == [1, 2, 3, 4, 5, 6]
    # A liker never reads fewer likes than their own answer said.
    assert like_count(edge, tweet_id) == 6
    # Liking again counts once; unliking in turn counts down, each answer exact.
    assert [like(edge, fan, tweet_id) for fan in fans[:2]] == [6, 6]
    assert [like(edge, fan, tweet_id, "DELETE") for fan in fans[:3]] == [5, 4, 3]
    assert like(edge, fans[0], tweet_id, "DELETE") == 3
    assert like(edge, fans[0], tweet_id) == 4
    wait_like_count(edge, tweet_id, 4)


def test_like_then_unlike_quickly_answers_each_step(edge: httpx.Client) -> None:
    author, fan, other = new_accounts(edge, 3, "lc")
    tweet_id = post_tweet(edge, author, "flip flop")["tweet_id"]
    assert like(edge, other, tweet_id) == 1
    answers = [like(edge, fan, tweet_id, method) for method in ("POST", "DELETE", "POST", "DELETE", "POST")]
    assert answers == [2, 1, 2, 1, 2]
    wait_like_count(edge, tweet_id, 2)
    # After the worker folded everything, the answers still start from the right count.
    assert like(edge, fan, tweet_id, "DELETE") == 1
    assert like(edge, other, tweet_id, "DELETE") == 0
    wait_like_count(edge, tweet_id, 0)


def test_concurrent_likes_answer_up_to_the_total(edge: httpx.Client) -> None:
    author, *fans = new_accounts(edge, 21, "lc")
    tweet_id = post_tweet(edge, author, "everyone at once")["tweet_id"]
    with ThreadPoolExecutor(max_workers=len(fans)) as pool:
        answers = list(pool.map(lambda fan: like(edge, fan, tweet_id), fans))
    # Each answer counts every like acknowledged before it, so the last one counts all 20.
    assert max(answers) == 20 and min(answers) >= 1
    assert len(set(answers)) >= 10, answers  # not one stale count handed to many
    assert like_count(edge, tweet_id) == 20
    wait_like_count(edge, tweet_id, 20)
    assert like(edge, fans[0], tweet_id) == 20


def test_the_read_count_never_drops_below_a_likers_answer(edge: httpx.Client) -> None:
    author, fan = new_accounts(edge, 2, "lc")
    tweet_id = post_tweet(edge, author, "read me after liking")["tweet_id"]
    assert like_count(edge, tweet_id) == 0  # the count is cached before the like
    assert like(edge, fan, tweet_id) == 1
    assert like_count(edge, tweet_id) == 1  # at once, not after the worker
    assert like(edge, fan, tweet_id, "DELETE") == 0
    assert like_count(edge, tweet_id) == 0
