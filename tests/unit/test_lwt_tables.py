"""A table written by lightweight transactions is written only by them.

A lightweight transaction's writes carry the coordinator's Paxos ballot as their
time, a plain write the clock of the host that sends it. Mixed on one row, a host
whose clock is behind writes below a transaction made just before, and its write
is lost though acknowledged (a plain delete of a block claimed by a transaction,
the transaction retiring a refresh token inserted by a host whose clock is ahead).
This reads every store's statements and fails on a table written both ways,
besides the two listed with why they are safe."""

from __future__ import annotations

import re

from common import id_reservations, outbox_store
from feed_svc import store as feed_store
from graph_svc import relations, sessions
from graph_svc import store as graph_store
from tweet_svc import store as tweet_store

WRITE = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+(?:\w+\s+)?FROM)\s+(\w+)", re.IGNORECASE)
CONDITIONAL = re.compile(r"\bIF\b", re.IGNORECASE)
STORES = [
    id_reservations.STATEMENTS,
    outbox_store.STATEMENTS,
    feed_store.STATEMENTS,
    relations.STATEMENTS,
    sessions.STATEMENTS,
    graph_store.STATEMENTS,
    tweet_store.STATEMENTS,
]
MIXED_ON_PURPOSE = {
    # The checkpoint rides only in the relay's conditional batch (OutboxStore.renew),
    # whose every statement takes the batch's ballot.
    "outbox_v3_shards",
    # Deleted with the tweet; like rows folded past that belong to no tweet anyone can read.
    "tweet_likes",
}


def writes_by_table() -> dict[str, set[bool]]:
    tables: dict[str, set[bool]] = {}
    for statements in STORES:
        for query in statements.values():
            written = WRITE.match(query)
            if written:
                tables.setdefault(written.group(1), set()).add(bool(CONDITIONAL.search(query)))
    return tables


def test_every_table_is_written_by_transactions_only_or_never() -> None:
    tables = writes_by_table()
    assert {"follows", "refresh_tokens", "users_by_name", "blocks", "mutes"} | {
        "blocks_by_time",
        "mutes_by_time",
    } <= {table for table, kinds in tables.items() if kinds == {True}}
    mixed = {table for table, kinds in tables.items() if len(kinds) > 1}
    assert mixed == MIXED_ON_PURPOSE
