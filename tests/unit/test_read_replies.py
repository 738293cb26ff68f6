"""common/cache._read_replies: a batch's replies taken from redis-py's hiredis parser as
they are buffered, with what read_response does to each reply kept: error replies come
back as values, a ConnectionError reply (LOADING) and a closed socket raise, RESP3 pushes
are handed to the parser and not counted. The socket is read only when the buffer runs dry."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from common.cache import _read_replies


def parser_on(stream: asyncio.StreamReader) -> tuple[_AsyncHiredisParser, list[int]]:
    """A parser reading `stream`, and the list its socket reads are counted in; its
    read_response fails the test (the per-reply path this replaces)."""
    parser = _AsyncHiredisParser(socket_read_size=65536)
    parser.on_connect(SimpleNamespace(_reader=stream, encoder=SimpleNamespace(decode_responses=False)))
    reads: list[int] = []
    read_from_socket = parser.read_from_socket

    async def counted() -> Any:
        reads.append(1)
        return await read_from_socket()

    async def per_reply(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read_response called: the batch took redis-py's per-reply path")

    parser.read_from_socket = counted  # type: ignore[method-assign]
    parser.read_response = per_reply  # type: ignore[method-assign]
    return parser, reads


async def test_replies_split_across_reads_come_back_in_order_with_errors_as_values() -> None:
    stream = asyncio.StreamReader()
    parser, reads = parser_on(stream)
    stream.feed_data(b"$4\r\nbody\r\n$-1\r\n-WRONGTYPE Operation against a key\r\n:3\r\n*2\r\n$1\r\na\r\n$")
    replies: list[Any] = []
    reading = asyncio.ensure_future(_read_replies(parser, 6, replies))
    await asyncio.sleep(0)
    assert not reading.done()  # the last reply is cut short: it waits for the socket
    stream.feed_data(b"1\r\nb\r\n$4\r\nlast\r\n")
    await reading

    assert replies[:2] == [b"body", None]
    assert isinstance(replies[2], ResponseError)
    assert replies[3:] == [3, [b"a", b"b"], b"last"]
    assert len(reads) == 2  # one read per chunk, not one per reply


async def test_a_push_is_handed_to_the_parser_and_not_counted() -> None:
    stream = asyncio.StreamReader()
    parser, _ = parser_on(stream)
    pushed: list[Any] = []

    async def on_push(response: Any) -> None:
        pushed.append(response)

    parser.pubsub_push_handler_func = on_push
    stream.feed_data(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n$2\r\nok\r\n")
    replies: list[Any] = []
    await _read_replies(parser, 1, replies)

    assert replies == [b"ok"]
    assert pushed == [[b"message", b"ch", b"hi"]]


async def test_a_loading_reply_and_a_closed_socket_raise() -> None:
    stream = asyncio.StreamReader()
    parser, _ = parser_on(stream)
    stream.feed_data(b"-LOADING Redis is loading the dataset in memory\r\n")
    with pytest.raises(BusyLoadingError):
        await _read_replies(parser, 1, [])

    stream = asyncio.StreamReader()
    parser, _ = parser_on(stream)
    stream.feed_data(b"$4\r\nbody\r\n$10\r\nhalf")
    stream.feed_eof()
    replies: list[Any] = []
    with pytest.raises(RedisConnectionError):
        await _read_replies(parser, 2, replies)
    assert replies == [b"body"]
