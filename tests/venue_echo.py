"""A venue that exists only in the tests: adding a venue is one module and one registration.

This module is all the echo venue is: its source config, its adapter on the shared HTTP layer, its
secret check and its :data:`VENUE` spec. No product file names it; a test registers it with
`VENUES.register(VENUE)` (the :func:`registered` context manager) and the config, the environment
overrides, check-config and the adapter factory pick it up from the registry.

The echo venue's API: `GET <base_url>/fills?since_ns=<ns>` with `Authorization: Bearer <token>`
answers `{"fills": [{"id", "order", "symbol", "side": "buy"|"sell", "px", "qty", "ts_ns"}, ...]}`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx
import msgspec

from publisher.event import FillEvent
from publisher.secret import Secret
from publisher.venues import VENUES
from publisher.venues.base import SourceConfig, VenueAdapter
from publisher.venues.errors import VenueDecodeError
from publisher.venues.fields import decimal_text, executed_at_problem
from publisher.venues.http import VenueClient
from publisher.venues.pages import PublishedFills
from publisher.venues.registry import VenueSpec
from publisher.venues.results import FetchResult, InvalidFill, raw_key

TOKEN_PREFIX = "echo-"


class EchoSource(SourceConfig, tag="echo", kw_only=True):
    """An echo desk, read with a bearer token from a file or an environment variable."""

    secret_field = "token"

    token_file: str | None = None
    token_env: str | None = None
    desk: str


class EchoFill(msgspec.Struct, forbid_unknown_fields=False):
    id: str
    order: str
    symbol: str
    side: Literal["buy", "sell"]
    px: str
    qty: str
    ts_ns: int


class EchoPage(msgspec.Struct):
    fills: list[msgspec.Raw]


class EchoAuth(httpx.Auth):
    """Adds the bearer token."""

    def __init__(self, token: Secret):
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        yield request


def normalise(fill: EchoFill, source: str, observed_at_ns: int) -> FillEvent:
    """One echo fill as the event; :class:`ValueError` when it is unusable."""
    problem = executed_at_problem(fill.ts_ns, observed_at_ns)
    if problem is not None:
        raise ValueError(problem)
    return FillEvent(
        venue="echo",  # type: ignore[arg-type]  # not in the published schema's venues: a test venue
        source=source, fill_id=fill.id, order_id=fill.order, instrument=fill.symbol, side=fill.side,
        price=decimal_text("px", fill.px), quantity=decimal_text("qty", fill.qty), fee=None, fee_currency=None,
        liquidity=None, executed_at_ns=fill.ts_ns, observed_at_ns=observed_at_ns,
    )


class EchoAdapter(VenueAdapter):
    """One page per poll, every fill since the window's floor."""

    venue = "echo"

    def __init__(self, source: EchoSource, client: VenueClient):
        self._source = source
        self._client = client

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int],
                    published: PublishedFills | None = None) -> FetchResult:
        """The simplest adapter there is: it reads every fill (the poll loop's dedupe drops those
        already published), so it needs nothing of `published`."""
        body = await self._client.get("fills", {"since_ns": since_ns})
        observed_at_ns = clock_ns()
        try:
            page = msgspec.json.decode(body, type=EchoPage)
        except msgspec.DecodeError as exc:
            raise VenueDecodeError(f"not an echo page: {exc}") from None
        result = FetchResult()
        for raw in page.fills:
            try:
                result.fills.append(normalise(msgspec.json.decode(raw, type=EchoFill), self._source.name,
                                              observed_at_ns))
            except (msgspec.DecodeError, ValueError) as exc:
                result.invalid.append(InvalidFill(key=raw_key(bytes(raw)), error=str(exc), raw=raw))
        return result


def check_secret(secret: Secret) -> None:
    """Raise :class:`ValueError` unless the token looks like an echo token."""
    if not secret.reveal().startswith(TOKEN_PREFIX):
        raise ValueError(f"an echo token starts with {TOKEN_PREFIX!r}")


def create_adapter(
    source: EchoSource, secret: Secret, transport: httpx.AsyncBaseTransport, on_request: Callable[[], None]
) -> VenueAdapter:
    """The adapter over `transport`."""
    client = VenueClient.for_source(transport, source, auth=EchoAuth(secret),
                                    describe_error=lambda status, body: f"HTTP {status}", on_request=on_request)
    return EchoAdapter(source, client)


VENUE = VenueSpec(
    name="echo",
    source_config=EchoSource,
    create_adapter=create_adapter,
    check_secret=check_secret,
    describe_secret=lambda secret: "echo token",
)


@contextmanager
def registered() -> Iterator[VenueSpec[EchoSource]]:
    """The echo venue registered for the duration (the one line a product venue has in
    `publisher/venues/__init__.py`)."""
    VENUES.register(VENUE)
    try:
        yield VENUE
    finally:
        VENUES.unregister(VENUE.name)
