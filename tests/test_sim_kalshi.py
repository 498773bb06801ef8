"""The Kalshi simulator over real HTTP: auth, paging, filters, shapes, faults, control surface.

Requests are signed here with `cryptography` directly, independent of the publisher's own signer.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from publisher.sim.kalshi import KalshiSimulator, generate_key_pair

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
FILLS = "/trade-api/v2/portfolio/fills"
T0 = 1_750_000_000  # a whole second, mid 2025


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return generate_key_pair()


@pytest.fixture(scope="module")
def other_keys() -> tuple[bytes, bytes]:
    return generate_key_pair()


@functools.cache
def _private_key(private_pem: bytes) -> Any:
    return serialization.load_pem_private_key(private_pem, password=None)


def signature(private_pem: bytes, message: str) -> str:
    key = _private_key(private_pem)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    return base64.b64encode(key.sign(message.encode(), pss, hashes.SHA256())).decode()


class SignedAuth(httpx.Auth):
    """Kalshi request signing as documented; the knobs reproduce the typical mistakes."""

    def __init__(self, private_pem: bytes, key_id: str = KEY_ID, *, seconds: bool = False, sign_query: bool = False, skew_s: float = 0.0):
        self.private_pem, self.key_id = private_pem, key_id
        self.seconds, self.sign_query, self.skew_s = seconds, sign_query, skew_s

    def auth_flow(self, request: httpx.Request):  # type: ignore[override]
        now = time.time() + self.skew_s
        stamp = str(int(now)) if self.seconds else str(int(now * 1000))
        path = request.url.raw_path.decode() if self.sign_query else request.url.path
        request.headers["KALSHI-ACCESS-KEY"] = self.key_id
        request.headers["KALSHI-ACCESS-TIMESTAMP"] = stamp
        request.headers["KALSHI-ACCESS-SIGNATURE"] = signature(self.private_pem, stamp + request.method + path)
        yield request


@pytest.fixture
async def sim(keys: tuple[bytes, bytes]):
    async with KalshiSimulator(public_key=keys[1], key_id=KEY_ID, shape="mixed", seed=7) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: KalshiSimulator, keys: tuple[bytes, bytes]):
    async with httpx.AsyncClient(base_url=sim.root_url, auth=SignedAuth(keys[0]), timeout=5) as http:
        yield http


async def get_fills(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(FILLS, params=params)
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content)


async def walk(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every page, resending the filters with each cursor as a correct client must."""
    fills: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await get_fills(client, **params, **({"cursor": cursor} if cursor else {}))
        fills.extend(page["fills"])
        cursor = page.get("cursor")
        if not cursor:
            return fills


# -- auth ----------------------------------------------------------------------------------------


async def test_good_signature_accepted(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    added = sim.add_fills(3)
    page = await get_fills(client, limit=10)
    assert [fill["fill_id"] for fill in page["fills"]] == [fill.fill_id for fill in sorted(added, key=lambda f: f.sort_key(), reverse=True)]
    assert page["cursor"] == ""
    assert sim.requests == 1 and not sim.rejected
    assert sim.url == f"{sim.root_url}/trade-api/v2"


@pytest.mark.parametrize(
    "mistake",
    ["wrong_key", "unknown_key_id", "seconds_timestamp", "query_signed", "stale_timestamp", "unsigned", "not_base64"],
)
async def test_bad_auth_is_401(sim: KalshiSimulator, keys: tuple[bytes, bytes], other_keys: tuple[bytes, bytes], mistake: str) -> None:
    auth: httpx.Auth | None = {
        "wrong_key": SignedAuth(other_keys[0]),
        "unknown_key_id": SignedAuth(keys[0], key_id="someone-else"),
        "seconds_timestamp": SignedAuth(keys[0], seconds=True),
        "query_signed": SignedAuth(keys[0], sign_query=True),
        "stale_timestamp": SignedAuth(keys[0], skew_s=-60),
        "unsigned": None,
    }.get(mistake)
    headers = {}
    if mistake == "not_base64":
        headers = {"KALSHI-ACCESS-KEY": KEY_ID, "KALSHI-ACCESS-TIMESTAMP": str(time.time_ns() // 10**6), "KALSHI-ACCESS-SIGNATURE": "%%%"}
    async with httpx.AsyncClient(base_url=sim.root_url, auth=auth) as http:
        response = await http.get(FILLS, params={"limit": 5}, headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == "authentication_error"
    assert sim.rejected["auth"] == 1


async def test_signature_over_path_without_query_is_accepted_with_query(client: httpx.AsyncClient) -> None:
    response = await client.get(FILLS, params={"limit": 5, "min_ts": T0})
    assert response.status_code == 200


# -- paging and filters --------------------------------------------------------------------------


async def test_cursor_paging_covers_every_fill_once_newest_first(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(60, late_s=30)
    burst = sim.add_fills(120, late_s=10)  # one timestamp across several pages
    sim.add_fills(70)
    assert len({fill.executed_at_ns for fill in burst}) == 1
    seen = await walk(client, limit=50)
    ids = [fill["fill_id"] for fill in seen]
    assert len(ids) == 250 and set(ids) == {fill.fill_id for fill in sim.fills}
    keys = [(int(fill["ts"]), fill["fill_id"]) for fill in seen]
    assert keys == sorted(keys, reverse=True)
    assert sim.requests == 5


async def test_late_fill_appears_in_a_later_page(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(20)
    first = await get_fills(client, limit=10)
    late = sim.add_fill(late_s=120)
    rest = await get_fills(client, limit=100, cursor=first["cursor"])
    assert late.fill_id in {fill["fill_id"] for fill in rest["fills"]}


async def test_min_ts_inclusive_and_max_ts_exclusive(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    before = sim.add_fill(executed_at_ns=(T0 - 1) * 10**9 + 999_999_000)
    at = sim.add_fill(executed_at_ns=T0 * 10**9)
    inside = sim.add_fill(executed_at_ns=T0 * 10**9 + 500_000_000)
    after = sim.add_fill(executed_at_ns=(T0 + 1) * 10**9)
    ids = lambda fills: {fill["fill_id"] for fill in fills}  # noqa: E731
    assert ids(await walk(client, min_ts=T0)) == {at.fill_id, inside.fill_id, after.fill_id}
    assert ids(await walk(client, max_ts=T0 + 1)) == {before.fill_id, at.fill_id, inside.fill_id}
    sim.min_ts_inclusive, sim.max_ts_inclusive = False, True
    assert ids(await walk(client, min_ts=T0)) == {after.fill_id}
    assert ids(await walk(client, max_ts=T0)) == {before.fill_id, at.fill_id, inside.fill_id}


async def test_cursor_does_not_remember_filters(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(10, ticker="A-1")
    sim.add_fills(10, ticker="B-2", late_s=5)
    first = await get_fills(client, ticker="A-1", limit=5)
    filtered = await get_fills(client, ticker="A-1", limit=100, cursor=first["cursor"])
    forgetful = await get_fills(client, limit=100, cursor=first["cursor"])
    assert {fill["ticker"] for fill in filtered["fills"]} == {"A-1"} and len(filtered["fills"]) == 5
    assert {fill["ticker"] for fill in forgetful["fills"]} == {"A-1", "B-2"} and len(forgetful["fills"]) == 15


async def test_ticker_takes_up_to_100_comma_separated_tickers(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    a, b = sim.add_fills(4, ticker="A-1"), sim.add_fills(3, ticker="B-2")
    sim.add_fills(5, ticker="C-3")
    both = await walk(client, ticker="A-1,B-2", limit=2)  # filters resent with every cursor
    assert {f["fill_id"] for f in both} == {f.fill_id for f in a + b}
    hundred = ",".join(["A-1", *(f"X-{n}" for n in range(99))])
    assert {f["fill_id"] for f in await walk(client, ticker=hundred)} == {f.fill_id for f in a}
    response = await client.get(FILLS, params={"ticker": hundred + ",B-2"})
    assert response.status_code == 400 and "100" in response.json()["message"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"limit": -1}, {"min_ts": "1.5"}, {"subaccount": 64}, {"cursor": "!!"}])
async def test_invalid_parameters_are_400(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    response = await client.get(FILLS, params=params)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameters"


async def test_limit_bounds_and_old_max(keys: tuple[bytes, bytes]) -> None:
    async with KalshiSimulator(public_key=keys[1], key_id=KEY_ID, max_limit=200) as sim:
        sim.add_fills(250)
        async with httpx.AsyncClient(base_url=sim.root_url, auth=SignedAuth(keys[0])) as http:
            assert (await http.get(FILLS, params={"limit": 201})).status_code == 400
            page = (await http.get(FILLS, params={"limit": 200})).json()
            assert len(page["fills"]) == 200 and page["cursor"]
            assert len((await http.get(FILLS)).json()["fills"]) == 100  # default limit


async def test_subaccount_and_other_filters(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    primary = sim.add_fills(3, subaccount=0, shape="current")
    null_primary = sim.add_fill(subaccount=None, shape="current")
    sub5 = sim.add_fills(2, subaccount=5, exchange_index=2, shape="current")
    assert {f["fill_id"] for f in await walk(client, subaccount=5)} == {f.fill_id for f in sub5}
    assert {f["fill_id"] for f in await walk(client, subaccount=0)} == {f.fill_id for f in [*primary, null_primary]}
    assert len(await walk(client)) == 6  # omitted: every subaccount
    assert {f["fill_id"] for f in await walk(client, exchange_index=2)} == {f.fill_id for f in sub5}
    assert [f["fill_id"] for f in await walk(client, order_id=primary[0].order_id)] == [primary[0].fill_id]
    wire = next(f for f in await walk(client) if f["fill_id"] == null_primary.fill_id)
    assert wire["subaccount_number"] is None


@pytest.mark.parametrize("last_cursor", ["omit", "null"])
async def test_last_page_cursor_variants(keys: tuple[bytes, bytes], last_cursor: str) -> None:
    async with KalshiSimulator(public_key=keys[1], key_id=KEY_ID, last_cursor=last_cursor) as sim:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=sim.root_url, auth=SignedAuth(keys[0])) as http:
            page = (await http.get(FILLS)).json()
    assert page == {"fills": []} if last_cursor == "omit" else page == {"fills": [], "cursor": None}


# -- shapes --------------------------------------------------------------------------------------

COMMON = {"fill_id", "trade_id", "order_id", "ticker", "market_ticker", "is_taker", "created_time", "ts"}
SHAPE_FIELDS = {
    "seed": COMMON | {"client_order_id", "side", "action", "count", "price", "yes_price", "no_price", "yes_price_fixed", "no_price_fixed"},
    "transition": COMMON | {"client_order_id", "side", "action", "count", "price", "yes_price", "no_price", "yes_price_fixed", "no_price_fixed", "count_fp", "yes_price_dollars", "no_price_dollars", "fee_cost"},
    "fixed_only": COMMON | {"side", "action", "count_fp", "yes_price_fixed", "no_price_fixed"},
    "current_legacy": COMMON | {"side", "action", "outcome_side", "book_side", "count_fp", "yes_price_dollars", "no_price_dollars", "fee_cost", "subaccount_number", "exchange_index"},
    "current": COMMON | {"outcome_side", "book_side", "count_fp", "yes_price_dollars", "no_price_dollars", "fee_cost", "subaccount_number", "exchange_index"},
}


@pytest.mark.parametrize("mode", ["seed", "current", "mixed"])
async def test_shapes_decode_with_the_right_fields(keys: tuple[bytes, bytes], mode: str) -> None:
    async with KalshiSimulator(public_key=keys[1], key_id=KEY_ID, shape=mode, seed=3) as sim:
        sim.add_fills(60)
        async with httpx.AsyncClient(base_url=sim.root_url, auth=SignedAuth(keys[0])) as http:
            fills: list[dict[str, Any]] = msgspec.json.decode((await http.get(FILLS, params={"limit": 100})).content)["fills"]
            # every poll shows a fill the same way
            assert msgspec.json.decode((await http.get(FILLS, params={"limit": 100})).content)["fills"] == fills
        truth = {fill.fill_id: fill for fill in sim.fills}
    shapes = {truth[wire["fill_id"]].shape for wire in fills}
    assert shapes == ({mode} if mode != "mixed" else set(SHAPE_FIELDS))
    for wire in fills:
        fill = truth[wire["fill_id"]]
        assert set(wire) == SHAPE_FIELDS[fill.shape]
        if "count" in wire:
            assert isinstance(wire["count"], int) and isinstance(wire["yes_price"], int)
            assert wire["yes_price"] + wire["no_price"] == 100
        if "count_fp" in wire:
            assert len(wire["count_fp"].split(".")[1]) == 2
        if "yes_price_dollars" in wire:
            assert Decimal(wire["yes_price_dollars"]) + Decimal(wire["no_price_dollars"]) == 1
        assert ("." in wire["created_time"]) == (fill.shape != "seed")
        if fill.shape == "current":
            assert wire["trade_id"] == wire["fill_id"]


def test_expected_event_follows_the_contract(keys: tuple[bytes, bytes]) -> None:
    sim = KalshiSimulator(public_key=keys[1], key_id=KEY_ID)
    seed = sim.add_fill(shape="seed", outcome_side="no", action="buy", count=3, yes_price="0.56", executed_at_ns=T0 * 10**9 + 123_456_789, is_taker=False)
    event = seed.expected_event()
    assert event["side"] == "sell" and event["price"] == "0.56" and event["quantity"] == "3"
    assert event["fee"] is None and event["liquidity"] == "maker" and event["fee_currency"] == "USD"
    assert event["executed_at_ns"] == T0 * 10**9  # created_time has whole seconds in the seed shape
    assert event["venue_fields"]["side"] == "no" and event["venue_fields"]["action"] == "buy"
    assert event["venue_fields"]["no_price"] == "0.44" and "client_order_id" in event["venue_fields"]
    current = sim.add_fill(shape="current", outcome_side="yes", action="sell", count="2.50", yes_price="0.123456", fee="0.0100", executed_at_ns=T0 * 10**9 + 123_456_789)
    event = current.expected_event()
    assert event["side"] == "buy" and event["price"] == "0.123456" and event["quantity"] == "2.5" and event["fee"] == "0.01"
    assert event["executed_at_ns"] == T0 * 10**9 + 123_456_000  # microseconds are what the wire shows
    assert event["venue_fields"] == {"trade_id": current.fill_id, "outcome_side": "yes", "book_side": "bid", "subaccount_number": 0, "exchange_index": 0, "no_price": "0.876544"}
    assert current.wire()["created_time"].endswith(".123456Z")


def test_values_must_fit_the_shape(keys: tuple[bytes, bytes]) -> None:
    sim = KalshiSimulator(public_key=keys[1], key_id=KEY_ID)
    for bad in ({"count": "1.5"}, {"yes_price": "0.555"}, {"yes_price": "1"}, {"count": 2.0}, {"colour": "red"}):
        with pytest.raises(ValueError):
            sim.add_fill(shape="seed", **bad)
    assert not sim.fills


def test_seeded_generation_is_deterministic(keys: tuple[bytes, bytes]) -> None:
    def fills() -> list[tuple[Any, ...]]:
        sim = KalshiSimulator(public_key=keys[1], key_id=KEY_ID, shape="mixed", seed=42)
        return [(f.fill_id, f.shape, f.count, f.yes_price, f.fee, f.ticker) for f in sim.add_fills(20, executed_at_ns=T0 * 10**9)]

    assert fills() == fills()


# -- visibility and generation -------------------------------------------------------------------


async def test_future_visibility(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    hidden = sim.add_fill(visible_at_ns=time.time_ns() + 100_000_000, late_s=5)
    assert sim.fills == [] and sim.pending_fills == [hidden]
    assert (await get_fills(client))["fills"] == []
    time_left = (hidden.visible_at_ns - time.time_ns()) / 1e9
    await asyncio.sleep(max(0.0, time_left) + 0.01)
    assert [f["fill_id"] for f in (await get_fills(client))["fills"]] == [hidden.fill_id]


async def test_generator_bursts_and_late_fills(sim: KalshiSimulator) -> None:
    sim.start_generator(400, burst_size=10, late_fraction=0.5, late_max_s=60, tickers=["ONLY-1"], subaccounts=[3])
    await asyncio.sleep(0.25)
    await sim.stop_generator()
    fills = sim.fills
    assert len(fills) >= 40 and len(fills) % 10 == 0
    by_time: dict[int, int] = {}
    for fill in fills:
        by_time[fill.executed_at_ns] = by_time.get(fill.executed_at_ns, 0) + 1
    assert set(by_time.values()) == {10}
    assert {f.ticker for f in fills} == {"ONLY-1"} and {f.subaccount for f in fills} == {3}
    assert any(f.visible_at_ns - f.executed_at_ns > 10**9 for f in fills)  # some are late
    assert not sim.stats()["generator_running"]


# -- faults --------------------------------------------------------------------------------------


async def test_http_500_then_recovers(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.inject("http_500", count=2)
    for _ in range(2):
        response = await client.get(FILLS)
        assert response.status_code == 500 and response.json()["code"] == "internal_server_error"
    assert (await client.get(FILLS)).status_code == 200
    assert sim.rejected["http_500"] == 2 and sim.faults.fired["http_500"] == 2


async def test_http_429_with_and_without_retry_after(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.inject("http_429")
    response = await client.get(FILLS)
    assert response.status_code == 429 and response.json() == {"error": "too many requests"}
    assert "retry-after" not in response.headers
    sim.faults.inject("http_429", retry_after=2)
    response = await client.get(FILLS)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"


async def test_slow_makes_the_client_time_out(sim: KalshiSimulator, keys: tuple[bytes, bytes]) -> None:
    sim.faults.inject("slow", delay_s=1.0)
    async with httpx.AsyncClient(base_url=sim.root_url, auth=SignedAuth(keys[0]), timeout=0.2) as http:
        with pytest.raises(httpx.TimeoutException):
            await http.get(FILLS)
        assert (await http.get(FILLS)).status_code == 200


@pytest.mark.parametrize("mode", ["truncated", "garbled", "html"])
async def test_malformed_json(sim: KalshiSimulator, client: httpx.AsyncClient, mode: str) -> None:
    sim.add_fills(3)
    sim.faults.inject("malformed_json", mode=mode)
    response = await client.get(FILLS)
    assert response.status_code == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(response.content)
    msgspec.json.decode((await client.get(FILLS)).content)


@pytest.mark.parametrize("kind", ["drop_connection", "reset"])
async def test_drop_and_reset_are_transport_errors(sim: KalshiSimulator, keys: tuple[bytes, bytes], kind: str) -> None:
    sim.faults.inject(kind)  # type: ignore[arg-type]
    transport = httpx.AsyncHTTPTransport(retries=0)
    async with httpx.AsyncClient(base_url=sim.root_url, auth=SignedAuth(keys[0]), transport=transport) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(FILLS)
        assert (await http.get(FILLS)).status_code == 200
    assert sim.rejected[kind] == 1


async def test_auth_fault(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.inject("auth")
    response = await client.get(FILLS)
    assert response.status_code == 401 and response.json()["code"] == "authentication_error"


@pytest.mark.parametrize("mode", ["non_numeric_price", "missing_field", "bad_enum"])
async def test_bad_fill_breaks_one_fill_only(sim: KalshiSimulator, client: httpx.AsyncClient, mode: str) -> None:
    sim.add_fills(10, shape="current")
    sim.faults.inject("bad_fill", mode=mode)
    fills = (await get_fills(client))["fills"]
    good = [fill for fill in fills if fill == sim.get(fill["fill_id"]).wire()]  # type: ignore[union-attr]
    assert len(good) == 9
    (bad_id,) = sim.bad_fills
    bad = next(fill for fill in fills if fill["fill_id"] == bad_id)
    if mode == "missing_field":
        assert "ticker" not in bad and "market_ticker" not in bad
    elif mode == "bad_enum":
        assert bad["outcome_side"] == "maybe"
    else:
        assert bad["yes_price_dollars"] == "n/a"
    again = (await get_fills(client))["fills"]  # sticky: still bad on the next poll
    assert next(fill for fill in again if fill["fill_id"] == bad_id) == bad


async def test_bad_fill_waits_for_a_non_empty_page(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.inject("bad_fill", sticky=False)
    assert (await get_fills(client))["fills"] == []
    sim.add_fills(2)
    await get_fills(client)
    assert sim.faults.fired["bad_fill"] == 1 and not sim.bad_fills


async def test_schema_drift(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(5, shape="current_legacy")
    sim.faults.inject("schema_drift")
    for fill in (await get_fills(client))["fills"]:
        assert {"settlement_currency", "trade_meta"} <= set(fill)
        assert not {"side", "action", "ts"} & set(fill)
        assert {"outcome_side", "count_fp", "yes_price_dollars", "created_time"} <= set(fill)


async def test_probability_faults_and_clear(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.set("http_500", probability=1.0)
    assert [(await client.get(FILLS)).status_code for _ in range(3)] == [500, 500, 500]
    sim.faults.clear()
    assert (await client.get(FILLS)).status_code == 200
    with pytest.raises(ValueError):
        sim.faults.inject("gremlins")  # type: ignore[arg-type]


async def test_read_rate_limit(sim: KalshiSimulator, client: httpx.AsyncClient) -> None:
    sim.set_rate_limit(2, burst_s=2.0)  # a bucket of 4 requests
    statuses = [(await client.get(FILLS)).status_code for _ in range(6)]
    assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429]
    assert sim.rejected["rate_limited"] == 2
    sim.set_rate_limit(None)
    assert (await client.get(FILLS)).status_code == 200


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/trade-api/v2/portfolio/orders")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


# -- control surface -----------------------------------------------------------------------------


async def test_control_surface(sim: KalshiSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.root_url) as http:
        added = (await http.post("/_sim/fills", json={"n": 3, "late_s": 5, "ticker": "CTL-1", "count": "4"})).json()["fills"]
        assert len(added) == 3 and {fill["ticker"] for fill in added} == {"CTL-1"}
        truth = (await http.get("/_sim/fills")).json()["fills"]
        assert {fill["fill_id"] for fill in truth} == {fill["fill_id"] for fill in added}
        assert truth[0]["expected"]["instrument"] == "CTL-1" and truth[0]["count"] == "4"
        assert (await http.post("/_sim/faults", json={"kind": "http_500", "count": 2})).status_code == 200
        assert sim.faults.armed()[0].remaining == 2
        assert (await http.post("/_sim/faults", json={"kind": "nope"})).status_code == 400
        assert (await http.delete("/_sim/faults")).json()["faults_armed"] == []
        assert (await http.post("/_sim/generator", json={"rate_per_s": 50})).json()["generator_running"]
        assert not (await http.delete("/_sim/generator")).json()["generator_running"]
        await http.post("/_sim/rate_limit", json={"per_s": 1})
        assert sim._bucket is not None
        stats = (await http.get("/_sim/stats")).json()
        assert stats["venue"] == "kalshi" and stats["requests"] == 0
        assert (await http.get("/_sim/nothing")).status_code == 404


# -- standalone CLI ------------------------------------------------------------------------------


async def test_cli_creates_keys_and_verifies_with_them(tmp_path: Any) -> None:
    import signal
    import stat
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher.sim", "kalshi", "--port", "0", "--key-dir", str(tmp_path), "--fills-per-s", "50",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()  # type: ignore[union-attr]
        base_url = line.split()[-1]
        assert base_url.endswith("/trade-api/v2")
        assert stat.S_IMODE((tmp_path / "kalshi-private.pem").stat().st_mode) == 0o600
        key_id = (tmp_path / "kalshi-key-id").read_text().strip()
        auth = SignedAuth((tmp_path / "kalshi-private.pem").read_bytes(), key_id=key_id)
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(auth=auth) as http:
            response = await http.get(base_url + "/portfolio/fills")
        assert response.status_code == 200 and response.json()["fills"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_cli_ed25519_key_historical_cutoff_and_shards(tmp_path: Any) -> None:
    """The standalone simulator (compose, out-of-process tests) with an Ed25519 key, a fills
    cutoff and exchange_index shards; the publisher's own adapter reads both tiers through it."""
    import signal
    import sys

    from publisher.secret import Secret
    from publisher.venues import kalshi

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher.sim", "kalshi", "--port", "0", "--key-dir", str(tmp_path), "--fills-per-s", "0",
        "--key-kind", "ed25519", "--fills-cutoff-age-s", "3600", "--exchange-indexes", "0,1,2", "--seed", "5",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()  # type: ignore[union-attr]
        base_url = line.split()[-1]
        root = base_url.removesuffix("/trade-api/v2")
        pem = Secret((tmp_path / "kalshi-private.pem").read_text())
        assert kalshi.describe_secret(pem) == "Ed25519 key"
        async with httpx.AsyncClient(base_url=root, timeout=5) as control:
            now = time.time_ns()
            old = (await control.post("/_sim/fills", json={"n": 4, "executed_at_ns": now - 7200 * 10**9})).json()["fills"]
            new = (await control.post("/_sim/fills", json={"n": 6, "late_s": 60})).json()["fills"]
            stats = (await control.get("/_sim/stats")).json()
            assert abs(stats["fills_cutoff_ns"] - (now - 3600 * 10**9)) < 60 * 10**9
            source = kalshi.KalshiSource(name="k", base_url=base_url, api_key_id=(tmp_path / "kalshi-key-id").read_text().strip(),
                                         private_key_env="X")
            made = kalshi.create_adapter(source, pem, httpx.AsyncHTTPTransport(), lambda: None)
            result = await made.fetch(now - 3 * 3600 * 10**9, None, time.time_ns)
            await made.aclose()
            assert {f.fill_id for f in result.fills} == {f["fill_id"] for f in old + new}
            assert len({f.venue_fields.exchange_index for f in result.fills}) > 1
            served = (await control.get("/_sim/stats")).json()["served"]
            assert served["historical_fills"] >= 1 and served["fills"] >= 1 and served["cutoff"] >= 1
            # the cutoff moved from outside: nothing historical any more
            moved = await control.post("/_sim/cutoff", json={"cutoff_ns": None})
            assert moved.status_code == 200 and moved.json()["fills_cutoff_ns"] is None
            assert (await control.post("/_sim/cutoff", json={})).status_code == 400
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
