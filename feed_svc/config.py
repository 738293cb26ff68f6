"""feed_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import CommonConfig, env_int, load_common

DEFAULT_PORT = 50071


@dataclass(frozen=True)
class FeedConfig:
    common: CommonConfig
    # Authors with at least this many followers are pulled at read time, not pushed.
    celebrity_threshold: int


def load(env: Mapping[str, str] = os.environ) -> FeedConfig:
    return FeedConfig(
        common=load_common(env, "feed_svc", DEFAULT_PORT),
        celebrity_threshold=env_int(env, "CHIRP_CELEBRITY_THRESHOLD", 10000, minimum=1),
    )
