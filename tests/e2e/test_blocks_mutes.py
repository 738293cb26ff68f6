"""Blocks and mutes through Envoy, as a client app uses them: what a block does
to follows, follows and likes across a block, the blocked user's reads of the
blocker's tweets, idempotency, and the private paged lists. (What blocks and
mutes hide from home feeds and trending is tested with the feed.)"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from chirp.graph.v1 import graph_internal_pb2, graph_internal_pb2_grpc

from infra import topology
from tests.e2e.test_users import assert_error
from tests.e2e.test_write_path import Account, auth, new_account, new_accounts, post_tweet, wait_counts

UNKNOWN_USER = "4242424242"


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def follow(edge: httpx.Client, who: Account, user_id: str) -> httpx.Response:
    return edge.post(f"/v1/users/{user_id}/follow", headers=auth(who))


def block(edge: httpx.Client, who: Account, user_id: str) -> httpx.Response:
    return edge.post(f"/v1/users/{user_id}/block", headers=auth(who))


def unblock(edge: httpx.Client, who: Account, user_id: str) -> httpx.Response:
    return edge.delete(f"/v1/users/{user_id}/block", headers=auth(who))


def mute(edge: httpx.Client, who: Account, user_id: str) -> httpx.Response:
    return edge.post(f"/v1/users/{user_id}/mute", headers=auth(who))


def unmute(edge: httpx.Client, who: Account, user_id: str) -> httpx.Response:
    return edge.delete(f"/v1/users/{user_id}/mute", headers=auth(who))


def listed(edge: httpx.Client, who: Account, kind: str, page_size: int = 100) -> list[str]:
    """Every user id of the caller's blocks or mutes, walked page by page."""
    ids: list[str] = []
    token = ""
    while True:
        page = ok(edge.get(f"/v1/me/{kind}", params={"page_size": page_size, "page_token": token}, headers=auth(who)))
        assert set(page) == {"users", "next_page_token"}
        ids += [u["user_id"] for u in page["users"]]
        token = page["next_page_token"]
        if not token:
            return ids


def follows(edge: httpx.Client, user_id: str, kind: str) -> list[str]:
    page = ok(edge.get(f"/v1/users/{user_id}/{kind}", params={"page_size": 100}))
    return [u["user_id"] for u in page["users"]]


def test_a_block_removes_follows_both_ways_and_stops_both_following(edge: httpx.Client) -> None:
    blocker, blocked, fan = new_accounts(edge, 3, "bk")
    for who, whom in ((blocked, blocker), (blocker, blocked), (fan, blocker)):
        ok(follow(edge, who, whom.user_id))
    wait_counts(edge, blocker.user_id, 2, 1)

    assert ok(block(edge, blocker, blocked.user_id)) == {}

    wait_counts(edge, blocker.user_id, 1, 0)
    wait_counts(edge, blocked.user_id, 0, 0)
    assert follows(edge, blocker.user_id, "followers") == [fan.user_id]
    assert follows(edge, blocked.user_id, "followers") == []
    body = assert_error(follow(edge, blocked, blocker.user_id), 403, 7)
    assert body["message"] == "you cannot follow this user"
    body = assert_error(follow(edge, blocker, blocked.user_id), 403, 7)
    assert "unblock" in str(body["message"])
    wait_counts(edge, blocker.user_id, 1, 0)  # the refused follows left nothing behind

    assert ok(block(edge, blocker, blocked.user_id)) == {}  # twice is fine
    assert listed(edge, blocker, "blocks") == [blocked.user_id]
    assert ok(unblock(edge, blocker, blocked.user_id)) == {}
    assert ok(unblock(edge, blocker, blocked.user_id)) == {}  # not blocked any more: still fine
    assert listed(edge, blocker, "blocks") == []
    ok(follow(edge, blocked, blocker.user_id))
    ok(follow(edge, blocker, blocked.user_id))
    wait_counts(edge, blocker.user_id, 2, 1)


def test_the_blocked_user_cannot_like_or_read_the_blockers_tweets(edge: httpx.Client) -> None:
    blocker, blocked, other = new_accounts(edge, 3, "bt")
    tweet = post_tweet(edge, blocker, "not for the blocked")
    theirs = post_tweet(edge, blocked, "the blocked user's own tweet")
    tweet_path = f"/v1/tweets/{tweet['tweet_id']}"
    list_path = f"/v1/users/{blocker.user_id}/tweets"
    ok(edge.post(f"{tweet_path}/like", headers=auth(blocked)))
    ok(edge.get(tweet_path, headers=auth(blocked)))
    ok(edge.get(list_path, headers=auth(blocked)))

    ok(block(edge, blocker, blocked.user_id))

    for reply in (
        edge.post(f"{tweet_path}/like", headers=auth(blocked)),
        edge.delete(f"{tweet_path}/like", headers=auth(blocked)),
        edge.get(tweet_path, headers=auth(blocked)),
        edge.get(list_path, headers=auth(blocked)),
    ):
        body = assert_error(reply, 403, 7)
        assert "blocked" in str(body["message"])
    # Anonymous readers, everyone else and the blocker are unaffected.
    for headers in ({}, auth(other), auth(blocker)):
        assert ok(edge.get(tweet_path, headers=headers))["tweet"]["tweet_id"] == tweet["tweet_id"]
        listing = ok(edge.get(list_path, headers=headers))
        assert tweet["tweet_id"] in [t["tweet_id"] for t in listing["tweets"]]
    ok(edge.post(f"{tweet_path}/like", headers=auth(other)))
    ok(edge.get(f"/v1/tweets/{theirs['tweet_id']}", headers=auth(blocker)))
    ok(edge.post(f"/v1/tweets/{theirs['tweet_id']}/like", headers=auth(blocker)))

    ok(unblock(edge, blocker, blocked.user_id))
    ok(edge.get(tweet_path, headers=auth(blocked)))
    ok(edge.get(list_path, headers=auth(blocked)))
    ok(edge.delete(f"{tweet_path}/like", headers=auth(blocked)))


def test_yourself_is_400_an_unknown_user_404_and_no_token_401(edge: httpx.Client) -> None:
    me = new_account(edge, "bs")
    for action in (block, unblock, mute, unmute):
        assert_error(action(edge, me, me.user_id), 400, 3)
        assert_error(action(edge, me, UNKNOWN_USER), 404, 5)
        assert_error(action(edge, me, "0"), 400, 3)
    for path in (f"/v1/users/{me.user_id}/block", f"/v1/users/{me.user_id}/mute"):
        assert_error(edge.post(path), 401, 16)
        assert_error(edge.delete(path), 401, 16)
    for path in ("/v1/me/blocks", "/v1/me/mutes"):
        assert_error(edge.get(path), 401, 16)


def test_a_mute_keeps_the_follow_and_is_idempotent(edge: httpx.Client) -> None:
    muter, muted = new_accounts(edge, 2, "bm")
    ok(follow(edge, muter, muted.user_id))
    other = new_account(edge, "bm")
    ok(follow(edge, muted, muter.user_id))

    assert ok(mute(edge, muter, muted.user_id)) == {}
    assert ok(mute(edge, muter, muted.user_id)) == {}
    assert ok(mute(edge, muter, other.user_id)) == {}

    assert follows(edge, muter.user_id, "following") == [muted.user_id]
    assert follows(edge, muter.user_id, "followers") == [muted.user_id]
    assert listed(edge, muter, "mutes") == [other.user_id, muted.user_id]
    # A muted user is not refused anything.
    tweet = post_tweet(edge, muter, "muted users may still like this")
    ok(edge.post(f"/v1/tweets/{tweet['tweet_id']}/like", headers=auth(muted)))
    ok(follow(edge, muted, muter.user_id))

    assert ok(unmute(edge, muter, muted.user_id)) == {}
    assert ok(unmute(edge, muter, muted.user_id)) == {}
    assert listed(edge, muter, "mutes") == [other.user_id]


def test_lists_are_newest_first_paged_and_private_to_their_owner(edge: httpx.Client) -> None:
    owner, stranger = new_accounts(edge, 2, "bl")
    targets = new_accounts(edge, 5, "bl")
    for target in targets:
        ok(block(edge, owner, target.user_id))
        ok(mute(edge, owner, target.user_id))
    newest_first = [t.user_id for t in reversed(targets)]

    for kind in ("blocks", "mutes"):
        assert listed(edge, owner, kind, page_size=2) == newest_first
        assert listed(edge, owner, kind, page_size=0) == newest_first
        users = ok(edge.get(f"/v1/me/{kind}", headers=auth(owner)))["users"]
        assert users[0]["username"] == targets[-1].username
        assert listed(edge, stranger, kind) == []  # "me" is the token's user
        assert_error(edge.get(f"/v1/me/{kind}", params={"page_size": -1}, headers=auth(owner)), 400, 3)

    token = ok(edge.get("/v1/me/blocks", params={"page_size": 2}, headers=auth(owner)))["next_page_token"]
    assert token
    params = {"page_size": 2, "page_token": token}
    assert_error(edge.get("/v1/me/blocks", params=params, headers=auth(stranger)), 400, 3)
    assert_error(edge.get("/v1/me/mutes", params=params, headers=auth(owner)), 400, 3)
    altered = token[:8] + ("B" if token[8] == "A" else "A") + token[9:]
    assert_error(edge.get("/v1/me/blocks", params={**params, "page_token": altered}, headers=auth(owner)), 400, 3)


def test_the_acting_user_is_the_tokens_not_a_header_the_client_sends(edge: httpx.Client) -> None:
    actor, target, victim = new_accounts(edge, 3, "bh")
    spoofed = auth(actor, **{"x-chirp-user-id": victim.user_id})
    ok(edge.post(f"/v1/users/{target.user_id}/block", headers=spoofed))
    assert listed(edge, actor, "blocks") == [target.user_id]
    assert listed(edge, victim, "blocks") == []
    assert_error(follow(edge, target, actor.user_id), 403, 7)
    ok(follow(edge, target, victim.user_id))


def test_peers_read_hidden_authors_and_relations_from_graph_svc(edge: httpx.Client) -> None:
    """The internal reads feed_svc, rank_svc and tweet_svc use, on graph_svc's own port."""
    me, blocked, blocker, muted, stranger = new_accounts(edge, 5, "bp")
    ok(block(edge, me, blocked.user_id))
    ok(block(edge, blocker, me.user_id))
    ok(mute(edge, me, muted.user_id))
    ids = [int(a.user_id) for a in (blocked, blocker, muted, stranger, me)]

    graph_port = topology.instances(next(s for s in topology.SERVICES if s.name == "graph_svc"))[0].port
    with grpc.insecure_channel(f"{topology.HOST}:{graph_port}") as channel:
        stub = graph_internal_pb2_grpc.GraphInternalServiceStub(channel)
        hidden = stub.ListHiddenAuthorIds(graph_internal_pb2.ListHiddenAuthorIdsRequest(user_id=ids[4]), timeout=5)
        relations = stub.GetRelations(
            graph_internal_pb2.GetRelationsRequest(viewer_id=ids[4], user_ids=ids), timeout=5
        ).relations
        ok(unmute(edge, me, muted.user_id))
        ok(unblock(edge, me, blocked.user_id))
        after = stub.ListHiddenAuthorIds(graph_internal_pb2.ListHiddenAuthorIdsRequest(user_id=ids[4]), timeout=5)

    assert (list(hidden.muted_ids), list(hidden.blocked_ids), list(hidden.blocked_by_ids)) == (
        [ids[2]],
        [ids[0]],
        [ids[1]],
    )
    assert not hidden.blocked_by_incomplete  # one blocker: all listed
    assert [(r.user_id, r.blocking, r.blocked_by, r.muting) for r in relations] == [
        (ids[0], True, False, False),
        (ids[1], False, True, False),
        (ids[2], False, False, True),
        (ids[3], False, False, False),
        (ids[4], False, False, False),
    ]
    assert (list(after.muted_ids), list(after.blocked_ids), list(after.blocked_by_ids)) == ([], [], [ids[1]])
