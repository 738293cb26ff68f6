import math

import pytest

from common.errors import InvalidArgument
from feed_svc.merge import decode_cursor, encode_cursor, merge
from rank_svc.score import Candidate, hour_weight, score, top_k


def test_merge_dedupes_and_orders_newest_first() -> None:
    pushed = [90, 70, 50]
    pulled = [95, 70, 60, 10]
    assert merge(pushed, pulled, before=None) == [95, 90, 70, 60, 50, 10]


def test_merge_keeps_only_entries_strictly_below_the_cursor() -> None:
    assert merge([90, 70, 50], [95, 60], before=70) == [60, 50]


def test_cursor_round_trips_and_rejects_other_tokens() -> None:
    assert decode_cursor(encode_cursor(912_195_040_917_585_920)) == 912_195_040_917_585_920
    assert decode_cursor("") is None
    with pytest.raises(InvalidArgument, match=r"^page_token is not valid$"):
        decode_cursor("eyJrIjoidHdlZXRzIiwiYmVmb3JlIjozfQ")  # a token of another list


def test_recent_likes_weigh_more_and_half_life_halves() -> None:
    assert hour_weight(0, 6) == 1
    assert hour_weight(6, 6) == pytest.approx(0.5)
    assert hour_weight(12, 6) == pytest.approx(0.25)
    assert hour_weight(1, 6) > hour_weight(2, 6)


def test_score_formula_matches_the_documented_one() -> None:
    c = Candidate(tweet_id=1, decayed_likes=8.0, author_followers=999)
    assert score(c, 0.25) == pytest.approx(8.0 * (1 + 0.25 * math.log10(1000)))


def test_more_recent_likes_rank_higher_and_followers_break_close_calls() -> None:
    many = Candidate(tweet_id=1, decayed_likes=4.0, author_followers=0)
    few = Candidate(tweet_id=2, decayed_likes=1.0, author_followers=0)
    old_many = Candidate(tweet_id=3, decayed_likes=4 * hour_weight(24, 6), author_followers=0)
    famous = Candidate(tweet_id=4, decayed_likes=1.0, author_followers=1_000_000)
    assert top_k([few, old_many, many, famous], 10, 0.25) == [1, 4, 2, 3]


def test_unliked_tweets_never_trend_and_k_is_respected() -> None:
    candidates = [Candidate(i, float(i % 3), 10) for i in range(1, 30)]
    ranked = top_k(candidates, 5, 0.25)
    assert len(ranked) == 5
    assert all(i % 3 for i in ranked)
