"""The read path through Envoy REST: the home timeline (fan-out on write for
normal authors, pull at read time for celebrities, the reader's own tweets),
its paging, deletes and follows reaching it, Redis being only a cache, and
the trending list. Rules are from ../shared/API.md.

Where a test must tell "pushed" from "pulled" it looks at the follower's
pushed timeline in Redis (`tl:{user}`, members are tweet ids). "Not pushed" is
only claimed once the fan-out worker has provably passed the tweet's event:
its consumer group has committed every offset that existed after the post.
Asynchronous effects are awaited by polling with deadlines, never by a fixed
sleep.

Run with the settings `make test` starts the stack with
(CHIRP_CELEBRITY_THRESHOLD=3, CHIRP_RANK_INTERVAL_SECONDS=2, CHIRP_FOLLOWING_LIST_LIMIT=25)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import grpc
import httpx
import redis
from chirp.rank.v1 import rank_pb2, rank_pb2_grpc

from common.kafka import TOPIC_FOLLOWS, TOPIC_TWEETS, group_offsets
from common.keys import feed_key, tweet_key
from feed_svc.fanout_worker import GROUP as FANOUT_GROUP
from infra import topology
from rank_svc.store import DEFAULT_TALLY_SHARDS, TrendingKeys
from tests.conftest import (
    CELEBRITY_DEMOTE_BELOW,
    CELEBRITY_THRESHOLD,
    FOLLOWING_LIST_LIMIT,
    KAFKA,
    RANK_INTERVAL_SECONDS,
)
from tests.e2e.test_users import assert_error
from tests.e2e.test_write_path import (
    Account,
    auth,
    eventually,
    new_account,
    new_accounts,
    parse_time,
    post_tweet,
    wait_like_count,
)

FEED_DEADLINE = 20.0  # "followers see it within a few seconds"; room for a slow 2-core machine
FANOUT_DEADLINE = 30.0  # a slow 2-core machine right after `make up`: the worker group may still be joining
TRENDING_DEADLINE = 5.0 * RANK_INTERVAL_SECONDS + 10.0
BUILT = "built"  # feed_svc.cache marks a rebuilt pushed timeline with this member

Tweet = dict[str, Any]


# ---- helpers -------------------------------------------------------------------


def test_run_with_the_quick_test_settings() -> None:
    """These tests depend on the quick settings; fail loudly if pytest lacks them."""
    assert CELEBRITY_THRESHOLD == 3, "run with CHIRP_CELEBRITY_THRESHOLD=3 (as `make test` does)"
    assert CELEBRITY_DEMOTE_BELOW == 2, "run with CHIRP_CELEBRITY_DEMOTE_BELOW=2 (as `make test` does)"
    assert RANK_INTERVAL_SECONDS <= 5, "run with CHIRP_RANK_INTERVAL_SECONDS=2 (as `make test` does)"
    assert FOLLOWING_LIST_LIMIT <= 50, "run with CHIRP_FOLLOWING_LIST_LIMIT=25 (as `make test` does)"


def follow(edge: httpx.Client, who: Account, user_id: str) -> None:
    reply = edge.post(f"/v1/users/{user_id}/follow", headers=auth(who))
    assert reply.status_code == 200, reply.text


def unfollow(edge: httpx.Client, who: Account, user_id: str) -> None:
    reply = edge.delete(f"/v1/users/{user_id}/follow", headers=auth(who))
    assert reply.status_code == 200, reply.text


def follower_count(edge: httpx.Client, user_id: str) -> int:
    reply = edge.get(f"/v1/users/{user_id}")
    assert reply.status_code == 200, reply.text
    return int(reply.json()["user"]["follower_count"])


def delete_tweet(edge: httpx.Client, who: Account, tweet_id: str) -> None:
    reply = edge.delete(f"/v1/tweets/{tweet_id}", headers=auth(who))
    assert reply.status_code == 200, reply.text


def like(edge: httpx.Client, who: Account, tweet_id: str) -> None:
    reply = edge.post(f"/v1/tweets/{tweet_id}/like", headers=auth(who))
    assert reply.status_code == 200, reply.text


def unlike(edge: httpx.Client, who: Account, tweet_id: str) -> None:
    reply = edge.delete(f"/v1/tweets/{tweet_id}/like", headers=auth(who))
    assert reply.status_code == 200, reply.text


def make_celebrity(edge: httpx.Client, star: Account, fans: Sequence[Account]) -> None:
    """`fans` (at least the threshold) follow `star`; its follower count is then exact."""
    assert len(fans) >= CELEBRITY_THRESHOLD
    for fan in fans:
        follow(edge, fan, star.user_id)
    assert follower_count(edge, star.user_id) == len(fans)


def feed_page(edge: httpx.Client, who: Account, **params: str | int) -> dict[str, Any]:
    reply = edge.get("/v1/feed", params=params, headers=auth(who))
    assert reply.status_code == 200, reply.text
    body = dict(reply.json())
    assert set(body) >= {"tweets", "next_page_token"}, body
    return body


def feed(edge: httpx.Client, who: Account) -> list[Tweet]:
    """The first 100 entries of `who`'s home timeline."""
    return list(feed_page(edge, who, page_size=100)["tweets"])


def feed_ids(edge: httpx.Client, who: Account) -> list[str]:
    return [str(t["tweet_id"]) for t in feed(edge, who)]


def wait_feed(
    edge: httpx.Client, who: Account, done: Callable[[list[str]], bool], what: str, deadline: float = FEED_DEADLINE
) -> list[str]:
    return eventually(lambda: feed_ids(edge, who), done, what, deadline=deadline)


def has_all(ids: Sequence[str]) -> Callable[[list[str]], bool]:
    return lambda seen: set(ids) <= set(seen)


def equals(expected: Sequence[str]) -> Callable[[list[str]], bool]:
    return lambda seen: seen == list(expected)


def newest_first(ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=int, reverse=True)


def pushed(rds: redis.Redis, user_id: str) -> set[str]:
    """Tweet ids in `user_id`'s pushed timeline in Redis."""
    members = rds.zrange(f"tl:{user_id}", 0, -1)
    return {str(m) for m in members if m != BUILT}


def pushed_among(rds: redis.Redis, user_id: str, tweet_ids: Sequence[str]) -> set[str]:
    return pushed(rds, user_id) & set(tweet_ids)


def wait_pushed(rds: redis.Redis, user_ids: Sequence[str], tweet_ids: Sequence[str], present: bool = True) -> None:
    """Every one of `tweet_ids` is (or, with present=False, none is) in each user's tl: ZSET."""
    want = set(tweet_ids) if present else set()
    for user_id in user_ids:
        eventually(
            partial(pushed_among, rds, user_id, tweet_ids),
            lambda found: found == want,
            f"tl:{user_id} {'missing' if present else 'still has'} some of {list(tweet_ids)}",
            deadline=FANOUT_DEADLINE,
        )


def wait_fanout_caught_up(deadline: float = FANOUT_DEADLINE) -> None:
    """Wait until the fan-out worker group has committed (i.e. applied) every tweet
    and follow event that is on Kafka now, on every partition."""
    topics = [TOPIC_TWEETS, TOPIC_FOLLOWS]
    ends = {p: end for p, (_, end) in group_offsets(KAFKA, FANOUT_GROUP, topics).items()}

    def behind() -> list[str]:
        now = group_offsets(KAFKA, FANOUT_GROUP, topics)
        return [f"{p} committed {now[p][0]} < {end}" for p, end in ends.items() if now[p][0] < end]

    eventually(behind, lambda lag: not lag, "fan-out worker has not applied every event", deadline=deadline)


def trending(edge: httpx.Client, **params: int) -> list[Tweet]:
    reply = edge.get("/v1/feed/trending", params=params)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["tweets"])


def rank_copies() -> list[list[int]]:
    """The trending list (first 100) as each rank_svc instance, asked directly, holds it:
    each serves its own copy, so reads through the edge may see either, and a run of
    reads through the edge may all land on one instance."""
    rank = next(svc for svc in topology.SERVICES if svc.name == "rank_svc")
    copies = []
    for inst in topology.instances(rank):
        with grpc.insecure_channel(f"{topology.HOST}:{inst.port}") as channel:
            reply = rank_pb2_grpc.RankServiceStub(channel).ListTrending(
                rank_pb2.ListTrendingRequest(limit=100), timeout=2
            )
        copies.append([t.tweet_id for t in reply.tweets])
    return copies


def every_rank_copy_has(*tweet_ids: int | str) -> bool:
    """Whether every rank_svc instance's copy holds all of these tweets."""
    wanted = {int(t) for t in tweet_ids}
    return all(wanted <= set(ids) for ids in rank_copies())


def no_rank_copy_has(tweet_id: int | str) -> bool:
    """Whether no rank_svc instance's copy holds the tweet (copies only move to newer lists)."""
    return all(int(tweet_id) not in ids for ids in rank_copies())


# ---- pushed, pulled and own tweets -------------------------------------------------------


def test_follower_sees_a_normal_authors_tweet_and_it_was_pushed(edge: httpx.Client, rds: redis.Redis) -> None:
    author, fan = new_accounts(edge, 2, "push")
    follow(edge, fan, author.user_id)
    assert follower_count(edge, author.user_id) == 1 < CELEBRITY_THRESHOLD

    tweet = post_tweet(edge, author, "pushed to my one follower")
    wait_feed(edge, fan, has_all([tweet["tweet_id"]]), "the follower never saw the tweet")
    wait_pushed(rds, [fan.user_id], [tweet["tweet_id"]])
    assert feed(edge, fan) == [tweet]


def test_celebrity_tweet_is_pulled_at_once_and_never_pushed(edge: httpx.Client, rds: redis.Redis) -> None:
    star, normal, *fans = new_accounts(edge, 2 + CELEBRITY_THRESHOLD, "cel")
    make_celebrity(edge, star, fans)
    follow(edge, fans[0], normal.user_id)

    tweet = post_tweet(edge, star, "pulled by every follower at read time")
    # The very first read of each follower, right after the post: no waiting for a worker.
    for fan in fans:
        assert feed(edge, fan) == [tweet], f"{fan.username} does not see the celebrity's tweet at once"

    # Give the fan-out worker time to pass the tweet: a later tweet of a normal
    # author reaches the same follower, and the worker group has committed
    # every event on Kafka (so the celebrity's tweet_created was applied).
    probe = post_tweet(edge, normal, "posted after the celebrity's tweet")
    wait_pushed(rds, [fans[0].user_id], [probe["tweet_id"]])
    wait_fanout_caught_up()
    for fan in fans:
        assert tweet["tweet_id"] not in pushed(rds, fan.user_id), f"celebrity tweet was pushed to tl:{fan.user_id}"
    assert feed_ids(edge, fans[0]) == [probe["tweet_id"], tweet["tweet_id"]]
    assert feed_ids(edge, fans[1]) == [tweet["tweet_id"]]


def test_author_sees_own_tweet_at_once_following_nobody(edge: httpx.Client) -> None:
    me = new_account(edge, "own")
    assert feed_page(edge, me) == {"tweets": [], "next_page_token": ""}

    first = post_tweet(edge, me, "my very own chirp")
    assert feed(edge, me) == [first]
    second = post_tweet(edge, me, "and another")
    assert feed(edge, me) == [second, first]
    # A first page of 20 takes the author's recent ids from tweet_svc's cache,
    # which the post must have updated before it was acknowledged.
    third = post_tweet(edge, me, "and a third")
    assert feed_page(edge, me, page_size=20)["tweets"] == [third, second, first]


def test_mixed_timeline_is_newest_first_with_full_tweets(edge: httpx.Client) -> None:
    reader, normal, star, fan1, fan2 = new_accounts(edge, 5, "mix")
    make_celebrity(edge, star, [reader, fan1, fan2])
    follow(edge, reader, normal.user_id)

    posted: list[Tweet] = []
    for round_ in range(2):
        posted.append(post_tweet(edge, normal, f"normal author, round {round_}"))
        posted.append(post_tweet(edge, star, f"celebrity, round {round_} \U0001f31f"))
        posted.append(post_tweet(edge, reader, f"reader's own, round {round_}"))
    ids = [t["tweet_id"] for t in posted]
    assert newest_first(ids) == list(reversed(ids)), "ids must follow posting order"

    likes = {posted[0]["tweet_id"]: [fan1], posted[1]["tweet_id"]: [fan1, fan2], posted[5]["tweet_id"]: [normal]}
    for tweet_id, likers in likes.items():
        for liker in likers:
            like(edge, liker, tweet_id)
    for tweet_id, likers in likes.items():
        wait_like_count(edge, tweet_id, len(likers))

    wait_feed(edge, reader, has_all(ids), "the mixed timeline never filled")
    got = feed(edge, reader)
    assert [t["tweet_id"] for t in got] == list(reversed(ids))
    expected = [{**t, "like_count": len(likes.get(t["tweet_id"], []))} for t in reversed(posted)]
    assert got == expected
    authors = {normal.user_id: normal.username, star.user_id: star.username, reader.user_id: reader.username}
    for tweet in got:
        assert tweet["author_username"] == authors[tweet["author_id"]]
    times = [parse_time(t["created_at"]) for t in got]
    assert times == sorted(times, reverse=True)


# ---- deletes and follows reach the timeline ------------------------------------------


def test_deleted_tweet_leaves_every_followers_feed_at_once(edge: httpx.Client, rds: redis.Redis) -> None:
    normal, star, *fans = new_accounts(edge, 2 + CELEBRITY_THRESHOLD, "del")
    make_celebrity(edge, star, fans)
    normal_fans = fans[: CELEBRITY_THRESHOLD - 1]  # stays below the threshold: pushed
    for fan in normal_fans:
        follow(edge, fan, normal.user_id)

    keep = post_tweet(edge, normal, "this one stays")
    gone = post_tweet(edge, normal, "this one goes")
    star_keep = post_tweet(edge, star, "the celebrity stands by this")
    star_gone = post_tweet(edge, star, "the celebrity takes this back")
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}
    for fan in fans:
        own = [star_gone, star_keep] + ([gone, keep] if fan in normal_fans else [])
        before[fan.user_id] = [t["tweet_id"] for t in own]
        after[fan.user_id] = [t["tweet_id"] for t in own if t not in (gone, star_gone)]
        wait_feed(edge, fan, equals(before[fan.user_id]), f"{fan.username} never saw every tweet")
    fan_ids = [f.user_id for f in normal_fans]
    wait_pushed(rds, fan_ids, [keep["tweet_id"], gone["tweet_id"]])

    delete_tweet(edge, normal, gone["tweet_id"])
    delete_tweet(edge, star, star_gone["tweet_id"])
    for fan in fans:
        assert feed_ids(edge, fan) == after[fan.user_id], f"{fan.username} still sees a deleted tweet"
    # The worker takes it out of the pushed timelines too.
    wait_pushed(rds, fan_ids, [gone["tweet_id"]], present=False)
    for fan in normal_fans:
        assert keep["tweet_id"] in pushed(rds, fan.user_id)
    for fan in fans:
        assert feed_ids(edge, fan) == after[fan.user_id]


def test_follow_brings_recent_tweets_and_unfollow_takes_them_away(edge: httpx.Client, rds: redis.Redis) -> None:
    me, author = new_accounts(edge, 2, "fol")
    mine = post_tweet(edge, me, "before following anyone")
    older = [post_tweet(edge, author, f"posted before the follow {i}")["tweet_id"] for i in range(3)]
    assert feed_ids(edge, me) == [mine["tweet_id"]]  # the follow list is now cached

    follow(edge, me, author.user_id)
    expected = newest_first([*older, mine["tweet_id"]])
    wait_feed(edge, me, equals(expected), "the followed account's earlier tweets never arrived")
    wait_pushed(rds, [me.user_id], older)

    unfollow(edge, me, author.user_id)
    wait_feed(edge, me, equals([mine["tweet_id"]]), "the unfollowed account's tweets stayed")
    wait_pushed(rds, [me.user_id], older, present=False)
    assert feed_ids(edge, me) == [mine["tweet_id"]]


def test_following_more_accounts_than_graph_svc_lists_loses_nothing(edge: httpx.Client, rds: redis.Redis) -> None:
    """graph_svc lists at most FOLLOWING_LIST_LIMIT followees (lowest ids first). The
    accounts created last sort past it; their tweets must reach the reader anyway,
    pushed (normal author) and pulled (celebrity), and leave at once on unfollow."""
    me = new_account(edge, "big")
    fillers = new_accounts(edge, FOLLOWING_LIST_LIMIT, "fill")
    author, star = new_account(edge, "late"), new_account(edge, "late")
    assert min(int(author.user_id), int(star.user_id)) > max(int(f.user_id) for f in fillers)
    make_celebrity(edge, star, fillers[:CELEBRITY_THRESHOLD])
    for account in [*fillers, author, star]:
        follow(edge, me, account.user_id)

    normal = post_tweet(edge, author, "from past the follow-list limit")["tweet_id"]
    famous = post_tweet(edge, star, "a celebrity past the follow-list limit")["tweet_id"]
    wait_feed(edge, me, has_all([normal, famous]), "tweets of accounts past the follow-list limit are missing")
    wait_fanout_caught_up()
    assert normal in pushed(rds, me.user_id)
    assert famous not in pushed(rds, me.user_id)  # it came through the pull

    unfollow(edge, me, author.user_id)
    assert normal not in feed_ids(edge, me)  # filtered at once, before the worker sweeps it
    assert famous in feed_ids(edge, me)


def test_a_follow_list_read_near_its_end_is_loaded_again_from_graph_svc(edge: httpx.Client, rds: redis.Redis) -> None:
    """A cached follow list a read serves near the end of its lifetime is loaded
    again from graph_svc after the read: lists filled together do not expire together,
    and one that lost an account (an invalidation Redis lost) is mended within a lifetime."""
    me, author = new_accounts(edge, 2, "fr")
    follow(edge, me, author.user_id)
    tweet = post_tweet(edge, author, "shown once the list is loaded again")["tweet_id"]
    wait_feed(edge, me, has_all([tweet]), "the followed author's tweet never arrived")
    key = feed_key("following", int(me.user_id))
    wait_fanout_caught_up()  # the follow's own invalidation of the list is behind us
    cached = eventually(lambda: (feed_ids(edge, me), rds.get(key) or "")[1], bool, "the follow list was never cached")
    assert author.user_id in cached

    rds.set(key, "", px=10_000)  # near its end (due for any reader), and without the author
    assert tweet not in feed_ids(edge, me)  # served as cached: the author is not followed
    listed = eventually(
        lambda: (rds.get(key) or "", rds.pttl(key)), lambda v: author.user_id in v[0], "the list was not loaded again"
    )
    assert listed[1] > 60_000, f"the reloaded list lives {listed[1]} ms"
    assert tweet in feed_ids(edge, me)


# ---- Redis is a cache --------------------------------------------------------------------


def test_flushall_loses_no_timeline_entry(edge: httpx.Client, rds: redis.Redis) -> None:
    me, author, star, fan1, fan2 = new_accounts(edge, 5, "fl")
    follow(edge, me, author.user_id)
    make_celebrity(edge, star, [me, fan1, fan2])
    pushed_ids = [post_tweet(edge, author, f"pushed {i}")["tweet_id"] for i in range(4)]
    others = [post_tweet(edge, star, "pulled")["tweet_id"], post_tweet(edge, me, "mine")["tweet_id"]]
    wait_pushed(rds, [me.user_id], pushed_ids)
    before = wait_feed(edge, me, has_all(pushed_ids + others), "the timeline never filled")
    assert before == newest_first(pushed_ids + others)
    full_before = feed(edge, me)

    assert rds.flushall() is True
    # (Other keys may reappear at once: workers keep writing trending and like counts.)
    assert not rds.exists(feed_key("timeline", int(me.user_id)), feed_key("following", int(me.user_id)), "celebrities")
    assert feed(edge, me) == full_before
    # Rebuilt from the CQL store: the pushed entries are back in Redis.
    assert pushed(rds, me.user_id) >= set(pushed_ids)


# ---- paging ------------------------------------------------------------------------------


def walk_feed(edge: httpx.Client, who: Account, page_size: int, between: Callable[[int], None]) -> list[str]:
    """Every page of `who`'s feed; `between(n)` runs after the n-th page when more follow."""
    walked: list[str] = []
    token = ""
    for round_ in range(100):
        params: dict[str, str | int] = {"page_size": page_size}
        if token:
            params["page_token"] = token
        body = feed_page(edge, who, **params)
        assert len(body["tweets"]) <= page_size
        walked += [t["tweet_id"] for t in body["tweets"]]
        token = body["next_page_token"]
        if not token:
            return walked
        assert body["tweets"], "a page with a next_page_token must not be empty"
        between(round_)
    raise AssertionError("the feed never reached its last page")


def test_walking_the_feed_while_tweets_arrive_never_repeats_or_skips(edge: httpx.Client) -> None:
    me, author, star, fan1, fan2 = new_accounts(edge, 5, "pg")
    follow(edge, me, author.user_id)
    make_celebrity(edge, star, [me, fan1, fan2])
    writers = [author, star, me]
    existing = [post_tweet(edge, writers[i % 3], f"existing {i}")["tweet_id"] for i in range(8)]
    expected = newest_first(existing)
    wait_feed(edge, me, equals(expected), "the timeline never filled")

    arrived: list[str] = []

    def post_more(round_: int) -> None:
        arrived.append(post_tweet(edge, writers[round_ % 3], f"arrived during the walk {round_}")["tweet_id"])

    assert walk_feed(edge, me, 2, post_more) == expected
    assert len(arrived) == 3  # pages of 2, 2, 2, 2: three gaps between them
    # The new tweets are there for the next walk, on top.
    wait_feed(edge, me, equals(newest_first(arrived + existing)), "new tweets never arrived")
    assert walk_feed(edge, me, 3, lambda _: None) == newest_first(arrived + existing)


def test_feed_page_sizes_and_bad_requests(edge: httpx.Client) -> None:
    me = new_account(edge, "size")
    with ThreadPoolExecutor(max_workers=8) as pool:
        posted = list(pool.map(lambda i: post_tweet(edge, me, f"bulk {i}")["tweet_id"], range(101)))
    everything = newest_first(posted)

    for params in ({}, {"page_size": 0}):
        body = feed_page(edge, me, **params)
        assert [t["tweet_id"] for t in body["tweets"]] == everything[:20], params
        assert body["next_page_token"]
    capped = feed_page(edge, me, page_size=1000)
    assert [t["tweet_id"] for t in capped["tweets"]] == everything[:100]
    assert capped["next_page_token"]
    rest = feed_page(edge, me, page_size=1000, page_token=capped["next_page_token"])
    assert [t["tweet_id"] for t in rest["tweets"]] == everything[100:]
    assert rest["next_page_token"] == ""

    assert_error(edge.get("/v1/feed", params={"page_size": -1}, headers=auth(me)), 400, 3)
    token = str(capped["next_page_token"])
    for bad in ("not-a-page-token", "!!!!", token[: len(token) // 2]):
        assert_error(edge.get("/v1/feed", params={"page_token": bad}, headers=auth(me)), 400, 3)
    assert_error(edge.get("/v1/feed"), 401, 16)
    assert_error(edge.get("/v1/feed", headers={"authorization": "Bearer not.a.jwt"}), 401, 16)


# ---- crossing the celebrity threshold ------------------------------------------------------


def test_crossing_the_celebrity_threshold_loses_nothing(edge: httpx.Client, rds: redis.Redis) -> None:
    author, *fans = new_accounts(edge, 1 + CELEBRITY_THRESHOLD, "thr")
    early, last = fans[:-1], fans[-1]
    for fan in early:
        follow(edge, fan, author.user_id)
    assert follower_count(edge, author.user_id) == CELEBRITY_THRESHOLD - 1

    t1 = post_tweet(edge, author, "pushed: below the threshold")
    early_ids = [f.user_id for f in early]
    wait_pushed(rds, early_ids, [t1["tweet_id"]])
    for fan in early:
        wait_feed(edge, fan, equals([t1["tweet_id"]]), f"{fan.username} never saw T1")

    # One more follower: now a celebrity, so the next tweet is pulled. The fan-out
    # worker registers the crossing when it handles the follow or the tweet, so T2
    # shows up within the fan-out lag (not necessarily at once), and is not pushed.
    follow(edge, last, author.user_id)
    assert follower_count(edge, author.user_id) == CELEBRITY_THRESHOLD
    t2 = post_tweet(edge, author, "pulled: at the threshold")
    both = [t2["tweet_id"], t1["tweet_id"]]
    for fan in fans:
        wait_feed(edge, fan, equals(both), f"{fan.username} never saw T2 after the threshold was crossed")
    wait_fanout_caught_up()
    for fan in fans:
        assert t2["tweet_id"] not in pushed(rds, fan.user_id), f"T2 was pushed to tl:{fan.user_id}"

    # Back under the threshold but not under CHIRP_CELEBRITY_DEMOTE_BELOW: still a
    # celebrity (hysteresis), so T3 is pulled, not pushed, and nothing is backfilled.
    unfollow(edge, last, author.user_id)
    assert follower_count(edge, author.user_id) == CELEBRITY_DEMOTE_BELOW == CELEBRITY_THRESHOLD - 1
    t3 = post_tweet(edge, author, "pulled: in the band under the threshold")
    three = [t3["tweet_id"], *both]
    for fan in early:
        wait_feed(edge, fan, equals(three), f"{fan.username} never saw T3 in the band")
    wait_feed(edge, last, equals([]), "the unfollowed author's tweets stayed")
    wait_fanout_caught_up()
    for fan in early:
        assert pushed(rds, fan.user_id) & {t2["tweet_id"], t3["tweet_id"]} == set(), f"pushed to tl:{fan.user_id}"

    # Under the band: no longer a celebrity, and T2 and T3 are backfilled into the
    # remaining follower's timeline.
    stays, leaves = early
    unfollow(edge, leaves, author.user_id)
    assert follower_count(edge, author.user_id) == CELEBRITY_DEMOTE_BELOW - 1
    wait_pushed(rds, [stays.user_id], three)
    assert feed_ids(edge, stays) == three
    wait_feed(edge, leaves, equals([]), "the unfollowed author's tweets stayed")


# ---- trending --------------------------------------------------------------------------------


def test_trending_ranks_by_likes_and_drops_deleted_tweets(edge: httpx.Client) -> None:
    hot_author, cold_author, *likers = new_accounts(edge, 6, "tr")
    hot = post_tweet(edge, hot_author, "everybody likes this")
    cold = post_tweet(edge, cold_author, "one like only")
    for liker in likers:
        like(edge, liker, hot["tweet_id"])
    like(edge, likers[0], cold["tweet_id"])
    wait_like_count(edge, hot["tweet_id"], 4)
    wait_like_count(edge, cold["tweet_id"], 1)

    def ranked() -> list[Tweet]:
        return [t for t in trending(edge, limit=100) if t["tweet_id"] in (hot["tweet_id"], cold["tweet_id"])]

    expected = [{**hot, "like_count": 4}, {**cold, "like_count": 1}]
    got = eventually(ranked, lambda found: found == expected, "trending never ranked hot above cold", TRENDING_DEADLINE)
    assert got == expected

    negative = assert_error(edge.get("/v1/feed/trending", params={"limit": -1}), 400, 3)
    assert "limit" in str(negative["message"])

    delete_tweet(edge, hot_author, hot["tweet_id"])
    # Each rank_svc instance serves its own copy of the list: wait until none holds it.
    eventually(lambda: no_rank_copy_has(hot["tweet_id"]), bool, "a deleted tweet stayed in trending", TRENDING_DEADLINE)
    for _ in range(4):
        assert hot["tweet_id"] not in [t["tweet_id"] for t in trending(edge, limit=100)]


def test_trending_tallies_are_in_the_state_redis_and_outlive_a_cache_flush(
    edge: httpx.Client, rds: redis.Redis, state_rds: redis.Redis
) -> None:
    """The tallies are state, not a cache: they are kept by the state Redis, which never
    evicts, so neither an eviction nor a flush of the cache can drop one tweet's likers
    alone (a later unlike would then go uncounted)."""
    author, *likers = new_accounts(edge, 3, "ts")
    tweet = post_tweet(edge, author, "tallied")
    for liker in likers:
        like(edge, liker, tweet["tweet_id"])
    keys = TrendingKeys(shards=DEFAULT_TALLY_SHARDS)
    pattern = keys.likers(int(tweet["tweet_id"]), 0).removesuffix(":0").replace("{", "[{]") + ":*"

    def folded_likers(r: redis.Redis) -> list[str]:
        """The users in the tweet's likers hashes (one per bucket of hours)."""
        return sorted(str(user) for key in r.scan_iter(match=pattern) for user in r.hkeys(key))

    eventually(
        lambda: folded_likers(state_rds),
        lambda users: len(users) == 2,
        "the likes were never folded",
        TRENDING_DEADLINE,
    )
    assert folded_likers(rds) == []
    assert state_rds.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert rds.flushall() is True
    assert folded_likers(state_rds) == sorted(str(liker.user_id) for liker in likers)


def test_trending_limits(edge: httpx.Client) -> None:
    author, liker = new_accounts(edge, 2, "trl")

    def post_and_like(i: int) -> str:
        tweet_id = str(post_tweet(edge, author, f"liked once {i}")["tweet_id"])
        like(edge, liker, tweet_id)
        return tweet_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        liked = set(pool.map(post_and_like, range(101)))
    wait_like_count(edge, max(liked, key=int), 1)

    def settled(tweets: list[Tweet]) -> bool:
        ours = [t for t in tweets if t["tweet_id"] in liked]
        return len(tweets) == 100 and bool(ours) and all(t["like_count"] == 1 for t in ours)

    # More than 100 liked tweets now: the list fills up to its cap, in every rank_svc copy.
    eventually(
        rank_copies, lambda copies: all(len(ids) == 100 for ids in copies), "trending never held 100", TRENDING_DEADLINE
    )
    full = eventually(lambda: trending(edge, limit=1000), settled, "trending never held ours", TRENDING_DEADLINE)
    assert len({t["tweet_id"] for t in full}) == 100
    for tweet in full:
        assert set(tweet) >= {"tweet_id", "author_id", "author_username", "text", "created_at", "like_count"}
        assert tweet["author_username"] and tweet["text"]
        parse_time(tweet["created_at"])
    assert len(trending(edge, limit=101)) == 100
    assert len(trending(edge, limit=100)) == 100
    assert len(trending(edge)) == 10
    assert len(trending(edge, limit=0)) == 10
    assert len(trending(edge, limit=7)) == 7
    assert len(trending(edge, limit=1)) == 1


def test_trending_liked_by_me_is_exact_at_once_after_a_like_and_an_unlike(edge: httpx.Client, rds: redis.Redis) -> None:
    """rank_svc takes a viewer's flags from tweet_svc's cache (`ul:<viewer>`) and asks
    tweet_svc only for those it misses: a like and an unlike show in the very next
    read, whether the viewer's flags are cached or not."""
    author, viewer, bystander, *fans = new_accounts(edge, 8, "tlk")
    tweet_id = str(post_tweet(edge, author, "trending, liked, unliked")["tweet_id"])
    for fan in fans:  # enough likes to stay among the top 100 of a busy stack
        like(edge, fan, tweet_id)
    wait_like_count(edge, tweet_id, len(fans))
    # Each rank_svc instance serves its own copy: wait until every one holds it.
    eventually(lambda: every_rank_copy_has(tweet_id), bool, "the liked tweet never trended", TRENDING_DEADLINE)
    cached_flags = tweet_key("liked", int(viewer.user_id))

    def seen_by(who: Account | None) -> set[bool]:
        """liked_by_me on the tweet in several reads through the edge, so from every instance."""
        seen: set[bool] = set()
        for _ in range(6):
            reply = edge.get("/v1/feed/trending", params={"limit": 100}, headers=auth(who) if who else {})
            assert reply.status_code == 200, reply.text
            ours = [t["liked_by_me"] for t in reply.json()["tweets"] if t["tweet_id"] == tweet_id]
            assert len(ours) == 1, "the tweet left trending"
            seen.update(ours)
        return seen

    assert seen_by(viewer) == {False}
    assert rds.hexists(cached_flags, tweet_id), "reading trending did not cache the viewer's flag"
    like(edge, viewer, tweet_id)  # over the cached "not liked"
    assert seen_by(viewer) == {True}
    assert seen_by(bystander) == {False}
    assert seen_by(None) == {False}
    rds.delete(cached_flags)  # as when the hash expires: the flag comes from tweet_svc
    assert seen_by(viewer) == {True}
    unlike(edge, viewer, tweet_id)  # over the cached "liked"
    assert seen_by(viewer) == {False}
    rds.delete(cached_flags)
    assert seen_by(viewer) == {False}
