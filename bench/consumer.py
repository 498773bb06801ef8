"""Bench consumer process: counts (and times) fill records as they arrive.

`python -m bench.consumer SPEC_JSON`; spec: `bootstrap`, `topics`, `expect` (stop after this many
distinct fill ids, 0: until SIGTERM), `timeout_s`, `out` (JSON file written at exit), `latency`
(also record each fill's receive time and execution time). Prints `ready` once every partition is
assigned. Reads with isolation_level=read_committed (which the mock broker does not filter:
see publisher/embedded_broker.py) and a small fetch_max_wait_ms, counting as records arrive because the
mock keeps only ~5 MiB per partition.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition


class _Stamp(msgspec.Struct):
    executed_at_ns: int


async def main(spec: dict[str, Any]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"], isolation_level="read_committed", check_crcs=False,
        enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10,
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    seen: set[bytes] = set()
    first_ns = last_ns = 0
    samples: list[tuple[str, int, int]] = []
    decode = msgspec.json.Decoder(_Stamp).decode
    expect = int(spec.get("expect", 0))
    latency = bool(spec.get("latency"))
    try:
        parts = []
        for topic in spec["topics"]:
            for _ in range(100):
                found = consumer.partitions_for_topic(topic)
                if found:
                    break
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.05)
            parts += [TopicPartition(topic, p) for p in sorted(found or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        for tp in parts:
            await consumer.position(tp)
        print("ready", flush=True)
        deadline = time.monotonic() + float(spec.get("timeout_s", 600))
        idle_s = float(spec.get("idle_s", 20))
        last_new = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline and not (expect and len(seen) >= expect):
            if expect and seen and time.monotonic() - last_new > idle_s:
                break  # nothing new for a while: records were lost (the mock keeps ~5 MiB/partition)
            batches = await consumer.getmany(timeout_ms=100, max_records=100_000)
            now = time.time_ns()
            for records in batches.values():
                for record in records:
                    # the sink writes fill_id as the first header
                    fill_id = record.headers[0][1] if record.headers else None
                    if fill_id is None or fill_id in seen:
                        continue
                    last_new = time.monotonic()
                    seen.add(fill_id)
                    if not first_ns:
                        first_ns = now
                    last_ns = now
                    if latency:
                        samples.append((fill_id.decode(), now, decode(record.value).executed_at_ns))
    finally:
        await consumer.stop()
    with open(spec["out"], "w") as handle:
        json.dump({"count": len(seen), "first_ns": first_ns, "last_ns": last_ns, "samples": samples}, handle)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
