"""GraphService RPC handlers: validate, call the domain, map to protos."""

from __future__ import annotations

import grpc
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.identity import acting_user
from common.pagination import page_size
from graph_svc.accounts import Account
from graph_svc.domain import Graph

FOLLOWER_IDS_DEFAULT, FOLLOWER_IDS_MAX = 1000, 5000


def user_proto(account: Account) -> graph_pb2.User:
    created = Timestamp()
    created.FromDatetime(account.created_at)
    return graph_pb2.User(
        user_id=account.user_id,
        username=account.username,
        created_at=created,
        follower_count=account.follower_count,
        following_count=account.following_count,
    )


class GraphService(graph_pb2_grpc.GraphServiceServicer):
    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    async def CreateUser(
        self, request: graph_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.CreateUserResponse:
        account = await self._graph.sign_up(request.username, request.password)
        return graph_pb2.CreateUserResponse(user=user_proto(account))

    async def CreateSession(
        self, request: graph_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.CreateSessionResponse:
        session = await self._graph.sign_in(request.username, request.password)
        expires = Timestamp()
        expires.FromDatetime(session.expires_at)
        return graph_pb2.CreateSessionResponse(
            access_token=session.access_token,
            token_type="Bearer",
            expires_at=expires,
            user=user_proto(session.account),
        )

    async def GetUser(
        self, request: graph_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.GetUserResponse:
        account = await self._graph.get_user(request.user_id)
        return graph_pb2.GetUserResponse(user=user_proto(account))

    async def FollowUser(
        self, request: graph_pb2.FollowUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.FollowUserResponse:
        await self._graph.follow(acting_user(context), request.user_id)
        return graph_pb2.FollowUserResponse()

    async def UnfollowUser(
        self, request: graph_pb2.UnfollowUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.UnfollowUserResponse:
        await self._graph.unfollow(acting_user(context), request.user_id)
        return graph_pb2.UnfollowUserResponse()

    async def ListFollowers(
        self, request: graph_pb2.ListFollowersRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListFollowersResponse:
        page = await self._graph.followers(request.user_id, page_size(request.page_size), request.page_token)
        return graph_pb2.ListFollowersResponse(
            users=[user_proto(a) for a in page.accounts], next_page_token=page.next_page_token
        )

    async def ListFollowing(
        self, request: graph_pb2.ListFollowingRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListFollowingResponse:
        page = await self._graph.following(request.user_id, page_size(request.page_size), request.page_token)
        return graph_pb2.ListFollowingResponse(
            users=[user_proto(a) for a in page.accounts], next_page_token=page.next_page_token
        )

    async def BatchGetUsers(
        self, request: graph_pb2.BatchGetUsersRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.BatchGetUsersResponse:
        accounts = await self._graph.get_users(list(request.user_ids))
        return graph_pb2.BatchGetUsersResponse(users=[user_proto(a) for a in accounts])

    async def ListFollowerIds(
        self, request: graph_pb2.ListFollowerIdsRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListFollowerIdsResponse:
        size = page_size(request.page_size, FOLLOWER_IDS_DEFAULT, FOLLOWER_IDS_MAX)
        ids, token = await self._graph.follower_ids(request.user_id, size, request.page_token)
        return graph_pb2.ListFollowerIdsResponse(user_ids=ids, next_page_token=token)

    async def ListFollowingIds(
        self, request: graph_pb2.ListFollowingIdsRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListFollowingIdsResponse:
        followed, truncated = await self._graph.following_ids(request.user_id, request.among_user_ids)
        return graph_pb2.ListFollowingIdsResponse(
            accounts=[graph_pb2.FollowedAccount(user_id=u, follower_count=c) for u, c in followed],
            truncated=truncated,
        )
