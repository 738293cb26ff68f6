"""Peers opens channels only to the services it is given."""

from __future__ import annotations

import pytest

from common.clients import Peers


async def test_peers_open_only_the_channels_asked_for() -> None:
    peers = Peers(graph_target="ipv4:127.0.0.1:1")
    try:
        assert len(peers._channels) == 1
        with pytest.raises(RuntimeError, match="tweet_svc"):
            await peers.batch_tweets([1])
    finally:
        await peers.close()


async def test_peers_with_both_targets_close_both_channels() -> None:
    peers = Peers(graph_target="ipv4:127.0.0.1:1", tweet_target="ipv4:127.0.0.1:2")
    assert len(peers._channels) == 2
    await peers.close()
