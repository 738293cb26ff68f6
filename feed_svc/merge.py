"""The merge of a home-feed page, pure: pushed, pulled and own tweet ids into one
newest-first list, which of it the reader sees, how far each round looks, and
the page cursor that continues it. The read rules that
fetch and filter what is merged are in feed_svc/home_feed.py; the push rules of
the fan-out worker in feed_svc/fanout.py.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence

from common.pagination import PageTokens, scope, unshared_tokens

TOKEN_KIND = "feed"
# Merged entries a round examines beyond what the page still needs, for the ones
# filtering drops; each round left short multiplies it, up to one hydration batch
# (tweet_svc's BatchGetTweets takes at most 500 ids).
ASK_SLACK = 10
ASK_GROWTH = 4
MAX_ASK = 500


def merge(*sources: Iterable[int], before: int | None) -> list[int]:
    """Tweet ids from every source, deduplicated, strictly below `before`, newest first.

    Ids are time-ordered Snowflake ids, so id order is time order and one id is
    a cursor that never repeats or skips an entry while newer tweets arrive.
    """
    merged = {tweet_id for source in sources for tweet_id in source}
    if before is not None:
        merged = {t for t in merged if t < before}
    return sorted(merged, reverse=True)


def decode_cursor(token: str, reader: int = 0, tokens: PageTokens | None = None) -> int | None:
    """The tweet id a page continues below. The home feed is private: the token is
    bound to its reader, so one user's token is refused on another's feed."""
    position = (tokens or unshared_tokens()).decode(token, scope(TOKEN_KIND, reader), 1)
    return position[0] if position else None


def encode_cursor(before: int, reader: int = 0, tokens: PageTokens | None = None) -> str:
    return (tokens or unshared_tokens()).encode(scope(TOKEN_KIND, reader), (before,))


def next_ask(previous: int, want: int) -> int:
    """How many merged entries the next round examines (`previous` 0 for the first).

    A round that leaves the page short was thinned by filtering: deleted tweets,
    authors unfollowed, muted or blocked. A muted account the reader still follows
    keeps its pushed entries in the timeline, possibly hundreds in a row, so the
    ask grows geometrically and a page stays full within a few rounds."""
    return min(MAX_ASK, max(want + ASK_SLACK, previous * ASK_GROWTH))


def visible(
    candidates: Sequence[int], authors: Mapping[int, int], allowed: Container[int], hidden: Container[int]
) -> list[int]:
    """The candidates, in order, that the reader sees: still there (`authors` maps each
    existing tweet to its author), by an author they follow or themselves, and not by
    one they mute or block or who blocks them."""
    return [t for t in candidates if t in authors and authors[t] in allowed and authors[t] not in hidden]
