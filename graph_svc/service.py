"""GraphService (public) and GraphInternalService (peers only) RPC handlers:
validate, call the domain, map to protos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import grpc
from chirp.graph.v1 import graph_internal_pb2, graph_internal_pb2_grpc, graph_pb2, graph_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.identity import acting_user, calling_session, optional_user
from common.limits import client_address
from common.pagination import page_size
from graph_svc.accounts import Account
from graph_svc.domain import Graph, Session
from graph_svc.relations import Relations

FOLLOWER_IDS_DEFAULT, FOLLOWER_IDS_MAX = 1000, 5000

SessionReply = TypeVar("SessionReply", graph_pb2.CreateSessionResponse, graph_pb2.RefreshSessionResponse)


def user_proto(account: Account, followed_by_me: bool = False) -> graph_pb2.User:
    created = Timestamp()
    created.FromDatetime(account.created_at)
    return graph_pb2.User(
        user_id=account.user_id,
        username=account.username,
        created_at=created,
        follower_count=account.follower_count,
        following_count=account.following_count,
        followed_by_me=followed_by_me,
    )


def _session_reply(reply: SessionReply, session: Session) -> SessionReply:
    """Login and refresh answer with the same fields."""
    reply.access_token = session.access_token
    reply.token_type = "Bearer"
    reply.expires_at.FromDatetime(session.expires_at)
    reply.user.CopyFrom(user_proto(session.account))
    reply.refresh_token = session.refresh_token
    reply.refresh_expires_at.FromDatetime(session.refresh_expires_at)
    return reply


class GraphService(graph_pb2_grpc.GraphServiceServicer):
    def __init__(self, graph: Graph, relations: Relations) -> None:
        self._graph = graph
        self._relations = relations

    async def CreateUser(
        self, request: graph_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.CreateUserResponse:
        account = await self._graph.sign_up(request.username, request.password, client_address(context))
        return graph_pb2.CreateUserResponse(user=user_proto(account))

    async def CreateSession(
        self, request: graph_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.CreateSessionResponse:
        session = await self._graph.sign_in(request.username, request.password, client_address(context))
        return _session_reply(graph_pb2.CreateSessionResponse(), session)

    async def RefreshSession(
        self, request: graph_pb2.RefreshSessionRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.RefreshSessionResponse:
        session = await self._graph.refresh_session(request.refresh_token)
        return _session_reply(graph_pb2.RefreshSessionResponse(), session)

    async def DeleteSession(
        self, request: graph_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.DeleteSessionResponse:
        await self._graph.sign_out(acting_user(context), calling_session(context))
        return graph_pb2.DeleteSessionResponse()

    async def ChangePassword(
        self, request: graph_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ChangePasswordResponse:
        await self._graph.change_password(
            acting_user(context), request.old_password, request.new_password, client_address(context)
        )
        return graph_pb2.ChangePasswordResponse()

    async def GetUser(
        self, request: graph_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.GetUserResponse:
        account = await self._graph.get_user(request.user_id)
        (user,) = await self._users(context, [account])
        return graph_pb2.GetUserResponse(user=user)

    async def LookupUser(
        self, request: graph_pb2.LookupUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.LookupUserResponse:
        account = await self._graph.lookup(request.username)
        (user,) = await self._users(context, [account])
        return graph_pb2.LookupUserResponse(user=user)

    async def GetMe(
        self, request: graph_pb2.GetMeRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.GetMeResponse:
        # followed_by_me stays false: nobody follows themselves.
        return graph_pb2.GetMeResponse(user=user_proto(await self._graph.get_user(acting_user(context))))

    async def _users(self, context: grpc.aio.ServicerContext, accounts: Sequence[Account]) -> list[graph_pb2.User]:
        """Accounts as the caller sees them: followed_by_me from one read of the caller's
        follows (false for all without a token). Every response listing users goes through it."""
        followed = await self._graph.followed_by(optional_user(context), [a.user_id for a in accounts])
        return [user_proto(a, a.user_id in followed) for a in accounts]

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
            users=await self._users(context, page.accounts), next_page_token=page.next_page_token
        )

    async def ListFollowing(
        self, request: graph_pb2.ListFollowingRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListFollowingResponse:
        page = await self._graph.following(request.user_id, page_size(request.page_size), request.page_token)
        return graph_pb2.ListFollowingResponse(
            users=await self._users(context, page.accounts), next_page_token=page.next_page_token
        )

    async def BlockUser(
        self, request: graph_pb2.BlockUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.BlockUserResponse:
        await self._relations.block(acting_user(context), request.user_id)
        return graph_pb2.BlockUserResponse()

    async def UnblockUser(
        self, request: graph_pb2.UnblockUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.UnblockUserResponse:
        await self._relations.unblock(acting_user(context), request.user_id)
        return graph_pb2.UnblockUserResponse()

    async def MuteUser(
        self, request: graph_pb2.MuteUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.MuteUserResponse:
        await self._relations.mute(acting_user(context), request.user_id)
        return graph_pb2.MuteUserResponse()

    async def UnmuteUser(
        self, request: graph_pb2.UnmuteUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.UnmuteUserResponse:
        await self._relations.unmute(acting_user(context), request.user_id)
        return graph_pb2.UnmuteUserResponse()

    async def ListBlocks(
        self, request: graph_pb2.ListBlocksRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListBlocksResponse:
        page = await self._relations.blocks(acting_user(context), page_size(request.page_size), request.page_token)
        return graph_pb2.ListBlocksResponse(
            users=await self._users(context, page.accounts), next_page_token=page.next_page_token
        )

    async def ListMutes(
        self, request: graph_pb2.ListMutesRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.ListMutesResponse:
        page = await self._relations.mutes(acting_user(context), page_size(request.page_size), request.page_token)
        return graph_pb2.ListMutesResponse(
            users=await self._users(context, page.accounts), next_page_token=page.next_page_token
        )


class GraphInternalService(graph_internal_pb2_grpc.GraphInternalServiceServicer):
    def __init__(self, graph: Graph, relations: Relations) -> None:
        self._graph = graph
        self._relations = relations

    async def BatchGetUsers(
        self, request: graph_internal_pb2.BatchGetUsersRequest, context: grpc.aio.ServicerContext
    ) -> graph_internal_pb2.BatchGetUsersResponse:
        accounts = await self._graph.get_users(list(request.user_ids))
        return graph_internal_pb2.BatchGetUsersResponse(users=[user_proto(a) for a in accounts])

    async def ListFollowerIds(
        self, request: graph_internal_pb2.ListFollowerIdsRequest, context: grpc.aio.ServicerContext
    ) -> graph_internal_pb2.ListFollowerIdsResponse:
        size = page_size(request.page_size, FOLLOWER_IDS_DEFAULT, FOLLOWER_IDS_MAX)
        if request.page_token:
            ids, token = await self._graph.follower_ids(request.user_id, size, request.page_token)
            return graph_internal_pb2.ListFollowerIdsResponse(user_ids=ids, next_page_token=token)
        # A first page that is also the last holds every follower: its length is the
        # count, and the counts row is read only for accounts with more (one CQL read
        # fewer per tweet of nearly every author).
        ids, token = await self._graph.follower_ids(request.user_id, size, "")
        count = await self._graph.follower_count(request.user_id) if token else len(ids)
        return graph_internal_pb2.ListFollowerIdsResponse(user_ids=ids, next_page_token=token, follower_count=count)

    async def ListFollowingIds(
        self, request: graph_internal_pb2.ListFollowingIdsRequest, context: grpc.aio.ServicerContext
    ) -> graph_internal_pb2.ListFollowingIdsResponse:
        followed, truncated = await self._graph.following_ids(request.user_id, request.among_user_ids)
        return graph_internal_pb2.ListFollowingIdsResponse(
            accounts=[graph_internal_pb2.FollowedAccount(user_id=u, follower_count=c) for u, c in followed],
            truncated=truncated,
        )

    async def ListHiddenAuthorIds(
        self, request: graph_internal_pb2.ListHiddenAuthorIdsRequest, context: grpc.aio.ServicerContext
    ) -> graph_internal_pb2.ListHiddenAuthorIdsResponse:
        hidden = await self._relations.hidden_authors(request.user_id)
        return graph_internal_pb2.ListHiddenAuthorIdsResponse(
            muted_ids=hidden.muted,
            blocked_ids=hidden.blocked,
            blocked_by_ids=hidden.blocked_by,
            blocked_by_incomplete=hidden.blocked_by_incomplete,
        )

    async def GetRelations(
        self, request: graph_internal_pb2.GetRelationsRequest, context: grpc.aio.ServicerContext
    ) -> graph_internal_pb2.GetRelationsResponse:
        found = await self._relations.relations(request.viewer_id, list(request.user_ids))
        return graph_internal_pb2.GetRelationsResponse(
            relations=[
                graph_internal_pb2.Relation(
                    user_id=r.user_id, blocking=r.blocking, blocked_by=r.blocked_by, muting=r.muting
                )
                for r in found
            ]
        )
