"""Blocks and mutes in the home feed and trending, through Envoy REST (issue 13,
point 4): neither a blocker nor the blocked user sees the other's tweets; a mute
hides the muted account's tweets from the muter at once, on the next page of a
walk already in progress, without unfollowing; unmuting brings them back. Both
for pushed tweets and for a celebrity's tweets pulled at read time. Trending
hides them for that viewer only; anonymous trending is unfiltered.

Run with the settings `make test` starts the stack with (CHIRP_CELEBRITY_THRESHOLD=3,
CHIRP_RANK_INTERVAL_SECONDS=2)."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from redis import Redis

from common.hidden import HIDDEN_REFRESH_FRACTION, HIDDEN_REFRESH_SPREAD, HIDDEN_SECONDS, hidden_key
from common.singleflight import due_point_ms
from tests.conftest import CELEBRITY_THRESHOLD
from tests.e2e.test_feed import (
    TRENDING_DEADLINE,
    Tweet,
    delete_tweet,
    every_rank_copy_has,
    feed_ids,
    feed_page,
    follow,
    has_all,
    like,
    make_celebrity,
    newest_first,
    trending,
    wait_feed,
)
from tests.e2e.test_write_path import Account, auth, eventually, new_accounts, post_tweet, wait_like_count


def act(edge: httpx.Client, who: Account, verb: str, action: str, user_id: str) -> None:
    """POST or DELETE /v1/users/{user_id}/block or /mute as `who`."""
    reply = edge.request(verb, f"/v1/users/{user_id}/{action}", headers=auth(who))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}


def posts(edge: httpx.Client, who: Account, count: int, text: str) -> list[str]:
    return [str(post_tweet(edge, who, f"{text} {i}")["tweet_id"]) for i in range(count)]


def walk_rest(edge: httpx.Client, who: Account, token: str, page_size: int) -> list[list[str]]:
    pages = []
    while token:
        body = feed_page(edge, who, page_size=page_size, page_token=token)
        pages.append([str(t["tweet_id"]) for t in body["tweets"]])
        token = str(body["next_page_token"])
    return pages


def following_ids(edge: httpx.Client, who: Account) -> set[str]:
    reply = edge.get(f"/v1/users/{who.user_id}/following", params={"page_size": 100})
    assert reply.status_code == 200, reply.text
    return {str(u["user_id"]) for u in reply.json()["users"]}


# ---- the home feed --------------------------------------------------------------------------


def test_a_block_hides_pushed_and_pulled_tweets_from_both_sides_at_once(edge: httpx.Client) -> None:
    reader, author, star, *fans = new_accounts(edge, 3 + CELEBRITY_THRESHOLD, "blk")
    make_celebrity(edge, star, [reader, *fans[1:]])
    follow(edge, reader, author.user_id)
    follow(edge, author, reader.user_id)  # so the blocked author saw the reader's tweets
    follow(edge, star, reader.user_id)  # and the blocked celebrity too
    pushed = posts(edge, author, 2, "pushed to the reader")
    pulled = posts(edge, star, 2, "pulled by the reader")
    own = posts(edge, reader, 2, "the reader's own")
    wait_feed(edge, reader, has_all(pushed + pulled + own), "the reader never saw every tweet")
    wait_feed(edge, author, has_all(own), "the author never saw the reader's tweets")
    wait_feed(edge, star, has_all(own), "the star never saw the reader's tweets")

    act(edge, reader, "POST", "block", author.user_id)
    act(edge, reader, "POST", "block", star.user_id)

    # The very next reads, before any worker has swept a timeline.
    assert feed_ids(edge, reader) == newest_first(own)
    assert not set(own) & set(feed_ids(edge, author))
    assert not set(own) & set(feed_ids(edge, star))
    assert set(pushed) <= set(feed_ids(edge, author))  # their own tweets stay in their own feed
    assert set(pulled) <= set(feed_ids(edge, star))


def test_a_mute_applies_to_the_next_page_of_a_walk_and_unmuting_restores(edge: httpx.Client) -> None:
    reader, kept, muted, star, *fans = new_accounts(edge, 4 + CELEBRITY_THRESHOLD, "mut")
    make_celebrity(edge, star, [reader, *fans[1:]])
    follow(edge, reader, kept.user_id)
    follow(edge, reader, muted.user_id)
    posted: list[str] = []
    for _ in range(5):  # interleaved, so every page mixes the three authors
        posted += posts(edge, kept, 1, "kept") + posts(edge, muted, 1, "muted") + posts(edge, star, 1, "star")
    of_kept = [t for i, t in enumerate(posted) if i % 3 == 0]
    wait_feed(edge, reader, has_all(posted), "the reader never saw every tweet")
    assert feed_ids(edge, reader) == newest_first(posted)

    first = feed_page(edge, reader, page_size=3)
    first_ids = [str(t["tweet_id"]) for t in first["tweets"]]
    assert first_ids == newest_first(posted)[:3] and first["next_page_token"]
    act(edge, reader, "POST", "mute", muted.user_id)
    act(edge, reader, "POST", "mute", star.user_id)
    rest = walk_rest(edge, reader, str(first["next_page_token"]), 3)

    expected = [t for t in newest_first(of_kept) if int(t) < int(first_ids[-1])]
    assert [t for page in rest for t in page] == expected  # no muted tweet, no repeat, no gap
    assert all(len(page) == 3 for page in rest[:-1])  # pages stay full
    assert feed_ids(edge, reader) == newest_first(of_kept)
    assert {muted.user_id, star.user_id} <= following_ids(edge, reader)  # muting unfollows nobody

    act(edge, reader, "DELETE", "mute", muted.user_id)
    act(edge, reader, "DELETE", "mute", star.user_id)
    assert feed_ids(edge, reader) == newest_first(posted)


def test_a_hidden_set_read_near_its_end_is_loaded_again_from_graph_svc(edge: httpx.Client, rds: Redis) -> None:
    """A reader's cached hidden-author set that a feed read serves near the end of its
    lifetime is loaded again from graph_svc after the read: sets filled together do not
    expire together, and one that lost a mute (an invalidation Redis lost) is mended
    within a lifetime, sooner if it is read near its end."""
    reader, author = new_accounts(edge, 2, "hr")
    follow(edge, reader, author.user_id)
    shown = posts(edge, author, 1, "muted once the set is loaded again")
    wait_feed(edge, reader, has_all(shown), "the followed author's tweet never arrived")
    act(edge, reader, "POST", "mute", author.user_id)
    assert shown[0] not in feed_ids(edge, reader)  # the read after the mute filled the set
    key = hidden_key(int(reader.user_id))
    assert rds.get(key) == author.user_id

    # The mute's invalidation lost, and the set just past this reader's due point.
    due_ms = due_point_ms(int(reader.user_id), HIDDEN_SECONDS * 1000, HIDDEN_REFRESH_FRACTION, HIDDEN_REFRESH_SPREAD)
    rds.set(key, "", px=due_ms - 100)
    assert shown[0] in feed_ids(edge, reader)  # served as cached: nobody hidden
    reloaded = eventually(
        lambda: (rds.get(key) or "", rds.pttl(key)), lambda v: v[0] == author.user_id, "the set was not loaded again"
    )
    assert reloaded[1] > 30_000, f"the reloaded set lives {reloaded[1]} ms"
    assert shown[0] not in feed_ids(edge, reader)


# ---- trending -------------------------------------------------------------------------------


def trending_for(edge: httpx.Client, who: Account | None) -> list[str]:
    if who is None:
        return [str(t["tweet_id"]) for t in trending(edge, limit=100)]
    reply = edge.get("/v1/feed/trending", params={"limit": 100}, headers=auth(who))
    assert reply.status_code == 200, reply.text
    tweets: list[Tweet] = reply.json()["tweets"]
    return [str(t["tweet_id"]) for t in tweets]


def trending_among(edge: httpx.Client, who: Account | None, ours: Sequence[str]) -> set[str]:
    """Which of `ours` `who` sees in trending, over several reads (each rank_svc
    instance serves its own copy; a tweet counts if any read lists it)."""
    return {t for _ in range(4) for t in trending_for(edge, who) if t in ours}


def test_trending_hides_blocked_and_muted_authors_for_that_viewer_only(edge: httpx.Client) -> None:
    viewer, other, muted, blocked, blocker, plain, *likers = new_accounts(edge, 10, "trv")
    authors = (viewer, muted, blocked, blocker, plain)
    tweets = {who.user_id: str(post_tweet(edge, who, "liked by everyone")["tweet_id"]) for who in authors}
    ours = list(tweets.values())
    try:
        for tweet_id in ours:
            for liker in likers:
                like(edge, liker, tweet_id)
        for tweet_id in ours:
            wait_like_count(edge, tweet_id, len(likers))
        # Each rank_svc instance serves its own copy: wait until every copy holds them all.
        eventually(lambda: every_rank_copy_has(*ours), bool, "our liked tweets never all trended", TRENDING_DEADLINE)

        act(edge, viewer, "POST", "mute", muted.user_id)
        act(edge, viewer, "POST", "block", blocked.user_id)
        act(edge, blocker, "POST", "block", viewer.user_id)

        assert trending_among(edge, viewer, ours) == {tweets[viewer.user_id], tweets[plain.user_id]}
        assert trending_among(edge, other, ours) == set(ours)  # for that viewer only
        assert trending_among(edge, None, ours) == set(ours)  # anonymous: unfiltered
        assert trending_among(edge, muted, ours) == set(ours)  # a mute is one-way
        assert trending_among(edge, blocked, ours) == set(ours) - {tweets[viewer.user_id]}  # a block is not
        assert trending_among(edge, blocker, ours) == set(ours) - {tweets[viewer.user_id]}

        act(edge, viewer, "DELETE", "mute", muted.user_id)
        assert trending_among(edge, viewer, ours) == {
            tweets[viewer.user_id],
            tweets[plain.user_id],
            tweets[muted.user_id],
        }
    finally:
        # Trending is one global list of 100: liked test tweets would crowd out other tests' ones.
        for who in authors:
            delete_tweet(edge, who, tweets[who.user_id])
