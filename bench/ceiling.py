"""The producer ceiling: raw aiokafka transactional produce of pre-encoded events, no pipeline.

`python -m bench.ceiling SPEC_JSON` (spec: `bootstrap`, `topic`, `n`, `txn`, `mode`): the events
are the publisher's own encoding of simulated fills (same size, key and headers as the pipeline
writes), encoded before the clock starts. `mode` `send` awaits `producer.send()` per record, as
a straightforward publisher would; `batch` fills one `create_batch()` per partition and hands it
over with `send_batch()` (partition from the producer's own partitioner). Prints a JSON line with
the producer-side rate; delivery is counted by the bench consumer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.events import make_fills
from publisher.event import encode


async def main(spec: dict[str, Any]) -> None:
    fills = make_fills(int(spec["n"]))
    topic = spec["topic"]
    records = []
    for fill in fills:
        headers = [("fill_id", fill.fill_id.encode()), ("venue", fill.venue.encode()),
                   ("source", fill.source.encode()), ("schema_version", b"1"),
                   ("content-type", b"application/json")]
        records.append(((fill.source + ":" + fill.instrument).encode(), encode(fill), headers))
    producer = AIOKafkaProducer(bootstrap_servers=spec["bootstrap"], transactional_id=f"ceiling-{spec['mode']}",
                                enable_idempotence=True, acks="all", linger_ms=0, max_batch_size=1024 * 1024,
                                max_request_size=17 * 1024 * 1024)
    await producer.start()
    await producer.client._wait_on_metadata(topic)
    print("ready", flush=True)
    sys.stdin.readline()  # the parent says go once its consumer is ready
    txn = int(spec["txn"])
    started = time.perf_counter()
    cpu0 = time.process_time()
    for lo in range(0, len(records), txn):
        chunk = records[lo : lo + txn]
        await producer.begin_transaction()
        futures = []
        if spec["mode"] == "send":
            for key, value, headers in chunk:
                futures.append(await producer.send(topic, value, key=key, headers=headers))
        else:
            batches: dict[int, Any] = {}
            partition_of: dict[bytes, int] = {}
            for key, value, headers in chunk:
                partition = partition_of.get(key)
                if partition is None:
                    partition = partition_of[key] = producer._partition(topic, None, key, value, key, value)
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            for partition, batch in batches.items():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        await producer.commit_transaction()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    await producer.stop()
    print(json.dumps({"n": len(records), "elapsed_s": elapsed, "cpu_s": cpu,
                      "value_bytes": sum(len(r[1]) for r in records) / len(records)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
