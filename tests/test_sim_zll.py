"""The ZLL simulator over real HTTP: key check, offset paging in both orders, shifting pages."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from publisher.sim.zll import ZllSimulator

API_KEY = "c2ltdWxhdGVkLXpsbC1rZXktZm9yLXRlc3Rz"
FILLS = "/api/v1/fills"
T0_NS = 1_718_900_000_000_000_000
WIRE_FIELDS = {
    "id", "account_id", "subaccount_index", "portfolio_index", "market", "side", "price", "quantity",
    "fee", "liquidity", "request_id", "time",
}


@pytest.fixture
async def sim():
    async with ZllSimulator(api_key=API_KEY, seed=11) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: ZllSimulator):
    async with httpx.AsyncClient(base_url=sim.url, headers={"X-API-KEY": API_KEY}, timeout=5) as http:
        yield http


async def page(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(FILLS, params={"subaccount_index": 0, **params})
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content)


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail", "code"}
    assert problem["status"] == status and problem["code"] == code


# -- auth and parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": "d3Jvbmc="}, {"Authorization": f"Bearer {API_KEY}"}])
async def test_key_check(sim: ZllSimulator, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=sim.url, headers=headers) as http:
        assert_problem(await http.get(FILLS, params={"subaccount_index": 0}), 401, "unauthorized")
    assert sim.rejected["auth"] == 1


async def test_device_key_header_accepted(sim: ZllSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.url, headers={"X-DEVICE-KEY": API_KEY}) as http:
        assert (await http.get(FILLS, params={"subaccount_index": 0})).status_code == 200


@pytest.mark.parametrize(
    "params",
    [{}, {"subaccount_index": "x"}, {"subaccount_index": 0, "limit": 0}, {"subaccount_index": 0, "limit": 1001},
     {"subaccount_index": 0, "offset": -1}, {"subaccount_index": -1}],
)
async def test_bad_parameters_are_400(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    assert_problem(await client.get(FILLS, params=params), 400, "invalid_parameter")


async def test_default_limit_and_max(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(1001)
    assert len(await page(client)) == 100
    assert len(await page(client, limit=1000)) == 1000


# -- wire format ---------------------------------------------------------------------------------


async def test_wire_fill_has_every_required_field(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    added = sim.add_fills(20)
    fills = await page(client)
    assert len(fills) == 20
    truth = {fill.fill_id: fill for fill in added}
    for wire in fills:
        assert set(wire) == WIRE_FIELDS
        fill = truth[wire["id"]]
        assert wire == fill.wire()
        assert isinstance(wire["time"], int) and isinstance(wire["account_id"], int)
        assert all(isinstance(wire[name], str) for name in ("price", "quantity", "fee"))
        assert wire["side"] in ("LONG", "SHORT") and wire["liquidity"] in ("TAKER", "MAKER")
        expected = fill.expected_event()
        assert expected["side"] == ("buy" if wire["side"] == "LONG" else "sell")
        assert expected["executed_at_ns"] == wire["time"] and expected["fee_currency"] == "USDC"


async def test_seed_example_values_round_trip(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    fill = sim.add_fill(market="BTC-PERP", price="64998.5", quantity="0.25", liquidity="TAKER", side="LONG", executed_at_ns=T0_NS)
    assert fill.fee == msgspec.convert("8.12", type=type(fill.fee))
    wire = (await client.get(f"{FILLS}/{fill.fill_id}")).json()
    assert (wire["price"], wire["quantity"], wire["fee"], wire["time"]) == ("64998.5", "0.25", "8.12", T0_NS)


# -- ordering and paging -------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["newest", "oldest"])
async def test_offset_paging_both_orders(order: str) -> None:
    async with ZllSimulator(api_key=API_KEY, order=order, seed=1) as sim:  # type: ignore[arg-type]
        sim.add_fills(40, late_s=20)
        sim.add_fills(35, late_s=10)  # a burst: one time for all of them
        sim.add_fills(30)
        late = sim.add_fill(late_s=15)  # executed between the others, visible last
        async with httpx.AsyncClient(base_url=sim.url, headers={"X-API-KEY": API_KEY}) as http:
            seen: list[dict[str, Any]] = []
            offset = 0
            while batch := await page(http, limit=25, offset=offset):
                seen.extend(batch)
                offset += len(batch)
        keys = [(fill["time"], fill["id"]) for fill in seen]
        assert len(keys) == 106 and len(set(keys)) == 106
        assert keys == sorted(keys, reverse=order == "newest")
        position = [fill["id"] for fill in seen].index(late.fill_id)
        assert 0 < position < 105  # sorted by time, not appended at the end


async def test_insertion_mid_pagination_shifts_later_pages_newest_first(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(30, late_s=5)
    first = await page(client, limit=10, offset=0)
    sim.insert_after_page(10, 3)
    second = await page(client, limit=10, offset=10)
    third = await page(client, limit=10, offset=20)
    # three new fills went to the front: the third page repeats the last three of the second
    assert [f["id"] for f in third[:3]] == [f["id"] for f in second[-3:]]
    assert {f["id"] for f in first}.isdisjoint(f["id"] for f in second)
    assert len(sim.fills) == 33


async def test_insertion_mid_pagination_shifts_later_pages_oldest_first() -> None:
    async with ZllSimulator(api_key=API_KEY, order="oldest", seed=2) as sim:
        sim.add_fills(30, late_s=5)
        async with httpx.AsyncClient(base_url=sim.url, headers={"X-API-KEY": API_KEY}) as http:
            sim.insert_after_page(0, 4)
            first = await page(http, limit=10, offset=0)
            second = await page(http, limit=10, offset=10)
        # four late fills dated before the first page: the second page repeats four fills
        assert [f["id"] for f in second[:4]] == [f["id"] for f in first[-4:]]
        inserted = {f.fill_id for f in sim.fills[:4]}  # the oldest four now
        assert inserted.isdisjoint(f["id"] for f in first + second)


async def test_generator_also_shifts_pages(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(20, late_s=5)
    first = await page(client, limit=10)
    sim.start_generator(200)
    await asyncio.sleep(0.05)
    await sim.stop_generator()
    second = await page(client, limit=10, offset=10)
    assert {f["id"] for f in first} & {f["id"] for f in second}


async def test_subaccount_and_portfolio_filters(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    sub0 = sim.add_fills(3, subaccount_index=0, portfolio_index=0)
    sub0_p1 = sim.add_fills(2, subaccount_index=0, portfolio_index=1)
    sub1 = sim.add_fills(4, subaccount_index=1)
    assert {f["id"] for f in await page(client)} == {f.fill_id for f in sub0 + sub0_p1}
    assert {f["id"] for f in await page(client, portfolio_index=1)} == {f.fill_id for f in sub0_p1}
    assert {f["id"] for f in await page(client, subaccount_index=1)} == {f.fill_id for f in sub1}
    assert await page(client, subaccount_index=9) == []


# -- pinned key and get by id --------------------------------------------------------------------


async def test_pinned_key_404_for_other_subaccounts() -> None:
    async with ZllSimulator(api_key=API_KEY, pinned_subaccount=2) as sim:
        mine = sim.add_fill(subaccount_index=2)
        other = sim.add_fill(subaccount_index=0)
        async with httpx.AsyncClient(base_url=sim.url, headers={"X-API-KEY": API_KEY}) as http:
            assert_problem(await http.get(FILLS, params={"subaccount_index": 0}), 404, "not_found")
            assert [f["id"] for f in (await http.get(FILLS, params={"subaccount_index": 2})).json()] == [mine.fill_id]
            assert_problem(await http.get(f"{FILLS}/{other.fill_id}"), 404, "not_found")
            assert (await http.get(f"{FILLS}/{mine.fill_id}")).status_code == 200


async def test_get_by_id(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    fill = sim.add_fill()
    response = await client.get(f"{FILLS}/{fill.fill_id}")
    assert response.status_code == 200 and response.json() == fill.wire()
    assert_problem(await client.get(f"{FILLS}/00000000-0000-4000-8000-000000000000"), 404, "not_found")
    assert_problem(await client.get(f"{FILLS}/not-a-uuid"), 400, "invalid_parameter")
    assert_problem(await client.get("/api/v1/orders"), 404, "not_found")


# -- faults --------------------------------------------------------------------------------------


async def test_status_faults_are_problem_json(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    sim.faults.inject("http_429")
    response = await client.get(FILLS, params={"subaccount_index": 0})
    assert_problem(response, 429, "rate_limited")
    assert "retry-after" not in response.headers
    sim.faults.inject("http_429", retry_after=1.5)
    assert (await client.get(FILLS, params={"subaccount_index": 0})).headers["retry-after"] == "1.5"
    sim.faults.inject("http_500")
    assert_problem(await client.get(FILLS, params={"subaccount_index": 0}), 500, "internal_error")
    sim.faults.inject("auth")
    assert_problem(await client.get(FILLS, params={"subaccount_index": 0}), 401, "unauthorized")
    sim.set_rate_limit(1, burst_s=1)
    await page(client)
    assert_problem(await client.get(FILLS, params={"subaccount_index": 0}), 429, "rate_limited")
    assert sim.rejected == {"rate_limited": 3, "http_500": 1, "auth": 1}


@pytest.mark.parametrize("kind", ["drop_connection", "reset"])
async def test_transport_faults(sim: ZllSimulator, kind: str) -> None:
    sim.faults.inject(kind)  # type: ignore[arg-type]
    transport = httpx.AsyncHTTPTransport(retries=0)
    async with httpx.AsyncClient(base_url=sim.url, headers={"X-API-KEY": API_KEY}, transport=transport) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(FILLS, params={"subaccount_index": 0})
        assert (await http.get(FILLS, params={"subaccount_index": 0})).status_code == 200


async def test_slow_and_malformed(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    sim.add_fills(5)
    sim.faults.inject("slow", delay_s=0.5)
    with pytest.raises(httpx.TimeoutException):
        await client.get(FILLS, params={"subaccount_index": 0}, timeout=0.1)
    sim.faults.inject("malformed_json")
    response = await client.get(FILLS, params={"subaccount_index": 0})
    assert response.status_code == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(response.content)


@pytest.mark.parametrize("mode", ["non_numeric_price", "missing_field", "bad_enum"])
async def test_bad_fill_and_drift(sim: ZllSimulator, client: httpx.AsyncClient, mode: str) -> None:
    sim.add_fills(8)
    sim.faults.inject("bad_fill", mode=mode)
    fills = await page(client)
    (bad_id,) = sim.bad_fills
    assert sum(1 for f in fills if f == sim.get(f["id"]).wire()) == 7  # type: ignore[union-attr]
    bad = next(f for f in fills if f["id"] == bad_id)
    assert {"non_numeric_price": bad.get("price") == "n/a", "missing_field": "market" not in bad, "bad_enum": bad.get("side") == "SIDEWAYS"}[mode]
    sim.faults.inject("schema_drift")
    drifted = await page(client)
    assert all({"margin_mode", "trigger"} <= set(f) for f in drifted)
    assert all(WIRE_FIELDS <= set(f) for f in drifted if f["id"] != bad_id)


async def test_control_surface_insert_after_page(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as control:
        await control.post("/_sim/fills", json={"n": 20, "late_s": 3, "market": "DOGE-PERP", "quantity": "1.5"})
        assert (await control.post("/_sim/insert_after_page", json={"offset": 0, "count": 2})).status_code == 200
        await page(client, limit=10)
        truth = (await control.get("/_sim/fills")).json()["fills"]
        assert len(truth) == 22
        doge = [f for f in truth if f["market"] == "DOGE-PERP"]
        assert len(doge) == 20 and doge[0]["expected"]["quantity"] == "1.5"
        assert (await control.get("/_sim/stats")).json()["requests"] == 1


async def test_cli_serves_with_the_generated_key(tmp_path: Any) -> None:
    import signal
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher.sim", "zll", "--port", "0", "--key-dir", str(tmp_path), "--order", "oldest",
        "--listing", "insertion", "--fills-per-s", "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().split()[-1]  # type: ignore[union-attr]
        key = (tmp_path / "zll-api-key").read_text().strip()
        async with httpx.AsyncClient(base_url=url, headers={"X-API-KEY": key}) as http:
            assert (await http.get(FILLS, params={"subaccount_index": 0})).status_code == 200
            assert (await http.get("/_sim/stats")).json()["venue"] == "zll"
            # insertion order: a late fill added last is listed last (oldest first), its time older
            first = (await http.post("/_sim/fills", json={"n": 2})).json()["fills"]
            late = (await http.post("/_sim/fills", json={"n": 1, "late_s": 30})).json()["fills"]
            listed = (await http.get(FILLS, params={"subaccount_index": 0})).json()
            assert [f["id"] for f in listed] == [f["fill_id"] for f in first + late]
            assert listed[-1]["time"] < listed[0]["time"]
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0


# -- fidelity: insertion order, rebates, ZLL-specific bad fills ---------------------------------


async def test_insertion_listing_puts_a_late_fill_among_the_newest() -> None:
    async with ZllSimulator(api_key=API_KEY, seed=3, listing="insertion") as sim:
        early = sim.add_fills(3, executed_at_ns=T0_NS)
        late = sim.add_fill(executed_at_ns=T0_NS - 10**9)  # executed before the others, visible last
        async with httpx.AsyncClient(base_url=sim.url, headers={"X-API-KEY": API_KEY}, timeout=5) as http:
            newest = await page(http)
            sim.order = "oldest"
            oldest = await page(http)
    assert [f["id"] for f in newest] == [late.fill_id, *[f.fill_id for f in early][::-1]]
    assert [f["id"] for f in oldest] == [f.fill_id for f in early] + [late.fill_id]
    with pytest.raises(ValueError, match="listing"):
        ZllSimulator(api_key=API_KEY, listing="random")  # type: ignore[arg-type]


async def test_negative_fees_are_rebates(sim: ZllSimulator, client: httpx.AsyncClient) -> None:
    explicit = sim.add_fill(fee="-1.25", liquidity="MAKER")
    sim.add_fills(200, liquidity="MAKER")
    fees = {f["id"]: f["fee"] for f in await page(client, limit=1000)}
    assert fees[explicit.fill_id] == "-1.25"
    assert any(fee.startswith("-") for fee in fees.values()) and any(not fee.startswith("-") for fee in fees.values())


@pytest.mark.parametrize("mode", ["time_ms", "time_us", "time_huge", "invalid_utf8", "control_chars", "long_market"])
async def test_zll_bad_fill_modes(sim: ZllSimulator, client: httpx.AsyncClient, mode: str) -> None:
    sim.add_fills(4, executed_at_ns=T0_NS)
    sim.faults.inject("bad_fill", mode=mode)
    response = await client.get(FILLS, params={"subaccount_index": 0})
    (bad_id,) = sim.bad_fills
    if mode == "invalid_utf8":
        assert b'"BTC-\xff\xfePERP"' in response.content
        with pytest.raises(UnicodeDecodeError):
            response.content.decode()
        return
    bad = next(f for f in response.json() if f["id"] == bad_id)
    expected = {"time_ms": T0_NS // 1_000_000, "time_us": T0_NS // 1000, "time_huge": 1e30}
    if mode in expected:
        assert bad["time"] == expected[mode]
    elif mode == "control_chars":
        assert "\x1b" in bad["market"]
    else:
        assert len(bad["market"]) == 100_000
    by_id = await client.get(f"{FILLS}/{bad_id}")  # sticky: the venue's own record is bad too
    assert by_id.json() == bad
