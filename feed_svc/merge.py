"""The merge of a home-feed page, pure: pushed, pulled and own tweet ids into one
newest-first list, and the page cursor that continues it. The read rules that
fetch and filter what is merged are in feed_svc/home_feed.py; the push rules of
the fan-out worker in feed_svc/fanout.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import InvalidArgument
from common.pagination import decode_token, encode_token

TOKEN_KIND = "feed"


def merge(*sources: Iterable[int], before: int | None) -> list[int]:
    """Tweet ids from every source, deduplicated, strictly below `before`, newest first.

    Ids are time-ordered Snowflake ids, so id order is time order and one id is
    a cursor that never repeats or skips an entry while newer tweets arrive.
    """
    merged = {tweet_id for source in sources for tweet_id in source}
    if before is not None:
        merged = {t for t in merged if t < before}
    return sorted(merged, reverse=True)


def decode_cursor(token: str) -> int | None:
    cursor = decode_token(token, TOKEN_KIND)
    if cursor is None:
        return None
    before = cursor.get("before")
    if not isinstance(before, int) or before <= 0:
        raise InvalidArgument("page_token is not valid", field="page_token")
    return before


def encode_cursor(before: int) -> str:
    return encode_token({"k": TOKEN_KIND, "before": before})
