"""Fails loudly when aiokafka renames what publisher.sink.aiokafka_shim tears a producer down with."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from publisher.sink.aiokafka_shim import internals, tear_down


async def test_the_internals_the_shim_uses_exist() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", transactional_id="shim", enable_idempotence=True)
    _task, accumulator = internals(producer)
    assert accumulator is not None and callable(accumulator.fail_all), "aiokafka moved _message_accumulator.fail_all"
    assert hasattr(producer._sender, "sender_task"), "aiokafka moved _sender.sender_task"
    assert callable(producer.client.close)
    await tear_down(producer)
    await asyncio.sleep(0)
