"""The field checks every venue's normalisation shares: decimal strings, execution times, identifiers."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from publisher.event import plain
from publisher.venues.fields import (
    MAX_TEXT_LENGTH,
    MIN_EXECUTED_AT_NS,
    NS,
    decimal_text,
    executed_at_problem,
    is_negative,
    is_positive,
    parse_rfc3339_ns,
    printable_json,
    text_problem,
)
from tests.test_zll_adapter import T, fill


def test_parse_rfc3339_truncates_beyond_nanoseconds() -> None:
    assert parse_rfc3339_ns("1970-01-01T00:00:00.0000000019Z") == 1
    assert parse_rfc3339_ns("1970-01-01T00:00:01z") == 10**9


def _reference_plain(text: str) -> str | None:
    """What decimal_text must give, from Decimal itself; None for text that is not plain notation."""
    body = text[1:] if text[:1] in ("-", "+") else text
    whole, _dot, fraction = body.partition(".")
    digits = set("0123456789")
    if not (whole or fraction) or not set(whole + fraction) <= digits or "." in fraction:
        return None
    return plain(Decimal(text))


@pytest.mark.parametrize(
    "text",
    ["0", "00", "5", "5.", ".5", "-.5", "-0", "-0.000", "+5", "+0.0", "0.1300", "19.00", "64998.50", "007.0700",
     "-12.340", "1000", "100.001", "+-5", "--5", "-+5", "-", "+", ".", "", "5.5.5", "1e5", "NaN", "Infinity",
     " 5", "5 ", "5_0", "\u0665", "\u00b2", "1,5", "0x10", "-.", "5.-1"],
)
def test_decimal_text_edge_cases(text: str) -> None:
    want = _reference_plain(text)
    if want is None:
        with pytest.raises(ValueError, match="price is not a decimal number"):
            decimal_text("price", text)
    else:
        assert decimal_text("price", text) == want


def test_decimal_text_matches_decimal_on_random_strings() -> None:
    rng = random.Random(11)
    alphabet = "0000123456789..-+e "
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        want = _reference_plain(text)
        if want is None:
            with pytest.raises(ValueError):
                decimal_text("x", text)
        else:
            assert decimal_text("x", text) == want, text


@pytest.mark.parametrize(("text", "ns"), [
    ("2026-12-02T18:30:00Z", 1_796_236_200 * NS),
    ("2026-12-02T18:30:00.123456Z", 1_796_236_200 * NS + 123_456_000),
    ("2026-12-02T19:30:00+01:00", 1_796_236_200 * NS),
    ("2026-12-02 17:00:00.5-01:30", 1_796_236_200 * NS + 500_000_000),
])
def test_parse_rfc3339_reads_offsets_and_fractions(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", ["2026-12-02T18:30:00", "2026-02-30T00:00:00Z", "2026-12-02T18:30:00+24:00",
                                  "yesterday", "2026-12-02T18:30:00.Z"])
def test_parse_rfc3339_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|out of range|UTC offset|day is out"):
        parse_rfc3339_ns(text)


def test_signs_of_plain_decimal_text() -> None:
    assert is_negative("-0.5") and not is_negative("0") and not is_negative("0.5")
    assert is_positive("0.5") and not is_positive("0") and not is_positive("-1")


def test_executed_at_problem_names_implausible_times() -> None:
    now = 1_800_000_000 * NS
    assert executed_at_problem(now, now) is None
    assert executed_at_problem(MIN_EXECUTED_AT_NS, now) is None
    assert "before 2000" in (executed_at_problem(1_800_000_000_000, now) or "")  # milliseconds read as ns
    assert "in the future" in (executed_at_problem(now + 2 * 86_400 * NS, now) or "")
    assert "int64" in (executed_at_problem(2**63, now) or "")


def test_text_problem_names_empty_long_and_unprintable_identifiers() -> None:
    assert text_problem("fill_id", "f-1") is None
    assert text_problem("fill_id", "") == "fill_id is empty"
    assert "longer than" in (text_problem("fill_id", "x" * (MAX_TEXT_LENGTH + 1)) or "")
    assert "control" in (text_problem("market", "BTC\x1b[2J") or "")
    assert text_problem("side", "x" * 33, 32) is not None


def test_printable_json_is_the_fast_path_only_for_printable_ascii() -> None:
    assert printable_json(json.dumps(fill(1, T)).encode())
    for odd in ('"\\u001b"', '"\\n"', '"\x7f"', '"\u00e9"'):
        assert not printable_json(b"[" + odd.encode() + b"]"), odd
