"""The transactional Kafka sink: fills, dead letters and checkpoints, all or nothing.

One concern per module: :mod:`~publisher.sink.records` (the contract's record layout),
:mod:`~publisher.sink.batching` (records gathered per partition), :mod:`~publisher.sink.producer`
(the transactional producer's lifecycle and what each aiokafka error means) and
:mod:`~publisher.sink.commit` (the group-commit loop, :class:`TransactionalSink`) and
:mod:`~publisher.sink.backlog` (the memory bound every sink of the process shares).
"""

from publisher.sink.commit import ProducerStateLost, SourceBatch, TransactionalSink
from publisher.sink.producer import (
    ProducerFencedError,
    TransactionalIdFencedError,
    TransactionalIdLostError,
    TransactionalIdNotAuthorisedError,
)

__all__ = [
    "ProducerFencedError",
    "ProducerStateLost",
    "SourceBatch",
    "TransactionalIdFencedError",
    "TransactionalIdLostError",
    "TransactionalIdNotAuthorisedError",
    "TransactionalSink",
]
