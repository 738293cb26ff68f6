"""The row factory every CQL session uses."""

from __future__ import annotations

from common.cql import named_rows


def test_rows_read_by_name_and_position() -> None:
    rows = named_rows(["tweet_id", "like_count"], [(1, 5), (2, 0)])
    assert [(r.tweet_id, r.like_count) for r in rows] == [(1, 5), (2, 0)]
    assert rows[0][1] == 5


def test_a_lightweight_transaction_result_reads_as_applied() -> None:
    (row,) = named_rows(["[applied]", "followed_at"], [(False, 7)])
    assert row.applied is False
    assert row.followed_at == 7


def test_one_row_class_per_column_list() -> None:
    first = named_rows(["a", "b"], [(1, 2)])[0]
    again = named_rows(["a", "b"], [(3, 4)])[0]
    other = named_rows(["a", "c"], [(5, 6)])[0]
    assert type(first) is type(again)
    assert type(first) is not type(other)
    assert other.c == 6
