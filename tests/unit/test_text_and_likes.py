import pytest

from common.errors import InvalidArgument
from common.events import LikeEvent
from tweet_svc.likes import LikeState, count_after, fold
from tweet_svc.text import normalize_text


def test_text_is_nfc_normalized_before_counting() -> None:
    decomposed = "e\u0301" * 140  # 280 code points, 140 after NFC
    assert normalize_text(decomposed) == "\u00e9" * 140
    with pytest.raises(InvalidArgument, match="at most 140"):
        normalize_text("e\u0301" * 141)


@pytest.mark.parametrize("text", ["", " ", "\n\n", "\t \u3000", "\u200b"])
def test_blank_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        normalize_text(text)


@pytest.mark.parametrize("text", ["a\u0007b", "a\tb", "a\rb", "\u0085x"])
def test_control_characters_other_than_newline_are_rejected(text: str) -> None:
    with pytest.raises(InvalidArgument, match="control"):
        normalize_text(text)


@pytest.mark.parametrize("text", ["a\ufffe", "a\ufdd0", "a\u0378", "a\U0010ffff"])
def test_noncharacters_and_unassigned_code_points_are_rejected(text: str) -> None:
    with pytest.raises(InvalidArgument, match="unassigned or non-character"):
        normalize_text(text)


def test_newlines_emoji_and_other_scripts_are_fine() -> None:
    text = "line one\nline two \U0001f468\u200d\U0001f469\u200d\U0001f467 \u4f60\u597d \u0645\u0631\u062d\u0628\u0627"
    assert normalize_text(text) == text


def like(user: int, liked: bool, version: int) -> LikeEvent:
    return LikeEvent(tweet_id=1, user_id=user, liked=liked, version=version)


def test_liking_twice_counts_once() -> None:
    count, changed = fold(0, {}, [like(1, True, 10), like(1, True, 11)])
    assert count == 1
    assert changed == {1: LikeState(True, 11)}


def test_replaying_applied_events_changes_nothing() -> None:
    events = [like(1, True, 10), like(2, True, 11), like(2, False, 12)]
    count, changed = fold(0, {}, events)
    assert count == 1
    replay_count, replay_changed = fold(count, changed, events)
    assert replay_count == 1
    assert replay_changed == {}


def test_like_unlike_converge_to_the_newest_whatever_the_order() -> None:
    events = [like(1, True, 10), like(1, False, 11), like(1, True, 12)]
    for order in (events, events[::-1], [events[1], events[2], events[0]]):
        count, changed = fold(0, {}, order)
        assert count == 1
        assert changed[1] == LikeState(True, 12)


def test_stale_event_after_newer_state_is_ignored() -> None:
    count, changed = fold(5, {1: LikeState(False, 20)}, [like(1, True, 15)])
    assert (count, changed) == (5, {})


def test_unlike_of_a_never_liked_tweet_does_not_go_negative() -> None:
    count, changed = fold(0, {}, [like(1, False, 3)])
    assert count == 0
    assert changed == {1: LikeState(False, 3)}


def test_reported_count_accounts_for_the_callers_own_applied_like() -> None:
    assert count_after(applied_count=4, applied_liked=False, liked=True) == 5
    assert count_after(applied_count=4, applied_liked=True, liked=True) == 4
    assert count_after(applied_count=4, applied_liked=True, liked=False) == 3
    assert count_after(applied_count=4, applied_liked=False, liked=False) == 4
