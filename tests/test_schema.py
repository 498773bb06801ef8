"""The committed JSON Schema (schemas/fill.v1.json) matches the code, and events satisfy it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from publisher.event import FillEvent, VenueFields, encode, json_schema, json_schema_text

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "fill.v1.json"


def sample_events() -> list[FillEvent]:
    kalshi = FillEvent(
        venue="kalshi", source="kalshi-main", fill_id="f-1", order_id="o-1", instrument="KXBTC-25DEC31-T100000",
        side="buy", price="0.56", quantity="10", fee="0.07", fee_currency="USD", liquidity="taker",
        executed_at_ns=1_700_000_000_123_456_789, observed_at_ns=1_700_000_001_000_000_000,
        venue_fields=VenueFields(trade_id="t-1", outcome_side="yes", book_side="bid", no_price="0.44"),
    )
    zll = FillEvent(
        venue="zll", source="zll-main", fill_id="987", order_id="req-5", instrument="BTC-USD",
        side="sell", price="64998.5", quantity="-0.001", fee=None, fee_currency=None, liquidity=None,
        executed_at_ns=1_700_000_000_000_000_000, observed_at_ns=1_700_000_000_500_000_000,
        venue_fields=VenueFields(account_id=1, subaccount_index=0),
    )
    return [kalshi, zll]


def event_schema(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema["$ref"].rsplit("/", 1)[1]
    return schema["$defs"][ref]


def test_committed_schema_matches_code() -> None:
    assert SCHEMA_PATH.read_text() == json_schema_text(), (
        "schemas/fill.v1.json is out of date with publisher/event.py; regenerate it with "
        "`fill-publisher schema > schemas/fill.v1.json` and review the diff (a breaking change needs "
        "a new schema_version)"
    )


def test_schema_describes_the_contract() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    event = event_schema(schema)
    required = set(event["required"])
    assert {"venue", "source", "fill_id", "order_id", "instrument", "side", "price", "quantity", "fee",
            "fee_currency", "liquidity", "executed_at_ns", "observed_at_ns"} <= required
    props = event["properties"]
    assert props["venue"]["enum"] == ["kalshi", "zll"]
    assert props["side"]["enum"] == ["buy", "sell"]
    for name in ("price", "quantity"):
        assert props[name]["type"] == "string" and "pattern" in props[name]


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.venue)
def test_sample_event_satisfies_schema(event: FillEvent) -> None:
    schema = json_schema()
    props = event_schema(schema)["properties"]
    pattern = re.compile(props["price"]["pattern"])
    data = json.loads(encode(event))
    assert set(event_schema(schema)["required"]) <= set(data)
    assert data["schema_version"] == 1
    for name in ("price", "quantity", "fee"):
        if data[name] is not None:
            assert isinstance(data[name], str) and pattern.match(data[name]), (name, data[name])
    if "no_price" in data["venue_fields"]:
        assert pattern.match(data["venue_fields"]["no_price"])
    assert isinstance(data["executed_at_ns"], int) and isinstance(data["observed_at_ns"], int)
    assert msgspec.json.decode(encode(event), type=FillEvent) == event


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.venue)
def test_sample_event_validates_with_jsonschema(event: FillEvent) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(encode(event)))
    bad = json.loads(encode(event)) | {"price": "5.6E-1"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)
