"""Settling a transaction whose commit outcome is unknown: read back one of its records.

A commit request can reach the transaction coordinator while its answer never reaches us: the
coordinator dies after logging the commit, the connection drops, our deadline fires while aiokafka
still retries EndTxn against a new coordinator. The transaction may then be committed although
`commit_transaction()` failed, and retrying its batches would publish every fill in it twice.

So the commit loop never retries such a transaction blindly. It starts a new producer with the same
transactional id first: InitProducerId completes whatever the coordinator holds (a logged commit is
finished, an open transaction aborted) and fences the old producer, so the outcome is final from
then on. Then :func:`record_committed` reads the transaction's checkpoint record back with a
`read_committed` consumer: visible means committed (the batches are done), skipped means aborted
(the batches are retried).

On librdkafka's mock broker (no read_committed filtering, no abort on InitProducerId) every record
reads as visible, which is what that broker's consumers see too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

#: how often the stable offset is asked for while it has not yet passed the record
_LSO_POLL_S = 0.05


async def record_committed(consumer_options: dict[str, Any], topic: str, partition: int, offset: int,
                           timeout_s: float) -> bool:
    """Whether the record at `offset` of `topic`/`partition` belongs to a committed transaction.

    Call it only once a producer with the record's transactional id was initialised after the
    record was written (see the module docstring). Raises TimeoutError when the partition's last
    stable offset has not passed the record within `timeout_s` (a transaction still open there) or
    the cluster does not answer; the caller retries later.
    """
    async with asyncio.timeout(timeout_s):
        consumer = AIOKafkaConsumer(**consumer_options, isolation_level="read_committed",
                                    enable_auto_commit=False, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            return await _visible(consumer, TopicPartition(topic, partition), offset)
        finally:
            await consumer.stop()


async def _visible(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> bool:
    consumer.assign([tp])
    while True:
        # with read_committed this is the last stable offset: everything below it is decided
        end = (await consumer.end_offsets([tp]))[tp]
        if end > offset:
            break
        await asyncio.sleep(_LSO_POLL_S)
    consumer.seek(tp, offset)
    while await consumer.position(tp) < end:
        fetched = await consumer.getmany(tp, timeout_ms=200)
        for record in fetched.get(tp, ()):
            # aborted records and transaction markers are skipped: the first record read at or
            # after `offset` is the record itself exactly when its transaction committed
            return record.offset == offset
    return False
