"""A source's progress: what it has published, restored from its checkpoint and saved to the next.

The watermark (start of the newest poll whose fills were handed to the sink), the dedupe window
of the fills inside the overlap window, the memory of the keys it forgot below the floor
(:mod:`publisher.floor`) and the venue adapter's paging hint. The poll loop moves them forward;
:mod:`publisher.checkpoint` is the record they are written to and read from.
"""

from __future__ import annotations

from typing import Any

from publisher.checkpoint import Checkpoint, encode_checkpoint
from publisher.dedupe import SeenWindow
from publisher.floor import BelowFloor
from publisher.venues.base import SourceConfig
from publisher.venues.fields import NS, parse_rfc3339_ns


class SourceState:
    """What a source knows about its own progress; restored from and saved to checkpoints."""

    def __init__(self, source: SourceConfig, checkpoint: Checkpoint | None, now_ns: int):
        self.name = source.name
        self.venue = source.venue_name
        self.lookback_ns = int(source.lookback_s * NS)
        keep = source.below_floor_keep
        if checkpoint is None:
            # first start: publish what was executed in the last lookback_s (or since
            # backfill_from, when that is earlier), then carry on; the first poll's floor is
            # watermark - lookback, and every later poll's the usual one
            start_ns = now_ns - self.lookback_ns
            if source.backfill_from is not None:
                start_ns = min(start_ns, parse_rfc3339_ns(source.backfill_from))
            self.watermark_ns = start_ns + self.lookback_ns
            self.window = SeenWindow(start_ns)
            # nothing below the first floor was ever published: the memory covers what lies above
            self.below_floor = BelowFloor(start_ns // NS, keep)
            self.paging_state: Any = None
        else:
            self.watermark_ns = checkpoint.watermark_ns
            # the window knows no fill below the floor it had: a lookback_s raised since then must
            # not make those fills look new (they would be published again)
            self.window = SeenWindow.from_packed(checkpoint.floor_ns, checkpoint.seen)
            if checkpoint.below_floor_from_s is None:  # written before the memory was carried
                self.below_floor = BelowFloor(self.window.floor_ns // NS, keep)
            else:
                self.below_floor = BelowFloor(checkpoint.below_floor_from_s, keep, checkpoint.below_floor_keys)
            # a lookback_s lowered since moves the floor up: what the window drops, the memory keeps
            self.below_floor.forget(self.window.advance(self.floor_ns))
            self.paging_state = checkpoint.paging_state
        self.last_checkpoint_ns = now_ns
        # what rewind() returns to: the start, then each checkpoint handed to the sink
        self._source = source
        self._start_ns = now_ns
        self._restore_point = checkpoint
        self._built: Checkpoint | None = None

    @property
    def floor_ns(self) -> int:
        """The lower edge of the next poll's overlap window: the watermark minus `lookback_s`."""
        return self.watermark_ns - self.lookback_ns

    def checkpoint(self, now_ns: int) -> bytes:
        """The encoded checkpoint of the state as it is now (written at `now_ns`), remembered as
        the one :meth:`handed_over` refers to."""
        below_from_s, below_keys = self.below_floor.packed()
        record = Checkpoint(
            source=self.name,
            venue=self.venue,
            watermark_ns=self.watermark_ns,
            floor_ns=self.window.floor_ns,
            seen=self.window.packed(),
            paging_state=self.paging_state,
            written_at_ns=now_ns,
            below_floor_from_s=below_from_s,
            below_floor_keys=below_keys,
        )
        data = encode_checkpoint(record)
        self._built = record
        return data

    def handed_over(self) -> None:
        """The checkpoint built last went to the sink (which never drops a batch): rewinding
        returns here from now on."""
        self._restore_point = self._built

    def rewind(self) -> None:
        """Forget everything since the last checkpoint handed to the sink (or since the start):
        the state a restart would restore, so a poll that failed halfway is read again whole."""
        again = SourceState(self._source, self._restore_point, self._start_ns)
        self.__dict__.update(again.__dict__)
