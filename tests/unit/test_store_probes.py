"""The start-up probes of the local Cassandra and Kafka answer False, never raise, where nothing listens."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from infra import jvm


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("probe", [jvm.cassandra_ready, jvm.kafka_ready], ids=["cassandra", "kafka"])
def test_a_probe_of_a_closed_port_is_false_at_once(probe: Callable[[str, int, float], bool]) -> None:
    started = time.monotonic()
    assert probe(jvm.LOOPBACK, _closed_port(), 2.0) is False
    assert time.monotonic() - started < 1.9


@pytest.mark.parametrize("probe", [jvm.cassandra_ready, jvm.kafka_ready], ids=["cassandra", "kafka"])
def test_a_probe_of_a_bad_address_is_false(probe: Callable[[str, int, float], bool]) -> None:
    assert probe("not a host", 1, 0.5) is False
