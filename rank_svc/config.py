"""rank_svc settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import CommonConfig, env_int, load_common

DEFAULT_PORT = 50081


@dataclass(frozen=True)
class RankConfig:
    common: CommonConfig
    # How often the trending list is recomputed.
    interval_seconds: int


def load(env: Mapping[str, str] = os.environ) -> RankConfig:
    return RankConfig(
        common=load_common(env, "rank_svc", DEFAULT_PORT),
        interval_seconds=env_int(env, "CHIRP_RANK_INTERVAL_SECONDS", 60, minimum=1),
    )
