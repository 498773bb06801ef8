"""What both venue simulators share: the canonical fill store, faults, rate limit, control surface.

A simulator is a real HTTP server (:class:`publisher.sim.httpserver.HttpServer`) running in the caller's
event loop. It keeps the ground truth as canonical fills (:class:`SimFill` subclasses, sorted by
execution time then id, as a venue's database would order them) and renders them to the venue's
wire format on every request, so the same truth can be served in several shapes and with faults.

A fill becomes visible at `visible_at_ns` (default: when it is added); a *late* fill is executed in
the past but visible only from now on, as when a venue's REST view lags its matching engine.

The control surface under `/_sim/` lets a test or benchmark in another process drive a simulator.
It is NOT authenticated: this is a test double, never expose it beyond a test network.

- `GET /_sim/fills`: `{"fills": [canonical fill + "expected" event fields, ...]}` (visible ones)
- `POST /_sim/fills`: `{"n": how many, "late_s": s, "executed_at_ns": t, <field overrides>}`
- `POST /_sim/faults`: `{"kind": k, "count": n | "probability": p, <options>}`;
  `DELETE /_sim/faults` (all, or `?kind=k`)
- `POST /_sim/generator`: `{"rate_per_s": r, "late_fraction": f, "late_max_s": s, "burst_size": b,
  <field choices>}`; `DELETE /_sim/generator`
- `POST /_sim/rate_limit`: `{"per_s": r | null, "burst_s": 2}`
- `GET /_sim/stats`: requests served, rejections by reason, faults fired and armed, fill counts
"""

from __future__ import annotations

import abc
import asyncio
import base64
import bisect
import contextlib
import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Self, TypeVar

import msgspec

from publisher.sim.faults import Faults, malform
from publisher.sim.generator import run_generator
from publisher.sim.httpserver import DropConnection, HttpServer, Request, Response


class SimFill(msgspec.Struct, kw_only=True, frozen=True):
    """Fields every canonical fill has; venue subclasses add the rest."""

    fill_id: str
    executed_at_ns: int
    visible_at_ns: int

    def sort_key(self) -> tuple[int, str]:
        """Venue order: execution time, then id (a stable tie-break inside bursts)."""
        return (self.executed_at_ns, self.fill_id)

    def expected_event(self) -> dict[str, Any]:
        """The contract's event fields for this fill, minus `source`/`observed_at_ns`/`schema_version`."""
        raise NotImplementedError


F = TypeVar("F", bound=SimFill)


def encode_cursor(key: tuple[int, str]) -> str:
    """An opaque position: the sort key of the last fill served (filters are not part of it)."""
    return base64.urlsafe_b64encode(f"{key[0]}:{key[1]}".encode()).decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of :func:`encode_cursor`; ValueError on anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        stamp, fill_id = text.split(":", 1)
        return int(stamp), fill_id
    except (ValueError, UnicodeError) as exc:
        raise ValueError("malformed cursor") from exc


class InvalidParameter(Exception):
    """A query parameter is missing or out of range; the venue answers 400."""


def int_param(request: Request, name: str, *, default: int | None = None, lo: int = 0, hi: int | None = None) -> int | None:
    """Query parameter `name` as an int within lo..hi, `default` when absent."""
    values = request.query.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.lstrip("-").isdigit() or not text.isascii():
        raise InvalidParameter(f"{name} must be an integer")
    value = int(text)
    if value < lo or (hi is not None and value > hi):
        raise InvalidParameter(f"{name} must be within {lo}..{hi if hi is not None else 'inf'}")
    return value


def str_param(request: Request, name: str) -> str | None:
    """Query parameter `name` (the last one when repeated), None when absent or empty."""
    values = request.query.get(name)
    return values[-1] if values and values[-1] else None


class _TokenBucket:
    """The venue's read budget: `per_s` requests a second, bursts of `burst_s` seconds of budget."""

    def __init__(self, per_s: float, burst_s: float):
        self.per_s = per_s
        self.capacity = max(1.0, per_s * burst_s)
        self._tokens = self.capacity
        self._stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.per_s)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Simulator(abc.ABC, Generic[F]):
    """Base of the venue simulators; see the module docstring.

    `seed` makes fill generation and probabilistic faults reproducible; `clock_ns` is the
    simulator's wall clock (execution and visibility times, Kalshi's timestamp check).
    """

    venue: ClassVar[str]

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        self._rng = random.Random(seed)
        self._clock_ns = clock_ns
        self.faults = Faults(None if seed is None else seed + 1)
        self._store: list[F] = []
        self._by_id: dict[str, F] = {}
        #: fill id -> its wire JSON, for fills served without data faults
        self._encoded: dict[str, msgspec.Raw] = {}
        self._pending: list[tuple[int, int, F]] = []
        self._pending_seq = itertools.count()
        #: fill id -> corruption mode, for fills a sticky `bad_fill` fault poisoned
        self.bad_fills: dict[str, str] = {}
        #: venue API requests received (the control surface is not counted)
        self.requests = 0
        #: venue API requests answered with an error or dropped, by reason
        self.rejected: Counter[str] = Counter()
        self._bucket: _TokenBucket | None = None
        self._generator: asyncio.Task[None] | None = None
        self._server = HttpServer(self._handle, host, port)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving."""
        await self._server.start()

    async def close(self) -> None:
        """Stop the generator and the server."""
        await self.stop_generator()
        await self._server.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound port."""
        return self._server.port

    @property
    def root_url(self) -> str:
        """`http://host:port` (the control surface lives at `root_url + "/_sim/..."`)."""
        return self._server.url

    @property
    def url(self) -> str:
        """The base URL a venue client is configured with."""
        return self._server.url

    # -- the fill store ------------------------------------------------------------------------

    @property
    def fills(self) -> list[F]:
        """Every visible canonical fill, in venue order (execution time, then id)."""
        self._promote()
        return list(self._store)

    @property
    def pending_fills(self) -> list[F]:
        """Fills added with a future `visible_at_ns` that the venue does not show yet."""
        return [entry[2] for entry in sorted(self._pending)]

    def get(self, fill_id: str) -> F | None:
        """The visible canonical fill with this id, if any."""
        self._promote()
        return self._by_id.get(fill_id)

    def expected_events(self) -> list[dict[str, Any]]:
        """:meth:`SimFill.expected_event` of every visible fill, in venue order."""
        return [fill.expected_event() for fill in self.fills]

    def add_fills(
        self,
        n: int,
        /,
        *,
        executed_at_ns: int | None = None,
        late_s: float | None = None,
        visible_at_ns: int | None = None,
        **fields: Any,
    ) -> list[F]:
        """Add `n` fills sharing one execution time and return them.

        The execution time is `executed_at_ns`, else now minus `late_s` (a late fill), else now.
        Several fills with one time are a burst: size it above the client's page limit to make it
        straddle a page boundary. `fields` override the randomly drawn values (venue-specific
        names, e.g. `ticker=`, `subaccount=`, `shape=` for Kalshi; `market=`, `subaccount_index=`
        for ZLL); list-valued `tickers=`/`markets=`/`subaccounts=` narrow the random choice.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        now = self._clock_ns()
        if executed_at_ns is None:
            executed_at_ns = now - int((late_s or 0.0) * 1e9)
        visible = now if visible_at_ns is None else visible_at_ns
        fills = [self._new_fill(self._rng, executed_at_ns, visible, fields) for _ in range(n)]
        for fill in fills:
            self._insert(fill)
        return fills

    def add_fill(self, **fields: Any) -> F:
        """Add one fill (see :meth:`add_fills` for the arguments) and return it."""
        return self.add_fills(1, **fields)[0]

    def add_bad_fill(self, mode: str = "non_numeric_price", **fields: Any) -> F:
        """Add one new fill that the venue serves malformed (`mode` as for `bad_fill`) in every
        answer, so the publisher never sees it well: it must go to the DLQ (arguments as
        :meth:`add_fills`)."""
        if mode not in BAD_FILL_MODES:
            raise ValueError(f"mode must be one of {', '.join(BAD_FILL_MODES)}")
        fill = self.add_fill(**fields)
        # synchronous with the insert: no answer can be rendered in between
        self.bad_fills[fill.fill_id] = mode
        return fill

    def _insert(self, fill: F) -> None:
        if fill.fill_id in self._by_id:
            raise ValueError(f"duplicate fill id {fill.fill_id}")
        if fill.visible_at_ns > self._clock_ns():
            heapq.heappush(self._pending, (fill.visible_at_ns, next(self._pending_seq), fill))
            return
        self._make_visible(fill)

    def _promote(self) -> None:
        now = self._clock_ns()
        while self._pending and self._pending[0][0] <= now:
            self._make_visible(heapq.heappop(self._pending)[2])

    def _make_visible(self, fill: F) -> None:
        """Put `fill` where the venue's queries find it (subclasses add their own indexes)."""
        bisect.insort(self._store, fill, key=SimFill.sort_key)
        self._by_id[fill.fill_id] = fill

    @abc.abstractmethod
    def _new_fill(self, rng: random.Random, executed_at_ns: int, visible_at_ns: int, fields: dict[str, Any]) -> F:
        """A new canonical fill; values not in `fields` are drawn from `rng`."""

    # -- background generation ----------------------------------------------------------------

    def start_generator(
        self,
        rate_per_s: float,
        *,
        late_fraction: float = 0.0,
        late_max_s: float = 60.0,
        burst_size: int = 1,
        **fields: Any,
    ) -> None:
        """Add fills in the background at `rate_per_s` on average (replaces a running generator).

        Fills come in groups of `burst_size` sharing one execution time, so the fill rate stays
        `rate_per_s`. A `late_fraction` of the groups is executed up to `late_max_s` in the past.
        """
        if rate_per_s <= 0 or burst_size < 1 or not 0.0 <= late_fraction <= 1.0:
            raise ValueError("rate_per_s must be > 0, burst_size >= 1, late_fraction within 0..1")
        self._stop_generator_now()

        def add_group(late_s: float | None) -> None:
            self.add_fills(burst_size, late_s=late_s, **fields)

        self._generator = asyncio.create_task(
            run_generator(add_group, self._rng, rate_per_s / burst_size, late_fraction, late_max_s),
            name=f"{self.venue}-sim-generator",
        )

    async def stop_generator(self) -> None:
        """Stop the background generator, if running."""
        task = self._generator
        self._stop_generator_now()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stop_generator_now(self) -> None:
        if self._generator is not None:
            self._generator.cancel()
            self._generator = None

    # -- rate limit ----------------------------------------------------------------------------

    def set_rate_limit(self, per_s: float | None, burst_s: float = 2.0) -> None:
        """Answer 429 beyond `per_s` requests a second (bursts of `burst_s` s); None switches off."""
        self._bucket = None if per_s is None else _TokenBucket(per_s, burst_s)

    # -- request handling ----------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            try:
                return await self._control(request)
            except (ValueError, TypeError, KeyError, msgspec.DecodeError) as exc:
                return _json(400, {"error": str(exc)})
        self.requests += 1
        self._promote()
        answer = await self._common_faults()
        if answer is None and self._bucket is not None and not self._bucket.allow():
            answer = self._rate_limited(None)
        if answer is None:
            try:
                answer = await self._serve(request)
            except InvalidParameter as exc:
                answer = self._error(400, "invalid_parameters", str(exc))
        if answer.status >= 400:
            self.rejected[_reason(answer.status)] += 1
        return answer

    async def _common_faults(self) -> Response | None:
        """The faults that replace or delay the whole answer, in the order a client would meet them."""
        if fault := self.faults.take("slow"):
            await asyncio.sleep(float(fault.options.get("delay_s", 30.0)))
        for kind, reset in (("reset", True), ("drop_connection", False)):
            if self.faults.take(kind):  # type: ignore[arg-type]
                self.rejected[kind] += 1
                raise DropConnection(reset=reset)
        if self.faults.take("http_500"):
            return self._error(500, "internal_server_error", "simulated internal error")
        if fault := self.faults.take("http_429"):
            return self._rate_limited(fault.options.get("retry_after"))
        if self.faults.take("auth"):
            return self._error(401, "authentication_error", "simulated authentication failure")
        return None

    @abc.abstractmethod
    async def _serve(self, request: Request) -> Response:
        """Answer a venue API request (faults that replace the whole answer already applied)."""

    @abc.abstractmethod
    def _error(self, status: int, code: str, message: str) -> Response:
        """A venue-format error answer."""

    @abc.abstractmethod
    def _rate_limited(self, retry_after: float | None) -> Response:
        """The venue's 429 answer."""

    # -- rendering -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _wire(self, fill: F) -> dict[str, Any]:
        """`fill` as the venue sends it."""

    @abc.abstractmethod
    def _corrupt(self, wire: dict[str, Any], mode: str) -> None:
        """Break one field of a wire fill in place (`bad_fill` modes)."""

    @abc.abstractmethod
    def _drift(self, wire: dict[str, Any]) -> None:
        """Add unknown fields / drop deprecated ones in place (`schema_drift`)."""

    def wire_json(self, fill: F) -> bytes:
        """`fill`'s JSON exactly as a page would carry it now: a sticky `bad_fill` corruption
        applied, no schema drift (tests compare dead letters' `raw` with it)."""
        wire = self._wire(fill)
        mode = self.bad_fills.get(fill.fill_id)
        if mode:
            self._corrupt(wire, mode)
        return msgspec.json.encode(wire)

    def _render_page(self, page: list[F]) -> list[dict[str, Any] | msgspec.Raw]:
        """Wire fills of one page with the data faults applied.

        A fill no fault touches is encoded once and reused: benchmarks re-read the same overlap
        window from a thousand sources, and rendering dominated the simulator's time.
        """
        bad_index, bad_mode = -1, ""
        if page and (fault := self.faults.take("bad_fill")):
            bad_index = self._rng.randrange(len(page))
            bad_mode = fault.options.get("mode") or self._rng.choice(BAD_FILL_MODES)
            if fault.options.get("sticky", True):
                self.bad_fills[page[bad_index].fill_id] = bad_mode
        drift = bool(page) and self.faults.take("schema_drift") is not None
        rendered: list[dict[str, Any] | msgspec.Raw] = []
        for index, fill in enumerate(page):
            mode = bad_mode if index == bad_index else self.bad_fills.get(fill.fill_id)
            if not mode and not drift:
                raw = self._encoded.get(fill.fill_id)
                if raw is None:
                    raw = self._encoded[fill.fill_id] = msgspec.Raw(msgspec.json.encode(self._wire(fill)))
                rendered.append(raw)
                continue
            wire = self._wire(fill)
            if mode:
                self._corrupt(wire, mode)
            if drift:
                self._drift(wire)
            rendered.append(wire)
        return rendered

    def _body(self, document: Any) -> bytes:
        """JSON body of a successful answer, broken when `malformed_json` fires."""
        body = msgspec.json.encode(document)
        if fault := self.faults.take("malformed_json"):
            return malform(body, fault.options.get("mode", "truncated"))
        return body

    # -- control surface -----------------------------------------------------------------------

    async def _control(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/_sim/fills"):
            return _json(200, {"fills": [_truth(fill) for fill in self.fills]})
        if route == ("POST", "/_sim/fills"):
            spec = _json_object(request)
            fills = self.add_fills(int(spec.pop("n", 1)), **spec)
            return _json(200, {"fills": [_truth(fill) for fill in fills]})
        if route == ("POST", "/_sim/faults"):
            self.faults.configure(_json_object(request))
            return _json(200, self.stats())
        if route == ("DELETE", "/_sim/faults"):
            kind = str_param(request, "kind")
            self.faults.clear(kind)  # type: ignore[arg-type]
            return _json(200, self.stats())
        if route == ("POST", "/_sim/generator"):
            spec = _json_object(request)
            self.start_generator(float(spec.pop("rate_per_s")), **spec)
            return _json(200, self.stats())
        if route == ("DELETE", "/_sim/generator"):
            await self.stop_generator()
            return _json(200, self.stats())
        if route == ("POST", "/_sim/rate_limit"):
            spec = _json_object(request)
            per_s = spec.get("per_s")
            self.set_rate_limit(None if per_s is None else float(per_s), float(spec.get("burst_s", 2.0)))
            return _json(200, self.stats())
        if route == ("GET", "/_sim/stats"):
            return _json(200, self.stats())
        answer = await self._control_extra(request)
        return answer if answer is not None else _json(404, {"error": "no such control endpoint"})

    async def _control_extra(self, request: Request) -> Response | None:
        """Venue-specific control endpoints; None when `request` is not one."""
        return None

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks (also `GET /_sim/stats`)."""
        self._promote()
        return {
            "venue": self.venue,
            "requests": self.requests,
            "rejected": dict(self.rejected),
            "faults_fired": dict(self.faults.fired),
            "faults_armed": [msgspec.to_builtins(fault) for fault in self.faults.armed()],
            "fills": len(self._store),
            "pending_fills": len(self._pending),
            "bad_fills": dict(self.bad_fills),
            "generator_running": self._generator is not None and not self._generator.done(),
        }


BAD_FILL_MODES: tuple[str, ...] = ("non_numeric_price", "missing_field", "bad_enum")


def _reason(status: int) -> str:
    return {400: "invalid_parameters", 401: "auth", 404: "not_found", 429: "rate_limited"}.get(status, f"http_{status}")


def _truth(fill: SimFill) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(fill)
    document["expected"] = fill.expected_event()
    return document


def _json(status: int, document: Any) -> Response:
    return Response(status, msgspec.json.encode(document))


def _json_object(request: Request) -> dict[str, Any]:
    document = msgspec.json.decode(request.body or b"{}")
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object")
    return document
