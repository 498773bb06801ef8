"""The poll loop of one source: schedule, overlap window, dedupe, backoff, hand-off to the sink.

Each poll asks the venue adapter for every fill executed since `floor = watermark - lookback`,
where the watermark is the start of the previous successful poll. Re-reading that overlap on every
poll is what catches late fills; the :class:`~publisher.dedupe.SeenWindow` drops what was already
handed to the sink. Fills older than the floor are not published: the window has forgotten them,
and `lookback_s` is exactly the lateness the service is configured to tolerate. Those among them
that were never published are counted, once each, with a WARNING naming them (see
:mod:`publisher.floor`).

The surviving fills, sorted by (executed_at_ns, fill_id), the dead letters and a checkpoint of the
source's state go to the sink as one batch. The window and watermark include batches that are
queued but not yet committed, so the next poll does not hand them over again; this is safe because
the sink never drops a batch (it commits it or the process ends, and then nothing moved in Kafka
either) and commits a source's batches in order, so the checkpoint written with batch n also
covers every earlier batch. Counters of published fills and the lag histogram move only on commit.

Errors never escape the loop: each is counted by reason and followed by exponential backoff with
jitter (longer for auth failures, which need a human), so one bad source never stalls others.
Whatever else goes wrong (an adapter bug, a poll's result that cannot be checkpointed, a failure of
the loop itself) is logged with its traceback, counted as `decode`, and the source starts over
from the last checkpoint it handed to the sink, so the fills of the failed poll are read again and
none is lost. Every failure counted as `decode`, the venue's and ours, is also counted by what it
was (`fillpub_poll_failures_total{kind}`, :data:`~publisher.venues.errors.FailureKind`) and its
log line carries that `kind`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import random
import time
from collections.abc import Callable
from typing import cast

from publisher import logs
from publisher.dedupe import fill_key, fill_keys
from publisher.event import DeadLetter, FillEvent, Venue
from publisher.metrics import SourceMetrics
from publisher.sink import SourceBatch, TransactionalSink
from publisher.state import SourceState
from publisher.venues.base import SourceConfig, VenueAdapter
from publisher.venues.errors import FailureKind, VenueDecodeError, VenueError
from publisher.venues.results import DEAD_LETTER_PREFIX, FetchResult

log = logging.getLogger(__name__)

_NS = 1_000_000_000
#: write a checkpoint at least this often even when nothing new arrived, so a restart after a
#: quiet spell does not re-read a long stretch of history
CHECKPOINT_REFRESH_NS = 60 * _NS
#: fills found lost below the floor named one WARNING each in one poll; more are counted in one line
#: (each fill is judged lost once, but a venue that turns up thousands at once must not flood the log)
MAX_NAMED_LOST = 100


class Backoff:
    """Exponential backoff with "equal jitter" (AWS architecture blog): the n-th delay in a row is
    uniform in [c/2, c] with c = min(cap_s, base_s * 2**(n-1)), so retries spread out yet never come
    sooner than half the ceiling; a venue's Retry-After (`at_least_s`) is a floor on top."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, at_least_s: float = 0.0) -> float:
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures - 1, 30))
        return max(at_least_s, self._rng.uniform(ceiling / 2, ceiling))

    def reset(self) -> None:
        self.failures = 0


#: the contract's order within a batch: (executed_at_ns, fill_id); attrgetter sorts in C
_sort_key = operator.attrgetter("executed_at_ns", "fill_id")


class Poller:
    """Runs one source forever: poll, dedupe, hand to the sink, sleep, repeat."""

    def __init__(
        self,
        source: SourceConfig,
        adapter: VenueAdapter,
        state: SourceState,
        sink: TransactionalSink,
        metrics: SourceMetrics,
        *,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
        auth_backoff: Backoff | None = None,
    ):
        self.source = source
        self._adapter = adapter
        self.state = state
        self._sink = sink
        self._metrics = metrics
        metrics.poll_interval.set(source.poll_interval_s)
        self._now_ns = wall_clock_ns
        self._backoff = backoff or Backoff(base_s=max(0.5, source.poll_interval_s), cap_s=60.0)
        self._auth_backoff = auth_backoff or Backoff(base_s=15.0, cap_s=300.0)
        #: monotonic time the next (or current) poll is due; a poll starting later is behind schedule
        self.due: float | None = None
        self._conflict_logged = False

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. Never raises: should the loop itself fail, the failure is
        logged and counted, and the loop starts over after a backoff from the last state handed
        to the sink."""
        logs.bind_source(self.source.name)  # this task's log lines are about this source
        while True:
            try:
                await self._loop(stop)
                return
            except Exception:
                pause = self._backoff.next_delay()
                self._count_decode_failure("loop_failure")
                log.exception("source %s: the poll loop failed (counted as decode); restarting it from the last "
                              "checkpoint in %.1fs", self.source.name, pause, extra={"kind": "loop_failure"})
                self.state.rewind()
                if await _wait(stop, pause):
                    return

    async def _loop(self, stop: asyncio.Event) -> None:
        interval = self.source.poll_interval_s
        # spread the first polls of many sources over (up to) one interval: started together, a
        # thousand sources would poll in lockstep and every round would start with a queue
        due = time.monotonic() + random.uniform(0.0, min(interval, 1.0))
        while not stop.is_set():
            self.due = due
            delay = due - time.monotonic()
            if delay > 0 and await _wait(stop, delay):
                return
            # an outage upstream of us (Kafka) pauses polling instead of growing the backlog
            await self._sink.wait_for_capacity()
            if stop.is_set():
                return
            pause = await self.poll_once()
            # keep the cadence (no drift), but never burst to catch up after a slow poll
            due = max(due + interval, time.monotonic()) if pause is None else time.monotonic() + pause

    async def poll_once(self) -> float | None:
        """One poll; returns a backoff pause in seconds after a failure, None after success."""
        metrics = self._metrics
        state = self.state
        poll_start_ns = self._now_ns()
        started = time.perf_counter()
        try:
            # the window answers "published already?" for the adapter, which can then skip
            # normalising the re-read fills the poll would only drop as duplicates
            result = await self._adapter.fetch(state.floor_ns, state.paging_state, self._now_ns, state.window)
        except VenueError as exc:
            return self._failed(exc)
        except RecursionError:
            # msgspec's answer to JSON nested deeper than it recurses: the venue's page, not our bug
            return self._failed(VenueDecodeError("the answer is JSON nested too deeply to decode"))
        except Exception:  # an adapter bug must not kill the source's loop
            self._count_decode_failure("adapter_bug")
            pause = self._backoff.next_delay()
            log.exception("source %s: adapter bug (counted as decode); retrying in %.1fs", self.source.name, pause,
                          extra={"kind": "adapter_bug"})
            return pause
        try:
            self._accept(result, poll_start_ns)
        except Exception:
            # e.g. a value the checkpoint cannot encode: nothing of this poll reached the sink, so
            # forget what it changed and read it again (it fails again while the venue serves it)
            state.rewind()
            self._count_decode_failure("result_not_handed_over")
            pause = self._backoff.next_delay()
            log.exception("source %s: the poll's result could not be handed to the sink (counted as decode); "
                          "reading it again from the last checkpoint in %.1fs", self.source.name, pause,
                          extra={"kind": "result_not_handed_over"})
            return pause
        self._backoff.reset()
        self._auth_backoff.reset()
        metrics.poll_duration.observe(time.perf_counter() - started)
        metrics.last_success.set(time.time())
        return None

    def _count_decode_failure(self, kind: FailureKind) -> None:
        """Count a failed poll the contract calls `decode`, and what failed (its `kind`)."""
        self._metrics.errors["decode"].inc()
        self._metrics.failures[kind].inc()

    def _failed(self, exc: VenueError) -> float:
        """Count and log a failed poll; the pause before the next one."""
        detail = f"{exc.summary}: {exc}" if exc.summary else str(exc)
        if exc.reason == "decode":
            self._count_decode_failure(exc.kind)
            pause = self._backoff.next_delay(exc.retry_after_s or 0.0)
            log.warning("source %s: poll failed, decode (%s); retrying in %.1fs", self.source.name, detail, pause,
                        extra={"kind": exc.kind})
            return pause
        self._metrics.errors[exc.reason].inc()
        if exc.reason == "auth":
            pause = self._auth_backoff.next_delay()
            log.error("source %s: venue rejected our credentials (%s); retrying in %.0fs",
                      self.source.name, detail, pause)
        else:
            pause = self._backoff.next_delay(exc.retry_after_s or 0.0)
            log.warning("source %s: poll failed, %s (%s); retrying in %.1fs",
                        self.source.name, exc.reason, detail, pause)
        return pause

    def _accept(self, result: FetchResult, poll_start_ns: int) -> None:
        """Dedupe one poll's result and hand it over: fills the adapter skipped as published
        already count as duplicates, and so do the repeats the window drops; the adapter's
        conflicts (repeats it dropped whose values differ from the copy kept) are counted."""
        state = self.state
        window = state.window
        floor = window.floor_ns
        fills = result.fills
        # each fill's key as the adapter looked it up (computed here for an adapter that did not)
        keys = result.keys if result.keys is not None else fill_keys([fill.fill_id for fill in fills])
        times = [fill.executed_at_ns for fill in fills]
        lost: list[FillEvent] = []
        if times and min(times) < floor:
            # older than the overlap window: published long ago, or never (publisher.floor)
            inside = [executed_at_ns >= floor for executed_at_ns in times]
            outside = [not keep for keep in inside]
            lost = state.below_floor.judge(list(itertools.compress(fills, outside)),
                                           list(itertools.compress(keys, outside)), result.arrived_below)
            fills = list(itertools.compress(fills, inside))
            keys = list(itertools.compress(keys, inside))
            times = list(itertools.compress(times, inside))
        fresh = list(itertools.compress(fills, window.admit_all(keys, times)))
        duplicates = result.skipped_published + len(fills) - len(fresh)
        if result.conflicts:
            self._count_conflicts(result.conflicts, fresh)
        letters: list[DeadLetter] = []
        for bad in result.invalid:
            when = bad.executed_at_ns
            if when is not None and when < floor:
                continue  # like a good fill of that age: outside the window, already handled or too late
            if fill_key(bad.key) in window:
                # the venue garbled a fill it had already served well: that one is published
                duplicates += 1
                continue
            # a bad fill with a readable time is remembered as long as a good fill of that time and
            # ignored after that (above); venues keep serving fills below the floor (Kalshi's min_ts
            # is whole seconds, ZLL has no time filter), so a key kept only from this poll's start
            # would expire while the fill is still served, and the dead letter would come again.
            # Without a readable time, this poll's start is the best stamp there is.
            if window.admit(fill_key(DEAD_LETTER_PREFIX + bad.key), max(poll_start_ns, floor) if when is None else when):
                letters.append(DeadLetter(source=state.name, venue=cast(Venue, state.venue), error=bad.error, raw=bad.raw))
        fresh.sort(key=_sort_key)

        paging_changed = result.paging_state != state.paging_state
        state.paging_state = result.paging_state
        state.watermark_ns = max(state.watermark_ns, poll_start_ns)
        state.below_floor.forget(window.advance(state.floor_ns))
        stale = poll_start_ns - state.last_checkpoint_ns >= CHECKPOINT_REFRESH_NS
        # fills found lost are handed over with a checkpoint that knows them, so a poll read again
        # after a failure (rewind) does not count them twice
        if not (fresh or letters or paging_changed or stale or lost):
            if duplicates:
                self._metrics.duplicate.inc(duplicates)
            return
        state.last_checkpoint_ns = poll_start_ns
        batch = SourceBatch(
            source=state.name,
            venue=state.venue,
            fills=fresh,
            dead_letters=letters,
            checkpoint=state.checkpoint(poll_start_ns),
            on_commit=lambda committed_ns: self._committed(fresh, len(letters), committed_ns),
        )
        self._sink.submit(batch)
        state.handed_over()
        if duplicates:
            self._metrics.duplicate.inc(duplicates)
        if lost:
            self._count_below_floor(lost, floor)

    def _count_below_floor(self, lost: list[FillEvent], floor_ns: int) -> None:
        """Count the fills served below the floor that were never published (judged once each,
        see :mod:`publisher.floor`) and name each in a WARNING, up to :data:`MAX_NAMED_LOST` a poll."""
        self._metrics.below_floor.inc(len(lost))
        for fill in lost[:MAX_NAMED_LOST]:
            log.warning("source %s: fill id %s served below the overlap window's floor was never published: "
                        "executed %.1fs before the floor (lateness beyond lookback_s)",
                        self.source.name, fill.fill_id, (floor_ns - fill.executed_at_ns) / _NS,
                        extra={"fill_id": fill.fill_id})
        if len(lost) > MAX_NAMED_LOST:
            log.warning("source %s: %d more fills served below the overlap window's floor were never published "
                        "(counted, not named here); fill-publisher audit lists them", self.source.name,
                        len(lost) - MAX_NAMED_LOST)

    def _count_conflicts(self, conflicts: list[tuple[FillEvent, FillEvent]], fresh: list[FillEvent]) -> None:
        """Count the venue's conflicting copies of fills published now; log the first one."""
        published = {fill.fill_id for fill in fresh}
        mine = [pair for pair in conflicts if pair[0].fill_id in published]
        if not mine:
            return
        self._metrics.conflicting.inc(len(mine))
        if not self._conflict_logged:
            self._conflict_logged = True
            first, later = mine[0]
            log.warning("source %s: the venue served fill id %s twice with different values; published the "
                        "first (%s) and dropped the other (%s); further conflicts are only counted "
                        "(fillpub_fills_conflicting_total)", self.source.name, first.fill_id,
                        _values(first), _values(later))

    def _committed(self, fills: list[FillEvent], dead: int, committed_ns: int) -> None:
        metrics = self._metrics
        if fills:
            metrics.published.inc(len(fills))
            metrics.lag.observe_many([(committed_ns - fill.executed_at_ns) / _NS for fill in fills])
        if dead:
            metrics.invalid.inc(dead)


def _values(fill: FillEvent) -> str:
    # what a conflict log line shows: the venue's values, not ours (observed_at_ns)
    return (f"{fill.side} {fill.quantity} {fill.instrument} @ {fill.price} fee {fill.fee} "
            f"liquidity {fill.liquidity} order {fill.order_id} at {fill.executed_at_ns}")


async def _wait(stop: asyncio.Event, timeout: float) -> bool:
    """Sleep up to `timeout`; True when `stop` was set meanwhile."""
    try:
        # asyncio.timeout, not wait_for: wait_for runs the wait in a task of its own, one more
        # task per poll of every source
        async with asyncio.timeout(timeout):
            await stop.wait()
        return True
    except TimeoutError:
        return False
