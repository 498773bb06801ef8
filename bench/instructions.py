"""Instructions per fill, stage by stage, counted by callgrind: repeatable where wall-clock is not.

`python -m bench.instructions [N]` runs itself again under `valgrind --tool=callgrind` and prints
one JSON line, `{stage: instructions per fill}`. Callgrind counts only inside the stages: each is
run through :func:`operator.call`, whose C function (`_operator_call`, which nothing else here
calls) switches counting on at entry and off at exit, where the count is dumped. Nothing in a stage
waits on I/O or on the clock: the venues are :class:`httpx.MockTransport` handlers serving pages the
simulators rendered, Kalshi signatures are reused under a fixed clock, and the Kafka producer is a
stand-in that hands the sink aiokafka's own record-batch builders and completed futures (the
producer's network side, the same for the pipeline and the ceiling, is not counted). The same code
and inputs give the same counts within a fraction of a percent, whatever else the machine does.

Stages, over N Kalshi and N ZLL fills each (current Kalshi shape, newest first, pages of 1,000),
every memo cache emptied first so that each value is met for the first time, after one uncounted
round that warms everything else:

- `ceiling`: the batched ceiling's loop (`bench.ceiling`, mode batch): the same events, encoded
  beforehand, appended with the contract's key and headers to one batch builder per partition;
- `new`: one poll of each source with every fill new: requests, page decoding, normalisation,
  dedupe, sorting, the checkpoint;
- `reread`: the next poll, every fill already published (the overlap re-read);
- `records`: the sink's transaction: encoding each event and building the record batches;
- `commit`: the commit callbacks (counters, lag histogram).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata, TopicPartition

from publisher.config import KafkaConfig
from publisher.event import encode
from publisher.metrics import Metrics
from publisher.poll import Poller
from publisher.secret import Secret
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator
from publisher.sink import SourceBatch, TransactionalSink
from publisher.state import SourceState
from publisher.venues import kalshi, zll
from publisher.venues.http import VenueClient

ROOT = Path(__file__).resolve().parent.parent
PAGE = 1000
PARTITIONS = 64
BATCH_BYTES = 1024 * 1024
#: when the simulated fills were executed (fixed, so every run renders the same bytes)
T0_NS = 1_796_156_674_000_000_000
SPAN_NS = 240 * 1_000_000_000


def _pages(n: int) -> tuple[list[bytes], list[bytes], int]:
    """Kalshi and ZLL pages of `n` fills each, newest first, and the time just after the last fill."""
    _, public_pem = generate_key_pair()
    ksim = KalshiSimulator(public_key=public_pem, key_id="bench", shape="current", seed=7)
    zsim = ZllSimulator(api_key="bench", seed=8)
    step = SPAN_NS // n
    kfills = [ksim._new_fill(ksim._rng, T0_NS + i * step, T0_NS, {}).wire() for i in range(n)][::-1]
    zfills = [zsim._new_fill(zsim._rng, T0_NS + i * step, T0_NS, {}).wire() for i in range(n)][::-1]
    kpages = [msgspec.json.encode({"fills": kfills[i : i + PAGE], "cursor": f"p{i // PAGE + 1}" if i + PAGE < n else ""})
              for i in range(0, n, PAGE)]
    zpages = [msgspec.json.encode(zfills[i : i + PAGE]) for i in range(0, n, PAGE)]
    return kpages, zpages, T0_NS + SPAN_NS + 1_000_000_000


class _Venues:
    """Both venues as one MockTransport handler: Kalshi pages by cursor, ZLL pages by offset."""

    def __init__(self, kalshi_pages: list[bytes], zll_pages: list[bytes]):
        self._kalshi = kalshi_pages
        self._zll = zll_pages

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if request.url.host == "zll.test":
            index = int(params["offset"]) // PAGE
            return httpx.Response(200, content=self._zll[index] if index < len(self._zll) else b"[]")
        if request.url.path.endswith("/historical/cutoff"):  # read once a round: nothing is historical
            return httpx.Response(200, content=b'{"trades_created_ts": "2025-01-01T00:00:00Z"}')
        return httpx.Response(200, content=self._kalshi[int((params.get("cursor") or "p0")[1:])])


class _Collect:
    """The sink's side of the poll loop: batches are kept for the `records` stage."""

    def __init__(self) -> None:
        self.batches: list[SourceBatch] = []

    def submit(self, batch: SourceBatch) -> None:
        self.batches.append(batch)

    async def wait_for_capacity(self) -> None:
        return None


class _Producer:
    """What `TransactionalSink._transaction` uses of AIOKafkaProducer, without the network: real
    batch builders, each built as the sender would build it, and futures already resolved."""

    async def begin_transaction(self) -> None:
        return None

    async def commit_transaction(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(BATCH_BYTES, 0, is_transactional=True)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[None]:
        batch._build()
        return _done()

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None, headers: Any = None,
                   partition: int | None = None) -> asyncio.Future[RecordMetadata]:
        # the sink reads where its last record (the checkpoint) went, to settle an unknown commit
        where = TopicPartition(topic, partition or 0)
        metadata = RecordMetadata(where.topic, where.partition, where, 0, -1, 0, 0)
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        future.set_result(metadata)
        return future


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _memo_caches() -> list[Any]:
    return [obj for obj in gc.get_objects()
            if isinstance(obj, functools._lru_cache_wrapper) and obj.__module__.startswith("publisher.venues.")]


class _Round:
    """One round: a Kalshi and a ZLL source polled twice, then their transaction and commit."""

    def __init__(self, transport: httpx.MockTransport, signer: kalshi.KalshiSigner, now_ns: int):
        self.metrics = Metrics()
        self.collect = _Collect()
        self.pollers: list[Poller] = []
        clock = functools.partial(int, now_ns)
        ksource = kalshi.KalshiSource(name="kalshi-1", base_url="http://kalshi.test/trade-api/v2", api_key_id=signer.key_id,
                                      private_key_file="-", page_limit=PAGE, max_requests_per_s=1e9)
        zsource = zll.ZllSource(name="zll-1", base_url="http://zll.test", api_key_file="-", subaccount_index=0,
                                page_limit=PAGE, max_requests_per_s=1e9)
        for source in (ksource, zsource):
            metrics = self.metrics.source(source.venue_name, source.name)
            if isinstance(source, kalshi.KalshiSource):
                client = VenueClient.for_source(transport, source, auth=kalshi.KalshiAuth(signer),
                                                describe_error=kalshi.describe_error, on_request=metrics.requests.inc)
                adapter: kalshi.KalshiAdapter | zll.ZllAdapter = kalshi.KalshiAdapter(source, client)
            else:
                client = VenueClient.for_source(transport, source, auth=zll.ZllAuth(Secret("bench-key")),
                                                describe_error=zll.describe_error, on_request=metrics.requests.inc)
                adapter = zll.ZllAdapter(source, client)
            state = SourceState(source, None, now_ns)
            self.pollers.append(Poller(source, adapter, state, self.collect, metrics, wall_clock_ns=clock))  # type: ignore[arg-type]
        self.sink = TransactionalSink(KafkaConfig(bootstrap_servers="bench.test:9092"), None, self.metrics)
        self.sink._producer = _Producer()  # type: ignore[assignment]
        self.now_ns = now_ns

    async def poll(self) -> None:
        for poller in self.pollers:
            assert await poller.poll_once() is None

    async def records(self) -> None:
        await self.sink._transaction(self.collect.batches)

    def commit(self) -> None:
        for batch in self.collect.batches:
            batch.on_commit(self.now_ns)


def _ceiling_records(batches: list[SourceBatch]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    # exactly bench.ceiling's records: the events pre-encoded, the contract's key and headers
    return [((fill.source + ":" + fill.instrument).encode(), encode(fill),
             [("fill_id", fill.fill_id.encode()), ("venue", fill.venue.encode()), ("source", fill.source.encode()),
              ("schema_version", b"1"), ("content-type", b"application/json")])
            for batch in batches for fill in batch.fills]


def _ceiling(records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """bench.ceiling's batch mode with the producer's calls made directly."""
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    batches: dict[int, BatchBuilder] = {}
    partition_of: dict[bytes, int] = {}
    for key, value, headers in records:
        partition = partition_of.get(key)
        if partition is None:
            partition = partition_of[key] = partitioner(key, partitions, partitions)
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = BatchBuilder(BATCH_BYTES, 0, is_transactional=True)
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            batch._build()
            batch = batches[partition] = BatchBuilder(BATCH_BYTES, 0, is_transactional=True)
            batch.append(key=key, value=value, timestamp=None, headers=headers)
    for batch in batches.values():
        batch._build()


def measure(n: int) -> list[str]:
    """Run the stages (counted when under callgrind); the stage names in the order they ran."""
    kpages, zpages, now_ns = _pages(n)
    transport = httpx.MockTransport(_Venues(kpages, zpages))
    private_pem, _ = generate_key_pair()
    signer = kalshi.KalshiSigner("bench-key-id", kalshi.load_private_key(private_pem.decode()), clock_ms=lambda: 0)
    caches = _memo_caches()
    loop = asyncio.new_event_loop()
    order: list[str] = []

    def stage(name: str, counted: bool, work: Callable[[], Awaitable[None] | None]) -> None:
        def run() -> None:
            result = work()
            if result is not None:
                loop.run_until_complete(result)
        if counted:
            order.append(name)
            operator.call(run)  # callgrind counts inside _operator_call only
        else:
            run()

    for counted in (False, True):  # a warm-up round, then the counted one
        for cache in caches:
            cache.cache_clear()
        round_ = _Round(transport, signer, now_ns)
        stage("new", counted, round_.poll)
        stage("reread", counted, round_.poll)
        records = _ceiling_records(round_.collect.batches)
        if sum(len(b.fills) for b in round_.collect.batches) != 2 * n:
            raise RuntimeError("the polls did not publish every fill once")
        stage("ceiling", counted, functools.partial(_ceiling, records))
        stage("records", counted, round_.records)
        stage("commit", counted, round_.commit)
    loop.close()
    return order


def _totals(folder: str) -> list[int]:
    """The instruction count of each callgrind dump in `folder`, in dump order.

    Dumps are `callgrind.out.<pid>.<n>`, n = 1, 2, ...; the file without a number is the final
    dump at exit, which holds nothing (counting is off outside the stages)."""
    dumps = {}
    for path in Path(folder).glob("callgrind.out.*.*"):
        text = path.read_text()
        match = re.search(r"^totals: (\d+)", text, re.MULTILINE)
        dumps[int(path.name.rsplit(".", 1)[1])] = int(match.group(1)) if match else 0
    return [dumps[n] for n in sorted(dumps)]


def under_callgrind(n: int) -> dict[str, float]:
    """Run :func:`measure` under callgrind: `{stage: instructions per fill}`."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed")
    with tempfile.TemporaryDirectory(prefix="fillpub-instructions-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
        proc = subprocess.run(
            [valgrind, "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=_operator_call",
             "--dump-after=_operator_call", f"--callgrind-out-file={tmp}/callgrind.out.%p",
             sys.executable, "-m", "bench.instructions", "--child", str(n)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the callgrind run failed: {proc.stderr[-2000:]}")
        order = json.loads(proc.stdout.strip().splitlines()[-1])
        counts = _totals(tmp)
    if len(counts) != len(order):
        raise RuntimeError(f"expected {len(order)} callgrind dumps, found {len(counts)} "
                           "(a libpython without the _operator_call symbol cannot be measured this way)")
    return {name: count / (2 * n) for name, count in zip(order, counts, strict=True)}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(int(sys.argv[2]))), flush=True)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    started = time.monotonic()
    result = under_callgrind(n)
    print(json.dumps({**result, "seconds": round(time.monotonic() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
