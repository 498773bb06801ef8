"""Kalshi adapter: request signing, paging, error mapping and secret hygiene, over httpx.MockTransport."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from publisher.event import FillEvent
from publisher.secret import Secret
from publisher.venues import kalshi
from publisher.venues.errors import VenueError
from publisher.venues.http import RateLimiter, VenueClient

BASE_URL = "https://kalshi.test/trade-api/v2"
FILLS_PATH = "/trade-api/v2/portfolio/fills"
SINCE_NS = 1_762_000_000_900_000_000  # floor to seconds is 1_762_000_000; minus one second of safety
NOW_MS = 1_762_000_123_456


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(private_key: rsa.RSAPrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def verify(key: rsa.RSAPrivateKey, signature_b64: str, message: str) -> None:
    key.public_key().verify(
        base64.b64decode(signature_b64),
        message.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )


def source(**overrides: Any) -> kalshi.KalshiSource:
    fields: dict[str, Any] = {
        "name": "kalshi-main",
        "base_url": BASE_URL,
        "api_key_id": "key-id-1",
        "private_key_env": "KALSHI_KEY",
        "page_limit": 2,
        "max_requests_per_s": 1000,
    }
    fields.update(overrides)
    return kalshi.KalshiSource(**fields)


def fill(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "fill_id": f"f-{n}",
        "trade_id": f"f-{n}",
        "order_id": f"o-{n}",
        "market_ticker": "KXTEST-1",
        "outcome_side": "yes",
        "count_fp": "1.00",
        "yes_price_dollars": "0.5000",
        "created_time": "2025-11-01T12:26:40.000001Z",
        **extra,
    }


CUTOFF_PATH = "/trade-api/v2/historical/cutoff"


class Venue:
    """A scripted Kalshi: `respond` maps each fills request to a response; every fills request is
    recorded in `requests`. `GET /historical/cutoff` answers `cutoff` (default the epoch: nothing
    is historical) and is recorded in `cutoff_requests`."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response], cutoff: Any = "1970-01-01T00:00:00Z"):
        self.respond = respond
        self.cutoff = cutoff
        self.requests: list[httpx.Request] = []
        self.cutoff_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == CUTOFF_PATH:
            self.cutoff_requests.append(request)
            return httpx.Response(200, json={"market_settled_ts": "2026-01-01T00:00:00Z", "trades_created_ts": self.cutoff,
                                             "orders_updated_ts": "2026-01-01T00:00:00Z"})
        self.requests.append(request)
        return self.respond(request)


def adapter(
    venue: Venue, key: rsa.RSAPrivateKey, counter: list[int] | None = None, max_pages: int = 100, **overrides: Any
) -> kalshi.KalshiAdapter:
    client = VenueClient(
        httpx.MockTransport(venue),
        BASE_URL,
        auth=kalshi.KalshiAuth(kalshi.KalshiSigner("key-id-1", key, clock_ms=lambda: NOW_MS)),
        limiter=RateLimiter(1000),
        describe_error=kalshi.describe_error,
        on_request=(lambda: counter.append(1)) if counter is not None else (lambda: None),
    )
    return kalshi.KalshiAdapter(source(**overrides), client, max_pages=max_pages)


def paged(pages: dict[str | None, dict[str, Any]]) -> Callable[[httpx.Request], httpx.Response]:
    """Serve `pages` keyed by the request's cursor parameter (None for the first page)."""

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    return respond


# --------------------------------------------------------------------------------------------------
# Signing


def test_sign_verifies_with_the_public_key(private_key: rsa.RSAPrivateKey) -> None:
    signature = kalshi.sign(private_key, 1_700_000_000_123, "GET", "/trade-api/v2/portfolio/fills")
    verify(private_key, signature, "1700000000123GET/trade-api/v2/portfolio/fills")
    with pytest.raises(InvalidSignature):  # seconds instead of milliseconds is a different message
        verify(private_key, signature, "1700000000GET/trade-api/v2/portfolio/fills")
    # PSS is randomised: two signatures differ, both verify
    assert signature != kalshi.sign(private_key, 1_700_000_000_123, "GET", "/trade-api/v2/portfolio/fills")


async def test_request_headers_and_signed_path_exclude_query(private_key: rsa.RSAPrivateKey) -> None:
    venue = Venue(paged({None: {"fills": [], "cursor": ""}}))
    await adapter(venue, private_key, subaccount=2).fetch(SINCE_NS, None, lambda: 1)
    (request,) = venue.requests
    assert request.method == "GET"
    assert request.url.path == FILLS_PATH
    assert request.url.query  # the query string is sent ...
    assert request.headers["KALSHI-ACCESS-KEY"] == "key-id-1"
    assert request.headers["KALSHI-ACCESS-TIMESTAMP"] == str(NOW_MS)
    # ... but not signed
    verify(private_key, request.headers["KALSHI-ACCESS-SIGNATURE"], f"{NOW_MS}GET{FILLS_PATH}")


async def test_create_adapter_signs_with_current_milliseconds(private_key: rsa.RSAPrivateKey, pem: str) -> None:
    venue = Venue(paged({None: {"fills": [fill(1)]}}))
    counted: list[int] = []
    http = httpx.MockTransport(venue)
    made = kalshi.create_adapter(source(), Secret(pem), http, lambda: counted.append(1))
    assert made.venue == "kalshi"
    result = await made.fetch(SINCE_NS, None, lambda: 1)
    assert [f.fill_id for f in result.fills] == ["f-1"]
    assert result.paging_state is None
    assert counted == [1, 1]  # the page and the fills cutoff
    (request,) = venue.requests
    timestamp = request.headers["KALSHI-ACCESS-TIMESTAMP"]
    assert len(timestamp) == 13  # milliseconds, not seconds
    verify(private_key, request.headers["KALSHI-ACCESS-SIGNATURE"], f"{timestamp}GET{FILLS_PATH}")


# --------------------------------------------------------------------------------------------------
# Paging


async def test_paging_follows_cursor_and_resends_filters(private_key: rsa.RSAPrivateKey) -> None:
    venue = Venue(
        paged(
            {
                None: {"fills": [fill(1), fill(2)], "cursor": "c1"},
                "c1": {"fills": [fill(3), fill(4)], "cursor": "c2"},
                "c2": {"fills": [fill(5)], "cursor": ""},
            }
        )
    )
    counted: list[int] = []
    result = await adapter(venue, private_key, counted, subaccount=0).fetch(SINCE_NS, None, lambda: 42)
    assert [f.fill_id for f in result.fills] == ["f-1", "f-2", "f-3", "f-4", "f-5"]
    assert all(f.observed_at_ns == 42 and f.source == "kalshi-main" for f in result.fills)
    assert result.invalid == [] and result.paging_state is None
    assert len(counted) == 3 + 1  # three pages and the fills cutoff
    params = [dict(r.url.params) for r in venue.requests]
    base = {"min_ts": "1761999999", "limit": "2", "subaccount": "0"}
    assert params == [base, {**base, "cursor": "c1"}, {**base, "cursor": "c2"}]


async def test_subaccount_omitted_when_not_configured(private_key: rsa.RSAPrivateKey) -> None:
    venue = Venue(paged({None: {"fills": []}}))  # no cursor at all: the last page
    await adapter(venue, private_key).fetch(0, None, lambda: 1)
    assert dict(venue.requests[0].url.params) == {"min_ts": "0", "limit": "2"}


async def test_null_cursor_ends_paging_and_repeats_are_dropped(private_key: rsa.RSAPrivateKey) -> None:
    venue = Venue(
        paged({None: {"fills": [fill(1), fill(2)], "cursor": "c1"}, "c1": {"fills": [fill(2)], "cursor": None}})
    )
    result = await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    assert [f.fill_id for f in result.fills] == ["f-1", "f-2"]


async def test_cursor_loop_is_a_decode_error(private_key: rsa.RSAPrivateKey) -> None:
    venue = Venue(
        paged({None: {"fills": [fill(1)], "cursor": "c1"}, "c1": {"fills": [fill(2)], "cursor": "c1"}})
    )
    with pytest.raises(VenueError) as caught:
        await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    assert caught.value.reason == "decode"
    assert len(venue.requests) == 2


async def test_page_cap_is_a_decode_error(private_key: rsa.RSAPrivateKey) -> None:
    def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"fills": [], "cursor": f"c{len(venue.requests)}"})

    venue = Venue(endless)
    with pytest.raises(VenueError) as caught:
        await adapter(venue, private_key, max_pages=5).fetch(SINCE_NS, None, lambda: 1)
    assert caught.value.reason == "decode" and len(venue.requests) == 5


async def test_one_bad_fill_is_invalid_and_the_rest_published(private_key: rsa.RSAPrivateKey) -> None:
    bad = fill(2, yes_price_dollars="NaN")
    venue = Venue(
        paged({None: {"fills": [fill(1), bad, {"fill_id": 7}, "junk", fill(3)], "cursor": "c1"}, "c1": {"fills": [fill(4)]}})
    )
    result = await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    assert [f.fill_id for f in result.fills] == ["f-1", "f-3", "f-4"]
    assert next(i.key for i in result.invalid) == "f-2"
    assert all(i.key.startswith("sha256:") for i in result.invalid[1:])
    assert len(result.invalid) == 3
    assert msgspec.json.decode(result.invalid[0].raw) == bad  # the fill verbatim, for the DLQ


@pytest.mark.parametrize(
    "body",
    [b"<html>bad gateway</html>", b'{"fills": "nope"}', b'{"cursor": "x"}', b"[]", b'{"fills": [1,'],
)
async def test_malformed_page_is_a_decode_error(private_key: rsa.RSAPrivateKey, body: bytes) -> None:
    venue = Venue(lambda request: httpx.Response(200, content=body))
    with pytest.raises(VenueError) as caught:
        await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    assert caught.value.reason == "decode"


# --------------------------------------------------------------------------------------------------
# Errors


def echo_secrets(status: int, as_json: bool) -> Callable[[httpx.Request], httpx.Response]:
    """An error response that echoes the request's auth headers back, as a misbehaving proxy might."""

    def respond(request: httpx.Request) -> httpx.Response:
        echoed = f"{request.headers['KALSHI-ACCESS-SIGNATURE']} {request.headers['KALSHI-ACCESS-KEY']}"
        if not as_json:
            return httpx.Response(status, content=echoed.encode())
        if status == 429:
            return httpx.Response(429, json={"error": "too many requests", "details": echoed})
        return httpx.Response(status, json={"code": f"code_{status}", "message": "went wrong", "details": echoed})

    return respond


@pytest.mark.parametrize(
    ("status", "reason", "description"),
    [
        (400, "http_4xx", "code_400: went wrong"),
        (401, "auth", "code_401: went wrong"),
        (403, "auth", "code_403: went wrong"),
        (404, "http_4xx", "code_404: went wrong"),
        (429, "http_429", "too many requests"),
        (500, "http_5xx", "code_500: went wrong"),
        (503, "http_5xx", "code_503: went wrong"),
    ],
)
@pytest.mark.parametrize("as_json", [True, False])
async def test_http_errors_map_to_reasons_without_secrets(
    private_key: rsa.RSAPrivateKey, pem: str, status: int, reason: str, description: str, as_json: bool
) -> None:
    venue = Venue(echo_secrets(status, as_json))
    with pytest.raises(VenueError) as caught:
        await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)
    error = caught.value
    assert error.reason == reason
    text = str(error)
    assert text.startswith(f"HTTP {status}: ")
    if as_json:
        assert text.endswith(description)
    signature = venue.requests[0].headers["KALSHI-ACCESS-SIGNATURE"]
    assert signature not in text and signature[:24] not in text
    for line in pem.splitlines()[1:-1]:
        assert line not in text
    assert error.__cause__ is None


def test_describe_error_variants() -> None:
    assert kalshi.describe_error(400, b'{"error": {"code": "bad", "message": "nope"}}') == "bad: nope"
    assert kalshi.describe_error(400, b'{"code": "only_code"}') == "only_code"
    assert kalshi.describe_error(400, b"{}") == "no error code or message"
    assert kalshi.describe_error(502, b"<html>") == "non-JSON error body (6 bytes)"
    long = kalshi.describe_error(400, msgspec.json.encode({"code": "c", "message": "x" * 1000}))
    assert len(long) <= 200 and long.startswith("c: xxx")
    assert "\n" not in kalshi.describe_error(400, b'{"code": "a\\nb"}')


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectTimeout("timed out"), "timeout"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.ConnectError("refused"), "connect"),
        (httpx.RemoteProtocolError("dropped"), "connect"),
    ],
)
async def test_transport_errors(private_key: rsa.RSAPrivateKey, exc: Exception, reason: str) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(VenueError) as caught:
        await adapter(Venue(respond), private_key).fetch(SINCE_NS, None, lambda: 1)
    assert caught.value.reason == reason


# --------------------------------------------------------------------------------------------------
# Secrets


def test_check_secret_accepts_pkcs8_and_pkcs1(private_key: rsa.RSAPrivateKey, pem: str) -> None:
    kalshi.check_secret(Secret(pem))
    pkcs1 = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    kalshi.check_secret(Secret(pkcs1))


def bad_secrets(private_key: rsa.RSAPrivateKey) -> list[str]:
    encrypted = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2"),
    ).decode()
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return ["", "not a key at all sk-SECRETVALUE", encrypted, ec_key, public, "-----BEGIN PRIVATE KEY-----\nAAAA\n"]


def test_check_secret_rejects_without_quoting_the_secret(private_key: rsa.RSAPrivateKey) -> None:
    for value in bad_secrets(private_key):
        with pytest.raises(ValueError) as caught:
            kalshi.check_secret(Secret(value))
        message = str(caught.value)
        assert "Kalshi private key" in message
        assert "SECRETVALUE" not in message
        for line in value.splitlines()[1:-1]:
            assert line not in message
        assert caught.value.__cause__ is None


def test_create_adapter_rejects_a_bad_key() -> None:
    http = httpx.MockTransport(lambda request: httpx.Response(200))
    with pytest.raises(ValueError, match="not a valid PEM"):
        kalshi.create_adapter(source(), Secret("garbage"), http, lambda: None)


def test_auth_repr_hides_the_key(private_key: rsa.RSAPrivateKey) -> None:
    assert repr(kalshi.KalshiAuth(kalshi.KalshiSigner("key-id-1", private_key))) == "KalshiAuth(key_id='key-id-1')"


async def test_events_are_plain_fill_events(private_key: rsa.RSAPrivateKey) -> None:
    venue = Venue(paged({None: {"fills": [fill(1, count_fp="0.50", fee_cost="0.0070")]}}))
    (event,) = (await adapter(venue, private_key).fetch(SINCE_NS, None, lambda: 1)).fills
    assert isinstance(event, FillEvent)
    assert (event.quantity, event.fee, event.price, event.executed_at_ns) == (
        "0.5",
        "0.007",
        "0.5",
        1_762_000_000_000_001_000,
    )


# --------------------------------------------------------------------------------------------------
# Signature reuse (KalshiSigner)


def test_signer_reuses_a_signature_for_a_quarter_second_per_method_and_path(private_key: rsa.RSAPrivateKey) -> None:
    now = [NOW_MS]
    signer = kalshi.KalshiSigner("key-id-1", private_key, clock_ms=lambda: now[0])
    first = signer.signature("GET", FILLS_PATH)
    assert first[2] is False
    now[0] += kalshi.SIGNATURE_REUSE_MS - 1
    assert signer.signature("GET", FILLS_PATH) == (first[0], first[1], True)
    other = signer.signature("GET", "/trade-api/v2/portfolio/orders")
    assert other[2] is False and other[0] == now[0]
    now[0] += 1  # the reused timestamp would now be a quarter second old: sign afresh
    fresh = signer.signature("GET", FILLS_PATH)
    assert fresh[2] is False and fresh[0] == now[0]
    verify(private_key, fresh[1], f"{now[0]}GET{FILLS_PATH}")
    assert signer.signature("GET", FILLS_PATH, fresh=True)[2] is False
    signer.stop_reusing()
    assert signer.signature("GET", FILLS_PATH)[2] is False


async def test_sources_of_one_key_share_signatures(pem: str) -> None:
    venue = Venue(paged({None: {"fills": [fill(1)]}}))
    adapters = [kalshi.create_adapter(source(name=f"kalshi-{n}", subaccount=n), Secret(pem),
                                      httpx.MockTransport(venue), lambda: None) for n in (1, 2)]
    for made in adapters:
        await made.fetch(SINCE_NS, None, lambda: 1)
    first, second = venue.requests
    assert first.url.params["subaccount"] == "1" and second.url.params["subaccount"] == "2"
    # the query is not signed, so one signature serves both subaccounts
    assert first.headers["KALSHI-ACCESS-SIGNATURE"] == second.headers["KALSHI-ACCESS-SIGNATURE"]


class RefusesReplays:
    """A Kalshi that refuses any signature it has seen (replay protection)."""

    def __init__(self, key_ok: bool = True):
        self.key_ok = key_ok
        self.seen: set[str] = set()
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == CUTOFF_PATH:  # not part of the replay story
            return httpx.Response(200, json={"trades_created_ts": "1970-01-01T00:00:00Z"})
        self.requests.append(request)
        signature = request.headers["KALSHI-ACCESS-SIGNATURE"]
        if not self.key_ok or signature in self.seen:
            return httpx.Response(401, json={"code": "unauthorized", "message": "bad signature"})
        self.seen.add(signature)
        return httpx.Response(200, json={"fills": [fill(1)], "cursor": ""})


async def test_a_refused_reused_signature_is_retried_fresh_and_reuse_stops(
    private_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    venue = RefusesReplays()
    signer = kalshi.KalshiSigner("key-id-1", private_key)  # the real clock: requests within 250 ms
    client = VenueClient(httpx.MockTransport(venue), BASE_URL, auth=kalshi.KalshiAuth(signer),
                         limiter=RateLimiter(1000), describe_error=kalshi.describe_error)
    made = kalshi.KalshiAdapter(source(), client)
    for _ in range(3):
        result = await made.fetch(SINCE_NS, None, lambda: 1)
        assert [f.fill_id for f in result.fills] == ["f-1"]
    # fresh, reused (refused), fresh again; then every request signed on its own
    assert len(venue.requests) == 4
    assert signer.reuse_ms == 0
    assert [r.message for r in caplog.records] == [
        "Kalshi refused a reused request signature for key key-id-1; signing every request from now on"]


async def test_a_bad_key_is_an_auth_error_and_leaves_reuse_on(private_key: rsa.RSAPrivateKey) -> None:
    venue = RefusesReplays(key_ok=False)
    signer = kalshi.KalshiSigner("key-id-1", private_key)
    client = VenueClient(httpx.MockTransport(venue), BASE_URL, auth=kalshi.KalshiAuth(signer),
                         limiter=RateLimiter(1000), describe_error=kalshi.describe_error)
    made = kalshi.KalshiAdapter(source(), client)
    for _ in range(2):
        with pytest.raises(VenueError) as caught:
            await made.fetch(SINCE_NS, None, lambda: 1)
        assert caught.value.reason == "auth"
    assert len(venue.requests) == 3  # fresh (401); reused (401), retried fresh (401)
    assert signer.reuse_ms == kalshi.SIGNATURE_REUSE_MS
