"""tweet_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import CommonConfig, load_common

DEFAULT_PORT = 50061


@dataclass(frozen=True)
class TweetConfig:
    common: CommonConfig


def load(env: Mapping[str, str] = os.environ) -> TweetConfig:
    return TweetConfig(common=load_common(env, "tweet_svc", DEFAULT_PORT))
