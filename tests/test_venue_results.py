"""What an adapter's poll returns, and the dead-letter helpers for fills it could not use."""

from __future__ import annotations

import msgspec

from publisher.venues.results import FetchResult, raw_key, repaired_utf8


def test_an_empty_result_holds_nothing() -> None:
    result = FetchResult()
    assert (result.fills, result.invalid, result.paging_state, result.conflicts) == ([], [], None, [])
    assert FetchResult().fills is not result.fills  # no list shared between results


def test_raw_key_is_a_digest_of_the_bytes() -> None:
    assert raw_key(b'{"a":1}') == raw_key(b'{"a":1}') != raw_key(b'{"a":2}')
    assert raw_key(b"").startswith("sha256:") and len(raw_key(b"")) == len("sha256:") + 64


def test_repaired_utf8_replaces_only_what_is_not_utf8() -> None:
    assert repaired_utf8(msgspec.Raw('{"m":"é"}'.encode())) is None
    repaired = repaired_utf8(msgspec.Raw(b'{"m":"\xff"}'))
    assert repaired is not None and bytes(repaired) == '{"m":"\ufffd"}'.encode()
