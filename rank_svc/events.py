"""The rank worker's Kafka side: a likes consumer that can seek its partitions
back, and the consume-fold-commit loop that drives `LikeFolder`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, Message, TopicPartition

from common.kafka import BatchConsumer
from common.worker import ConsumerLoop
from rank_svc.tallies import LikeFolder, Partition

log = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 5.0
# How often the partitions no like arrived on are checked for lost tallies.
CHECK_SECONDS = 5.0


class LikesConsumer(BatchConsumer):
    """A BatchConsumer that also finds offsets by time, seeks, reports positions
    and says when partitions are taken away (a rebuild in progress must then be
    forgotten: the next owner checks the partition afresh)."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Sequence[str],
        client_id: str,
        on_revoke: Callable[[list[Partition]], None],
        rack: str = "",
    ) -> None:
        super().__init__(bootstrap, group, topics, client_id, rack)
        self._on_revoke = on_revoke
        # Subscribing again, before the first poll, only adds the callbacks.
        self._consumer.subscribe(list(topics), on_revoke=self._revoked, on_lost=self._revoked)

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke([(str(tp.topic), int(tp.partition)) for tp in partitions])

    async def offset_at(self, topic: str, partition: int, at_ms: int) -> int:
        def find() -> int:
            [found] = self._consumer.offsets_for_times(
                [TopicPartition(topic, partition, at_ms)], timeout=BROKER_TIMEOUT_SECONDS
            )
            return int(found.offset) if found.offset >= 0 else -1

        return await asyncio.get_running_loop().run_in_executor(None, find)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._consumer.seek(TopicPartition(topic, partition, offset))

    async def positions(self) -> dict[Partition, int]:
        def read() -> dict[Partition, int]:
            assigned = self._consumer.assignment()
            if not assigned:
                return {}
            found = {(str(tp.topic), int(tp.partition)): int(tp.offset) for tp in self._consumer.position(assigned)}
            # No message consumed yet since the assignment: it starts at the commit.
            unknown = [tp for tp in assigned if found[(tp.topic, tp.partition)] < 0]
            if unknown:
                for tp in self._consumer.committed(unknown, timeout=BROKER_TIMEOUT_SECONDS):
                    found[(str(tp.topic), int(tp.partition))] = int(tp.offset)
            return {tp: offset for tp, offset in found.items() if offset >= 0}

        return await asyncio.get_running_loop().run_in_executor(None, read)


class FoldingLoop(ConsumerLoop):
    """ConsumerLoop for the rank worker: each batch goes to the folder together
    with the consumer that holds it (to seek back when tallies were lost), and
    every CHECK_SECONDS the partitions no like arrived on are checked too."""

    def __init__(
        self,
        group: str,
        new_consumer: Callable[[Callable[[list[Partition]], None]], LikesConsumer],
        folder: LikeFolder,
        batch_size: int,
        batch_wait_seconds: float,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self._new_consumer = new_consumer
        self._folder = folder
        self._check_seconds = check_seconds
        self._check_due = 0.0
        self.likes: LikesConsumer
        super().__init__(group, self._fresh_consumer, self._fold, batch_size, batch_wait_seconds)

    def _fresh_consumer(self) -> LikesConsumer:
        # A new member resumes from the committed offsets: no rebuild is under way for it.
        self._folder.forget_all()
        self.likes = self._new_consumer(self._folder.forget)
        return self.likes

    async def _fold(self, messages: Sequence[Message]) -> None:
        await self._folder.fold(messages, self.likes)

    async def run_once(self) -> int:
        got = await super().run_once()
        now = asyncio.get_running_loop().time()
        if now >= self._check_due:
            self._check_due = now + self._check_seconds
            try:
                await self._folder.check(self.likes)
            except Exception as exc:  # noqa: BLE001 - the next batch meets the same trouble and fails properly
                log.warning("checking quiet partitions for lost tallies failed: %r", exc)
        return got
