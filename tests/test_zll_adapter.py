"""ZLL adapter: offset paging in every order, with fills arriving mid-poll, over httpx.MockTransport."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

import httpx
import pytest

from publisher.secret import Secret
from publisher.venues import zll
from publisher.venues.errors import VenueError
from publisher.venues.http import RateLimiter, VenueClient
from publisher.venues.results import FetchResult

BASE_URL = "https://zll.test"
API_KEY = "c2VjcmV0LWFwaS1rZXktdmFsdWU="
T = 1_718_900_000_000_000_000
#: the fake wall clock: a little after the fills' times (an execution time past it by more than a
#: day is not plausible)
NOW = T + 10**12

Order = Literal["asc", "desc", "stored"]


def fill(n: int, time: int) -> dict[str, Any]:
    return {
        "id": f"00000000-0000-0000-0000-{n:012d}",
        "account_id": 1024,
        "subaccount_index": 0,
        "portfolio_index": 0,
        "market": "BTC-PERP",
        "side": "LONG" if n % 2 else "SHORT",
        "price": "64998.50",
        "quantity": "0.25",
        "fee": "8.12",
        "liquidity": "TAKER",
        "request_id": f"10000000-0000-0000-0000-{n:012d}",
        "time": time,
    }


class FakeZll:
    """A ZLL fills list. `order` asc/desc keeps it sorted by (time, insertion), as a database index would;
    `stored` serves it exactly as held. `before[n]` runs just before the n-th request (1-based)."""

    def __init__(self, times: list[int], order: Order):
        self.order = order
        self.fills: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.before: dict[int, Callable[[FakeZll], None]] = {}
        self.respond_with: httpx.Response | None = None
        #: what `GET /api/v1/fills/{id}` serves instead of the listed copy
        self.by_id: dict[str, Any] = {}
        for time in times:
            self.add(time)

    def add(self, time: int) -> dict[str, Any]:
        item = fill(len(self.fills), time)
        self.fills.append(item)
        return item

    def served(self) -> list[dict[str, Any]]:
        if self.order == "stored":
            return list(self.fills)
        ranked = sorted(enumerate(self.fills), key=lambda pair: (pair[1]["time"], pair[0]))
        items = [f for _, f in ranked]
        return items if self.order == "asc" else items[::-1]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        hook = self.before.get(len(self.requests))
        if hook is not None:
            hook(self)
        if self.respond_with is not None:
            return self.respond_with
        if request.url.path.startswith("/api/v1/fills/"):  # one fill by id
            fill_id = request.url.path.rsplit("/", 1)[1]
            found = [f for f in self.fills if f.get("id") == fill_id]
            return httpx.Response(200, json=self.by_id.get(fill_id, found[0])) if found else problem(404, "not_found")
        offset = int(request.url.params.get("offset", "0"))
        limit = int(request.url.params.get("limit", "100"))
        return httpx.Response(200, json=self.served()[offset : offset + limit])

    def offsets(self) -> list[int]:
        """The offsets of the list requests."""
        return [int(r.url.params["offset"]) for r in self.list_requests()]

    def list_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/api/v1/fills"]

    def ids_since(self, since: int) -> set[str]:
        return {f["id"] for f in self.fills if f["time"] >= since}


def source(**overrides: Any) -> zll.ZllSource:
    fields: dict[str, Any] = {
        "name": "zll-main",
        "base_url": BASE_URL,
        "api_key_env": "ZLL_KEY",
        "subaccount_index": 0,
        "page_limit": 5,
        "max_requests_per_s": 100_000,
    }
    fields.update(overrides)
    return zll.ZllSource(**fields)


def adapter(venue: FakeZll, max_pages: int = 10_000, **overrides: Any) -> zll.ZllAdapter:
    client = VenueClient(
        httpx.MockTransport(venue),
        BASE_URL,
        auth=zll.ZllAuth(Secret(API_KEY)),
        limiter=RateLimiter(100_000),
        describe_error=zll.describe_error,
    )
    return zll.ZllAdapter(source(**overrides), client, max_pages=max_pages)


def ids(result: FetchResult) -> list[str]:
    found = [f.fill_id for f in result.fills]
    assert len(found) == len(set(found)), "a fill returned twice in one poll"
    return found


def times(count: int, start: int = 0) -> list[int]:
    return [T + (start + i) * 1000 for i in range(count)]


def resume(paging_state: Any) -> int | None:
    """The resume offset a paging state carries (beside the ends of the list, see test_zll_ends.py)."""
    return None if paging_state is None else paging_state.get("resume_offset")


# --------------------------------------------------------------------------------------------------
# Newest first


async def test_newest_first_stops_after_the_page_reaching_older_fills() -> None:
    venue = FakeZll(times(20), "desc")
    since = T + 12 * 1000  # fills 12..19 are new: pages [19..15], [14..10] reach an older one
    result = await adapter(venue).fetch(since, None, lambda: NOW + 7)
    assert venue.offsets() == [0, 5]
    assert venue.ids_since(since) <= set(ids(result))
    assert resume(result.paging_state) is None
    assert all(f.observed_at_ns == NOW + 7 and f.source == "zll-main" for f in result.fills)


async def test_newest_first_everything_new_reads_to_the_short_page() -> None:
    venue = FakeZll(times(12), "desc")
    result = await adapter(venue).fetch(0, None, lambda: NOW + 1)
    assert venue.offsets() == [0, 5, 10]
    assert len(ids(result)) == 12


async def test_newest_first_with_fills_arriving_mid_poll() -> None:
    venue = FakeZll(times(200), "desc")
    since = T + 180 * 1000
    # new fills land at offset 0 before the 2nd and 3rd requests: later pages shift and repeat
    venue.before[2] = lambda v: [v.add(T + 1_000_000 + i) for i in range(3)]
    venue.before[3] = lambda v: [v.add(T + 2_000_000 + i) for i in range(7)]
    before = venue.ids_since(since)
    result = await adapter(venue).fetch(since, None, lambda: NOW + 1)
    assert before <= set(ids(result))
    # the repeats are recognised as such: the order stays newest-first and the walk stops early
    assert venue.offsets() == [0, 5, 10, 15, 20, 25, 30]
    # and the next poll picks up what arrived in the part already read
    again = await adapter(venue).fetch(since, result.paging_state, lambda: NOW + 2)
    assert venue.ids_since(since) <= set(ids(again))


async def test_late_fill_landing_among_the_repeats_does_not_break_the_order() -> None:
    venue = FakeZll(times(100), "desc")
    since = T + 80 * 1000
    # before page 2: one new fill at the front, and a late fill dated between the 4th and 5th of
    # page 1, so page 2 opens with the late fill, newer than page 1's last, and then a repeat
    venue.before[2] = lambda v: [v.add(T + 1_000_000), v.add(T + 95 * 1000 + 500)]
    result = await adapter(venue).fetch(since, None, lambda: NOW + 1)
    assert venue.offsets() == [0, 5, 10, 15, 20]
    assert venue.ids_since(since) - {venue.fills[-2]["id"]} <= set(ids(result))


# --------------------------------------------------------------------------------------------------
# Oldest first


async def test_oldest_first_first_start_gallops_to_the_boundary() -> None:
    venue = FakeZll(times(200), "asc")
    since = T + 180 * 1000
    result = await adapter(venue).fetch(since, None, lambda: NOW + 1)
    assert venue.ids_since(since) <= set(ids(result))
    # far fewer than the 41 pages of a linear scan
    assert len(venue.requests) <= 16, venue.offsets()
    assert resume(result.paging_state) == 175


async def test_oldest_first_resume_offset_across_polls() -> None:
    venue = FakeZll(times(200), "asc")
    made = adapter(venue)
    since = T + 180 * 1000
    state = (await made.fetch(since, None, lambda: NOW + 1)).paging_state
    for poll in range(5):
        for i in range(3):
            venue.add(T + (200 + poll * 3 + i) * 1000)
        since += 3 * 1000
        venue.requests.clear()
        result = await made.fetch(since, state, lambda: NOW + 2)
        assert venue.ids_since(since) <= set(ids(result))
        assert min(venue.offsets()) == state["resume_offset"]  # only the tail is read
        assert len(venue.requests) <= 7
        state = result.paging_state
        assert resume(state) == 180 + 3 * (poll + 1) - 5


async def test_oldest_first_resume_offset_too_far_is_detected() -> None:
    venue = FakeZll(times(50), "asc")
    since = T + 10 * 1000  # e.g. lookback raised after a restart: the stored offset is past the boundary
    result = await adapter(venue).fetch(since, {"resume_offset": 30}, lambda: NOW + 1)
    assert venue.offsets()[0] == 30 and venue.offsets()[1] == 0
    assert venue.ids_since(since) <= set(ids(result))
    assert resume(result.paging_state) == 5


@pytest.mark.parametrize("state", [{"resume_offset": 500}, {"resume_offset": "x"}, [1, 2], 17, {"other": 1}])
async def test_resume_offset_beyond_the_end_or_garbage_starts_over(state: Any) -> None:
    venue = FakeZll(times(23), "asc")
    since = T + 3 * 1000
    result = await adapter(venue).fetch(since, state, lambda: NOW + 1)
    assert 0 in venue.offsets()
    assert venue.ids_since(since) <= set(ids(result))


async def test_oldest_first_all_old_reaches_the_end() -> None:
    venue = FakeZll(times(40), "asc")
    since = T + 10**9
    result = await adapter(venue).fetch(since, None, lambda: NOW + 1)
    assert resume(result.paging_state) == 35
    venue.requests.clear()
    venue.add(since)
    result = await adapter(venue).fetch(since, result.paging_state, lambda: NOW + 1)
    assert venue.offsets() == [35, 40]
    assert venue.ids_since(since) == set(ids(result)) & venue.ids_since(since) == {venue.fills[-1]["id"]}


@pytest.mark.parametrize("first_start", [True, False])
async def test_oldest_first_with_fills_arriving_mid_poll(first_start: bool) -> None:
    venue = FakeZll(times(300), "asc")
    since = T + 260 * 1000
    start = venue.ids_since(since)
    arrived: list[str] = []
    # new fills at the end, and late fills slotted in by time ahead of the read position (shifts)
    venue.before[2] = lambda v: arrived.extend([v.add(T + 100 * 1000 + i)["id"] for i in range(3)])
    venue.before[3] = lambda v: arrived.extend([v.add(T + 1000 * 1000)["id"], v.add(T + 261 * 1000 + 1)["id"]])
    venue.before[5] = lambda v: arrived.extend([v.add(T + 270 * 1000 + 1)["id"], v.add(T + 299 * 1000 + 1)["id"]])
    made = adapter(venue)
    state = None if first_start else {"resume_offset": 250}
    result = await made.fetch(since, state, lambda: NOW + 1)
    assert start <= set(ids(result))
    assert len(venue.requests) <= 20  # neither a linear scan (61 pages) nor a read from 0 twice
    assert resume(result.paging_state) is not None  # the order was still recognised as oldest-first
    again = await made.fetch(since, result.paging_state, lambda: NOW + 2)
    assert set(arrived) & venue.ids_since(since) <= set(ids(result)) | set(ids(again))


async def test_disorder_after_a_skip_restarts_from_zero() -> None:
    # ascending for 100 fills, then an old fill appended out of order past the boundary
    venue = FakeZll([*times(100), *times(30, 200), T + 150 * 1000], "stored")
    since = T + 150 * 1000
    result = await adapter(venue).fetch(since, None, lambda: NOW + 1)
    assert venue.ids_since(since) <= set(ids(result))
    assert resume(result.paging_state) is None
    assert venue.offsets().count(0) == 2  # read from 0 again after the disorder
    assert venue.offsets()[-1] == 130


# --------------------------------------------------------------------------------------------------
# Same timestamps, ambiguous order, stops


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_same_timestamp_burst_straddling_pages(order: Order) -> None:
    burst = [T + 5000] * 9
    venue = FakeZll([T + 1000, T + 2000, T + 3000, *burst, T + 6000, T + 7000], order)
    result = await adapter(venue).fetch(T + 5000, None, lambda: NOW + 1)
    assert venue.ids_since(T + 5000) <= set(ids(result))
    # and with the burst just older than since_ns, nothing newer is missed either
    venue.requests.clear()
    result = await adapter(venue).fetch(T + 5001, None, lambda: NOW + 1)
    assert venue.ids_since(T + 5001) <= set(ids(result))


@pytest.mark.parametrize(
    "stored",
    [
        [T],  # a single fill
        [T] * 23,  # all equal: no order to be seen
        [T + 3000, T + 1000, T + 4000, T + 1000, T + 5000, T + 9000, T + 2000, T + 2500, T, T + 7000, T + 8000],
    ],
)
async def test_ambiguous_order_reads_to_the_end(stored: list[int]) -> None:
    venue = FakeZll(stored, "stored")
    result = await adapter(venue).fetch(T + 2000, None, lambda: NOW + 1)
    assert len(ids(result)) == len(stored)
    assert resume(result.paging_state) is None
    assert venue.offsets() == list(range(0, len(stored) + 1, 5))


@pytest.mark.parametrize("count", [0, 5, 10])
async def test_empty_page_stops(count: int) -> None:
    venue = FakeZll(times(count), "desc")
    result = await adapter(venue).fetch(0, None, lambda: NOW + 1)
    assert len(ids(result)) == count
    assert venue.offsets() == list(range(0, count + 1, 5))


async def test_page_cap_is_a_decode_error() -> None:
    venue = FakeZll([T] * 100, "stored")
    with pytest.raises(VenueError) as caught:
        await adapter(venue, max_pages=4).fetch(0, None, lambda: NOW + 1)
    assert caught.value.reason == "decode" and len(venue.requests) == 4


@pytest.mark.parametrize("seed", range(120))
async def test_random_orders_and_arrivals_never_lose_a_fill(seed: int) -> None:
    rng = random.Random(seed)
    order: Order = rng.choice(["asc", "desc"])
    limit = rng.choice([1, 2, 3, 5, 8, 20])
    clock = 1000

    def now() -> int:
        return T + clock * 1000

    venue = FakeZll([T + rng.randrange(clock) * 1000 for _ in range(rng.randrange(0, 300))], order)
    made = adapter(venue, page_limit=limit)
    arrivals = 0

    def arrive(v: FakeZll) -> None:
        nonlocal arrivals
        for _ in range(rng.randrange(0, 4)):
            arrivals += 1
            # a new fill now, or a late one within the last 50 time units (well inside the lookback)
            v.add(now() if rng.random() < 0.6 else now() - rng.randrange(50) * 1000)

    state: Any = None
    owed: set[str] = set()
    for _ in range(6):
        clock += rng.randrange(0, 30)
        since = now() - 100 * 1000
        present = venue.ids_since(since)
        venue.requests.clear()
        arrivals = 0
        venue.before = {n: arrive for n in range(1, 40) if rng.random() < 0.4}
        result = await made.fetch(since, state, lambda: NOW + 1)
        got = set(ids(result))
        assert present <= got, (seed, order, limit)
        assert {i for i in owed if i in venue.ids_since(since)} <= got  # arrivals of the last poll
        owed = venue.ids_since(since) - got
        state = result.paging_state
        if limit > 3:
            # while fewer fills arrive between two requests than a page holds (the repeats show the
            # shift), never a read of the whole list: the new part, the shifts, a search, spare pages
            search = 2 * (len(venue.fills) // limit + 1).bit_length()
            assert len(venue.requests) <= (len(present) + arrivals) // limit + search + 4, (seed, order, limit)


@pytest.mark.parametrize("seed", range(60))
async def test_gallop_finds_every_boundary(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randrange(1, 400)
    # duplicate times on purpose: bursts of equal timestamps around the boundary
    venue = FakeZll(sorted(T + rng.randrange(count // 2 + 1) * 1000 for _ in range(count)), "asc")
    since = T + rng.randrange(-2, count // 2 + 3) * 1000
    result = await adapter(venue).fetch(since, None, lambda: NOW + 1)
    assert venue.ids_since(since) <= set(ids(result))
    new_pages = -(-len(venue.ids_since(since)) // 5) + 1
    assert len(venue.requests) <= new_pages + 2 * max(1, count // 5).bit_length() + 2
    old = count - len(venue.ids_since(since))
    assert (result.paging_state or {}).get("resume_offset", 0) <= max(0, old - 1)


# --------------------------------------------------------------------------------------------------
# Requests, errors, secrets


async def test_request_params_and_api_key_header() -> None:
    venue = FakeZll(times(3), "desc")
    await adapter(venue, subaccount_index=4).fetch(0, None, lambda: NOW + 1)
    (request,) = venue.requests
    assert request.url.path == "/api/v1/fills"
    assert dict(request.url.params) == {"subaccount_index": "4", "limit": "5", "offset": "0"}
    assert request.headers["X-API-KEY"] == API_KEY
    venue.requests.clear()
    await adapter(venue, portfolio_index=0).fetch(0, None, lambda: NOW + 1)
    assert dict(venue.requests[0].url.params) == {
        "subaccount_index": "0",
        "portfolio_index": "0",
        "limit": "5",
        "offset": "0",
    }


async def test_create_adapter_counts_requests() -> None:
    venue = FakeZll(times(7), "asc")
    counted: list[int] = []
    http = httpx.MockTransport(venue)
    made = zll.create_adapter(source(), Secret(API_KEY), http, lambda: counted.append(1))
    assert made.venue == "zll"
    result = await made.fetch(0, None, lambda: NOW + 1)
    assert len(result.fills) == 7 and len(counted) == 2
    assert venue.requests[0].headers["X-API-KEY"] == API_KEY


def problem(status: int, code: str) -> httpx.Response:
    return httpx.Response(
        status,
        headers={"content-type": "application/problem+json"},
        json={"type": "about:blank", "title": "Oops", "status": status, "detail": f"echo {API_KEY}"[:5], "code": code},
    )


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [(400, "bad_request", "http_4xx"), (401, "unauthorized", "auth"), (404, "not_found", "http_4xx"),
     (429, "rate_limited", "http_429"), (500, "internal", "http_5xx")],
)
async def test_errors(status: int, code: str, reason: str) -> None:
    venue = FakeZll(times(3), "desc")
    venue.respond_with = problem(status, code)
    with pytest.raises(VenueError) as caught:
        await adapter(venue).fetch(0, None, lambda: NOW + 1)
    assert caught.value.reason == reason
    assert str(caught.value) == f"HTTP {status}: {code}: echo "
    assert API_KEY not in str(caught.value)


def test_describe_error_falls_back_to_title_and_type() -> None:
    assert zll.describe_error(400, b'{"type": "t", "title": "Bad"}') == "t: Bad"
    assert zll.describe_error(502, b"upstream " + API_KEY.encode()) == f"non-JSON error body ({9 + len(API_KEY)} bytes)"


@pytest.mark.parametrize("body", [b'{"fills": []}', b"not json", b'[1, 2', b"null"])
async def test_malformed_page_is_a_decode_error(body: bytes) -> None:
    venue = FakeZll([], "desc")
    venue.respond_with = httpx.Response(200, content=body)
    with pytest.raises(VenueError) as caught:
        await adapter(venue).fetch(0, None, lambda: NOW + 1)
    assert caught.value.reason == "decode"


@pytest.mark.parametrize("exc", [httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")])
async def test_transport_errors(exc: Exception) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    http = httpx.MockTransport(respond)
    made = zll.create_adapter(source(), Secret(API_KEY), http, lambda: None)
    with pytest.raises(VenueError) as caught:
        await made.fetch(0, None, lambda: NOW + 1)
    assert caught.value.reason == ("timeout" if isinstance(exc, httpx.TimeoutException) else "connect")


async def test_one_bad_fill_is_invalid_and_the_rest_published() -> None:
    venue = FakeZll(times(7)[::-1], "stored")
    venue.fills[2]["side"] = "SIDEWAYS"
    venue.fills[4]["quantity"] = "-1"
    del venue.fills[5]["time"]
    result = await adapter(venue).fetch(0, None, lambda: NOW + 1)
    assert len(result.fills) == 4
    assert sorted(i.key for i in result.invalid) == sorted(venue.fills[n]["id"] for n in (2, 4, 5))
    assert venue.offsets() == [0, 5]


def test_check_secret() -> None:
    zll.check_secret(Secret(API_KEY))
    for bad in ["", "abc def", "abc\tdef", "abc\x00def"]:
        with pytest.raises(ValueError) as caught:
            zll.check_secret(Secret(bad))
        assert bad not in str(caught.value) or not bad
    assert "c2Vj" not in repr(zll.ZllAuth(Secret(API_KEY)))
