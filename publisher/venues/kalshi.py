"""Kalshi Trade API v2 fills adapter: RSA-PSS request signing, cursor paging, every Fill shape.

Kalshi's Fill object changed shape several times (integer cents, then `*_fixed` dollar strings,
then `*_dollars` strings and `count_fp`; legacy `side`/`action` giving way to `outcome_side` and
`book_side`), and a poller must read all of them, including mixtures. :class:`KalshiFill` therefore
declares every field optional and :func:`normalise` does all validation, so one odd fill becomes an
:class:`~publisher.venues.base.InvalidFill` instead of failing its page.

Normalisation is in YES terms (see the contract): `side` is `buy` when the fill adds YES contracts
(buy yes / sell no, `outcome_side` yes) and `price` is the YES price in dollars.
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import functools
import logging
import re
import time
from collections.abc import Callable, Generator, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

import httpx
import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from publisher.event import FillEvent, VenueFields, plain
from publisher.secret import Secret
from publisher.venues.base import (
    FetchResult,
    FillCollector,
    InvalidFill,
    PagingError,
    SourceConfig,
    VenueAdapter,
    VenueError,
    decimal_text,
    ends_new,
    in_slices,
    is_positive,
    raw_key,
)
from publisher.venues.http import VenueClient, describe_json_error

__all__ = [
    "SOURCE_CONFIG",
    "KalshiAdapter",
    "KalshiAuth",
    "KalshiFill",
    "KalshiSigner",
    "KalshiSource",
    "check_secret",
    "create_adapter",
    "describe_error",
    "load_private_key",
    "normalise",
    "parse_rfc3339_ns",
    "sign",
]

log = logging.getLogger(__name__)


class KalshiSource(SourceConfig, tag="kalshi", kw_only=True):
    """A Kalshi account: key id plus RSA private key (PEM) from a file or env var."""

    secret_field = "private_key"

    api_key_id: str
    private_key_file: str | None = None
    private_key_env: str | None = None
    #: 0 is the primary account, 1..63 subaccounts; None asks for all of them
    subaccount: Annotated[int, msgspec.Meta(ge=0, le=63)] | None = None


SOURCE_CONFIG = KalshiSource

FILLS_PATH = "portfolio/fills"
"""Relative to `base_url` (which ends in `/trade-api/v2`): no leading slash, so httpx appends it to the
base path and the signed path is `/trade-api/v2/portfolio/fills`."""

#: a venue that keeps handing out cursors is misbehaving; this many pages is ~2M fills at limit 200
MAX_PAGES_PER_POLL = 10_000


# --------------------------------------------------------------------------------------------------
# Authentication


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """Load an unencrypted RSA private key from PEM text.

    Raises :class:`ValueError` with a message that never quotes the key (cryptography's own messages
    are not relied on for that).
    """
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except TypeError:
        raise ValueError("the Kalshi private key is encrypted; a key without password is required") from None
    except (ValueError, UnsupportedAlgorithm, UnicodeError):
        raise ValueError("the Kalshi private key is not a valid PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"the Kalshi private key must be an RSA key, not {type(key).__name__}")
    return key


def sign(private_key: rsa.RSAPrivateKey, timestamp_ms: int, method: str, path: str) -> str:
    """Kalshi request signature: base64 RSA-PSS(SHA-256, MGF1 SHA-256, salt = digest length).

    The message is `timestamp_ms + METHOD + path`, the path being the URL path from the host without
    the query string (Kalshi rejects signatures over the query).
    """
    message = f"{timestamp_ms}{method.upper()}{path}".encode()
    signature = private_key.sign(
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return base64.b64encode(signature).decode("ascii")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


#: how long a signature may be sent again, by any source of the same key, for the same method
#: and path; 0 signs every request
SIGNATURE_REUSE_MS = 250


class KalshiSigner:
    """Signatures of one API key, shared by every source that uses the key.

    An RSA-2048 PSS signature costs ~0.7 ms of CPU (38% of a core at 1,000 sources polling each
    second). It covers the timestamp, method and path only, not the query, so the sources of one
    key (its subaccounts) polling the fills path at about the same time can all send the same
    one: a signature is reused for `reuse_ms`, which keeps the timestamp within a quarter of a
    second of "now". Kalshi's docs do not say whether a signature may be sent twice; should
    Kalshi refuse a reused one (401) while a fresh one works, :class:`KalshiAuth` retries with a
    fresh signature and calls :meth:`stop_reusing`, and from then on every request is signed.
    """

    def __init__(self, key_id: str, private_key: rsa.RSAPrivateKey, *, clock_ms: Callable[[], int] = _now_ms,
                 reuse_ms: int = SIGNATURE_REUSE_MS):
        self.key_id = key_id
        self._private_key = private_key
        self._clock_ms = clock_ms
        self.reuse_ms = reuse_ms
        self._recent: dict[tuple[str, str], tuple[int, str]] = {}

    def __repr__(self) -> str:
        return f"KalshiSigner(key_id={self.key_id!r})"

    def signature(self, method: str, path: str, *, fresh: bool = False) -> tuple[int, str, bool]:
        """(timestamp ms, signature, whether it was reused) for a request to `path`."""
        now = self._clock_ms()
        if not fresh and self.reuse_ms > 0:
            recent = self._recent.get((method, path))
            if recent is not None and 0 <= now - recent[0] < self.reuse_ms:
                return recent[0], recent[1], True
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
    # one signer (and one parsed key) per API key for all the sources using it
    return KalshiSigner(key_id, load_private_key(pem))


def check_secret(secret: Secret) -> None:
    """Raise :class:`ValueError` unless the secret is an unencrypted RSA private key in PEM."""
    load_private_key(secret.reveal())


def describe_error(status: int, body: bytes) -> str:
    """`code: message` from Kalshi's `{code, message, details}` or `{"error": ...}` error bodies."""
    # 429 is {"error": "too many requests"}; some errors nest {code, message} under "error"
    return describe_json_error(body, code_keys=("code",), message_keys=("message", "error"), nested="error")


# --------------------------------------------------------------------------------------------------
# Wire format


class KalshiFill(msgspec.Struct, kw_only=True, gc=False):
    """A Kalshi fill in any of its shapes (seed Nov 2025, fixed-point 2026, mixtures).

    Every field is optional here; which ones must be present is decided in :func:`normalise`.
    The legacy integer `price` (cents of the traded side) is deliberately not read: `yes_price`
    and `no_price` say the same unambiguously.
    """

    fill_id: str | None = None
    trade_id: str | None = None
    order_id: str | None = None
    client_order_id: str | None = None
    ticker: str | None = None
    market_ticker: str | None = None
    side: str | None = None
    action: str | None = None
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


class _TypedPage(msgspec.Struct, gc=False):
    # the fast path: the whole page in one decode; any fill of a wrong type fails it, and the
    # page is then read as _Page
    fills: list[KalshiFill]
    cursor: str | None = None


class _Page(msgspec.Struct, gc=False):
    # fills stay raw so that one undecodable fill cannot fail the whole page
    fills: list[msgspec.Raw]
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
    fills: list[_Key]
    cursor: str | None = None


_key_page_decoder = msgspec.json.Decoder(_KeyPage)
_typed_page_decoder = msgspec.json.Decoder(_TypedPage)
_page_decoder = msgspec.json.Decoder(_Page)
_fill_decoder = msgspec.json.Decoder(KalshiFill)
_ids_decoder = msgspec.json.Decoder(_Ids)


# --------------------------------------------------------------------------------------------------
# Normalisation


class _Invalid(ValueError):
    """A fill that cannot be normalised; the message says which field and why."""


_RFC3339 = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}\Z")


@functools.lru_cache(maxsize=4096)
def _utc_seconds(local: str, offset: str) -> int:
    """Epoch seconds of `YYYY-MM-DDTHH:MM:SS` at UTC offset `Z` or `+HH:MM`; memoised because the
    fills of one poll share a handful of seconds."""
    if not _LOCAL_TIME.match(local):
        raise ValueError("not an RFC 3339 date and time")
    year, month, day = int(local[0:4]), int(local[5:7]), int(local[8:10])
    hour, minute, second = int(local[11:13]), int(local[14:16]), int(local[17:19])
    dt.datetime(year, month, day, hour, minute, second)  # validates the calendar fields
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if offset not in ("Z", "z"):
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"bad UTC offset {offset!r}")
        # local time = UTC + offset, so UTC = local - offset
        seconds -= (1 if offset[0] == "+" else -1) * (hours * 3600 + minutes * 60)
    return seconds


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp, fraction kept exactly.

    `datetime` keeps only microseconds, so the fraction is parsed separately. Digits beyond the
    ninth are truncated (nanoseconds are the event's resolution). Raises :class:`ValueError`.
    """
    try:
        fraction = text[20:-1]
        if text[19:20] == "." and text[-1:] == "Z" and fraction.isdigit() and fraction.isascii():
            # Kalshi's own shape, `...THH:MM:SS.ffffffZ`, without the regular expression's cost
            return _utc_seconds(text[:19], "Z") * 1_000_000_000 + int(fraction[:9].ljust(9, "0"))
        match = _RFC3339.match(text)
        if match is None:
            raise ValueError("not an RFC 3339 timestamp")
        local, fraction, offset = match.groups()
        seconds = _utc_seconds(local, offset)
    except ValueError as exc:
        raise ValueError(f"{exc}: {text[:40]!r}") from None
    return seconds * 1_000_000_000 + (int(fraction[:9].ljust(9, "0")) if fraction else 0)


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


def normalise(fill: KalshiFill, *, source: str, observed_at_ns: int) -> FillEvent:
    """Turn one Kalshi fill of any shape into a :class:`FillEvent` in YES terms.

    Raises :class:`ValueError` (with a secret-free, field-naming message) when the fill is unusable.
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
        executed_at_ns=_executed_at_ns(fill.created_time, fill.ts),
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


def _invalid(raw: msgspec.Raw, error: str) -> InvalidFill:
    try:
        ids = _ids_decoder.decode(raw)
    except msgspec.DecodeError:
        return InvalidFill(key=raw_key(raw), error=error, raw=raw)
    key = _id_of(ids) or raw_key(raw)
    created = ids.created_time if isinstance(ids.created_time, str) else None
    ts = ids.ts if isinstance(ids.ts, int) and not isinstance(ids.ts, bool) else None
    try:
        executed_at_ns: int | None = _executed_at_ns(created, ts)
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


class KalshiAdapter(VenueAdapter):
    """Polls `GET /portfolio/fills` from `since_ns` (minus a second), following the cursor.

    Kalshi's cursor does not remember filters, so `min_ts`, `limit` and `subaccount` are sent again
    with every page. Kalshi filters by time itself, so no paging state is kept between polls.
    """

    venue = "kalshi"

    def __init__(self, source: KalshiSource, client: VenueClient, *, max_pages: int = MAX_PAGES_PER_POLL):
        self._source = source
        self._client = client
        self._max_pages = max_pages
        #: the last page read in this poll held mostly new fills: read the next one typed first
        #: (see _read_page)
        self._mostly_new = False

    def _params(self, since_ns: int) -> dict[str, str | int]:
        # seconds, floored; one second earlier because whether min_ts is inclusive is undocumented
        params: dict[str, str | int] = {"min_ts": max(0, since_ns // 1_000_000_000 - 1), "limit": self._source.page_limit}
        if self._source.subaccount is not None:
            params["subaccount"] = self._source.subaccount
        return params

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int]) -> FetchResult:
        """Every fill since `since_ns`, all pages; `paging_state` is unused (always None)."""
        collector = FillCollector()
        seen_cursors: set[str] = set()
        cursor: str | None = None
        self._mostly_new = False  # a poll starts as a re-read of fills already published, the usual case
        for _ in range(self._max_pages):
            params = self._params(since_ns)
            if cursor:
                params["cursor"] = cursor
            body = await self._client.get(FILLS_PATH, params=params)
            cursor = await self._read_page(body, collector, clock_ns())
            if not cursor:
                return collector.result
            if cursor in seen_cursors:
                raise PagingError("the venue returned a cursor it had already returned (paging loop)")
            seen_cursors.add(cursor)
        raise PagingError(f"more than {self._max_pages} pages in one poll; the venue keeps paging")

    async def _read_page(self, body: bytes, collector: FillCollector, observed_at_ns: int) -> str | None:
        """Decode one page into `collector` and return its cursor.

        Which decoding is cheapest depends on the page: while pages hold mostly fills already
        published (the overlap re-read), the fills' keys first, counting those :attr:`known` to
        be published instead of normalising them, and then only the new fills; while they hold
        mostly new fills (a backlog), the whole page typed in one go and every fill normalised
        (unless an end of it is published already, see :func:`~publisher.venues.base.ends_new`);
        fill by fill, when a fill is malformed. Fills are handled in slices (:func:`in_slices`)
        so a big page does not hold the event loop.
        """
        source = self._source.name
        known = self.known
        if known is not None and not self._mostly_new:
            try:
                keys = _key_page_decoder.decode(body)
            except msgspec.ValidationError:
                return self._read_raw(body, collector, observed_at_ns)  # a fill is not even an object
            except msgspec.DecodeError as exc:
                raise VenueError("decode", f"undecodable fills page: {exc}") from None
            fresh = await _fresh(collector, [_key_of(key) for key in keys.fills], known)
            self._mostly_new = 2 * len(fresh) > len(keys.fills)
            if len(fresh) < len(keys.fills):
                if fresh:
                    page_raws = _page_decoder.decode(body).fills
                    async for _, chunk in in_slices(fresh):
                        for i in chunk:
                            collector.add(decode_fill(page_raws[i], source=source, observed_at_ns=observed_at_ns))
                return keys.cursor
            known = None  # all new: checked already
        try:
            page = _typed_page_decoder.decode(body)
        except msgspec.ValidationError:
            return self._read_raw(body, collector, observed_at_ns)  # a fill of the wrong shape
        except msgspec.DecodeError as exc:
            raise VenueError("decode", f"undecodable fills page: {exc}") from None
        fills: Sequence[KalshiFill] = page.fills
        indices: Sequence[int] = range(len(fills))
        if known is not None and fills and not ends_new(known, _key_of(fills[0]), _key_of(fills[-1])):
            indices = await _fresh(collector, [_key_of(fill) for fill in fills], known)
            self._mostly_new = 2 * len(indices) > len(fills)
        raws: list[msgspec.Raw] | None = None
        async for _, part in in_slices(indices):
            for i in part:
                try:
                    collector.add(normalise(fills[i], source=source, observed_at_ns=observed_at_ns))
                except ValueError as exc:
                    # the dead letter carries the venue's bytes: re-read the page raw (rare)
                    raws = raws or _page_decoder.decode(body).fills
                    collector.add(_invalid(raws[i], str(exc)))
        return page.cursor

    def _read_raw(self, body: bytes, collector: FillCollector, observed_at_ns: int) -> str | None:
        """:meth:`_read_page` for a page with a malformed fill: each fill decoded on its own."""
        try:
            page = _page_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise VenueError("decode", f"undecodable fills page: {exc}") from None
        source = self._source.name
        known = self.known
        for raw in page.fills:
            if known is not None and collector.skip_known(_known_key(raw), known) is not None:
                continue
            collector.add(decode_fill(raw, source=source, observed_at_ns=observed_at_ns))
        return page.cursor


def _key_of(fill: KalshiFill | _Key) -> str | None:
    # the dedupe key normalise() gives the fill: its fill_id, else its trade_id (empty: none)
    return fill.fill_id or fill.trade_id or None


async def _fresh(collector: FillCollector, keys: list[str | None], known: Callable[[str], bool]) -> list[int]:
    """Indices of the fills :meth:`FillCollector.skip_known_page` does not skip."""
    return [i for i, verdict in enumerate(await collector.skip_known_sliced(keys, known)) if verdict is None]


def create_adapter(
    source: KalshiSource, secret: Secret, transport: httpx.AsyncBaseTransport, on_request: Callable[[], None]
) -> VenueAdapter:
    """Build the adapter over `transport` (the source's connection pool)."""
    auth = KalshiAuth(_shared_signer(source.api_key_id, secret.reveal()))
    client = VenueClient.for_source(transport, source, auth=auth, describe_error=describe_error, on_request=on_request)
    return KalshiAdapter(source, client)
