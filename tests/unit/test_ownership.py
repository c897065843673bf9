"""The shared rebalance listener (protege.kafka.Ownership): a failure while taking partitions
reaches the owner's loop instead of being logged and forgotten by aiokafka."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from protege.kafka import Ownership


class Owner:
    def __init__(self, fail: bool) -> None:
        self.owning = asyncio.Lock()
        self.rebalances = 0
        self.broken: BaseException | None = None
        self.fail = fail
        self.held: set[TopicPartition] = set()

    async def acquire(self, tps: Collection[TopicPartition]) -> None:
        if self.fail:  # as a transactional producer's start does when the coordinator's broker dies
            raise KafkaConnectionError("Connection at 127.0.0.1:56969 closed")
        self.held |= set(tps)

    async def release(self, tps: Collection[TopicPartition]) -> None:
        self.held -= set(tps)


def test_a_failed_acquire_is_raised_by_the_owner_s_loop_not_swallowed() -> None:
    tps = [TopicPartition("protege.requests", p) for p in range(3)]
    broken = Owner(fail=True)
    asyncio.run(Ownership(broken).on_partitions_assigned(tps))
    assert isinstance(broken.broken, KafkaConnectionError) and broken.rebalances == 1 and not broken.held
    fine = Owner(fail=False)
    listener = Ownership(fine)
    asyncio.run(listener.on_partitions_assigned(tps))
    assert fine.broken is None and fine.held == set(tps)
    asyncio.run(listener.on_partitions_revoked(tps[:1]))
    assert fine.held == set(tps[1:]) and fine.rebalances == 2
