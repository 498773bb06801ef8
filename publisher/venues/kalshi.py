"""Kalshi Trade API v2 fills adapter: RSA or Ed25519 request signing, cursor paging over the live
and the historical fills, every Fill shape.

Kalshi's Fill object changed shape several times (integer cents, then `*_fixed` dollar strings,
then `*_dollars` strings and `count_fp`; legacy `side`/`action` giving way to `outcome_side` and
`book_side`), and a poller must read all of them, including mixtures. :class:`KalshiFill` therefore
declares every field optional and :func:`normalise` does all validation, so one odd fill becomes an
:class:`~publisher.venues.results.InvalidFill` instead of failing its page.

Normalisation is in YES terms (see the contract): `side` is `buy` when the fill adds YES contracts
(buy yes / sell no, `outcome_side` yes) and `price` is the YES price in dollars.

Kalshi keeps fills older than its fills cutoff (`GET /historical/cutoff`, `trades_created_ts`)
only on `GET /historical/fills`. The adapter knows the cutoff (cached, refreshed) and reads the
historical endpoint too whenever a poll's floor lies below it: after a long outage, with a long
lookback, or for a backfill.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from collections.abc import Callable, Generator, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

import httpx
import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from publisher.event import FillEvent, VenueFields, plain
from publisher.secret import Secret
from publisher.venues.base import SourceConfig, VenueAdapter
from publisher.venues.errors import PagingError, VenueDecodeError
from publisher.venues.fields import (
    MAX_FUTURE_NS,
    MAX_TEXT_LENGTH,
    MIN_EXECUTED_AT_NS,
    decimal_text,
    executed_at_problem,
    is_positive,
    parse_rfc3339_ns,
    printable_json,
    text_problem,
)
from publisher.venues.http import VenueClient, describe_json_error
from publisher.venues.pages import PageCodec, PageReader, PublishedFills
from publisher.venues.registry import VenueSpec
from publisher.venues.results import FetchResult, InvalidFill, raw_key, repaired_utf8

__all__ = [
    "VENUE",
    "KalshiAdapter",
    "KalshiAuth",
    "KalshiFill",
    "KalshiSigner",
    "KalshiSource",
    "check_secret",
    "create_adapter",
    "describe_error",
    "describe_secret",
    "key_kind",
    "load_private_key",
    "normalise",
    "parse_rfc3339_ns",
    "sign",
]

log = logging.getLogger(__name__)


class KalshiSource(SourceConfig, tag="kalshi", kw_only=True):
    """A Kalshi account: key id plus RSA or Ed25519 private key (PEM) from a file or env var."""

    secret_field = "private_key"

    api_key_id: str
    private_key_file: str | None = None
    private_key_env: str | None = None
    #: 0 is the primary account, 1..63 subaccounts; None asks for all of them
    subaccount: Annotated[int, msgspec.Meta(ge=0, le=63)] | None = None

    @property
    def below_floor_keep(self) -> int:
        """None beyond the last seconds the window forgot: Kalshi filters by `min_ts`, so below the
        floor it serves only the second before the floor's, which the memory always keeps."""
        return 0


FILLS_PATH = "portfolio/fills"
"""Relative to `base_url` (which ends in `/trade-api/v2`): no leading slash, so httpx appends it to the
base path and the signed path is `/trade-api/v2/portfolio/fills`."""
#: fills older than the fills cutoff, the same Fill object (relative to `base_url` like FILLS_PATH)
HISTORICAL_FILLS_PATH = "historical/fills"
#: the cutoffs between live and historical data, per data type (fills: `trades_created_ts`)
CUTOFF_PATH = "historical/cutoff"
#: how long a fills cutoff read from the venue is trusted (it only advances, and slowly: its
#: target is months behind now)
CUTOFF_REFRESH_NS = 600 * 1_000_000_000
#: a poll whose floor lies within this of the cached cutoff reads the cutoff again first: the
#: cutoff may have moved past the floor since it was read
CUTOFF_MARGIN_NS = 86_400 * 1_000_000_000

#: a venue that keeps handing out cursors is misbehaving; this many pages is ~2M fills at limit 200
MAX_PAGES_PER_POLL = 10_000


# --------------------------------------------------------------------------------------------------
# Authentication


#: the private key kinds Kalshi accepts (Ed25519 since September 2026, the web app's default since
#: October 2026)
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def load_private_key(pem: str) -> PrivateKey:
    """Load an unencrypted RSA or Ed25519 private key from PEM text (PKCS#8, or PKCS#1 for RSA).

    Both kinds come as `-----BEGIN PRIVATE KEY-----` (PKCS#8): only loading the key tells them
    apart.

    Raises :class:`ValueError` with a message that never quotes the key (cryptography's own messages
    are not relied on for that).
    """
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except TypeError:
        raise ValueError("the Kalshi private key is encrypted; a key without password is required") from None
    except (ValueError, UnsupportedAlgorithm, UnicodeError):
        raise ValueError("the Kalshi private key is not a valid PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"the Kalshi private key must be an RSA or Ed25519 key, not {type(key).__name__}")
    return key


def key_kind(key: PrivateKey) -> str:
    """`RSA-<bits>` or `Ed25519`: which kind of key signs (check-config shows it)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    return "Ed25519"


_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign(private_key: PrivateKey, timestamp_ms: int, method: str, path: str) -> str:
    """Kalshi request signature, base64: RSA-PSS (SHA-256, MGF1 SHA-256, salt = digest length)
    with an RSA key; with an Ed25519 key, Ed25519 over the message bytes themselves (it has no
    separate hash or padding).

    The message is `timestamp_ms + METHOD + path`, the path being the URL path from the host without
    the query string (Kalshi rejects signatures over the query).
    """
    message = f"{timestamp_ms}{method.upper()}{path}".encode()
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        signature = private_key.sign(message)
    else:
        signature = private_key.sign(message, _PSS, hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


#: how long a signature may be sent again, by any source of the same key, for the same method
#: and path; 0 signs every request
SIGNATURE_REUSE_MS = 250


class KalshiSigner:
    """Signatures of one API key, shared by every source that uses the key.

    An RSA-2048 PSS signature is the dearest part of a Kalshi request (the scale row of
    bench/README.md); an Ed25519 one costs much less, but the sharing is the same for both. It covers the
    timestamp, method and path only, not the query, so the sources of one key (its subaccounts)
    polling the fills path at about the same time can all send the same one: a signature is
    reused for `reuse_ms`, which keeps the timestamp within a quarter of a second of "now".
    Kalshi's docs do not say whether a signature may be sent twice; should Kalshi refuse a
    reused one (401) while a fresh one works, :class:`KalshiAuth` retries with a fresh signature
    and calls :meth:`stop_reusing`, and from then on every request is signed.

    Ed25519 is deterministic: a key signing one message twice gives the same signature, where
    RSA-PSS, being randomised, gives a new one. So that "a fresh signature" stays fresh with an
    Ed25519 key, it never signs one (method, path) twice at the same millisecond: the timestamp
    moves on by a millisecond instead.
    """

    def __init__(self, key_id: str, private_key: PrivateKey, *, clock_ms: Callable[[], int] = _now_ms,
                 reuse_ms: int = SIGNATURE_REUSE_MS):
        self.key_id = key_id
        self._private_key = private_key
        self._deterministic = isinstance(private_key, ed25519.Ed25519PrivateKey)
        self._clock_ms = clock_ms
        self.reuse_ms = reuse_ms
        self._recent: dict[tuple[str, str], tuple[int, str]] = {}

    def __repr__(self) -> str:
        return f"KalshiSigner(key_id={self.key_id!r})"

    def signature(self, method: str, path: str, *, fresh: bool = False) -> tuple[int, str, bool]:
        """(timestamp ms, signature, whether it was reused) for a request to `path`."""
        now = self._clock_ms()
        recent = self._recent.get((method, path))
        if recent is not None:
            if not fresh and self.reuse_ms > 0 and 0 <= now - recent[0] < self.reuse_ms:
                return recent[0], recent[1], True
            if self._deterministic and now <= recent[0]:
                now = recent[0] + 1  # the same timestamp would give the same signature again
        signature = sign(self._private_key, now, method, path)
        self._recent[(method, path)] = (now, signature)
        return now, signature, False

    def stop_reusing(self) -> None:
        if self.reuse_ms:
            log.warning("Kalshi refused a reused request signature for key %s; signing every request from now on",
                        self.key_id)
        self.reuse_ms = 0


class KalshiAuth(httpx.Auth):
    """Signs every request with the KALSHI-ACCESS-* headers (see :class:`KalshiSigner`)."""

    def __init__(self, signer: KalshiSigner):
        self._signer = signer

    def __repr__(self) -> str:
        return f"KalshiAuth(key_id={self._signer.key_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the key id, a millisecond timestamp and the signature over method and path."""
        # raw_path is what goes on the wire (percent-encoding intact), query included: cut it off
        path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        reused = self._sign(request, path, fresh=False)
        response = yield request
        if reused and response.status_code == 401:
            self._sign(request, path, fresh=True)
            response = yield request
            if response.status_code != 401:  # the key is good: it was the reuse Kalshi refused
                self._signer.stop_reusing()

    def _sign(self, request: httpx.Request, path: str, *, fresh: bool) -> bool:
        timestamp_ms, signature, reused = self._signer.signature(request.method, path, fresh=fresh)
        request.headers["KALSHI-ACCESS-KEY"] = self._signer.key_id
        request.headers["KALSHI-ACCESS-TIMESTAMP"] = str(timestamp_ms)
        request.headers["KALSHI-ACCESS-SIGNATURE"] = signature
        return reused


@functools.cache
def _shared_signer(key_id: str, pem: str) -> KalshiSigner:
    # one signer (and one parsed key) per API key for all the sources using it; keyed by the key
    # itself too, so two keys (RSA and Ed25519, or old and new) under one id never share one
    return KalshiSigner(key_id, load_private_key(pem))


def check_secret(secret: Secret) -> None:
    """Raise :class:`ValueError` unless the secret is an unencrypted RSA or Ed25519 private key in PEM."""
    load_private_key(secret.reveal())


def describe_secret(secret: Secret) -> str:
    """What kind of key the secret is (`RSA-2048 key`, `Ed25519 key`), for check-config; never
    any of the key's material."""
    return f"{key_kind(load_private_key(secret.reveal()))} key"


def account_scope(source: KalshiSource) -> tuple[str, int | None]:
    """What of the venue account a source reads (config's overlap check): its API key and its
    subaccount, None for all of them (which overlaps every other source of the key)."""
    return source.api_key_id, source.subaccount


def describe_error(status: int, body: bytes) -> str:
    """`code: message` from Kalshi's `{code, message, details}` or `{"error": ...}` error bodies."""
    # 429 is {"error": "too many requests"}; some errors nest {code, message} under "error"
    return describe_json_error(body, code_keys=("code",), message_keys=("message", "error"), nested="error")


# --------------------------------------------------------------------------------------------------
# Wire format


#: identifiers carried into the event, at most MAX_TEXT_LENGTH characters: the decoder checks the
#: length (in C, so at no cost per fill), and a fill with a longer one is read on its own and
#: becomes a dead letter naming the field
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LENGTH)]
#: the legacy `side`/`action`, which are carried into venue_fields as sent
_Enum = Annotated[str, msgspec.Meta(max_length=32)]


class KalshiFill(msgspec.Struct, kw_only=True, gc=False):
    """A Kalshi fill in any of its shapes (seed Nov 2025, fixed-point 2026, mixtures).

    Every field is optional here; which ones must be present is decided in :func:`normalise`.
    The legacy integer `price` (cents of the traded side) is deliberately not read: `yes_price`
    and `no_price` say the same unambiguously.
    """

    fill_id: _Text | None = None
    trade_id: _Text | None = None
    order_id: _Text | None = None
    client_order_id: _Text | None = None
    ticker: _Text | None = None
    market_ticker: _Text | None = None
    side: _Enum | None = None
    action: _Enum | None = None
    outcome_side: str | None = None
    book_side: str | None = None
    count: int | None = None
    count_fp: str | None = None
    yes_price: int | None = None
    no_price: int | None = None
    yes_price_fixed: str | None = None
    no_price_fixed: str | None = None
    yes_price_dollars: str | None = None
    no_price_dollars: str | None = None
    is_taker: bool | None = None
    fee_cost: str | None = None
    created_time: str | None = None
    ts: int | None = None
    subaccount_number: int | None = None
    exchange_index: int | None = None


# `"fills": null` and a page without "fills" are empty pages (Kalshi's docs do not rule them out)


class _TypedPage(msgspec.Struct, gc=False):
    # the fast path: the whole page in one decode; any fill of a wrong type (or with a string
    # that is not UTF-8) fails it, and the page is then read as _Page
    fills: list[KalshiFill] | None = None
    cursor: str | None = None


class _Page(msgspec.Struct, gc=False):
    # fills stay raw so that one undecodable fill cannot fail the whole page: msgspec checks
    # neither the types nor the UTF-8 of what it keeps raw
    fills: list[msgspec.Raw] | None = None
    cursor: str | None = None


class _Ids(msgspec.Struct, gc=False):
    # read from a fill that failed to decode or normalise: its dead letter is keyed by the venue's
    # id and, when readable, dated by the fill's execution time
    fill_id: Any = None
    trade_id: Any = None
    created_time: Any = None
    ts: Any = None


class _Key(msgspec.Struct, gc=False):
    # only what the dedupe key is made of: the cheapest read of a page of fills that were
    # published already (the overlap re-read returns mostly those); an id that is not a string
    # fails the page, which is then read fill by fill
    fill_id: str | None = None
    trade_id: str | None = None


class _KeyPage(msgspec.Struct, gc=False):
    fills: list[_Key] | None = None
    cursor: str | None = None


class _Cutoffs(msgspec.Struct, gc=False):
    # `GET /historical/cutoff`: one cutoff per data type; fills go by `trades_created_ts`. Its
    # type is read leniently: an RFC 3339 string, or Unix seconds (or milliseconds) as a number
    trades_created_ts: str | int | float | None = None


_key_page_decoder = msgspec.json.Decoder(_KeyPage)
_typed_page_decoder = msgspec.json.Decoder(_TypedPage)
_page_decoder = msgspec.json.Decoder(_Page)
_fill_decoder = msgspec.json.Decoder(KalshiFill)
_ids_decoder = msgspec.json.Decoder(_Ids)
_cutoffs_decoder = msgspec.json.Decoder(_Cutoffs)


def cutoff_ns(body: bytes) -> int:
    """The fills cutoff (`trades_created_ts`) of a `GET /historical/cutoff` answer, in ns since the
    epoch; :class:`VenueError` (decode) when it has none that reads as a time."""
    try:
        value = _cutoffs_decoder.decode(body).trades_created_ts
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise VenueDecodeError(f"undecodable historical cutoff: {exc}") from None
    try:
        if isinstance(value, str):
            return parse_rfc3339_ns(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e15:
            # seconds, unless the magnitude says milliseconds (13 digits)
            return int(value * (1_000_000 if value >= 1e11 else 1_000_000_000))
    except ValueError as exc:
        raise VenueDecodeError(f"historical cutoff trades_created_ts: {exc}") from None
    raise VenueDecodeError(f"historical cutoff has no usable trades_created_ts ({str(value)[:40]!r})")


# --------------------------------------------------------------------------------------------------
# Normalisation


class _Invalid(ValueError):
    """A fill that cannot be normalised; the message says which field and why."""


_OutcomeSide = Literal["yes", "no"]

#: (legacy side, legacy action) -> outcome side: buying YES or selling NO both add YES contracts
_LEGACY_OUTCOME: dict[tuple[str, str], _OutcomeSide] = {
    ("yes", "buy"): "yes",
    ("no", "sell"): "yes",
    ("no", "buy"): "no",
    ("yes", "sell"): "no",
}
_BOOK_OUTCOME: dict[str, _OutcomeSide] = {"bid": "yes", "ask": "no"}


@functools.lru_cache(maxsize=1024)
def _outcome(outcome_side: str | None, book_side: str | None, side: str | None, action: str | None) -> _OutcomeSide:
    """The outcome side from every field that implies it; they must all agree. Memoised: a
    source's fills show a few combinations only."""
    votes: dict[str, _OutcomeSide] = {}
    for name, legacy_text in (("side", side), ("action", action)):
        # kept in venue_fields as sent, even where outcome_side makes them moot
        problem = None if legacy_text is None else text_problem(name, legacy_text, 32)
        if problem is not None:
            raise _Invalid(problem)
    if outcome_side is not None:
        if outcome_side not in ("yes", "no"):
            raise _Invalid(f"unknown outcome_side {outcome_side[:20]!r}")
        votes["outcome_side"] = outcome_side  # type: ignore[assignment]
    if book_side is not None:
        if book_side not in _BOOK_OUTCOME:
            raise _Invalid(f"unknown book_side {book_side[:20]!r}")
        votes["book_side"] = _BOOK_OUTCOME[book_side]
    if side is not None or action is not None:
        legacy = _LEGACY_OUTCOME.get((side or "", action or ""))
        if legacy is not None:
            votes["side/action"] = legacy
        elif not votes:
            raise _Invalid(f"cannot derive a side from side={side!r} action={action!r}")
        # a lone or unknown legacy field next to outcome_side/book_side is ignored: they are deprecated
    if not votes:
        raise _Invalid("no outcome_side, book_side or side/action")
    if len(set(votes.values())) > 1:
        detail = ", ".join(f"{name} -> {value}" for name, value in votes.items())
        raise _Invalid(f"conflicting sides: {detail}")
    return next(iter(votes.values()))


def _price_of(dollars: str | None, fixed: str | None, cents: int | None, *, leg: str) -> tuple[str, int] | None:
    """One leg's price in dollars (plain text) from the most precise representation the fill
    carries, with that representation's rank (0 = `*_dollars`, 1 = `*_fixed`, 2 = integer cents)."""
    if dollars is not None:
        return _in_unit_range(decimal_text(f"{leg}_price_dollars", dollars), leg), 0
    if fixed is not None:
        return _in_unit_range(decimal_text(f"{leg}_price_fixed", fixed), leg), 1
    if cents is not None:
        # exact, independent of the decimal context
        return _in_unit_range(plain(Decimal(cents).scaleb(-2)), leg), 2
    return None


def _in_unit_range(price: str, leg: str) -> str:
    # plain text of a price in [0, 1] dollars is "0", "0.<digits>" or "1": no sign, no other whole part
    if price[0] != "0" and price != "1":
        raise _Invalid(f"{leg} price {price} is outside [0, 1] dollars")
    return price


def _complement(price: str) -> str:
    # the other leg of a binary contract: the two prices sum to one dollar
    return plain(Decimal(1) - Decimal(price))


@functools.lru_cache(maxsize=16_384)
def _prices(
    yes_dollars: str | None, no_dollars: str | None, yes_fixed: str | None, no_fixed: str | None,
    yes_cents: int | None, no_cents: int | None,
) -> tuple[str, str]:
    """(YES price, NO price) in dollars, plain; one is derived from the other (they sum to 1) when
    absent. Memoised on the fill's price fields: prices repeat across fills."""
    yes = _price_of(yes_dollars, yes_fixed, yes_cents, leg="yes")
    no = _price_of(no_dollars, no_fixed, no_cents, leg="no")
    if yes is None:
        if no is None:
            raise _Invalid("no price (yes_price_dollars, yes_price_fixed, yes_price or a no price)")
        return _complement(no[0]), no[0]
    if no is None or no[1] > yes[1]:
        # a NO price coarser than the YES price (cents beside sub-penny dollars) would be rounded
        return yes[0], _complement(yes[0])
    return yes[0], no[0]


@functools.lru_cache(maxsize=4096)
def _quantity(count_fp: str | None, count: int | None) -> str:
    if count_fp is not None:
        quantity = decimal_text("count_fp", count_fp)
    elif count is not None:
        quantity = str(count)  # an int's text is plain
    else:
        raise _Invalid("no count_fp or count")
    if not is_positive(quantity):
        raise _Invalid(f"quantity {quantity} is not positive")
    return quantity


@functools.lru_cache(maxsize=4096)
def _fee(fee_cost: str) -> str:
    # memoised: fees follow from a small schedule of rates and roundings, so they repeat often
    return decimal_text("fee_cost", fee_cost)


def _executed_at_ns(created_time: str | None, ts: int | None) -> int:
    if created_time:
        try:
            return parse_rfc3339_ns(created_time)
        except ValueError as exc:
            raise _Invalid(f"created_time: {exc}") from None
    if ts is not None:
        if ts < 0:
            raise _Invalid(f"negative ts {ts}")
        return ts * 1_000_000_000
    raise _Invalid("no created_time or ts")


def _text_problem(fill: KalshiFill, fill_id: str, order_id: str, instrument: str) -> str | None:
    """Why one of the fill's identifiers cannot go into the event (and Kafka keys) as it is."""
    named = (("fill_id", fill_id), ("order_id", order_id), ("instrument", instrument),
             ("trade_id", fill.trade_id), ("client_order_id", fill.client_order_id))
    return next((problem for name, text in named if text is not None and (problem := text_problem(name, text))), None)


def normalise(fill: KalshiFill, *, source: str, observed_at_ns: int, printable: bool = False) -> FillEvent:
    """Turn one Kalshi fill of any shape into a :class:`FillEvent` in YES terms.

    Raises :class:`ValueError` (with a secret-free, field-naming message) when the fill is unusable,
    among others for identifiers with control characters or of absurd length, and for an
    execution time that is not plausible (before 2000, beyond int64 ns, or more than a day past
    the later of `observed_at_ns` and the wall clock). `printable` says the caller knows every
    string of the fill to be printable already (see
    :func:`~publisher.venues.fields.printable_json`).
    """
    # empty strings count as absent
    fill_id = fill.fill_id or fill.trade_id
    if not fill_id:
        raise _Invalid("no fill_id or trade_id")
    order_id = fill.order_id
    if not order_id:
        raise _Invalid("no order_id")
    instrument = fill.market_ticker or fill.ticker
    if not instrument:
        raise _Invalid("no market_ticker or ticker")
    # the identifiers reach Kafka keys and consumers' terminals: no control characters (their
    # length the decoder checked); one isprintable() over the lot, unless the page is known printable
    if not printable and not (fill_id + order_id + instrument + (fill.trade_id or "")
                              + (fill.client_order_id or "")).isprintable():
        raise _Invalid(_text_problem(fill, fill_id, order_id, instrument) or "unprintable identifier")
    executed_at_ns = _executed_at_ns(fill.created_time, fill.ts)
    if executed_at_ns < MIN_EXECUTED_AT_NS or executed_at_ns > observed_at_ns + MAX_FUTURE_NS:
        _check_time(executed_at_ns, observed_at_ns)
    outcome = _outcome(fill.outcome_side, fill.book_side, fill.side, fill.action)
    yes_price, no_price = _prices(fill.yes_price_dollars, fill.no_price_dollars, fill.yes_price_fixed,
                                  fill.no_price_fixed, fill.yes_price, fill.no_price)
    quantity = _quantity(fill.count_fp, fill.count)
    fee = None if fill.fee_cost is None else _fee(fill.fee_cost)
    is_taker = fill.is_taker
    return FillEvent(
        venue="kalshi",
        source=source,
        fill_id=fill_id,
        order_id=order_id,
        instrument=instrument,
        side="buy" if outcome == "yes" else "sell",
        price=yes_price,
        quantity=quantity,
        fee=fee,
        fee_currency="USD",
        liquidity=None if is_taker is None else ("taker" if is_taker else "maker"),
        executed_at_ns=executed_at_ns,
        observed_at_ns=observed_at_ns,
        venue_fields=VenueFields(
            trade_id=fill.trade_id,
            outcome_side=fill.outcome_side,  # type: ignore[arg-type]  # validated by _outcome
            book_side=fill.book_side,  # type: ignore[arg-type]
            side=fill.side,
            action=fill.action,
            subaccount_number=fill.subaccount_number,
            exchange_index=fill.exchange_index,
            client_order_id=fill.client_order_id,
            no_price=no_price,
        ),
    )


def _check_time(executed_at_ns: int, observed_at_ns: int) -> None:
    """:class:`_Invalid` unless `executed_at_ns` is a plausible execution time (the rare path of
    :func:`normalise`: a time before 2000 or past `observed_at_ns` plus a day)."""
    # a poll's clock can lag the wall clock (tests drive it by hand): the later of the two
    # decides what "in the future" means
    problem = executed_at_problem(executed_at_ns, max(observed_at_ns, time.time_ns()))
    if problem is not None:
        raise _Invalid(problem)


def _invalid(raw: msgspec.Raw, error: str) -> InvalidFill:
    repaired = repaired_utf8(raw)
    if repaired is not None:
        # the dead letter must stay JSON: it carries the fill with the bad bytes replaced
        raw, error = repaired, f"{error} (bytes that are not UTF-8 replaced by U+FFFD in raw)"
    try:
        ids = _ids_decoder.decode(raw)
    except msgspec.DecodeError:
        return InvalidFill(key=raw_key(raw), error=error, raw=raw)
    key = _id_of(ids) or raw_key(raw)
    created = ids.created_time if isinstance(ids.created_time, str) else None
    ts = ids.ts if isinstance(ids.ts, int) and not isinstance(ids.ts, bool) else None
    executed_at_ns: int | None
    try:
        executed_at_ns = _executed_at_ns(created, ts)
        # an absurd time must not date the dead letter either (the window and checkpoint keep it)
        _check_time(executed_at_ns, 0)
    except ValueError:
        executed_at_ns = None
    return InvalidFill(key=key, error=error, raw=raw, executed_at_ns=executed_at_ns)


def _id_of(ids: _Ids) -> str | None:
    """A fill's dedupe key: its fill_id, else its trade_id (as :func:`normalise` picks them)."""
    return next((c for c in (ids.fill_id, ids.trade_id) if isinstance(c, str) and c), None)


def _known_key(raw: msgspec.Raw) -> str | None:
    """The dedupe key the fill would get, decoded or not, read without decoding the rest; None
    when unreadable (the fill is then decoded in full)."""
    try:
        return _id_of(_ids_decoder.decode(raw))
    except msgspec.DecodeError:
        return None


def decode_fill(raw: msgspec.Raw, *, source: str, observed_at_ns: int) -> FillEvent | InvalidFill:
    """Decode and normalise one raw fill; never raises for a bad fill."""
    try:
        return normalise(_fill_decoder.decode(raw), source=source, observed_at_ns=observed_at_ns)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _invalid(raw, f"undecodable fill: {exc}")
    except ValueError as exc:
        return _invalid(raw, str(exc))


# --------------------------------------------------------------------------------------------------
# The adapter


class KalshiPages(PageCodec[_Key, KalshiFill]):
    """A Kalshi fills page (`{"fills": [...], "cursor": ...}`) at each depth of
    :class:`~publisher.venues.pages.PageReader`'s strategy, for one source."""

    def __init__(self, source: str):
        self.source = source

    def read_keys(self, body: bytes) -> tuple[Sequence[_Key], str | None]:
        page = _key_page_decoder.decode(body)
        return page.fills or (), page.cursor

    def key_ids(self, keys: Sequence[_Key]) -> list[str]:
        # the id normalise() gives a fill: its fill_id, else its trade_id (empty counts as absent)
        return [key.fill_id or key.trade_id or "" for key in keys]

    def read_typed(self, body: bytes) -> tuple[Sequence[KalshiFill], str | None]:
        page = _typed_page_decoder.decode(body)
        return page.fills or (), page.cursor

    def fill_ids(self, fills: Sequence[KalshiFill]) -> list[str]:
        return [fill.fill_id or fill.trade_id or "" for fill in fills]

    def printable(self, body: bytes) -> bool:
        return printable_json(body)

    def normalise(self, fill: KalshiFill, observed_at_ns: int, printable: bool) -> FillEvent:
        return normalise(fill, source=self.source, observed_at_ns=observed_at_ns, printable=printable)

    def refused(self, fill: KalshiFill, raw: msgspec.Raw, error: ValueError, observed_at_ns: int) -> InvalidFill:
        return _invalid(raw, str(error))

    def read_raw(self, body: bytes) -> tuple[Sequence[msgspec.Raw], str | None]:
        try:
            page = _page_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise VenueDecodeError(f"undecodable fills page: {exc}") from None
        return page.fills or (), page.cursor

    def raw_id(self, raw: msgspec.Raw, observed_at_ns: int) -> str:
        return _known_key(raw) or ""

    def decode(self, raw: msgspec.Raw, observed_at_ns: int) -> FillEvent | InvalidFill:
        return decode_fill(raw, source=self.source, observed_at_ns=observed_at_ns)


class KalshiAdapter(VenueAdapter):
    """Polls `GET /portfolio/fills` from `since_ns` (minus a second), following the cursor, and
    `GET /historical/fills` as well when `since_ns` lies below the fills cutoff.

    Kalshi's cursor does not remember filters, so `min_ts`, `limit` and `subaccount` are sent again
    with every page. Kalshi filters by time itself, so no paging state is kept between polls.

    The live fills are read first, then the cutoff (when the cached one is stale, or near the
    floor), then the historical fills: a fill the venue moves to the historical tier while the
    poll reads the live one is found on the historical endpoint, which is read last and without
    an upper bound. The same fill seen on both is kept once. Pages are read by
    :class:`~publisher.venues.pages.PageReader` with :class:`KalshiPages`.
    """

    venue = "kalshi"

    def __init__(self, source: KalshiSource, client: VenueClient, *, max_pages: int = MAX_PAGES_PER_POLL):
        self._source = source
        self._client = client
        self._max_pages = max_pages
        self.pages = KalshiPages(source.name)
        #: the fills cutoff (ns) and when it was read (our clock, ns); None until first read
        self._cutoff: tuple[int, int] | None = None

    def _params(self, since_ns: int) -> dict[str, str | int]:
        # seconds, floored; one second earlier because whether min_ts is inclusive is undocumented
        params: dict[str, str | int] = {"min_ts": max(0, since_ns // 1_000_000_000 - 1), "limit": self._source.page_limit}
        if self._source.subaccount is not None:
            params["subaccount"] = self._source.subaccount
        return params

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int],
                    published: PublishedFills | None = None) -> FetchResult:
        """Every fill since `since_ns`, all pages of both tiers; `paging_state` is unused (always None)."""
        reader = PageReader(self.pages, published)
        pages = await self._walk(FILLS_PATH, since_ns, reader, clock_ns, self._max_pages)
        if since_ns < await self._fills_cutoff(since_ns, clock_ns()):
            await self._walk(HISTORICAL_FILLS_PATH, since_ns, reader, clock_ns, self._max_pages - pages)
        return reader.result

    async def _walk(self, path: str, since_ns: int, reader: PageReader[_Key, KalshiFill], clock_ns: Callable[[], int],
                    max_pages: int) -> int:
        """Read every page of one fills endpoint into `reader`; returns how many pages."""
        seen_cursors: set[str] = set()
        # (fills, first id, last id) of the page before: a venue serving one page again under new
        # cursors is caught at the second copy, not after max_pages pages
        previous: tuple[int, str, str] | None = None
        cursor: str | None = None
        for page_number in range(1, max_pages + 1):
            params = self._params(since_ns)
            if cursor:
                params["cursor"] = cursor
            body = await self._client.get(path, params=params)
            page = await reader.read(body, clock_ns())
            cursor = page.cursor
            if not cursor:
                return page_number
            if cursor in seen_cursors:
                raise PagingError(f"{path}: the venue returned a cursor it had already returned (paging loop)")
            ends = (len(page.ids), page.ids[0], page.ids[-1]) if page.ids else None
            if ends is not None and ends == previous:
                raise PagingError(f"{path}: the venue returned the same page again under a new cursor "
                                           "(paging loop)")
            previous = ends
            seen_cursors.add(cursor)
        raise PagingError(f"more than {self._max_pages} pages in one poll; the venue keeps paging")

    async def _fills_cutoff(self, since_ns: int, now_ns: int) -> int:
        """The fills cutoff, read again when the cached one is old or lies near `since_ns`."""
        cached = self._cutoff
        if cached is None or now_ns - cached[1] >= CUTOFF_REFRESH_NS or since_ns < cached[0] + CUTOFF_MARGIN_NS:
            cached = self._cutoff = (cutoff_ns(await self._client.get(CUTOFF_PATH)), now_ns)
        return cached[0]


def create_adapter(
    source: KalshiSource, secret: Secret, transport: httpx.AsyncBaseTransport, on_request: Callable[[], None]
) -> VenueAdapter:
    """Build the adapter over `transport` (the source's connection pool)."""
    auth = KalshiAuth(_shared_signer(source.api_key_id, secret.reveal()))
    client = VenueClient.for_source(transport, source, auth=auth, describe_error=describe_error, on_request=on_request)
    return KalshiAdapter(source, client)


VENUE = VenueSpec(
    name="kalshi",
    source_config=KalshiSource,
    create_adapter=create_adapter,
    check_secret=check_secret,
    venue_fields=frozenset({"trade_id", "outcome_side", "book_side", "side", "action", "subaccount_number",
                            "exchange_index", "client_order_id", "no_price"}),
    account_scope=account_scope,
    describe_secret=describe_secret,
)
