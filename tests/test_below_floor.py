"""The poll loop's accounting of fills it does not publish: fills served below the window's floor
that were never published (counted once, with a WARNING), and a venue serving one fill id with
two sets of values (counted, the first logged). The memory behind the first
(:class:`publisher.floor.BelowFloor`): bounded, each fill judged once, nothing judged beyond what
it covers, carried across a restart by the checkpoint."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from publisher.checkpoint import Checkpoint, decode_checkpoint
from publisher.dedupe import KEY_SIZE, fill_key
from publisher.event import FillEvent, VenueFields
from publisher.floor import CARRIED_BYTES, BelowFloor
from publisher.metrics import Metrics
from publisher.poll import Poller
from publisher.state import SourceState
from publisher.venues.base import VenueAdapter
from publisher.venues.results import FetchResult
from publisher.venues.zll import ZllSource

NS = 1_000_000_000
START = 1_800_000_000 * NS
LOOKBACK_S = 10


def event(n: int, at_ns: int, price: str = "1") -> FillEvent:
    return FillEvent(venue="zll", source="zll-unit", fill_id=f"fill-{n}", order_id="o", instrument="BTC-PERP",
                     side="buy", price=price, quantity="1", fee="0", fee_currency="USDC", liquidity="taker",
                     executed_at_ns=at_ns, observed_at_ns=at_ns, venue_fields=VenueFields())


class _Venue(VenueAdapter):
    """Serves `fills` (every one it ever had, as ZLL does: no time filter) on every poll. A fill of
    `arriving` is reported as first listed (`arrived_below`) until a poll's paging state (`listed`,
    the ids reported so far) comes back with it, as ZLL's ends of the list do; `unencodable` polls
    return a paging state no checkpoint can hold."""

    venue = "zll"

    def __init__(self) -> None:
        self.fills: list[FillEvent] = []
        self.conflicts: list[tuple[FillEvent, FillEvent]] = []
        self.arriving: set[str] = set()
        self.unencodable = 0

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Any, published: Any = None) -> FetchResult:
        conflicts, self.conflicts = self.conflicts, []
        listed = set(paging_state or ())
        arrived = {f.fill_id for f in self.fills if f.fill_id in self.arriving - listed and f.executed_at_ns < since_ns}
        state: Any = sorted(listed | self.arriving) or None
        if self.unencodable:
            self.unencodable -= 1
            state = object()
        return FetchResult(fills=list(self.fills), conflicts=conflicts, paging_state=state, arrived_below=arrived or None)


class _Sink:
    def __init__(self) -> None:
        self.fills: list[FillEvent] = []
        self.checkpoint = b""

    def submit(self, batch: Any) -> None:
        self.fills.extend(batch.fills)
        self.checkpoint = batch.checkpoint


def setup(checkpoint: Checkpoint | None = None, now_ns: int = START, *, page_limit: int = 200,
          lookback_s: float = LOOKBACK_S, venue: _Venue | None = None
          ) -> tuple[Poller, _Venue, _Sink, Metrics, list[int]]:
    now = [now_ns]
    source = ZllSource(name="zll-unit", base_url="http://127.0.0.1:9", subaccount_index=0, api_key_env="UNUSED",
                       lookback_s=lookback_s, page_limit=page_limit)
    venue, sink, metrics = venue or _Venue(), _Sink(), Metrics()
    poller = Poller(source, venue, SourceState(source, checkpoint, now[0]), sink,  # type: ignore[arg-type]
                    metrics.source("zll", "zll-unit"), wall_clock_ns=lambda: now[0])
    return poller, venue, sink, metrics, now


async def polls(poller: Poller, now: list[int], count: int, step_ns: int = NS // 2) -> None:
    for _ in range(count):
        assert await poller.poll_once() is None
        now[0] += step_ns


def warnings_naming(caplog: pytest.LogCaptureFixture, fill_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "below the overlap window's floor" in r.getMessage() and fill_id in r.getMessage()]


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"venue": "zll", "source": "zll-unit"}) or 0.0


async def test_fills_below_the_floor_never_published_are_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    poller, venue, sink, metrics, now = setup()
    venue.fills = [event(i, START - 2 * NS + i) for i in range(5)]  # inside the first window
    for _ in range(30):  # 15 s of polls: the window moves past those five fills
        assert await poller.poll_once() is None
        now[0] += NS // 2
    assert len(sink.fills) == 5
    assert sample(metrics, "fillpub_fills_below_floor_total") == 0  # published, then forgotten: fine
    floor = poller.state.window.floor_ns
    # a fill that shows up later than lookback_s allows: below the floor and never published
    late = event(99, floor - 3 * NS)
    # before the source's first window: never published, and never due (no positional signal here)
    ancient = event(98, START - (LOOKBACK_S + 120) * NS)
    venue.fills += [late, ancient]
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        for _ in range(4):
            assert await poller.poll_once() is None
            now[0] += NS // 2
    assert sample(metrics, "fillpub_fills_below_floor_total") == 1
    warnings = [r.getMessage() for r in caplog.records if "below the overlap window's floor" in r.getMessage()]
    assert len(warnings) == 1 and "fill-99" in warnings[0]
    assert late not in sink.fills


async def test_conflicting_copies_are_counted_and_the_first_logged(caplog: pytest.LogCaptureFixture) -> None:
    poller, venue, sink, metrics, now = setup()
    first = event(1, START - NS)
    venue.fills = [first]
    venue.conflicts = [(first, msgspec.structs.replace(first, price="2")),
                       (first, msgspec.structs.replace(first, price="3"))]
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        assert await poller.poll_once() is None
        now[0] += NS
        venue.conflicts = [(event(1, START - NS), event(1, START - NS, "4"))]  # fill 1 is published already
        assert await poller.poll_once() is None
    assert sink.fills == [first]
    assert sample(metrics, "fillpub_fills_conflicting_total") == 2
    [line] = [r.getMessage() for r in caplog.records if "twice with different values" in r.getMessage()]
    assert "fill-1" in line and "@ 1 " in line and "@ 2 " in line


# --------------------------------------------------------------------------------------------------
# Across a restart, and with the adapter's positional signal


async def test_a_new_process_counts_nothing_the_venue_keeps_serving_and_still_judges() -> None:
    poller, venue, sink, metrics, now = setup(page_limit=5)  # the memory keeps 10 keys at least
    for second in range(40):  # a fill a second, each published while inside the window
        venue.fills.append(event(second, now[0] - NS))
        await polls(poller, now, 2)
    late = event(900, poller.state.window.floor_ns - 2 * NS)
    venue.fills.append(late)
    await polls(poller, now, 2)
    assert sample(metrics, "fillpub_fills_below_floor_total") == 1 and len(sink.fills) == 40
    carried = decode_checkpoint(sink.checkpoint)
    assert carried.below_floor_keys and carried.below_floor_from_s is not None

    # a new process, the venue still serving every fill: those it published, and the lost one
    again, _, sink2, metrics2, now2 = setup(carried, now[0] + 3 * NS, page_limit=5, venue=venue)
    start_floor = again.state.window.floor_ns
    assert again.state.below_floor.covered_from_s * NS < start_floor  # judged below the floor it started with
    await polls(again, now2, 20)
    assert sample(metrics2, "fillpub_fills_below_floor_total") == 0 and sink2.fills == []
    # and a fill lost below that floor, in what the memory carried, is still found
    covered = again.state.below_floor.covered_from_s * NS
    lost = event(901, max(covered, start_floor - 4 * NS))
    assert lost.executed_at_ns < start_floor
    venue.fills.append(lost)
    await polls(again, now2, 3)
    assert sample(metrics2, "fillpub_fills_below_floor_total") == 1


async def test_a_fill_first_listed_below_the_floor_is_counted_once_however_old(
        caplog: pytest.LogCaptureFixture) -> None:
    poller, venue, sink, metrics, now = setup()
    venue.fills = [event(i, START - NS + i) for i in range(3)]
    await polls(poller, now, 30)  # published, then below the floor: in the memory
    ancient = event(50, START - 3600 * NS)  # older than anything the memory covers
    venue.fills.append(ancient)
    venue.arriving = {"fill-50", "fill-0"}  # fill-0 is no arrival whatever the adapter says: published
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        await polls(poller, now, 10)
    assert sample(metrics, "fillpub_fills_below_floor_total") == 1
    assert len(warnings_naming(caplog, "fill-50")) == 1 and not warnings_naming(caplog, "fill-0")
    assert ancient not in sink.fills


async def test_a_poll_read_again_after_a_failure_counts_its_lost_fills_once(caplog: pytest.LogCaptureFixture) -> None:
    poller, venue, _, metrics, now = setup()
    venue.fills = [event(1, START - NS)]
    await polls(poller, now, 30)
    venue.fills.append(event(4, now[0] - NS))
    await polls(poller, now, 1)  # a checkpoint handed over: where a rewind returns to
    floor = poller.state.window.floor_ns
    venue.fills += [event(2, floor - 2 * NS), event(3, START - 3600 * NS)]  # judged by memory, by position
    venue.arriving = {"fill-2", "fill-3"}
    venue.unencodable = 1  # that poll's result cannot be checkpointed: it is read again
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        assert await poller.poll_once() is not None
        await polls(poller, now, 5)
    assert sample(metrics, "fillpub_fills_below_floor_total") == 2
    assert len(warnings_naming(caplog, "fill-2")) == 1 and len(warnings_naming(caplog, "fill-3")) == 1


async def test_a_checkpoint_without_the_memory_judges_from_its_floor_up() -> None:
    poller, venue, _, metrics, now = setup()
    written = decode_checkpoint(poller.state.checkpoint(START))
    older = msgspec.structs.replace(written, below_floor_from_s=None, below_floor_keys={})  # as written before
    again, venue, _, metrics, now = setup(older, START + 30 * NS)
    await polls(again, now, 40)
    floor = again.state.window.floor_ns
    assert floor > written.floor_ns + 10 * NS
    # below the checkpoint's floor: maybe published by the version that wrote it, so not judged
    venue.fills = [event(1, written.floor_ns - NS), event(2, floor - NS)]
    await polls(again, now, 2)
    assert sample(metrics, "fillpub_fills_below_floor_total") == 1  # fill-2: above it, never published


async def test_a_lowered_lookback_keeps_in_memory_what_the_window_drops() -> None:
    poller, venue, sink, metrics, now = setup(lookback_s=60)
    venue.fills = [event(i, START - 50 * NS + i * NS) for i in range(40)]
    await polls(poller, now, 2)
    assert len(sink.fills) == 40
    narrower, _, _, metrics, now = setup(decode_checkpoint(sink.checkpoint), now[0], lookback_s=5, venue=venue)
    assert narrower.state.window.floor_ns > venue.fills[30].executed_at_ns  # most are below the floor now
    await polls(narrower, now, 4)
    assert sample(metrics, "fillpub_fills_below_floor_total") == 0


# --------------------------------------------------------------------------------------------------
# The memory


def keys_of(second: int, count: int, tag: int = 0) -> list[bytes]:
    return [fill_key(f"{tag}-{second}-{i}") for i in range(count)]


def fills_at(second: int, count: int, tag: int = 0) -> tuple[list[FillEvent], list[bytes]]:
    return ([event(i, second * NS + 1) for i in range(count)], keys_of(second, count, tag))


def test_the_memory_keeps_its_newest_seconds_and_covers_only_them() -> None:
    memory = BelowFloor(1000, keep=10)
    for second in range(1000, 1050):
        memory.forget({second: keys_of(second, 3)})
        # what it keeps, the last advance's, whole seconds
        assert min(10, 3 * (second - 999)) <= len(memory) <= 10 + 2 * 3
    assert memory.covered_from_s == 1050 - len(memory) // 3
    # a fill never published, in a second it covers: lost, once; in one it dropped: not judged
    inside, inside_keys = fills_at(1049, 1, tag=1)
    dropped, dropped_keys = fills_at(1040, 1, tag=1)
    assert memory.judge(inside, inside_keys) == inside
    assert memory.judge(inside, inside_keys) == []
    assert memory.judge(dropped, dropped_keys) == []
    assert memory.judge(dropped, dropped_keys, arrived={"fill-0"}) == dropped  # listed for the first time
    # published ones are never lost, wherever it covers
    published, published_keys = fills_at(1049, 3)
    assert memory.judge(published, published_keys) == []


def test_an_advance_is_kept_whole_until_the_next_one() -> None:
    memory = BelowFloor(0, keep=10)
    memory.forget({second: keys_of(second, 100) for second in range(5)})  # a lowered lookback, an outage
    assert len(memory) == 500 and memory.covered_from_s == 0
    memory.forget({5: keys_of(5, 1)})
    assert len(memory) == 101 and memory.covered_from_s == 4  # seconds 4 and 5


def test_a_fill_now_dated_in_another_second_is_still_known() -> None:
    memory = BelowFloor(0, keep=10)
    memory.forget({7: keys_of(7, 2)})
    moved = [event(0, 9 * NS)]  # the venue now gives another time than it did when published
    assert memory.judge(moved, keys_of(7, 1)) == []


def test_the_checkpoint_carries_the_newest_seconds_and_where_they_start() -> None:
    memory = BelowFloor(0, keep=10_000)
    for second in range(1, 2001):
        memory.forget({second: keys_of(second, 2)})
    covered, carried = memory.packed()
    assert sum(len(blob) + 12 for blob in carried.values()) <= CARRIED_BYTES
    assert covered == min(carried) and max(carried) == 2000 and covered > 1
    assert all(len(blob) == 2 * KEY_SIZE for blob in carried.values())
    restored = BelowFloor(covered, keep=10_000, packed=carried)
    never, never_keys = fills_at(2000, 1, tag=9)
    assert restored.judge(*fills_at(2000, 2)) == [] and restored.judge(never, never_keys) == never
    assert restored.judge(*fills_at(covered - 1, 1, tag=9)) == []  # below what was carried: not judged
    with pytest.raises(ValueError, match="corrupt"):
        BelowFloor(0, keep=10, packed={5: b"short"})
