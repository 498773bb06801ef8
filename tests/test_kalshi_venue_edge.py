"""Kalshi at the venue edge: Ed25519 keys, historical fills and the cutoff, hostile fills, paging
loops, overlapping sources and backfill_from (adapter over MockTransport and the simulator), the
key kind in check-config and the cutoff cache."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from publisher.config import ConfigError
from publisher.secret import Secret
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.state import SourceState
from publisher.venues import kalshi
from publisher.venues.errors import VenueError
from publisher.venues.http import RateLimiter, VenueClient
from tests.test_cli import assert_config_error, cli
from tests.test_config import cfg, config_error, write_config  # noqa: F401 - fixture
from tests.test_config import kalshi as kalshi_cfg
from tests.test_kalshi_adapter import (  # noqa: F401 - private_key is a fixture
    BASE_URL,
    SINCE_NS,
    RefusesReplays,
    Venue,
    adapter,
    fill,
    paged,
    private_key,
    source,
)

NS = 1_000_000_000
#: RFC 8032 test 1: a fixed key signs deterministically, so the signature can be pinned
ED_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ED_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
ED_MESSAGE = "1700000000123GET/trade-api/v2/portfolio/fills"
ED_SIGNATURE = "GRhtswVRIdmA0GpjH5MRSnIc/e6TaUEgdZgOQjPogtsfXzLfP7tGSGYcS/C3hnipQJTv2MPuo2FYC8L9ivfVDA=="


def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(ED_SEED)


def test_ed25519_known_answer_and_verification() -> None:
    key = ed_key()
    assert key.public_key().public_bytes_raw().hex() == ED_PUBLIC
    signature = kalshi.sign(key, 1_700_000_000_123, "GET", "/trade-api/v2/portfolio/fills")
    key.public_key().verify(base64.b64decode(signature), ED_MESSAGE.encode())
    assert signature == kalshi.sign(key, 1_700_000_000_123, "GET", "/trade-api/v2/portfolio/fills")
    assert signature == ED_SIGNATURE


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_both_key_kinds_load_and_are_named(kind: str) -> None:
    private_pem, _ = generate_key_pair(kind)  # type: ignore[arg-type]
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # one header for both kinds
    kalshi.check_secret(Secret(private_pem.decode()))
    assert kalshi.describe_secret(Secret(private_pem.decode())) == ("RSA-2048 key" if kind == "rsa" else "Ed25519 key")


def test_ed25519_fresh_signatures_differ_within_one_millisecond() -> None:
    signer = kalshi.KalshiSigner("k", ed_key(), clock_ms=lambda: 1_700_000_000_123, reuse_ms=0)
    first, second = signer.signature("GET", "/p"), signer.signature("GET", "/p")
    assert first[1] != second[1] and second[0] == first[0] + 1


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
async def test_simulator_verifies_both_kinds(kind: str) -> None:
    private_pem, public_pem = generate_key_pair(kind)  # type: ignore[arg-type]
    async with KalshiSimulator(public_key=public_pem, key_id="kid", fills_cutoff_ns=None) as sim:
        sim.add_fills(3)
        src = kalshi.KalshiSource(name="k", base_url=sim.url, api_key_id="kid", private_key_env="X")
        made = kalshi.create_adapter(src, Secret(private_pem.decode()), httpx.AsyncHTTPTransport(), lambda: None)
        result = await made.fetch(0, None, lambda: 1)
        assert len(result.fills) == 3 and not sim.rejected
        wrong, _ = generate_key_pair("ed25519" if kind == "rsa" else "rsa")
        bad = kalshi.create_adapter(src, Secret(wrong.decode()), httpx.AsyncHTTPTransport(), lambda: None)
        with pytest.raises(VenueError) as caught:
            await bad.fetch(0, None, lambda: 1)
        assert caught.value.reason == "auth"


async def sim_adapter(sim: KalshiSimulator, private_pem: bytes, **fields: Any) -> kalshi.KalshiAdapter:
    src = kalshi.KalshiSource(name="k", base_url=sim.url, api_key_id="kid", private_key_env="X", page_limit=5, **fields)
    made = kalshi.create_adapter(src, Secret(private_pem.decode()), httpx.AsyncHTTPTransport(), lambda: None)
    assert isinstance(made, kalshi.KalshiAdapter)
    return made


T = 1_790_000_000 * NS


async def test_historical_fills_are_read_below_the_cutoff_and_merged() -> None:
    private_pem, public_pem = generate_key_pair("ed25519")
    async with KalshiSimulator(public_key=public_pem, key_id="kid", fills_cutoff_ns=T) as sim:
        old = sim.add_fills(12, executed_at_ns=T - 3600 * NS)
        new = sim.add_fills(7, executed_at_ns=T + 60 * NS)
        made = await sim_adapter(sim, private_pem)
        crossing = await made.fetch(T - 7200 * NS, None, lambda: 1)  # a backfill crossing the cutoff
        assert {f.fill_id for f in crossing.fills} == {f.fill_id for f in old + new}
        above = await sim_adapter(sim, private_pem)
        recent = await above.fetch(T + 30 * NS, None, lambda: 1)  # floor above the cutoff: live only
        assert {f.fill_id for f in recent.fills} == {f.fill_id for f in new}


async def test_cutoff_moving_while_polling_loses_nothing() -> None:
    private_pem, public_pem = generate_key_pair()
    async with KalshiSimulator(public_key=public_pem, key_id="kid", fills_cutoff_ns=T) as sim:
        fills = sim.add_fills(10, executed_at_ns=T + 10 * NS) + sim.add_fills(10, executed_at_ns=T + 20 * NS)
        sim.add_fills(4, executed_at_ns=T - 10 * NS)
        made = await sim_adapter(sim, private_pem)
        sim.move_cutoff_after(2, T + 15 * NS)  # after the second live page, the older half moves
        result = await made.fetch(T - 60 * NS, None, lambda: 1)
        assert {f.fill_id for f in fills} <= {f.fill_id for f in result.fills}
        assert len(result.fills) == 24


def test_cutoff_formats() -> None:
    assert kalshi.cutoff_ns(b'{"trades_created_ts": "2026-07-01T00:00:00Z"}') == 1_782_864_000 * NS
    assert kalshi.cutoff_ns(b'{"trades_created_ts": 1782864000}') == 1_782_864_000 * NS
    assert kalshi.cutoff_ns(b'{"trades_created_ts": 1782864000000}') == 1_782_864_000 * NS
    for body in (b"{}", b'{"trades_created_ts": "soon"}', b"[]"):
        with pytest.raises(VenueError):
            kalshi.cutoff_ns(body)


@pytest.mark.parametrize("page", [{"fills": None}, {}, {"fills": None, "cursor": ""}])
async def test_null_or_missing_fills_is_an_empty_page(private_key: Any, page: dict[str, Any]) -> None:
    result = await adapter(Venue(paged({None: page})), private_key).fetch(SINCE_NS, None, lambda: 1)
    assert result.fills == [] and result.invalid == []


async def test_same_page_under_new_cursors_trips_the_guard_at_once(private_key: Any) -> None:
    venue = Venue(lambda request: httpx.Response(200, json={"fills": [fill(1), fill(2)], "cursor": f"c{len(venue.requests)}"}))
    with pytest.raises(VenueError, match="same page"):
        await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    assert len(venue.requests) == 2


@pytest.mark.parametrize(("bad", "reason"), [
    ({"ts": 10**25, "created_time": None}, "int64"),
    ({"created_time": "9999-12-31T23:59:59Z"}, "int64"),
    ({"created_time": "2100-01-01T00:00:00Z"}, "future"),
    ({"created_time": "1999-12-31T23:59:59Z"}, "before 2000"),
    ({"market_ticker": "KX\x1b[31m"}, "control"),
    ({"market_ticker": "K" * 100_000}, "length"),
    ({"order_id": "o\n1"}, "control"),
])
async def test_hostile_fill_goes_to_the_dlq_and_the_rest_is_published(private_key: Any, bad: dict[str, Any], reason: str) -> None:
    venue = Venue(paged({None: {"fills": [fill(1), fill(2, **bad), fill(3)]}}))
    result = await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    assert [f.fill_id for f in result.fills] == ["f-1", "f-3"]
    (letter,) = result.invalid
    assert letter.key == "f-2" and reason in letter.error
    assert letter.executed_at_ns is None or letter.executed_at_ns < 2**63


async def test_invalid_utf8_fails_only_its_fill(private_key: Any) -> None:
    good = [msgspec.json.encode(fill(n)) for n in (1, 3)]
    bad = msgspec.json.encode(fill(2, market_ticker="KXZZZ")).replace(b"KXZZZ", b"KX\xff\xfe")
    body = b'{"fills": [' + good[0] + b"," + bad + b"," + good[1] + b'], "cursor": ""}'
    venue = Venue(lambda request: httpx.Response(200, content=body))
    for _ in range(2):  # on every poll, not only the first
        result = await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
        assert [f.fill_id for f in result.fills] == ["f-1", "f-3"]
        (letter,) = result.invalid
        assert letter.key == "f-2" and "UTF-8" in letter.error
        assert msgspec.json.decode(letter.raw)["market_ticker"] == "KX\ufffd\ufffd"  # the DLQ copy is JSON


async def test_restricted_key_and_shards_in_the_simulator() -> None:
    private_pem, public_pem = generate_key_pair("ed25519")
    async with KalshiSimulator(public_key=public_pem, key_id="other", exchange_indexes=(0, 1, 2), seed=3) as sim:
        sim.add_key("kid", public_pem, subaccount=4)
        mine = sim.add_fills(6, subaccount=4)
        sim.add_fills(6, subaccount=0)
        locked = await (await sim_adapter(sim, private_pem)).fetch(0, None, lambda: 1)
        assert {f.fill_id for f in locked.fills} == {f.fill_id for f in mine}
        assert {f.venue_fields.exchange_index for f in locked.fills} - {0}  # shards beyond 0 are read
        with pytest.raises(VenueError) as caught:
            await (await sim_adapter(sim, private_pem, subaccount=0)).fetch(0, None, lambda: 1)
        assert caught.value.reason == "auth"
        fee = sim.fills[0].wire()["fee_cost"]
        assert len(fee.split(".")[1]) == 6


def test_overlapping_sources_are_a_config_error(tmp_path: Path, cfg: dict[str, Any]) -> None:
    second = {**kalshi_cfg(cfg), "name": "kalshi-two", "subaccount": 3}
    cfg["sources"].append(second)
    error = config_error(tmp_path, cfg)  # the first reads all subaccounts
    assert error.field == "sources[kalshi-two]" and "sources[kalshi-main]" in error.problem
    kalshi_cfg(cfg)["subaccount"] = 3
    assert "subaccount 3" in config_error(tmp_path, cfg).problem


def test_backfill_from_is_validated(tmp_path: Path, cfg: dict[str, Any]) -> None:
    kalshi_cfg(cfg)["backfill_from"] = "2026-10-01"
    error = config_error(tmp_path, cfg)
    assert isinstance(error, ConfigError) and error.field == "sources[kalshi-main].backfill_from"


def test_first_start_floor_is_backfill_from() -> None:
    now = 1_800_000_000 * NS
    state = SourceState(source(backfill_from="2026-10-01T00:00:00Z"), None, now)
    assert state.floor_ns == 1_790_812_800 * NS and state.window.floor_ns == 1_790_812_800 * NS
    assert SourceState(source(), None, now).floor_ns == now - 300 * NS


# -- Ed25519 through the CLI and the shared signatures ------------------------------------------


@pytest.mark.parametrize(("kind", "named"), [("rsa", "RSA-2048 key"), ("ed25519", "Ed25519 key")])
def test_check_config_names_the_key_kind(tmp_path: Path, cfg: dict[str, Any], kind: str, named: str) -> None:
    private_pem, _ = generate_key_pair(kind)  # type: ignore[arg-type]
    Path(kalshi_cfg(cfg)["private_key_file"]).write_bytes(private_pem + b"\n")
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.strip().startswith("kalshi-main:")]
    assert line.endswith(f"(secret ok, {named})")
    assert not any(body in result.stdout for body in private_pem.decode().splitlines()[1:-1])


def ed_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    return ed_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()


async def test_sources_of_one_ed25519_key_share_signatures_and_each_verifies() -> None:
    venue = Venue(paged({None: {"fills": [fill(1)]}}))
    made = [kalshi.create_adapter(source(name=f"kalshi-{n}", subaccount=n, api_key_id="ed-shared"),
                                  Secret(ed_pem()), httpx.MockTransport(venue), lambda: None) for n in (1, 2)]
    for one in made:
        await one.fetch(SINCE_NS, None, lambda: 1)
    first, second = venue.requests
    assert first.url.params["subaccount"] == "1" and second.url.params["subaccount"] == "2"
    assert first.headers["KALSHI-ACCESS-SIGNATURE"] == second.headers["KALSHI-ACCESS-SIGNATURE"]
    message = f"{first.headers['KALSHI-ACCESS-TIMESTAMP']}GET{first.url.path}".encode()
    ed_key().public_key().verify(base64.b64decode(first.headers["KALSHI-ACCESS-SIGNATURE"]), message)


async def test_a_refused_reused_ed25519_signature_is_replaced_by_a_fresh_one() -> None:
    """Kalshi refusing a signature it has seen: with a deterministic key, "fresh" must still
    mean other bytes (the timestamp moves on), or the retry would be refused as well."""
    from tests.test_kalshi_adapter import BASE_URL, RefusesReplays
    venue = RefusesReplays()
    signer = kalshi.KalshiSigner("ed-key", ed_key(), clock_ms=lambda: 1_762_000_123_456)  # a clock that stands still
    client = VenueClient(httpx.MockTransport(venue), BASE_URL, auth=kalshi.KalshiAuth(signer),
                         limiter=RateLimiter(1000), describe_error=kalshi.describe_error)
    made = kalshi.KalshiAdapter(source(), client)
    for _ in range(3):
        assert [f.fill_id for f in (await made.fetch(SINCE_NS, None, lambda: 1)).fills] == ["f-1"]
    signatures = [r.headers["KALSHI-ACCESS-SIGNATURE"] for r in venue.requests]
    assert len(signatures) == 4 and len(set(signatures)) == 3 and signer.reuse_ms == 0
    for request in venue.requests:
        message = f"{request.headers['KALSHI-ACCESS-TIMESTAMP']}GET{request.url.path}".encode()
        ed_key().public_key().verify(base64.b64decode(request.headers["KALSHI-ACCESS-SIGNATURE"]), message)


# -- the fills cutoff: cached, refreshed ---------------------------------------------------------


async def test_the_cutoff_is_cached_and_read_again_when_old_or_near_the_floor(private_key: Any) -> None:
    venue = Venue(paged({None: {"fills": [], "cursor": ""}}), cutoff="2026-09-15T00:00:00Z")
    made = adapter(venue, private_key)
    now = [T]
    far = T - 300 * NS  # a floor far above the cutoff

    async def poll(since_ns: int) -> None:
        await made.fetch(since_ns, None, lambda: now[0])

    await poll(far)
    assert len(venue.cutoff_requests) == 1
    for _ in range(5):  # a second apart: the cached cutoff serves
        now[0] += NS
        await poll(far)
    assert len(venue.cutoff_requests) == 1
    now[0] += kalshi.CUTOFF_REFRESH_NS  # old: read again
    await poll(far)
    assert len(venue.cutoff_requests) == 2
    # a floor within a day of the cutoff: read on every poll (the cutoff may have passed it)
    near = kalshi.cutoff_ns(b'{"trades_created_ts": "2026-09-15T00:00:00Z"}') + kalshi.CUTOFF_MARGIN_NS // 2
    for _ in range(2):
        now[0] += NS
        await poll(near)
    assert len(venue.cutoff_requests) == 4
    assert all(r.url.path == "/trade-api/v2/portfolio/fills" for r in venue.requests)  # all above: live only


def test_overlapping_sources_exit_2_naming_both(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["sources"].append({**kalshi_cfg(cfg), "name": "kalshi-two", "subaccount": 3})
    line = assert_config_error(cli("check-config", "--config", str(write_config(tmp_path, cfg))), "sources[kalshi-two]")
    assert "sources[kalshi-main]" in line
    assert_config_error(cli("run", "--config", str(write_config(tmp_path, cfg))), "sources[kalshi-two]")
