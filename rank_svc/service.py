"""RankService RPC handlers."""

from __future__ import annotations

from chirp.rank.v1 import rank_pb2_grpc


class RankService(rank_pb2_grpc.RankServiceServicer):
    pass
