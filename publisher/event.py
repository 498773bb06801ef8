"""The normalised fill event (schema_version 1) and the dead-letter record.

`FillEvent` is the one type every venue adapter produces and every consumer decodes. Money and size
fields are exact decimal strings in plain notation (`"0.56"`, never `5.6E-1`, never a float); use
:func:`plain` to render a :class:`decimal.Decimal` into that form. The committed JSON Schema
(`schemas/fill.v1.json`) is generated from this module by :func:`json_schema`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1

Venue = Literal["kalshi", "zll"]

#: A decimal number in plain notation: optional minus, digits, optional fraction. No exponent.
DecimalString = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^-?[0-9]+(\.[0-9]+)?$",
        description="exact decimal number in plain notation",
        examples=["0.56", "12", "64998.5"],
    ),
]


def plain(value: Decimal) -> str:
    """Render a finite decimal in plain notation without redundant trailing zeros.

    The same fill must give the same event whichever venue shape it came in (Kalshi sent `0.5600` in
    one era and `56` cents in another), so trailing fractional zeros are dropped.
    """
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value}")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


# gc=False on this module's structs (and the adapters' wire structs): they hold only strings, ints,
# raw bytes and other such structs, so they can never be part of a reference cycle, and untracked,
# the hundreds of thousands of them a backlog drain holds add nothing to every garbage collection's
# walk (measured in bench/README.md)


class VenueFields(msgspec.Struct, kw_only=True, gc=False, omit_defaults=True, forbid_unknown_fields=False):
    """Venue-specific extras; a field is present only when the venue sent it."""

    # Kalshi
    trade_id: str | None = None
    outcome_side: Literal["yes", "no"] | None = None
    book_side: Literal["bid", "ask"] | None = None
    side: str | None = None
    action: str | None = None
    subaccount_number: int | None = None
    exchange_index: int | None = None
    client_order_id: str | None = None
    no_price: DecimalString | None = None
    # ZLL
    account_id: int | None = None
    subaccount_index: int | None = None
    portfolio_index: int | None = None


class FillEvent(msgspec.Struct, kw_only=True, gc=False, frozen=True, forbid_unknown_fields=False):
    """One executed trade of the firm's own order, normalised across venues (schema_version 1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    venue: Venue
    source: str
    fill_id: str
    order_id: str
    instrument: str
    side: Literal["buy", "sell"]
    price: DecimalString
    quantity: DecimalString
    fee: DecimalString | None
    fee_currency: str | None
    liquidity: Literal["maker", "taker"] | None
    executed_at_ns: int
    observed_at_ns: int
    venue_fields: VenueFields = msgspec.field(default_factory=VenueFields)


class DeadLetter(msgspec.Struct, kw_only=True, gc=False, frozen=True):
    """A venue fill that could not be normalised, published to the DLQ topic instead of dropped."""

    source: str
    venue: Venue
    error: str
    #: the fill exactly as the venue sent it (JSON embedded verbatim)
    raw: msgspec.Raw


_encoder = msgspec.json.Encoder()


def encode(obj: FillEvent | DeadLetter) -> bytes:
    """JSON-encode an event or a dead letter."""
    return _encoder.encode(obj)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`FillEvent`, as committed in `schemas/fill.v1.json`."""
    schema = msgspec.json.schema(FillEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://fill-publisher.invalid/schemas/fill.v1.json"
    schema["title"] = "fill-publisher fill event, schema_version 1"
    return schema


def json_schema_text() -> str:
    """:func:`json_schema` as stable, pretty-printed text (what `fill-publisher schema` prints)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
