"""Event payloads more than one service reads (the Kafka contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_INT = (1 << 63) - 1
# What reading a malformed event raises (int() of an infinite float raises OverflowError).
MALFORMED = (ValueError, KeyError, TypeError, OverflowError)


def event_int(value: Any) -> int:
    """An integer field of an event (an id, a version, a time in ms): positive and within a
    CQL bigint, as every producer writes them. Anything else raises ValueError when the
    event is read, so it is skipped, rather than failing later, batch after batch (a
    protobuf field or a CQL bigint refuses it, or a peer answers INVALID_ARGUMENT)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    number = int(value)
    if not 0 < number <= MAX_INT:
        raise ValueError(f"{value!r} is not a positive 64-bit integer")
    return number


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
        return cls(
            event_int(data["tweet_id"]), event_int(data["user_id"]), bool(data["liked"]), event_int(data["version"])
        )
