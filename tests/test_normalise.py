"""Table tests of fill normalisation: every Kalshi shape and both ZLL sides, with exact decimal strings."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from publisher.event import FillEvent, VenueFields
from publisher.venues import kalshi, zll
from publisher.venues.results import InvalidFill

OBSERVED = 1_800_000_000_123_456_789
T0 = 1_762_000_000  # 2025-11-01T12:26:40Z


def kalshi_event(fill: dict[str, Any]) -> FillEvent | InvalidFill:
    return kalshi.decode_fill(msgspec.Raw(msgspec.json.encode(fill)), source="k", observed_at_ns=OBSERVED)


def kalshi_ok(fill: dict[str, Any]) -> FillEvent:
    event = kalshi_event(fill)
    assert isinstance(event, FillEvent), event
    return event


SEED = {
    "fill_id": "f-1",
    "trade_id": "t-1",
    "order_id": "o-1",
    "client_order_id": "c-1",
    "ticker": "KXBTC-25NOV01-T100",
    "market_ticker": "KXBTC-25NOV01-T100",
    "side": "yes",
    "action": "buy",
    "count": 10,
    "price": 56,
    "yes_price": 56,
    "no_price": 44,
    "yes_price_fixed": "0.5600",
    "no_price_fixed": "0.4400",
    "is_taker": True,
    "created_time": "2025-11-01T12:26:40Z",
    "ts": T0,
}

CURRENT = {
    "fill_id": "f-2",
    "trade_id": "f-2",
    "order_id": "o-2",
    "ticker": "KXBTC-26JUL01-T100",
    "market_ticker": "KXBTC-26JUL01-T100",
    "outcome_side": "no",
    "book_side": "ask",
    "count_fp": "2.50",
    "yes_price_dollars": "0.123456",
    "no_price_dollars": "0.876544",
    "is_taker": False,
    "fee_cost": "0.0150",
    "created_time": "2026-07-01T00:00:00.123456789Z",
    "ts": 1_782_864_000,
    "subaccount_number": 3,
    "exchange_index": 1,
}


def test_kalshi_seed_shape() -> None:
    event = kalshi_ok(SEED)
    assert event == FillEvent(
        venue="kalshi",
        source="k",
        fill_id="f-1",
        order_id="o-1",
        instrument="KXBTC-25NOV01-T100",
        side="buy",
        price="0.56",
        quantity="10",
        fee=None,
        fee_currency="USD",
        liquidity="taker",
        executed_at_ns=T0 * 10**9,
        observed_at_ns=OBSERVED,
        venue_fields=VenueFields(
            trade_id="t-1", side="yes", action="buy", client_order_id="c-1", no_price="0.44"
        ),
    )


def test_kalshi_current_shape() -> None:
    event = kalshi_ok(CURRENT)
    assert event == FillEvent(
        venue="kalshi",
        source="k",
        fill_id="f-2",
        order_id="o-2",
        instrument="KXBTC-26JUL01-T100",
        side="sell",
        price="0.123456",
        quantity="2.5",
        fee="0.015",
        fee_currency="USD",
        liquidity="maker",
        executed_at_ns=1_782_864_000_123_456_789,
        observed_at_ns=OBSERVED,
        venue_fields=VenueFields(
            trade_id="f-2",
            outcome_side="no",
            book_side="ask",
            subaccount_number=3,
            exchange_index=1,
            no_price="0.876544",
        ),
    )
    # the event encodes with plain decimal strings and only the fields Kalshi sent
    encoded = msgspec.json.decode(msgspec.json.encode(event))
    assert encoded["venue_fields"] == {
        "trade_id": "f-2",
        "outcome_side": "no",
        "book_side": "ask",
        "subaccount_number": 3,
        "exchange_index": 1,
        "no_price": "0.876544",
    }


def minimal(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"fill_id": "f", "order_id": "o", "market_ticker": "M", "ts": T0}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("fields", "side", "price", "no_price"),
    [
        # legacy side/action: all four combinations, YES terms
        ({"side": "yes", "action": "buy", "yes_price": 30, "count": 1}, "buy", "0.3", "0.7"),
        ({"side": "no", "action": "sell", "yes_price": 30, "count": 1}, "buy", "0.3", "0.7"),
        ({"side": "no", "action": "buy", "yes_price": 30, "count": 1}, "sell", "0.3", "0.7"),
        ({"side": "yes", "action": "sell", "yes_price": 30, "count": 1}, "sell", "0.3", "0.7"),
        # outcome_side and book_side alone
        ({"outcome_side": "yes", "yes_price_dollars": "0.5", "count_fp": "1.00"}, "buy", "0.5", "0.5"),
        ({"outcome_side": "no", "yes_price_dollars": "0.5", "count_fp": "1.00"}, "sell", "0.5", "0.5"),
        ({"book_side": "bid", "yes_price_dollars": "0.5", "count_fp": "1.00"}, "buy", "0.5", "0.5"),
        ({"book_side": "ask", "yes_price_dollars": "0.5", "count_fp": "1.00"}, "sell", "0.5", "0.5"),
        # mixed shape: agreeing legacy and new sides, dollars beat fixed beat cents
        (
            {
                "side": "no",
                "action": "sell",
                "outcome_side": "yes",
                "book_side": "bid",
                "yes_price_dollars": "0.561200",
                "yes_price_fixed": "0.5600",
                "yes_price": 56,
                "no_price_dollars": "0.438800",
                "count": 3,
                "count_fp": "3.00",
            },
            "buy",
            "0.5612",
            "0.4388",
        ),
        ({"outcome_side": "yes", "yes_price_fixed": "0.0100", "yes_price": 1, "count": 1}, "buy", "0.01", "0.99"),
        # only a NO price: YES = 1 - NO, from each representation
        ({"outcome_side": "yes", "no_price_dollars": "0.123456", "count_fp": "1"}, "buy", "0.876544", "0.123456"),
        ({"outcome_side": "yes", "no_price_fixed": "0.4400", "count_fp": "1"}, "buy", "0.56", "0.44"),
        ({"outcome_side": "yes", "no_price": 44, "count": 1}, "buy", "0.56", "0.44"),
        # a NO price coarser than the YES price is not used: the YES price decides
        ({"outcome_side": "yes", "yes_price_dollars": "0.561234", "no_price": 43, "count": 1}, "buy", "0.561234", "0.438766"),
        ({"outcome_side": "yes", "yes_price_fixed": "0.5612", "no_price_dollars": "0.438800", "count": 1}, "buy", "0.5612", "0.4388"),
        # the bounds of the price range
        ({"outcome_side": "yes", "yes_price_dollars": "1.000000", "count_fp": "1"}, "buy", "1", "0"),
        ({"outcome_side": "yes", "yes_price": 0, "count": 1}, "buy", "0", "1"),
    ],
)
def test_kalshi_sides_and_prices(fields: dict[str, Any], side: str, price: str, no_price: str) -> None:
    event = kalshi_ok(minimal(**fields))
    assert (event.side, event.price, event.venue_fields.no_price) == (side, price, no_price)


@pytest.mark.parametrize(
    ("fields", "quantity"),
    [
        ({"count": 7}, "7"),
        ({"count_fp": "0.01"}, "0.01"),
        ({"count_fp": "12.50"}, "12.5"),
        ({"count_fp": "100.00", "count": 100}, "100"),
        ({"count_fp": "2.25", "count": 2}, "2.25"),  # count_fp is exact, count may be rounded
    ],
)
def test_kalshi_quantity(fields: dict[str, Any], quantity: str) -> None:
    event = kalshi_ok(minimal(outcome_side="yes", yes_price=50, **fields))
    assert event.quantity == quantity


@pytest.mark.parametrize(
    ("created_time", "ns"),
    [
        ("2025-11-01T12:26:40Z", T0 * 10**9),
        ("2025-11-01T12:26:40.5Z", T0 * 10**9 + 500_000_000),
        ("2025-11-01T12:26:40.123Z", T0 * 10**9 + 123_000_000),
        ("2025-11-01T12:26:40.123456Z", T0 * 10**9 + 123_456_000),
        ("2025-11-01T12:26:40.123456789Z", T0 * 10**9 + 123_456_789),
        ("2025-11-01T12:26:40.000000001Z", T0 * 10**9 + 1),
        ("2025-11-01T12:26:40.123456789+00:00", T0 * 10**9 + 123_456_789),
        ("2025-11-01T12:26:40+00:00", T0 * 10**9),
        ("2025-11-01T14:26:40.25+02:00", T0 * 10**9 + 250_000_000),
        ("2025-11-01T07:26:40-05:00", T0 * 10**9),
    ],
)
def test_kalshi_created_time(created_time: str, ns: int) -> None:
    # ts disagrees on purpose: created_time wins
    event = kalshi_ok(minimal(outcome_side="yes", yes_price=50, count=1, created_time=created_time, ts=1))
    assert event.executed_at_ns == ns


def test_kalshi_ts_only() -> None:
    assert kalshi_ok(minimal(outcome_side="yes", yes_price=50, count=1)).executed_at_ns == T0 * 10**9


@pytest.mark.parametrize(
    ("fields", "extras"),
    [
        ({"fill_id": None, "trade_id": "t-9"}, {"fill_id": "t-9", "trade_id": "t-9"}),
        ({"market_ticker": None, "ticker": "TICK"}, {"instrument": "TICK"}),
        ({"is_taker": True}, {"liquidity": "taker"}),
        ({"is_taker": False}, {"liquidity": "maker"}),
        ({}, {"liquidity": None, "fee": None}),
        ({"fee_cost": "0.0000"}, {"fee": "0"}),
        ({"fee_cost": "-0.01"}, {"fee": "-0.01"}),  # rebates accumulate per order
        ({"subaccount_number": None}, {"subaccount_number": None}),
        ({"subaccount_number": 0}, {"subaccount_number": 0}),
    ],
)
def test_kalshi_ids_and_extras(fields: dict[str, Any], extras: dict[str, Any]) -> None:
    event = kalshi_ok({**minimal(outcome_side="yes", yes_price=50, count=1), **fields})
    for name, value in extras.items():
        if name in ("trade_id", "subaccount_number"):
            assert getattr(event.venue_fields, name) == value
        else:
            assert getattr(event, name) == value


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"fill_id": None}, "fill_id"),
        ({"fill_id": ""}, "fill_id"),
        ({"order_id": None}, "order_id"),
        ({"market_ticker": None}, "ticker"),
        ({"ts": None}, "created_time"),
        ({"created_time": "yesterday"}, "created_time"),
        ({"created_time": "2025-13-01T00:00:00Z"}, "created_time"),
        ({"created_time": "2025-11-01T12:26:40"}, "created_time"),  # no offset
        ({"outcome_side": None}, "side"),
        ({"outcome_side": "maybe"}, "outcome_side"),
        ({"outcome_side": "yes", "book_side": "ask"}, "conflicting"),
        ({"outcome_side": "yes", "side": "yes", "action": "sell"}, "conflicting"),
        ({"outcome_side": None, "side": "yes"}, "side"),
        ({"yes_price": None}, "price"),
        ({"yes_price": None, "yes_price_dollars": "NaN"}, "yes_price_dollars"),
        ({"yes_price": None, "yes_price_dollars": "Infinity"}, "yes_price_dollars"),
        ({"yes_price": None, "yes_price_dollars": "5e-1"}, "yes_price_dollars"),
        ({"yes_price": None, "yes_price_dollars": "1.01"}, "outside"),
        ({"yes_price": -1}, "outside"),
        ({"yes_price": None, "no_price_dollars": "-0.5"}, "outside"),
        ({"count": 0}, "quantity"),
        ({"count": -2}, "quantity"),
        ({"count": None, "count_fp": "0.00"}, "quantity"),
        ({"count": None, "count_fp": "-1.00"}, "quantity"),
        ({"count": None, "count_fp": "abc"}, "count_fp"),
        ({"count": None}, "count"),
        ({"fee_cost": "free"}, "fee_cost"),
        ({"count": "ten"}, "undecodable"),
        ({"yes_price": 0.5}, "undecodable"),  # a float price is not accepted at all
    ],
)
def test_kalshi_invalid(fields: dict[str, Any], error: str) -> None:
    fill = {**minimal(outcome_side="yes", yes_price=50, count=1), **fields}
    fill = {k: v for k, v in fill.items() if v is not None}
    event = kalshi_event(fill)
    assert isinstance(event, InvalidFill)
    assert error in event.error
    # the dead letter is keyed by the venue's id when there is one, else by a digest of the bytes
    assert event.key == fill["fill_id"] if fill.get("fill_id") else event.key.startswith("sha256:")


def test_kalshi_invalid_key_uses_trade_id_then_digest() -> None:
    event = kalshi_event({"trade_id": "t-7", "count": "x"})
    assert isinstance(event, InvalidFill) and event.key == "t-7"
    event = kalshi_event({"count": 1})
    assert isinstance(event, InvalidFill) and event.key.startswith("sha256:")
    event = kalshi_event([1, 2])  # type: ignore[arg-type]
    assert isinstance(event, InvalidFill) and event.key.startswith("sha256:")


ZLL_FILL = {
    "account_id": 1024,
    "fee": "8.12",
    "id": "018f9a3d-1c4f-7a2b-8e5d-3f6a7b8c9d0e",
    "liquidity": "TAKER",
    "market": "BTC-PERP",
    "portfolio_index": 0,
    "price": "64998.50",
    "quantity": "0.25",
    "request_id": "018f9a3c-7b2e-7c1a-9f3d-2a4b6c8d0e1f",
    "side": "LONG",
    "subaccount_index": 0,
    "time": 1718900000000000000,
}


def zll_event(fill: dict[str, Any]) -> FillEvent | InvalidFill:
    raw = msgspec.Raw(msgspec.json.encode(fill))
    return zll.decode_fill(raw, source="z", observed_at_ns=OBSERVED)


def test_zll_seed_fill() -> None:
    assert zll_event(ZLL_FILL) == FillEvent(
        venue="zll",
        source="z",
        fill_id="018f9a3d-1c4f-7a2b-8e5d-3f6a7b8c9d0e",
        order_id="018f9a3c-7b2e-7c1a-9f3d-2a4b6c8d0e1f",
        instrument="BTC-PERP",
        side="buy",
        price="64998.5",
        quantity="0.25",
        fee="8.12",
        fee_currency="USDC",
        liquidity="taker",
        executed_at_ns=1718900000000000000,
        observed_at_ns=OBSERVED,
        venue_fields=VenueFields(account_id=1024, subaccount_index=0, portfolio_index=0),
    )


@pytest.mark.parametrize(
    ("side", "liquidity", "want_side", "want_liquidity"),
    [
        ("LONG", "TAKER", "buy", "taker"),
        ("LONG", "MAKER", "buy", "maker"),
        ("SHORT", "TAKER", "sell", "taker"),
        ("SHORT", "MAKER", "sell", "maker"),
    ],
)
def test_zll_sides_and_liquidity(side: str, liquidity: str, want_side: str, want_liquidity: str) -> None:
    event = zll_event({**ZLL_FILL, "side": side, "liquidity": liquidity, "fee": "-0.0100", "price": "0.000001"})
    assert isinstance(event, FillEvent)
    assert (event.side, event.liquidity, event.fee, event.price) == (want_side, want_liquidity, "-0.01", "0.000001")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"side": "BUY"}, "undecodable"),
        ({"liquidity": "taker"}, "undecodable"),
        ({"time": None}, "undecodable"),
        ({"price": 64998.5}, "undecodable"),
        ({"price": "NaN"}, "price"),
        ({"price": "-1"}, "price"),
        ({"quantity": "0"}, "quantity"),
        ({"quantity": "1e3"}, "quantity"),
        ({"fee": "Infinity"}, "fee"),
        ({"market": ""}, "market"),
        ({"time": -5}, "time"),
    ],
)
def test_zll_invalid(fields: dict[str, Any], error: str) -> None:
    fill = {k: v for k, v in {**ZLL_FILL, **fields}.items() if v is not None}
    event = zll_event(fill)
    assert isinstance(event, InvalidFill)
    assert error in event.error
    assert event.key == ZLL_FILL["id"]
