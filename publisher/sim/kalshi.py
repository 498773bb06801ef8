"""Kalshi Trade API v2 simulator: `GET /portfolio/fills` with Kalshi's auth, cursors and fill shapes.

Behaviour follows Kalshi's public API documentation (docs/venues.md); where Kalshi's docs are silent the simulator picks one
plausible answer and makes the others switchable:

- auth: `KALSHI-ACCESS-KEY` must name a configured key id, `KALSHI-ACCESS-TIMESTAMP` must be
  milliseconds within `timestamp_window_s` of now (a seconds value is ~56 years off, so it fails),
  and `KALSHI-ACCESS-SIGNATURE` must verify with the public key as RSA-PSS (SHA-256, MGF1 SHA-256,
  salt = digest length) over `timestamp + method + path`, the path without the query string.
  A signature may be sent again while its timestamp is in the window; `reject_reused_signatures`
  refuses a signature seen before (replay protection, which Kalshi's docs neither state nor rule
  out).
- order: newest first (execution time, then fill id, descending).
- `min_ts`/`max_ts` are whole Unix seconds compared with the execution second: `min_ts` inclusive
  and `max_ts` exclusive by default (`min_ts_inclusive`, `max_ts_inclusive` switch them).
- the cursor encodes only the position after the last fill served: a client that does not resend
  its filters with a cursor gets unfiltered pages, exactly as the real venue.
- the last page carries `"cursor": ""` (`last_cursor="omit"` drops the key, `"null"` sends null).
- `limit` above `max_limit` (1000 since April 2026; 200 before) is a 400.
- keys are RSA (RSA-PSS as above) or Ed25519 (the message bytes signed directly); a key added
  with a `subaccount` is restricted to it: an omitted `subaccount` means that one, another is 403.
- `ticker` takes up to 100 comma-separated tickers; fills carry `exchange_index` shards
  (`exchange_indexes`), and `fee_cost` has 6 decimals in the current shapes.
- historical tier: fills executed before `fills_cutoff_ns` (None: none) are served only by
  `GET /historical/fills` (same Fill object and cursor; `ticker`, `min_ts`, `max_ts`, `limit`,
  `cursor`, `subaccount`; no `exchange_index` filter), and `GET /historical/cutoff` reports the
  cutoff as `trades_created_ts` (RFC 3339). :meth:`KalshiSimulator.move_cutoff_after` moves it
  after a number of requests, as when the venue migrates fills while a client pages;
  `POST /_sim/cutoff {"cutoff_ns": t | null}` sets it from another process (`--fills-cutoff-age-s`
  of the standalone simulator at start). `stats()` counts the requests answered per endpoint.
- not simulated: the WebSocket feed, write endpoints.

Shapes (`KalshiShape`), oldest first: `seed` (Nov 2025: integer cents and counts, `*_fixed`
strings, `side`/`action`, whole-second `created_time`), `transition` (seed plus `count_fp`,
`*_dollars` and `fee_cost`), `fixed_only` (integer fields and `client_order_id` removed),
`current_legacy` (current plus deprecated `side`/`action`) and `current` (mid 2026). A simulator
built with `shape="mixed"` picks each fill's shape from a hash of its id, so every poll shows a
fill the same way.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Literal, get_args

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from publisher.event import plain
from publisher.httpserver import Request, Response
from publisher.sim.base import (
    InvalidParameter,
    SimFill,
    Simulator,
    decode_cursor,
    encode_cursor,
    int_param,
    str_param,
)
from publisher.sim.generator import pick, random_uuid, to_decimal

KalshiShape = Literal["seed", "transition", "fixed_only", "current_legacy", "current"]
SHAPES: tuple[KalshiShape, ...] = get_args(KalshiShape)
#: what the simulator's `shape` accepts: one shape for every fill, or `mixed`
SHAPE_MODES: tuple[str, ...] = (*SHAPES, "mixed")
LastCursor = Literal["empty", "omit", "null"]

DEFAULT_TICKERS: tuple[str, ...] = ("KXBTCD-26JUN30-T65000", "KXHIGHNY-26JUN30-B80.5", "INXD-26JUN30-B6000")

_SEED_LIKE = ("seed", "transition")  # integer counts and cents are on the wire
_WITH_FEE = ("transition", "current_legacy", "current")
_WITH_LEGACY_SIDE = ("seed", "transition", "fixed_only", "current_legacy")
_WITH_OUTCOME = ("current_legacy", "current")
_WITH_FIXED = ("seed", "transition", "fixed_only")
_WITH_DOLLARS = ("transition", "current_legacy", "current")

_CENT = Decimal("0.01")
_FIXED = Decimal("0.0001")
_MICRO = Decimal("0.000001")
_ONE = Decimal(1)
_SECOND_NS = 1_000_000_000


def shape_for(fill_id: str, mode: str) -> KalshiShape:
    """The shape a fill is served in: `mode` itself, or for `mixed` one chosen by the id's hash."""
    if mode == "mixed":
        digest = hashlib.sha256(fill_id.encode()).digest()
        return SHAPES[digest[0] % len(SHAPES)]
    if mode not in SHAPES:
        raise ValueError(f"unknown Kalshi shape {mode!r}; known: {', '.join(SHAPE_MODES)}")
    return mode


def _fits(value: Decimal, quantum: Decimal) -> bool:
    return value == value.quantize(quantum, rounding=ROUND_FLOOR)


def _dollars(value: Decimal) -> str:
    # Kalshi prints 4 decimals, and up to 6 for sub-penny prices
    return str(value.quantize(_FIXED if _fits(value, _FIXED) else _MICRO))


def _rfc3339(executed_at_ns: int, fraction: bool) -> str:
    seconds, rest = divmod(executed_at_ns, _SECOND_NS)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{rest // 1000:06d}Z" if fraction else f"{text}Z"


class KalshiFill(SimFill, kw_only=True, frozen=True):
    """A Kalshi fill as the ground truth; :meth:`wire` renders it in its `shape`.

    Prices are YES prices in dollars (the NO price is 1 - YES); `fee` is None for shapes that
    carry no `fee_cost`; `subaccount` None is sent as `subaccount_number: null` (the primary).
    Execution times have microsecond resolution, the finest `created_time` shows.
    """

    trade_id: str
    order_id: str
    client_order_id: str
    ticker: str
    outcome_side: Literal["yes", "no"]
    action: Literal["buy", "sell"]
    count: Decimal
    yes_price: Decimal
    fee: Decimal | None
    is_taker: bool
    subaccount: int | None
    exchange_index: int
    shape: KalshiShape

    @property
    def no_price(self) -> Decimal:
        """The NO price in dollars."""
        return _ONE - self.yes_price

    @property
    def legacy_side(self) -> Literal["yes", "no"]:
        """The deprecated `side`: the contract bought or sold (sell-no adds YES, like buy-yes)."""
        if self.action == "buy":
            return self.outcome_side
        return "no" if self.outcome_side == "yes" else "yes"

    def wire(self) -> dict[str, Any]:
        """The fill as Kalshi sends it in this fill's shape."""
        shape = self.shape
        wire: dict[str, Any] = {"fill_id": self.fill_id, "trade_id": self.trade_id, "order_id": self.order_id}
        if shape in _SEED_LIKE:
            wire["client_order_id"] = self.client_order_id
        wire["ticker"] = self.ticker
        wire["market_ticker"] = self.ticker
        if shape in _WITH_LEGACY_SIDE:
            wire["side"] = self.legacy_side
            wire["action"] = self.action
        if shape in _WITH_OUTCOME:
            wire["outcome_side"] = self.outcome_side
            wire["book_side"] = "bid" if self.outcome_side == "yes" else "ask"
        if shape in _SEED_LIKE:
            yes_cents, no_cents = int(self.yes_price * 100), int(self.no_price * 100)
            wire["count"] = int(self.count)
            wire["price"] = yes_cents if self.legacy_side == "yes" else no_cents
            wire["yes_price"] = yes_cents
            wire["no_price"] = no_cents
        if shape in _WITH_FIXED:
            wire["yes_price_fixed"] = str(self.yes_price.quantize(_FIXED))
            wire["no_price_fixed"] = str(self.no_price.quantize(_FIXED))
        if shape != "seed":
            wire["count_fp"] = str(self.count.quantize(_CENT))
        if shape in _WITH_DOLLARS:
            wire["yes_price_dollars"] = _dollars(self.yes_price)
            wire["no_price_dollars"] = _dollars(self.no_price)
        wire["is_taker"] = self.is_taker
        if shape in _WITH_FEE and self.fee is not None:
            # 6 decimals since the fixed-point migration, 4 before
            wire["fee_cost"] = str(self.fee.quantize(_MICRO if shape in _WITH_OUTCOME else _FIXED))
        wire["created_time"] = _rfc3339(self.executed_at_ns, fraction=shape != "seed")
        wire["ts"] = self.executed_at_ns // _SECOND_NS
        if shape in _WITH_OUTCOME:
            wire["subaccount_number"] = self.subaccount
            wire["exchange_index"] = self.exchange_index
        return wire

    @property
    def wire_executed_at_ns(self) -> int:
        """The execution time a client can read off the wire (whole seconds in the seed shape)."""
        if self.shape == "seed":
            return self.executed_at_ns // _SECOND_NS * _SECOND_NS
        return self.executed_at_ns

    def expected_event(self) -> dict[str, Any]:
        """The contract's event fields for this fill as served without faults (YES terms)."""
        wire = self.wire()
        extras = ("trade_id", "outcome_side", "book_side", "side", "action", "subaccount_number", "exchange_index")
        venue_fields = {name: wire[name] for name in (*extras, "client_order_id") if wire.get(name) is not None}
        venue_fields["no_price"] = plain(self.no_price)
        return {
            "venue": "kalshi",
            "fill_id": self.fill_id,
            "order_id": self.order_id,
            "instrument": self.ticker,
            "side": "buy" if self.outcome_side == "yes" else "sell",
            "price": plain(self.yes_price),
            "quantity": plain(self.count),
            "fee": None if "fee_cost" not in wire else plain(self.fee),  # type: ignore[arg-type]
            "fee_currency": "USD",
            "liquidity": "taker" if self.is_taker else "maker",
            "executed_at_ns": self.wire_executed_at_ns,
            "venue_fields": venue_fields,
        }


def check_representable(shape: KalshiShape, count: Decimal, yes_price: Decimal, fee: Decimal | None) -> None:
    """ValueError unless the values can be written exactly in `shape`."""
    if not _ONE > yes_price > 0:
        raise ValueError(f"yes_price {yes_price} is not within (0, 1) dollars")
    if count <= 0:
        raise ValueError(f"count {count} is not positive")
    count_quantum, price_quantum = {
        "seed": (_ONE, _CENT),
        "transition": (_ONE, _CENT),
        "fixed_only": (_CENT, _FIXED),
    }.get(shape, (_CENT, _MICRO))
    if not _fits(count, count_quantum):
        raise ValueError(f"count {count} cannot be written in the {shape} shape (step {count_quantum})")
    if not _fits(yes_price, price_quantum):
        raise ValueError(f"yes_price {yes_price} cannot be written in the {shape} shape (step {price_quantum})")
    fee_quantum = _MICRO if shape in _WITH_OUTCOME else _FIXED
    if fee is not None and (fee < 0 or not _fits(fee, fee_quantum)):
        raise ValueError(f"fee {fee} must be non-negative with at most {6 if fee_quantum == _MICRO else 4} decimals")


def generate_key_pair(kind: Literal["rsa", "ed25519"] = "rsa") -> tuple[bytes, bytes]:
    """A new key pair, RSA-2048 or Ed25519, as (private PEM (PKCS#8, unencrypted), public PEM)."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PublicKeyInput = bytes | str | PublicKey


def _load_public_key(key: PublicKeyInput) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return key
    loaded = serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
    if not isinstance(loaded, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise ValueError("Kalshi keys are RSA or Ed25519 keys")
    return loaded


_KNOWN_FIELDS = frozenset(KalshiFill.__struct_fields__) - {"executed_at_ns", "visible_at_ns"}
_CHOICE_FIELDS = frozenset({"tickers", "subaccounts", "exchange_indexes"})
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class KalshiSimulator(Simulator[KalshiFill]):
    """A Kalshi venue serving `GET {base_path}/portfolio/fills`; see the module docstring.

    `public_key` (PEM or a loaded key) verifies requests signed by `key_id`; :meth:`add_key` admits
    more keys. `shape` is one of :data:`SHAPE_MODES`. :attr:`url` is the base URL including
    `base_path`, as a client is configured with it.
    """

    venue = "kalshi"

    def __init__(
        self,
        *,
        public_key: PublicKeyInput,
        key_id: str,
        shape: str = "current",
        base_path: str = "/trade-api/v2",
        max_limit: int = 1000,
        min_ts_inclusive: bool = True,
        max_ts_inclusive: bool = False,
        last_cursor: LastCursor = "empty",
        timestamp_window_s: float = 30.0,
        reject_reused_signatures: bool = False,
        tickers: Iterable[str] = DEFAULT_TICKERS,
        exchange_indexes: Iterable[int] = (0,),
        fills_cutoff_ns: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        super().__init__(host=host, port=port, seed=seed, clock_ns=clock_ns)
        shape_for("", shape)  # validates the name
        if last_cursor not in get_args(LastCursor):
            raise ValueError(f"last_cursor must be one of {get_args(LastCursor)}")
        self.shape = shape
        self.base_path = base_path.rstrip("/")
        self.max_limit = max_limit
        self.min_ts_inclusive = min_ts_inclusive
        self.max_ts_inclusive = max_ts_inclusive
        self.last_cursor: LastCursor = last_cursor
        self.timestamp_window_s = timestamp_window_s
        self.reject_reused_signatures = reject_reused_signatures
        self._used_signatures: set[str] = set()
        self.tickers = tuple(tickers)
        self.exchange_indexes = tuple(exchange_indexes)
        #: fills executed before this (ns) are on the historical endpoint only; None: none are
        self.fills_cutoff_ns = fills_cutoff_ns
        self._cutoff_moves: list[tuple[int, int]] = []
        #: authenticated requests answered, per endpoint (`fills`, `historical_fills`, `cutoff`)
        self.served: Counter[str] = Counter()
        self._keys: dict[str, PublicKey] = {}
        #: key id -> the subaccount a restricted key is locked to
        self._restricted: dict[str, int] = {}
        self.add_key(key_id, public_key)

    def add_key(self, key_id: str, public_key: PublicKeyInput, *, subaccount: int | None = None) -> None:
        """Accept requests signed by another API key (RSA or Ed25519; all keys see the same
        account); with `subaccount`, a key restricted to that subaccount."""
        self._keys[key_id] = _load_public_key(public_key)
        if subaccount is None:
            self._restricted.pop(key_id, None)
        else:
            self._restricted[key_id] = subaccount

    def move_cutoff_after(self, requests: int, cutoff_ns: int) -> None:
        """Set :attr:`fills_cutoff_ns` to `cutoff_ns` once `requests` more venue requests were
        answered (the venue migrating fills to the historical tier while a client pages)."""
        self._cutoff_moves.append((self.requests + requests, cutoff_ns))

    @property
    def url(self) -> str:
        """Base URL including `base_path`, e.g. `http://127.0.0.1:PORT/trade-api/v2`."""
        return self.root_url + self.base_path

    # -- fills ---------------------------------------------------------------------------------

    def _new_fill(
        self, rng: random.Random, executed_at_ns: int, visible_at_ns: int, fields: dict[str, Any]
    ) -> KalshiFill:
        unknown = set(fields) - _KNOWN_FIELDS - _CHOICE_FIELDS
        if unknown:
            raise ValueError(f"unknown Kalshi fill fields: {', '.join(sorted(unknown))}")
        fill_id = fields.get("fill_id") or random_uuid(rng)
        shape = shape_for(fill_id, fields.get("shape") or self.shape)
        count = to_decimal(fields["count"], "count") if "count" in fields else self._draw_count(rng, shape)
        yes_price = to_decimal(fields["yes_price"], "yes_price") if "yes_price" in fields else self._draw_price(rng, shape)
        is_taker = bool(fields["is_taker"]) if "is_taker" in fields else rng.random() < 0.6
        if "fee" in fields:
            fee = None if fields["fee"] is None else to_decimal(fields["fee"], "fee")
        else:
            fee = _draw_fee(rng, count, yes_price, is_taker)
        if shape not in _WITH_FEE:
            fee = None
        check_representable(shape, count, yes_price, fee)
        outcome_side = pick(rng, fields, "outcome_side", ("yes", "no"))
        action = pick(rng, fields, "action", ("buy", "sell"))
        if outcome_side not in ("yes", "no") or action not in ("buy", "sell"):
            raise ValueError("outcome_side must be yes|no and action buy|sell")
        return KalshiFill(
            fill_id=fill_id,
            # Kalshi made trade_id equal to fill_id when it reshaped the object
            trade_id=fields.get("trade_id") or (fill_id if shape in _WITH_OUTCOME else random_uuid(rng)),
            order_id=fields.get("order_id") or random_uuid(rng),
            client_order_id=fields.get("client_order_id") or random_uuid(rng),
            ticker=pick(rng, fields, "ticker", self.tickers, choices="tickers"),
            outcome_side=outcome_side,
            action=action,
            count=count,
            yes_price=yes_price,
            fee=fee,
            is_taker=is_taker,
            subaccount=pick(rng, fields, "subaccount", (0,), choices="subaccounts"),
            exchange_index=pick(rng, fields, "exchange_index", self.exchange_indexes, choices="exchange_indexes"),
            shape=shape,
            # created_time shows microseconds at best
            executed_at_ns=executed_at_ns // 1000 * 1000,
            visible_at_ns=visible_at_ns,
        )

    @staticmethod
    def _draw_count(rng: random.Random, shape: KalshiShape) -> Decimal:
        if shape not in _SEED_LIKE and rng.random() < 0.3:
            return Decimal(rng.randint(1, 50_000)) / 100  # fractional contracts
        return Decimal(rng.randint(1, 250))

    @staticmethod
    def _draw_price(rng: random.Random, shape: KalshiShape) -> Decimal:
        if shape not in _SEED_LIKE:
            draw = rng.random()
            if shape != "fixed_only" and draw < 0.05:
                return Decimal(rng.randint(1, 999_999)) / 1_000_000
            if draw < 0.2:
                return Decimal(rng.randint(1, 9_999)) / 10_000  # sub-penny tick
        return Decimal(rng.randint(1, 99)) / 100

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        for move in [move for move in self._cutoff_moves if move[0] < self.requests]:
            self.fills_cutoff_ns = move[1]
            self._cutoff_moves.remove(move)
        paths = {self.base_path + "/portfolio/fills": False, self.base_path + "/historical/fills": True}
        cutoff_path = self.base_path + "/historical/cutoff"
        if request.method != "GET" or (request.path not in paths and request.path != cutoff_path):
            return self._error(404, "not_found", "not found", details=f"{request.method} {request.path}")
        key_id, problem = self._authenticate(request)
        if problem is not None:
            return self._error(401, "authentication_error", "authentication failed", details=problem)
        if request.path == cutoff_path:
            self.served["cutoff"] += 1
            return Response(200, msgspec.json.encode(self._cutoffs()))
        historical = paths[request.path]
        self.served["historical_fills" if historical else "fills"] += 1
        limit = int_param(request, "limit", default=100, lo=1, hi=self.max_limit)
        min_ts = int_param(request, "min_ts")
        max_ts = int_param(request, "max_ts")
        subaccount = int_param(request, "subaccount", hi=63)
        # the historical endpoint has no exchange_index filter (an unknown parameter is ignored)
        exchange_index = None if historical else int_param(request, "exchange_index")
        ticker_text = str_param(request, "ticker")
        order_id = str_param(request, "order_id")
        cursor = str_param(request, "cursor")
        assert limit is not None
        tickers = None if ticker_text is None else set(ticker_text.split(","))
        if tickers is not None and len(ticker_text.split(",")) > 100:  # type: ignore[union-attr]
            raise InvalidParameter("ticker takes at most 100 comma-separated tickers")
        locked = self._restricted.get(key_id or "")
        if locked is not None:
            if subaccount is not None and subaccount != locked:
                return self._error(403, "forbidden", "this API key is restricted to another subaccount")
            subaccount = locked

        store = self._store
        lo, hi = 0, len(store)
        if self.fills_cutoff_ns is not None:
            split = bisect.bisect_left(store, (self.fills_cutoff_ns, ""), key=SimFill.sort_key)
            lo, hi = (0, split) if historical else (split, hi)
        elif historical:
            hi = 0
        if cursor is not None:
            try:
                hi = min(hi, bisect.bisect_left(store, decode_cursor(cursor), key=SimFill.sort_key))
            except ValueError:
                raise InvalidParameter("cursor is malformed") from None
        if max_ts is not None:
            bound = (max_ts + 1 if self.max_ts_inclusive else max_ts) * _SECOND_NS
            hi = min(hi, bisect.bisect_left(store, (bound, ""), key=SimFill.sort_key))
        if min_ts is not None:
            bound = (min_ts if self.min_ts_inclusive else min_ts + 1) * _SECOND_NS
            lo = max(lo, bisect.bisect_left(store, (bound, ""), key=SimFill.sort_key))

        page: list[KalshiFill] = []
        more = False
        for index in range(hi - 1, lo - 1, -1):  # newest first
            fill = store[index]
            if (
                (tickers is not None and fill.ticker not in tickers)
                or (order_id is not None and fill.order_id != order_id)
                or (subaccount is not None and (fill.subaccount or 0) != subaccount)
                or (exchange_index is not None and fill.exchange_index != exchange_index)
            ):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(fill)

        document: dict[str, Any] = {"fills": self._render_page(page)}
        if more:
            document["cursor"] = encode_cursor(page[-1].sort_key())
        elif self.last_cursor != "omit":
            document["cursor"] = "" if self.last_cursor == "empty" else None
        return Response(200, self._body(document))

    def stats(self) -> dict[str, Any]:
        """The common counters, the fills cutoff and the requests answered per endpoint."""
        return {**super().stats(), "fills_cutoff_ns": self.fills_cutoff_ns, "served": dict(self.served)}

    async def _control_extra(self, request: Request) -> Response | None:
        # `POST /_sim/cutoff {"cutoff_ns": t | null}`: move the fills cutoff (null: nothing is
        # historical), for tests and benchmarks driving a simulator in another process
        if (request.method, request.path) != ("POST", "/_sim/cutoff"):
            return None
        spec = msgspec.json.decode(request.body or b"{}")
        if not isinstance(spec, dict) or "cutoff_ns" not in spec:
            raise ValueError('expected {"cutoff_ns": <ns since the epoch> | null}')
        value = spec["cutoff_ns"]
        self.fills_cutoff_ns = None if value is None else int(value)
        return Response(200, msgspec.json.encode(self.stats()))

    def _cutoffs(self) -> dict[str, Any]:
        """`GET /historical/cutoff`; fills go by `trades_created_ts` (the epoch: nothing historical)."""
        fills = _rfc3339(self.fills_cutoff_ns or 0, fraction=True)
        return {"market_settled_ts": fills, "trades_created_ts": fills, "orders_updated_ts": fills}

    def _authenticate(self, request: Request) -> tuple[str | None, str | None]:
        """(the key id, why the request's credentials are refused or None when they are good)."""
        return request.headers.get("kalshi-access-key"), self._check_credentials(request)

    def _check_credentials(self, request: Request) -> str | None:
        key_id = request.headers.get("kalshi-access-key")
        stamp = request.headers.get("kalshi-access-timestamp")
        signature = request.headers.get("kalshi-access-signature")
        if not key_id or not stamp or not signature:
            return "missing KALSHI-ACCESS-KEY, KALSHI-ACCESS-TIMESTAMP or KALSHI-ACCESS-SIGNATURE"
        public_key = self._keys.get(key_id)
        if public_key is None:
            return "unknown API key"
        if not stamp.isdigit() or not stamp.isascii():
            return "KALSHI-ACCESS-TIMESTAMP must be Unix milliseconds"
        if abs(self._clock_ns() // 1_000_000 - int(stamp)) > self.timestamp_window_s * 1000:
            return "KALSHI-ACCESS-TIMESTAMP is not within the allowed window (milliseconds expected)"
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return "KALSHI-ACCESS-SIGNATURE is not base64"
        message = (stamp + request.method + request.path).encode()
        try:
            if isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(raw_signature, message)
            else:
                public_key.verify(raw_signature, message, _PSS, hashes.SHA256())
        except InvalidSignature:
            return "signature does not verify"
        if self.reject_reused_signatures:
            if signature in self._used_signatures:
                return "KALSHI-ACCESS-SIGNATURE was used before"
            self._used_signatures.add(signature)
        return None

    def _error(self, status: int, code: str, message: str, *, details: str = "") -> Response:
        body = msgspec.json.encode({"code": code, "message": message, "details": details})
        return Response(status, body)

    def _rate_limited(self, retry_after: float | None) -> Response:
        headers = [] if retry_after is None else [("Retry-After", f"{retry_after:g}")]
        return Response(429, b'{"error": "too many requests"}', headers=headers)

    # -- rendering -----------------------------------------------------------------------------

    def _wire(self, fill: KalshiFill) -> dict[str, Any]:
        return fill.wire()

    def _corrupt(self, wire: dict[str, Any], mode: str) -> None:
        if mode == "missing_field":
            wire.pop("ticker", None)
            wire.pop("market_ticker", None)
        elif mode == "bad_enum":
            for name in ("outcome_side", "side"):
                if name in wire:
                    wire[name] = "maybe"
            if "book_side" in wire:
                wire["book_side"] = "middle"
        else:  # non_numeric_price: every YES price field, so no fallback can rescue the fill
            for name in ("yes_price_dollars", "yes_price_fixed", "yes_price", "price"):
                if name in wire:
                    wire[name] = "n/a"

    def _drift(self, wire: dict[str, Any]) -> None:
        wire["settlement_currency"] = "USD"
        wire["fee_rebate_dollars"] = "0.0000"
        wire["trade_meta"] = {"venue_seq": 1, "flags": []}
        # deprecated fields leave only once their replacement is on the wire
        if "outcome_side" in wire:
            wire.pop("side", None)
            wire.pop("action", None)
        if "count_fp" in wire:
            wire.pop("count", None)
        if "yes_price_dollars" in wire or "yes_price_fixed" in wire:
            for name in ("price", "yes_price", "no_price"):
                wire.pop(name, None)
        if "yes_price_dollars" in wire:
            wire.pop("yes_price_fixed", None)
            wire.pop("no_price_fixed", None)
        wire.pop("client_order_id", None)
        wire.pop("ts", None)


def _draw_fee(rng: random.Random, count: Decimal, yes_price: Decimal, is_taker: bool) -> Decimal:
    # Kalshi's published schedule: 7% (taker) or 1.75% (maker) of C * P * (1 - P), rounded up to
    # the cent; rebates accumulate per order, so a fill's fee_cost is sometimes below that
    rate = Decimal("0.07") if is_taker else Decimal("0.0175")
    fee = (rate * count * yes_price * (_ONE - yes_price)).quantize(_CENT, rounding=ROUND_CEILING)
    if rng.random() < 0.1:
        fee = (fee * Decimal(rng.randint(0, 99)) / 100).quantize(_FIXED, rounding=ROUND_FLOOR)
    return fee
