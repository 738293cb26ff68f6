"""The trending score.

    decayed_likes = sum over hours h of net_likes(h) * 0.5 ** (age_hours(h) / half_life_hours)
    score         = decayed_likes * (1 + follower_weight * log10(1 + author_followers))

Likes are counted per hour; a like in the current hour weighs 1, one
`half_life_hours` old weighs 1/2, and likes older than the window are dropped.
The author's follower count lifts a tweet logarithmically: a tweet from an
account with 1M followers scores 2.5x one from an account with none, at the
default weight, so likes stay the main signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    tweet_id: int
    decayed_likes: float
    author_followers: int


def hour_weight(age_hours: int, half_life_hours: float) -> float:
    return 0.5 ** (age_hours / half_life_hours)


def score(candidate: Candidate, follower_weight: float) -> float:
    return candidate.decayed_likes * (1 + follower_weight * math.log10(1 + max(0, candidate.author_followers)))


def top_k(candidates: list[Candidate], k: int, follower_weight: float) -> list[int]:
    """Tweet ids by score, best first; ties go to the newer tweet. Only liked tweets rank."""
    ranked = sorted(
        (c for c in candidates if c.decayed_likes > 0),
        key=lambda c: (score(c, follower_weight), c.tweet_id),
        reverse=True,
    )
    return [c.tweet_id for c in ranked[:k]]
