"""gRPC channels to other Chirp services: client-side round robin over every
instance (a headless Service in Kubernetes), deadlines derived from the
incoming call, the request id passed along.

A failed call raises grpc.aio.AioRpcError; callers let it propagate, and
common/errors.py maps it by its status code (a peer that is down or slow stays
retryable, a peer's refusal of the request passes through, anything else is
INTERNAL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from chirp.graph.v1 import graph_internal_pb2, graph_internal_pb2_grpc, graph_pb2, graph_pb2_grpc
from chirp.tweet.v1 import tweet_internal_pb2, tweet_internal_pb2_grpc, tweet_pb2

from common import deadlines
from common.hidden import BLOCKERS_UNLISTED
from common.identity import USER_ID_HEADER
from common.interceptors import REQUEST_ID_HEADER
from common.logs import request_id_var

CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 1),
    # A ping every 30 s, idle or not (gRPC pings only while calls are in flight unless
    # permitted, and at most twice without data), answered within 10 s: a peer whose host
    # vanished without a reset while the connection was idle is dropped from the
    # round-robin in 40 s, not found by the first calls that time out on it.
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))


def call_options(default_timeout: float, acting_user: int | None = None) -> dict[str, object]:
    """`timeout` and `metadata` keyword arguments for one outgoing call."""
    metadata: list[tuple[str, str]] = []
    request_id = request_id_var.get()
    if request_id:
        metadata.append((REQUEST_ID_HEADER, request_id))
    if acting_user is not None:
        metadata.append((USER_ID_HEADER, str(acting_user)))
    return {"timeout": deadlines.timeout(default_timeout), "metadata": tuple(metadata)}


TIMEOUT = 2.0
RELATIONS_PER_CALL = 500  # graph_svc's GetRelations answers for at most this many users


class Peers:
    """The internal RPCs services make of graph_svc and tweet_svc. A service
    passes only the targets it calls, so it opens no channel it never uses
    (tweet_svc, above all, never dials itself)."""

    def __init__(self, *, graph_target: str | None = None, tweet_target: str | None = None) -> None:
        self._channels: list[grpc.aio.Channel] = []
        graph = self._open(graph_target) if graph_target else None
        self._graph_stub = graph_pb2_grpc.GraphServiceStub(graph) if graph else None
        self._graph_internal_stub = graph_internal_pb2_grpc.GraphInternalServiceStub(graph) if graph else None
        self._tweet_stub = (
            tweet_internal_pb2_grpc.TweetInternalServiceStub(self._open(tweet_target)) if tweet_target else None
        )

    def _open(self, target: str) -> grpc.aio.Channel:
        self._channels.append(channel(target))
        return self._channels[-1]

    @property
    def _graph(self) -> graph_pb2_grpc.GraphServiceAsyncStub:
        if self._graph_stub is None:
            raise RuntimeError("Peers was built without a graph_svc target")
        return self._graph_stub

    @property
    def _graph_internal(self) -> graph_internal_pb2_grpc.GraphInternalServiceAsyncStub:
        if self._graph_internal_stub is None:
            raise RuntimeError("Peers was built without a graph_svc target")
        return self._graph_internal_stub

    @property
    def _tweet(self) -> tweet_internal_pb2_grpc.TweetInternalServiceAsyncStub:
        if self._tweet_stub is None:
            raise RuntimeError("Peers was built without a tweet_svc target")
        return self._tweet_stub

    async def following_ids(self, user_id: int, among: Sequence[int] = ()) -> tuple[list[tuple[int, int]], bool]:
        """(followed id, follower count) pairs and whether the listing stopped at graph_svc's limit;
        with `among`, only which of those ids the user follows."""
        reply = await self._graph_internal.ListFollowingIds(
            graph_internal_pb2.ListFollowingIdsRequest(user_id=user_id, among_user_ids=list(among)),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return [(a.user_id, a.follower_count) for a in reply.accounts], reply.truncated

    async def follows(self, follower_id: int, followee_id: int) -> bool:
        """Whether the follow edge exists now (a quorum read of the edge in graph_svc)."""
        followed, _ = await self.following_ids(follower_id, [followee_id])
        return bool(followed)

    async def user(self, user_id: int) -> graph_pb2.User:
        reply = await self._graph.GetUser(graph_pb2.GetUserRequest(user_id=user_id), **call_options(TIMEOUT))  # type: ignore[arg-type]
        return reply.user

    async def username(self, user_id: int) -> str:
        return (await self.user(user_id)).username

    async def follower_count(self, user_id: int) -> int:
        return (await self.user(user_id)).follower_count

    async def users(self, user_ids: Sequence[int]) -> list[graph_pb2.User]:
        reply = await self._graph_internal.BatchGetUsers(
            graph_internal_pb2.BatchGetUsersRequest(user_ids=list(user_ids)),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return list(reply.users)

    async def hidden_author_ids(self, user_id: int) -> frozenset[int]:
        """Authors whose tweets `user_id` must not see in the home feed or trending: the
        ones they mute or block and the ones blocking them (BLOCKERS_UNLISTED too when
        graph_svc lists only some of those), read from graph_svc's rows. Readers go
        through common/hidden.py's cache, which calls this on a miss."""
        reply = await self._graph_internal.ListHiddenAuthorIds(
            graph_internal_pb2.ListHiddenAuthorIdsRequest(user_id=user_id),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        unlisted = (BLOCKERS_UNLISTED,) if reply.blocked_by_incomplete else ()
        return frozenset((*reply.muted_ids, *reply.blocked_ids, *reply.blocked_by_ids, *unlisted))

    async def blockers_among(self, user_id: int, user_ids: Sequence[int]) -> set[int]:
        """Which of `user_ids` block `user_id` (GetRelations, RELATIONS_PER_CALL ids a call)."""
        ids = list(dict.fromkeys(user_ids))
        chunks = [ids[i : i + RELATIONS_PER_CALL] for i in range(0, len(ids), RELATIONS_PER_CALL)]
        replies = await asyncio.gather(*(self.relations(user_id, chunk) for chunk in chunks))
        return {r.user_id for reply in replies for r in reply if r.blocked_by}

    async def relations(self, viewer_id: int, user_ids: Sequence[int]) -> list[graph_internal_pb2.Relation]:
        """How `viewer_id` relates to each of `user_ids` (blocks either way, mutes), in the order asked."""
        reply = await self._graph_internal.GetRelations(
            graph_internal_pb2.GetRelationsRequest(viewer_id=viewer_id, user_ids=list(user_ids)),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return list(reply.relations)

    async def follower_page(self, user_id: int, page_token: str) -> tuple[list[int], str, int | None]:
        """(follower ids, next page token, the follower count on a first page). The count
        is None on later pages, and from a graph_svc that does not send it yet."""
        reply = await self._graph_internal.ListFollowerIds(
            graph_internal_pb2.ListFollowerIdsRequest(user_id=user_id, page_size=5000, page_token=page_token),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        count = reply.follower_count if reply.HasField("follower_count") else None
        return list(reply.user_ids), reply.next_page_token, count

    async def recent_ids(self, author_ids: Sequence[int], before: int, limit: int) -> list[tuple[int, int]]:
        reply = await self._tweet.ListRecentTweetIds(
            tweet_internal_pb2.ListRecentTweetIdsRequest(
                author_ids=list(author_ids), before_tweet_id=before, limit_per_author=min(limit, 200)
            ),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return [(t.tweet_id, t.author_id) for t in reply.tweets]

    async def refresh_recent(self, author_ids: Sequence[int]) -> None:
        """Asks tweet_svc to renew these authors' cached recent-ids sets where they are past
        their refresh time (ListRecentTweetIds with `refresh`). A tweet_svc older than the
        field answers the ids instead, which are dropped: nothing is renewed."""
        if author_ids:
            await self._tweet.ListRecentTweetIds(
                tweet_internal_pb2.ListRecentTweetIdsRequest(author_ids=list(author_ids), refresh=True),
                **call_options(TIMEOUT),  # type: ignore[arg-type]
            )

    async def batch_tweets(self, tweet_ids: Sequence[int], viewer_id: int = 0) -> list[tweet_pb2.Tweet]:
        """With a viewer, each tweet's liked_by_me is theirs: the result is that viewer's, never
        to be shared with other readers (trending and other shared copies hydrate without one)."""
        reply = await self._tweet.BatchGetTweets(
            tweet_internal_pb2.BatchGetTweetsRequest(tweet_ids=list(tweet_ids), viewer_id=viewer_id),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return list(reply.tweets)

    async def liked_tweet_ids(self, user_id: int, tweet_ids: Sequence[int]) -> set[int]:
        """Which of `tweet_ids` (at most 500) the user likes, likes just acknowledged included."""
        if not tweet_ids:
            return set()
        reply = await self._tweet.ListLikedTweetIds(
            tweet_internal_pb2.ListLikedTweetIdsRequest(user_id=user_id, tweet_ids=list(tweet_ids)),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return set(reply.tweet_ids)

    async def like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """Like counts (at most 500 ids), likes just acknowledged included, without the bodies.
        A tweet_svc older than BatchGetLikeCounts (a rolling upgrade) is asked for the
        tweets instead, whose counts are the same; a tweet gone meanwhile has none."""
        if not tweet_ids:
            return {}
        try:
            reply = await self._tweet.BatchGetLikeCounts(
                tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=list(tweet_ids)),
                **call_options(TIMEOUT),  # type: ignore[arg-type]
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return {t.tweet_id: t.like_count for t in await self.batch_tweets(tweet_ids)}
        return dict(reply.like_counts)

    async def refresh_like_counts(self, tweet_ids: Sequence[int]) -> dict[int, int]:
        """Asks tweet_svc to rebuild these cached like counts from the store where they are
        past their refresh time (BatchGetLikeCounts with `refresh`); returns those rebuilt.
        A tweet_svc older than the field answers the counts and rebuilds nothing."""
        if not tweet_ids:
            return {}
        reply = await self._tweet.BatchGetLikeCounts(
            tweet_internal_pb2.BatchGetLikeCountsRequest(tweet_ids=list(tweet_ids), refresh=True),
            **call_options(TIMEOUT),  # type: ignore[arg-type]
        )
        return dict(reply.like_counts)

    async def close(self) -> None:
        for opened in self._channels:
            await opened.close(None)
