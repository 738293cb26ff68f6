"""Looking users up by name, `GET /v1/me`, and the viewer flags (`followed_by_me`
on every User, `liked_by_me` on every Tweet) through Envoy REST, as an app sees
them: true only for the caller's own follows and likes, false without a token,
and a like or unlike shows in the very next read (../shared/API.md, "Client
features").

Run with the settings `make test` starts the stack with (see tests/e2e/test_feed.py)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.test_feed import TRENDING_DEADLINE, every_rank_copy_has, feed, follow, unfollow, wait_feed
from tests.e2e.test_users import assert_error
from tests.e2e.test_write_path import (
    Account,
    auth,
    eventually,
    new_account,
    new_accounts,
    post_tweet,
    wait_like_count,
)


def lookup(edge: httpx.Client, username: str, who: Account | None = None) -> httpx.Response:
    return edge.get("/v1/users:lookup", params={"username": username}, headers=auth(who) if who else {})


def get_json(edge: httpx.Client, path: str, who: Account | None = None, **params: Any) -> dict[str, Any]:
    reply = edge.get(path, params=params, headers=auth(who) if who else {})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def like(edge: httpx.Client, who: Account, tweet_id: str, liked: bool = True) -> None:
    path = f"/v1/tweets/{tweet_id}/like"
    reply = edge.post(path, headers=auth(who)) if liked else edge.delete(path, headers=auth(who))
    assert reply.status_code == 200, reply.text


def liked_flag(edge: httpx.Client, tweet_id: str, who: Account | None) -> bool:
    tweet = get_json(edge, f"/v1/tweets/{tweet_id}", who)["tweet"]
    assert isinstance(tweet["liked_by_me"], bool)
    return bool(tweet["liked_by_me"])


def flags(tweets: list[dict[str, Any]]) -> dict[str, bool]:
    return {str(t["tweet_id"]): t["liked_by_me"] for t in tweets}


def followed(users: list[dict[str, Any]]) -> dict[str, bool]:
    return {str(u["user_id"]): u["followed_by_me"] for u in users}


# ---- lookup and me -----------------------------------------------------------------------------


def test_lookup_ignores_case_and_says_whether_the_caller_follows(edge: httpx.Client) -> None:
    fan, star = new_accounts(edge, 2, "lk")
    follow(edge, fan, star.user_id)
    anonymous = lookup(edge, star.username.swapcase())
    assert anonymous.status_code == 200, anonymous.text
    user = anonymous.json()["user"]
    assert user["user_id"] == star.user_id and user["username"] == star.username
    assert user["followed_by_me"] is False
    assert user == get_json(edge, f"/v1/users/{star.user_id}")["user"]

    as_fan = lookup(edge, star.username.upper(), fan)
    assert as_fan.status_code == 200, as_fan.text
    assert as_fan.json()["user"] == {**user, "followed_by_me": True}
    assert lookup(edge, star.username, star).json()["user"]["followed_by_me"] is False


def test_lookup_of_an_unknown_name_is_404_and_of_an_impossible_one_400(edge: httpx.Client) -> None:
    body = assert_error(lookup(edge, "nobody_" + new_account(edge, "lk").user_id[-8:]), 404, 5)
    assert "nobody_" in str(body["message"])
    for bad in ["", "bad name", "x" * 16, "caf\u00e9", "\u212aelvin"]:
        body = assert_error(lookup(edge, bad), 400, 3)
        assert "username" in str(body["message"])
    assert_error(edge.get("/v1/users:lookup"), 400, 3)
    assert_error(lookup(edge, "anyone", Account("1", "not-a-token", "x")), 401, 16)


def test_me_is_the_callers_account_and_needs_a_token(edge: httpx.Client) -> None:
    me, other = new_accounts(edge, 2, "me")
    follow(edge, me, other.user_id)
    user = get_json(edge, "/v1/me", me)["user"]
    assert user["user_id"] == me.user_id and user["username"] == me.username
    assert user["following_count"] == 1 and user["followed_by_me"] is False
    assert user == get_json(edge, f"/v1/users/{me.user_id}")["user"]
    assert get_json(edge, "/v1/me", other)["user"]["user_id"] == other.user_id
    assert_error(edge.get("/v1/me"), 401, 16)


# ---- followed_by_me ----------------------------------------------------------------------------


def test_followed_by_me_on_users_and_follow_lists(edge: httpx.Client) -> None:
    viewer, followed_one, other, target = new_accounts(edge, 4, "fb")
    follow(edge, viewer, followed_one.user_id)
    follow(edge, viewer, target.user_id)
    follow(edge, followed_one, target.user_id)
    follow(edge, other, target.user_id)

    assert get_json(edge, f"/v1/users/{target.user_id}", viewer)["user"]["followed_by_me"] is True
    assert get_json(edge, f"/v1/users/{other.user_id}", viewer)["user"]["followed_by_me"] is False
    assert get_json(edge, f"/v1/users/{target.user_id}")["user"]["followed_by_me"] is False

    path = f"/v1/users/{target.user_id}/followers"
    expected = {viewer.user_id: False, followed_one.user_id: True, other.user_id: False}
    assert followed(get_json(edge, path, viewer)["users"]) == expected
    assert followed(get_json(edge, path)["users"]) == dict.fromkeys(expected, False)
    # Paged: every page carries the flags.
    first = get_json(edge, path, viewer, page_size=2)
    rest = get_json(edge, path, viewer, page_size=2, page_token=first["next_page_token"])
    assert followed(first["users"] + rest["users"]) == expected

    following = f"/v1/users/{followed_one.user_id}/following"
    assert followed(get_json(edge, following, viewer)["users"]) == {target.user_id: True}
    assert followed(get_json(edge, following, target)["users"]) == {target.user_id: False}
    assert followed(get_json(edge, following)["users"]) == {target.user_id: False}

    unfollow(edge, viewer, target.user_id)
    assert get_json(edge, f"/v1/users/{target.user_id}", viewer)["user"]["followed_by_me"] is False


# ---- liked_by_me -------------------------------------------------------------------------------


def test_liked_by_me_shows_a_like_and_an_unlike_at_once(edge: httpx.Client) -> None:
    author, liker, stranger = new_accounts(edge, 3, "lb")
    created = post_tweet(edge, author, "like me")
    assert created["liked_by_me"] is False
    tweet_id = str(created["tweet_id"])
    other_id = str(post_tweet(edge, author, "not this one")["tweet_id"])

    like(edge, liker, tweet_id)
    # Read-your-writes: the like is only on Kafka yet, and the very next read shows it.
    assert liked_flag(edge, tweet_id, liker) is True
    assert liked_flag(edge, tweet_id, stranger) is False
    assert liked_flag(edge, tweet_id, None) is False
    assert liked_flag(edge, other_id, liker) is False

    tweets_path = f"/v1/users/{author.user_id}/tweets"
    assert flags(get_json(edge, tweets_path, liker)["tweets"]) == {tweet_id: True, other_id: False}
    assert flags(get_json(edge, tweets_path)["tweets"]) == {tweet_id: False, other_id: False}

    like(edge, liker, tweet_id, liked=False)
    assert liked_flag(edge, tweet_id, liker) is False
    like(edge, liker, tweet_id)
    like(edge, liker, tweet_id)  # liking twice is one like
    assert liked_flag(edge, tweet_id, liker) is True
    # Once the like worker has folded all three events the flag still agrees with the count.
    wait_like_count(edge, tweet_id, 1)
    assert liked_flag(edge, tweet_id, liker) is True
    like(edge, liker, tweet_id, liked=False)
    assert liked_flag(edge, tweet_id, liker) is False
    wait_like_count(edge, tweet_id, 0)
    assert liked_flag(edge, tweet_id, liker) is False


def test_home_feed_carries_the_readers_likes(edge: httpx.Client) -> None:
    author, reader, other_reader = new_accounts(edge, 3, "lf")
    follow(edge, reader, author.user_id)
    follow(edge, other_reader, author.user_id)
    liked_id = str(post_tweet(edge, author, "in the feed, liked")["tweet_id"])
    plain_id = str(post_tweet(edge, author, "in the feed, not liked")["tweet_id"])
    for who in (reader, other_reader):
        wait_feed(edge, who, lambda ids: {liked_id, plain_id} <= set(ids), "the posts never reached the feed")

    like(edge, reader, liked_id)
    assert flags(feed(edge, reader)) == {liked_id: True, plain_id: False}
    assert flags(feed(edge, other_reader)) == {liked_id: False, plain_id: False}
    like(edge, reader, liked_id, liked=False)
    assert flags(feed(edge, reader)) == {liked_id: False, plain_id: False}


def test_trending_carries_the_viewers_likes(edge: httpx.Client) -> None:
    author, liker, bystander = new_accounts(edge, 3, "lt")
    tweet_id = str(post_tweet(edge, author, "trending and liked")["tweet_id"])
    like(edge, liker, tweet_id)
    wait_like_count(edge, tweet_id, 1)

    def seen_by(who: Account | None) -> list[dict[str, Any]]:
        reply = edge.get("/v1/feed/trending", params={"limit": 100}, headers=auth(who) if who else {})
        assert reply.status_code == 200, reply.text
        return [t for t in reply.json()["tweets"] if t["tweet_id"] == tweet_id]

    # Each rank_svc instance serves its own copy: wait until both hold it, then ask several times.
    eventually(lambda: every_rank_copy_has(tweet_id), bool, "the liked tweet never trended", TRENDING_DEADLINE)
    for _ in range(4):
        assert [t["liked_by_me"] for t in seen_by(liker)] == [True]
        assert [t["liked_by_me"] for t in seen_by(bystander)] == [False]
        assert [t["liked_by_me"] for t in seen_by(None)] == [False]
