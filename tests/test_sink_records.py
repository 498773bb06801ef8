"""The contract's record layout (publisher.sink.records): fill keys and headers, dead-letter headers
and values, the truncation of a dead letter too large for a record (size, digest, valid JSON), a
fill too large becoming a dead letter, and the record budget's arithmetic. Pure functions: no
producer, no broker.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from publisher.event import SCHEMA_VERSION, DeadLetter, encode
from publisher.sink.records import (
    BATCH_OVERHEAD,
    Headers,
    common_fill_headers,
    dead_letter_headers,
    dead_letter_value,
    fill_key,
    oversized_fill,
    record_budget,
)
from tests.test_sink_commit import fill

#: the smallest `kafka.max_record_bytes` the config accepts: the tightest budget a record meets
MIN_RECORD_BYTES = 65536
BUDGET = record_budget(MIN_RECORD_BYTES)
#: the longest source name the config accepts (SourceConfig.name), so key and headers are largest
LONG_SOURCE = "s" * 100


def letter(raw: bytes, *, error: str = "bad price", source: str = "kalshi-main") -> DeadLetter:
    return DeadLetter(source=source, venue="kalshi", error=error, raw=msgspec.Raw(raw))


def record_size(key: bytes, value: bytes, headers: Headers) -> int:
    """What the budget bounds: a record's key, value and headers (names and values)."""
    return len(key) + len(value) + sum(len(name) + len(data) for name, data in headers)


def dead_letter_record_size(dead: DeadLetter, value: bytes) -> int:
    # the sink writes a dead letter keyed by its source, with dead_letter_headers (publisher.sink.commit)
    source = dead.source.encode()
    return record_size(source, value, dead_letter_headers(source, dead.venue.encode()))


def decoded(value: bytes) -> dict[str, Any]:
    body = msgspec.json.decode(value)
    assert isinstance(body, dict)
    return body


def json_string(chars: int, unit: str = "x") -> bytes:
    """A raw fill that is one JSON string of `chars` repetitions of `unit`."""
    return msgspec.json.encode(unit * chars)


# -- fills ------------------------------------------------------------------------------------------

def test_a_fill_key_is_source_colon_instrument() -> None:
    assert fill_key("kalshi-main", "KXBTCD-26NOV22-T100000") == b"kalshi-main:KXBTCD-26NOV22-T100000"


def test_a_fill_record_has_the_contracts_five_headers_in_order() -> None:
    event = fill("kalshi-main", 7)
    # the sink puts the fill's own id first, then the batch's common headers (publisher.sink.commit)
    headers = [("fill_id", event.fill_id.encode()), *common_fill_headers(b"kalshi-main", b"kalshi")]
    assert headers == [
        ("fill_id", b"kalshi-main-7"),
        ("venue", b"kalshi"),
        ("source", b"kalshi-main"),
        ("schema_version", str(SCHEMA_VERSION).encode()),
        ("content-type", b"application/json"),
    ]


# -- dead letters ------------------------------------------------------------------------------------

def test_a_dead_letter_has_venue_source_and_content_type_headers() -> None:
    assert dead_letter_headers(b"kalshi-main", b"kalshi") == [
        ("venue", b"kalshi"), ("source", b"kalshi-main"), ("content-type", b"application/json")]


def test_a_dead_letter_that_fits_is_source_venue_error_and_the_raw_fill_verbatim() -> None:
    raw = b'{"trade_id": "t1",  "price": "abc"}'  # odd spacing: kept byte for byte, not re-encoded
    value = dead_letter_value(letter(raw), BUDGET)
    assert raw in value
    assert decoded(value) == {"source": "kalshi-main", "venue": "kalshi", "error": "bad price",
                              "raw": {"trade_id": "t1", "price": "abc"}}


def test_a_dead_letter_is_truncated_only_when_its_record_exceeds_the_budget() -> None:
    dead = letter(json_string(BUDGET))
    whole = encode(dead)
    exact = dead_letter_record_size(dead, whole)  # its key and headers count too
    assert dead_letter_value(dead, exact) == whole
    assert decoded(dead_letter_value(dead, exact - 1))["raw_truncated"] is True


def test_a_truncated_dead_letter_keeps_the_start_of_raw_with_its_size_and_blake2b_digest() -> None:
    raw = b'{"id": "x", "blob": "' + b"y" * 200_000 + b'"}'
    value = dead_letter_value(letter(raw), BUDGET)
    body = decoded(value)  # valid JSON, though raw was cut mid-value
    assert set(body) == {"source", "venue", "error", "raw", "raw_truncated", "raw_bytes", "raw_blake2b"}
    assert body["source"] == "kalshi-main" and body["venue"] == "kalshi" and body["raw_truncated"] is True
    assert body["raw_bytes"] == len(raw)
    # BLAKE2b-256 of the full bytes, hex: a consumer matches it against the venue's copy
    assert body["raw_blake2b"] == hashlib.blake2b(raw, digest_size=32).hexdigest() and len(body["raw_blake2b"]) == 64
    assert raw.decode().startswith(body["raw"]) and len(body["raw"]) > BUDGET // 2
    kept = len(body["raw"].encode())
    assert body["error"] == (f"bad price; raw fill of {len(raw)} bytes truncated to its first {kept} "
                             f"(record limit {BUDGET} bytes), blake2b-256 {body['raw_blake2b']}")
    assert len(value) <= BUDGET


def test_truncation_never_splits_a_multibyte_character() -> None:
    # 3-byte characters: almost any cut lands inside one; what is kept must still be a prefix
    raw = json_string(100_000, "€")
    body = decoded(dead_letter_value(letter(raw), BUDGET))
    assert raw.decode().startswith(body["raw"]) and body["raw"].startswith('"€€')


@pytest.mark.parametrize("unit", ['"', "\\", "\x01"], ids=["quote", "backslash", "control"])
def test_a_raw_fill_that_grows_when_escaped_is_cut_shorter_until_it_fits(unit: str) -> None:
    # a quote or backslash takes 2 bytes as a JSON string's content, a control character 6
    raw = json_string(100_000, unit)
    value = dead_letter_value(letter(raw), BUDGET)
    body = decoded(value)
    assert len(value) <= BUDGET and raw.decode().startswith(body["raw"]) and len(body["raw"]) > 1000


def test_a_truncated_dead_letter_keeps_the_first_2000_characters_of_its_error() -> None:
    error = "e" * 1999 + "!" + "cut" * 1000
    body = decoded(dead_letter_value(letter(json_string(BUDGET), error=error), BUDGET))
    assert body["error"].startswith(error[:2000] + "; raw fill of ") and "cut" not in body["error"]


@pytest.mark.parametrize("raw", [json_string(BUDGET - 400), json_string(BUDGET), json_string(5 * BUDGET, "\\")],
                         ids=["just-fits", "truncated", "truncated-escaped"])
def test_a_dead_letter_record_fits_the_budget_with_its_key_and_headers(raw: bytes) -> None:
    """The budget bounds a record's key, value and headers together (record_budget), not the
    value alone: with the longest source name, a value just under the budget would not leave room
    for them."""
    dead = letter(raw, source=LONG_SOURCE)
    value = dead_letter_value(dead, BUDGET)
    assert dead_letter_record_size(dead, value) <= BUDGET
    assert msgspec.json.decode(value)


# -- oversized fills ---------------------------------------------------------------------------------

def test_an_oversized_fill_becomes_a_dead_letter_with_its_event_json_as_raw() -> None:
    event = msgspec.structs.replace(fill("kalshi-main", 1), order_id="o" * 70_000)
    value = encode(event)
    dead = oversized_fill(event, value)
    assert (dead.source, dead.venue, bytes(dead.raw)) == ("kalshi-main", "kalshi", value)
    assert dead.error == f"fill 'kalshi-main-1': its record ({len(value)} bytes) exceeds the record size limit"
    body = decoded(dead_letter_value(dead, BUDGET))
    assert body["raw_truncated"] is True and body["raw_bytes"] == len(value)
    assert value.decode().startswith(body["raw"])


def test_an_oversized_fills_error_quotes_at_most_300_characters_of_its_id() -> None:
    event = msgspec.structs.replace(fill("kalshi-main", 1), fill_id="f" * 1000)
    dead = oversized_fill(event, encode(event))
    assert repr("f" * 300) in dead.error and "f" * 301 not in dead.error


# -- the budget -------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_record_bytes", [MIN_RECORD_BYTES, 1_000_000, 64 * 1024 * 1024])
def test_the_budget_leaves_room_for_aiokafkas_framing_of_a_one_record_batch(max_record_bytes: int) -> None:
    budget = record_budget(max_record_bytes)
    assert budget == max_record_bytes - BATCH_OVERHEAD
    # a fill record exactly at the budget, with its five headers: aiokafka's own size check in
    # send() (its upper bound for a one-record batch) must accept it under max_request_size
    headers: Headers = [("fill_id", b"f" * 256), *common_fill_headers(LONG_SOURCE.encode(), b"kalshi")]
    key = fill_key(LONG_SOURCE, "i" * 256)
    value = b"v" * (budget - record_size(key, b"", headers))
    assert record_size(key, value, headers) == budget
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= max_record_bytes

