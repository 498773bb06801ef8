"""What every venue provides: the settings common to its sources, and the adapter that polls one.

An adapter knows one venue's wire format, authentication and paging, and nothing about Kafka,
dedupe or scheduling. The poll loop calls :meth:`VenueAdapter.fetch` once per poll with the lower
bound of the overlap window; the adapter walks every page it needs and returns the normalised
fills, the fills it could not normalise (they go to the DLQ), and an opaque paging hint that the
checkpoint carries to the next poll and across restarts. The types it returns are in
:mod:`publisher.venues.results`, its errors in :mod:`publisher.venues.errors`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import msgspec

from publisher.floor import KEEP_PAGES
from publisher.venues.pages import PublishedFills
from publisher.venues.results import FetchResult


class VenueAdapter(abc.ABC):
    """One configured account ("source") on one venue.

    Subclasses set `venue`, are registered in :mod:`publisher.venues`, and receive their source
    config plus an already-configured :class:`publisher.venues.http.VenueClient` (rate limit,
    timeouts, error mapping, request counting).
    """

    venue: ClassVar[str]

    @abc.abstractmethod
    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int],
                    published: PublishedFills | None = None) -> FetchResult:
        """Fetch every fill executed at or after `since_ns` (more is fine: the caller filters).

        `paging_state` is what the previous successful poll returned (None on a first start).
        `clock_ns()` (wall clock, ns) is read as each page arrives and stamps that page's
        events as `observed_at_ns`. `published` (the poll loop's dedupe window) says which fills
        were published already: re-reading the overlap window returns mostly those, and an adapter
        may skip normalising them (counting them in :attr:`FetchResult.skipped_published`), since
        the poll loop would only drop them; it then returns the keys it had computed for the
        fills it returns (:attr:`FetchResult.keys`). Raises
        :class:`~publisher.venues.errors.VenueError` when the poll cannot complete; no partial
        result is used then.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources the adapter owns (the HTTP client is closed by its owner)."""


SOURCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"

#: room per fill in the default response limit: a fill with every identifier at its longest
#: (:data:`~publisher.venues.fields.MAX_TEXT_LENGTH`), JSON-escaped, stays well below it; real fills are under 1 KiB
RESPONSE_BYTES_PER_FILL = 8192
#: room for a page's envelope (cursor, counts) and for error bodies
RESPONSE_ENVELOPE_BYTES = 65536


class SourceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="venue"):
    """Settings common to every source; each venue module subclasses it with `tag=<venue name>`.

    The venue's secret is named by `secret_field` (e.g. `private_key`): the config gives exactly one
    of `<secret_field>_file` or `<secret_field>_env`, never the value itself.
    """

    secret_field: ClassVar[str]

    name: Annotated[str, msgspec.Meta(pattern=SOURCE_NAME_PATTERN, max_length=100)]
    base_url: str
    poll_interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=3600)] = 1.0
    lookback_s: Annotated[float, msgspec.Meta(ge=0, le=90 * 86400)] = 300.0
    page_limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200
    max_requests_per_s: Annotated[float, msgspec.Meta(ge=0.001, le=100_000)] = 10.0
    #: the whole request (connect, send, every read of the answer), not each step of it
    timeout_s: Annotated[float, msgspec.Meta(ge=0.01, le=300)] = 10.0
    #: the largest venue answer read, compressed and decompressed alike; None: derived from
    #: `page_limit` (see :attr:`response_limit`)
    max_response_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] | None = None
    #: pin the source to a shard (`cluster.shards`); None: a stable hash of the name picks it
    shard: Annotated[int, msgspec.Meta(ge=0)] | None = None
    #: RFC 3339 time: a first start (no checkpoint) publishes every fill executed since then
    #: instead of the last `lookback_s`; ignored once the source has a checkpoint
    backfill_from: str | None = None

    @property
    def response_limit(self) -> int:
        """`max_response_bytes`, or by default room for `page_limit` fills of
        :data:`RESPONSE_BYTES_PER_FILL` each plus :data:`RESPONSE_ENVELOPE_BYTES`."""
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        return self.page_limit * RESPONSE_BYTES_PER_FILL + RESPONSE_ENVELOPE_BYTES

    @property
    def below_floor_keep(self) -> int:
        """How many keys below the floor the poll loop remembers at least (:mod:`publisher.floor`):
        enough to cover what the venue's adapter may read there in one poll when it reads only part
        of the venue's list. By default :data:`~publisher.floor.KEEP_PAGES` pages of `page_limit`."""
        return KEEP_PAGES * self.page_limit

    @property
    def venue_name(self) -> str:
        """The venue this source polls (the struct's tag, `venue:` in the config)."""
        return str(self.__struct_config__.tag)
