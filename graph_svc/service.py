"""GraphService RPC handlers: validate, call the domain, map to protos."""

from __future__ import annotations

import grpc
from chirp.graph.v1 import graph_pb2, graph_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from graph_svc.accounts import Account
from graph_svc.domain import Graph


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

    async def GetUser(
        self, request: graph_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> graph_pb2.GetUserResponse:
        account = await self._graph.get_user(request.user_id)
        return graph_pb2.GetUserResponse(user=user_proto(account))
