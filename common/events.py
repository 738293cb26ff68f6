"""Event payloads more than one service reads (the Kafka contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class LikeEvent:
    tweet_id: int
    user_id: int
    liked: bool
    version: int

    def encode(self) -> bytes:
        return json.dumps(
            {"tweet_id": self.tweet_id, "user_id": self.user_id, "liked": self.liked, "version": self.version},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> LikeEvent:
        data = json.loads(raw)
        return cls(int(data["tweet_id"]), int(data["user_id"]), bool(data["liked"]), int(data["version"]))
