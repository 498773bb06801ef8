"""A source's progress (`publisher.state.SourceState`): a first start, a restore from a checkpoint,
the checkpoint it writes, and rewinding to the last checkpoint handed to the sink."""

from __future__ import annotations

from publisher.checkpoint import decode_checkpoint
from publisher.dedupe import fill_key
from publisher.state import SourceState
from publisher.venues.zll import ZllSource

NS = 1_000_000_000
NOW = 1_800_000_000 * NS


def source(**settings: object) -> ZllSource:
    return ZllSource(name="zll-s", base_url="http://127.0.0.1:9", subaccount_index=0, api_key_env="UNUSED",
                     **settings)  # type: ignore[arg-type]


def test_a_first_start_reads_the_last_lookback() -> None:
    state = SourceState(source(lookback_s=60), None, NOW)
    assert state.floor_ns == NOW - 60 * NS and state.window.floor_ns == NOW - 60 * NS
    assert state.paging_state is None and len(state.window) == 0


def test_the_checkpoint_restores_what_was_written() -> None:
    state = SourceState(source(lookback_s=60), None, NOW)
    state.window.admit(fill_key("f1"), NOW - NS)
    state.paging_state = {"resume_offset": 200}
    state.watermark_ns = NOW
    record = decode_checkpoint(state.checkpoint(NOW + 5))
    assert (record.source, record.venue, record.watermark_ns, record.written_at_ns) == ("zll-s", "zll", NOW, NOW + 5)
    again = SourceState(source(lookback_s=60), record, NOW + 10)
    assert again.watermark_ns == NOW and again.paging_state == {"resume_offset": 200}
    assert again.window.are_published([fill_key("f1"), fill_key("f2")]) == [True, False]


def test_a_raised_lookback_does_not_reopen_what_the_window_never_held() -> None:
    state = SourceState(source(lookback_s=60), None, NOW)
    record = decode_checkpoint(state.checkpoint(NOW))
    wider = SourceState(source(lookback_s=600), record, NOW)
    assert wider.floor_ns == state.floor_ns - 540 * NS
    assert wider.window.floor_ns == record.floor_ns  # fills below the old floor are not new again


def test_rewind_returns_to_the_last_checkpoint_handed_over() -> None:
    state = SourceState(source(lookback_s=60), None, NOW)
    state.window.admit(fill_key("f1"), NOW - NS)
    state.watermark_ns = NOW
    state.checkpoint(NOW)
    state.handed_over()
    state.window.admit(fill_key("f2"), NOW - NS)  # a poll that fails before its checkpoint is handed over
    state.watermark_ns = NOW + NS
    state.rewind()
    assert state.watermark_ns == NOW
    assert state.window.are_published([fill_key("f1"), fill_key("f2")]) == [True, False]


def test_rewind_before_any_checkpoint_returns_to_the_start() -> None:
    state = SourceState(source(lookback_s=60), None, NOW)
    state.window.admit(fill_key("f1"), NOW - NS)
    state.checkpoint(NOW)  # built, never handed over
    state.rewind()
    assert len(state.window) == 0 and state.floor_ns == NOW - 60 * NS


def test_the_checkpoint_carries_the_memory_below_the_floor() -> None:
    state = SourceState(source(lookback_s=60), None, NOW)
    assert state.below_floor.covered_from_s == (NOW - 60 * NS) // NS  # nothing below the first floor published
    state.window.admit(fill_key("f1"), NOW - 30 * NS)
    state.watermark_ns = NOW + 60 * NS
    state.below_floor.forget(state.window.advance(state.floor_ns))
    record = decode_checkpoint(state.checkpoint(NOW + 60 * NS))
    assert record.below_floor_from_s == (NOW - 60 * NS) // NS
    assert record.below_floor_keys == {(NOW - 30 * NS) // NS: fill_key("f1")}
    again = SourceState(source(lookback_s=60), record, NOW + 61 * NS)
    assert len(again.below_floor) == 1 and again.below_floor.covered_from_s == record.below_floor_from_s
