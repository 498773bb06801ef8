"""Zero Latency Labs simulator: `GET /api/v1/fills` (offset paging) and `GET /api/v1/fills/{id}`.

Behaviour follows ZLL's public API documentation (docs/venues.md); where ZLL's docs are silent the simulator makes it
switchable:

- auth: `X-API-KEY` (or `X-DEVICE-KEY`) must equal the configured base64 API key, else 401. A key
  pinned to one subaccount (`pinned_subaccount`) gets 404 for every other subaccount and for
  their fills by id.
- order: `newest` or `oldest` first; `listing="sorted"` (default) sorts by (time, id) as a database
  index would, so a late fill (old `time`, visible now) lands in the middle of the result set;
  `listing="insertion"` lists fills in the order they became visible (ZLL documents no order),
  so a late fill sits among the newest with an old time.
- fees may be negative (a maker rebate): the generator gives some maker fills a rebate.
- ZLL-specific `bad_fill` modes (pass `mode=`): `time_ms`, `time_us` (`time` in the wrong unit),
  `time_huge` (`1e30`), `invalid_utf8` (bytes that are not UTF-8 in `market`), `control_chars`
  (an escape sequence in `market`), `long_market` (a 100 KB market).
- offsets count from the start of the current result set: fills arriving while a client pages
  shift every later page. Besides the background generator, :meth:`ZllSimulator.insert_after_page`
  makes that happen deterministically right after a chosen page is served.
- errors are `application/problem+json` `{type, title, status, detail, code}`.
"""

from __future__ import annotations

import bisect
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal, get_args

import msgspec

from publisher.event import plain
from publisher.httpserver import Request, Response
from publisher.sim.base import SimFill, Simulator, int_param
from publisher.sim.generator import pick, random_uuid, to_decimal

Order = Literal["newest", "oldest"]
Listing = Literal["sorted", "insertion"]

#: market -> (typical price, price tick, quantity step)
MARKETS: dict[str, tuple[Decimal, Decimal, Decimal]] = {
    "BTC-PERP": (Decimal("65000"), Decimal("0.5"), Decimal("0.001")),
    "ETH-PERP": (Decimal("3400"), Decimal("0.01"), Decimal("0.01")),
    "SOL-PERP": (Decimal("150"), Decimal("0.001"), Decimal("0.1")),
}
_FEE_RATES = {"TAKER": Decimal("0.0005"), "MAKER": Decimal("0.0002")}
#: how often a generated maker fill earns a rebate (a negative fee) instead of paying
_REBATE_SHARE = 0.25
_REBATE_RATE = Decimal("-0.0001")
#: what the `invalid_utf8` mode puts into `market`; the rendered body swaps it for bytes that are
#: not UTF-8 (a dict cannot hold them)
_NOT_UTF8_MARK = "\u0001not-utf-8\u0001"
_NOT_UTF8_JSON = msgspec.json.encode(_NOT_UTF8_MARK)
_NOT_UTF8_BYTES = b'"BTC-\xff\xfePERP"'
ZLL_BAD_FILL_MODES = ("time_ms", "time_us", "time_huge", "invalid_utf8", "control_chars", "long_market")
_USDC_CENT = Decimal("0.01")
_FILL_PATH = re.compile(r"^/api/v1/fills/([^/]+)$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ZLL_CODES = {
    "authentication_error": "unauthorized",
    "invalid_parameters": "invalid_parameter",
    "internal_server_error": "internal_error",
}


class ZllFill(SimFill, kw_only=True, frozen=True):
    """A ZLL fill as the ground truth: `fill_id` is the wire `id`, `executed_at_ns` the wire `time`."""

    account_id: int
    subaccount_index: int
    portfolio_index: int
    market: str
    side: Literal["LONG", "SHORT"]
    price: Decimal
    quantity: Decimal
    fee: Decimal
    liquidity: Literal["TAKER", "MAKER"]
    request_id: str

    def wire(self) -> dict[str, Any]:
        """The fill as ZLL sends it (every field required)."""
        return {
            "account_id": self.account_id,
            "fee": plain(self.fee),
            "id": self.fill_id,
            "liquidity": self.liquidity,
            "market": self.market,
            "portfolio_index": self.portfolio_index,
            "price": plain(self.price),
            "quantity": plain(self.quantity),
            "request_id": self.request_id,
            "side": self.side,
            "subaccount_index": self.subaccount_index,
            "time": self.executed_at_ns,
        }

    def expected_event(self) -> dict[str, Any]:
        """The contract's event fields for this fill as served without faults."""
        return {
            "venue": "zll",
            "fill_id": self.fill_id,
            "order_id": self.request_id,
            "instrument": self.market,
            "side": "buy" if self.side == "LONG" else "sell",
            "price": plain(self.price),
            "quantity": plain(self.quantity),
            "fee": plain(self.fee),
            "fee_currency": "USDC",
            "liquidity": self.liquidity.lower(),
            "executed_at_ns": self.executed_at_ns,
            "venue_fields": {
                "account_id": self.account_id,
                "subaccount_index": self.subaccount_index,
                "portfolio_index": self.portfolio_index,
            },
        }


_KNOWN_FIELDS = frozenset(ZllFill.__struct_fields__) - {"executed_at_ns", "visible_at_ns"}
_CHOICE_FIELDS = frozenset({"markets", "subaccounts", "portfolios"})


class ZllSimulator(Simulator[ZllFill]):
    """A ZLL venue for one account; see the module docstring.

    `api_key` is the base64 key clients send; `order` is `newest` or `oldest`; `subaccounts` and
    `portfolios` are what the generator draws from (explicit fills may use any index).
    """

    venue = "zll"

    def __init__(
        self,
        *,
        api_key: str,
        order: Order = "newest",
        listing: Listing = "sorted",
        account_id: int = 1024,
        pinned_subaccount: int | None = None,
        max_limit: int = 1000,
        markets: Iterable[str] = tuple(MARKETS),
        subaccounts: Iterable[int] = (0,),
        portfolios: Iterable[int] = (0,),
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        super().__init__(host=host, port=port, seed=seed, clock_ns=clock_ns)
        if order not in get_args(Order):
            raise ValueError("order must be 'newest' or 'oldest'")
        if listing not in get_args(Listing):
            raise ValueError("listing must be 'sorted' or 'insertion'")
        self.listing: Listing = listing
        self._inserted: dict[int, list[ZllFill]] = {}
        #: an `invalid_utf8` corruption was rendered: bodies need the swap (see _body)
        self._not_utf8 = False
        #: `GET /api/v1/fills/{id}` requests by id
        self.by_id_requests: Counter[str] = Counter()
        self.api_key = api_key
        self.order: Order = order
        self.account_id = account_id
        self.pinned_subaccount = pinned_subaccount
        self.max_limit = max_limit
        self.markets = tuple(markets)
        self.subaccounts = tuple(subaccounts)
        self.portfolios = tuple(portfolios)
        self._by_subaccount: dict[int, list[ZllFill]] = {}
        #: armed mid-pagination inserts: (page offset to insert after, how many, execution time or None)
        self._inserts: list[tuple[int, int, int | None]] = []

    def insert_after_page(self, offset: int, count: int, *, executed_at_ns: int | None = None) -> None:
        """Once, right after serving the list page at `offset`, add `count` fills to that result set.

        By default they land before the next page, so it shifts by `count`: newest first they are
        new fills (now); oldest first they are late fills dated just before the page served.
        """
        self._inserts.append((offset, count, executed_at_ns))

    # -- fills ---------------------------------------------------------------------------------

    def _new_fill(self, rng: random.Random, executed_at_ns: int, visible_at_ns: int, fields: dict[str, Any]) -> ZllFill:
        unknown = set(fields) - _KNOWN_FIELDS - _CHOICE_FIELDS
        if unknown:
            raise ValueError(f"unknown ZLL fill fields: {', '.join(sorted(unknown))}")
        market = pick(rng, fields, "market", self.markets, choices="markets")
        mid, tick, step = MARKETS.get(market, (Decimal(100), Decimal("0.01"), Decimal("0.01")))
        if "price" in fields:
            price = to_decimal(fields["price"], "price")
        else:
            price = (mid * Decimal(rng.randint(9_500, 10_500)) / 10_000 / tick).to_integral_value() * tick
        quantity = (
            to_decimal(fields["quantity"], "quantity")
            if "quantity" in fields
            else step * rng.randint(1, 2_000)
        )
        liquidity = pick(rng, fields, "liquidity", ("TAKER", "MAKER"))
        if "fee" in fields:
            fee = to_decimal(fields["fee"], "fee")
        else:
            rate = _FEE_RATES.get(liquidity, Decimal(0))
            if liquidity == "MAKER" and rng.random() < _REBATE_SHARE:
                rate = _REBATE_RATE
            fee = (price * quantity * rate).quantize(_USDC_CENT, rounding=ROUND_HALF_EVEN)
        side = pick(rng, fields, "side", ("LONG", "SHORT"))
        if price <= 0 or quantity <= 0 or side not in ("LONG", "SHORT") or liquidity not in _FEE_RATES:
            raise ValueError("ZLL fills need price > 0, quantity > 0, side LONG|SHORT, liquidity TAKER|MAKER")
        return ZllFill(
            fill_id=fields.get("fill_id") or random_uuid(rng),
            account_id=int(fields.get("account_id", self.account_id)),
            subaccount_index=pick(rng, fields, "subaccount_index", self.subaccounts, choices="subaccounts"),
            portfolio_index=pick(rng, fields, "portfolio_index", self.portfolios, choices="portfolios"),
            market=market,
            side=side,
            price=price,
            quantity=quantity,
            fee=fee,
            liquidity=liquidity,
            request_id=fields.get("request_id") or random_uuid(rng),
            executed_at_ns=executed_at_ns,
            visible_at_ns=visible_at_ns,
        )

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        if request.method != "GET" or not request.path.startswith("/api/v1/fills"):
            return self._error(404, "not_found", f"no route for {request.method} {request.path}")
        key = request.headers.get("x-api-key") or request.headers.get("x-device-key")
        if key != self.api_key:
            return self._error(401, "authentication_error", "missing or invalid API key")
        if request.path == "/api/v1/fills":
            return self._list(request)
        match = _FILL_PATH.match(request.path)
        if match is None:
            return self._error(404, "not_found", f"no route for {request.method} {request.path}")
        fill_id = match.group(1)
        self.by_id_requests[fill_id] += 1
        if not _UUID.match(fill_id):
            return self._error(400, "invalid_parameters", "id must be a UUID")
        fill = self._by_id.get(fill_id)
        if fill is None or (self.pinned_subaccount is not None and fill.subaccount_index != self.pinned_subaccount):
            return self._error(404, "not_found", "fill not found")
        return Response(200, self._body(self._render_page([fill])[0]))

    def _list(self, request: Request) -> Response:
        subaccount = int_param(request, "subaccount_index")
        if subaccount is None:
            return self._error(400, "invalid_parameters", "subaccount_index is required")
        portfolio = int_param(request, "portfolio_index")
        limit = int_param(request, "limit", default=100, lo=1, hi=self.max_limit)
        offset = int_param(request, "offset", default=0)
        assert limit is not None and offset is not None
        if self.pinned_subaccount is not None and subaccount != self.pinned_subaccount:
            return self._error(404, "not_found", "subaccount not found")
        page = self._page(subaccount, portfolio, offset, limit)
        body = self._body(self._render_page(page))
        self._run_inserts(offset, page, subaccount, portfolio)
        return Response(200, body)

    def _make_visible(self, fill: ZllFill) -> None:
        super()._make_visible(fill)
        bisect.insort(self._by_subaccount.setdefault(fill.subaccount_index, []), fill, key=SimFill.sort_key)
        self._inserted.setdefault(fill.subaccount_index, []).append(fill)

    def _page(self, subaccount: int, portfolio: int | None, offset: int, limit: int) -> list[ZllFill]:
        fills = (self._by_subaccount if self.listing == "sorted" else self._inserted).get(subaccount, [])
        if portfolio is not None:
            fills = [fill for fill in fills if fill.portfolio_index == portfolio]
        if self.order == "oldest":
            return fills[offset : offset + limit]
        # newest first without copying the whole subaccount: slice from the end, then reverse
        end = len(fills) - offset
        return fills[max(0, end - limit) : max(0, end)][::-1]

    def _run_inserts(self, offset: int, page: list[ZllFill], subaccount: int, portfolio: int | None) -> None:
        due = [entry for entry in self._inserts if entry[0] == offset]
        if not due:
            return
        self._inserts = [entry for entry in self._inserts if entry[0] != offset]
        for _, count, executed_at_ns in due:
            if executed_at_ns is None and self.order == "oldest" and page:
                executed_at_ns = page[0].executed_at_ns - 1
            fields: dict[str, Any] = {"subaccount_index": subaccount}
            if portfolio is not None:
                fields["portfolio_index"] = portfolio
            self.add_fills(count, executed_at_ns=executed_at_ns, **fields)

    def _error(self, status: int, code: str, message: str) -> Response:
        code = _ZLL_CODES.get(code, code)
        title = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}.get(
            status, "Internal Server Error"
        )
        problem = {
            "type": f"https://docs.zerolatencylabs.com/errors/{code}",
            "title": title,
            "status": status,
            "detail": message,
            "code": code,
        }
        return Response(status, msgspec.json.encode(problem), content_type="application/problem+json")

    def _rate_limited(self, retry_after: float | None) -> Response:
        response = self._error(429, "rate_limited", "rate limit exceeded, retry later")
        if retry_after is not None:
            response.headers.append(("Retry-After", f"{retry_after:g}"))
        return response

    # -- rendering -----------------------------------------------------------------------------

    def _wire(self, fill: ZllFill) -> dict[str, Any]:
        return fill.wire()

    def _corrupt(self, wire: dict[str, Any], mode: str) -> None:
        if mode in ("time_ms", "time_us"):
            wire["time"] //= 1_000_000 if mode == "time_ms" else 1000
        elif mode == "time_huge":
            wire["time"] = 1e30
        elif mode == "invalid_utf8":
            wire["market"] = _NOT_UTF8_MARK
            self._not_utf8 = True
        elif mode == "control_chars":
            wire["market"] = "BTC-\x1b[2JPERP"
        elif mode == "long_market":
            wire["market"] = "M" * 100_000
        elif mode == "missing_field":
            del wire["market"]
        elif mode == "bad_enum":
            wire["side"] = "SIDEWAYS"
        else:
            wire["price"] = "n/a"

    def _body(self, document: Any) -> bytes:
        body = super()._body(document)
        return body.replace(_NOT_UTF8_JSON, _NOT_UTF8_BYTES) if self._not_utf8 else body

    def _drift(self, wire: dict[str, Any]) -> None:
        # ZLL has no deprecated fields yet; drift is new fields only
        wire["margin_mode"] = "CROSS"
        wire["realized_pnl"] = "0"
        wire["trigger"] = {"kind": "LIMIT", "post_only": False}

    async def _control_extra(self, request: Request) -> Response | None:
        if (request.method, request.path) != ("POST", "/_sim/insert_after_page"):
            return None
        spec = msgspec.json.decode(request.body or b"{}")
        self.insert_after_page(int(spec["offset"]), int(spec["count"]), executed_at_ns=spec.get("executed_at_ns"))
        return Response(200, msgspec.json.encode(self.stats()))
