"""What every venue adapter provides, and the few types that cross the adapter boundary.

An adapter knows one venue's wire format, authentication and paging, and nothing about Kafka,
dedupe or scheduling. The poll loop calls :meth:`VenueAdapter.fetch` once per poll with the lower
bound of the overlap window; the adapter walks every page it needs and returns the normalised
fills, the fills it could not normalise (they go to the DLQ), and an opaque paging hint that the
checkpoint carries to the next poll and across restarts.
"""

from __future__ import annotations

import abc
import asyncio
import calendar
import datetime as dt
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec

from publisher.event import FillEvent

T = TypeVar("T")

#: Why a poll failed; the `reason` label of `fillpub_poll_errors_total`.
ErrorReason = Literal["timeout", "connect", "http_429", "http_4xx", "http_5xx", "auth", "decode"]


class VenueError(Exception):
    """A poll failed; the whole poll is retried later with backoff.

    The message must never contain a secret (keys, signatures); adapters build it from the status
    and the venue's own error code/message only.
    """

    def __init__(self, reason: ErrorReason, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.reason: ErrorReason = reason
        self.retry_after_s = retry_after_s

    #: what went wrong, in words, for the log line (the contract's `reason` is coarser)
    kind: ClassVar[str | None] = None


class VenueDecodeError(VenueError):
    """The venue's answer is not a page we can read: not its JSON, nested too deeply, a corrupt or
    unsupported content encoding, an unexpected status such as a redirect. Counted as `decode`."""

    kind = "unreadable answer"

    def __init__(self, message: str):
        super().__init__("decode", message)


class ResponseTooLarge(VenueDecodeError):
    """The venue's answer exceeds the source's `max_response_bytes`, raw or decompressed."""

    kind = "answer too large"


class PagingError(VenueError):
    """The venue's paging does not end: a cursor comes back, or a poll needs more pages than the
    adapter's guard allows. Counted as `decode` (the contract has no finer reason)."""

    kind = "paging does not end"

    def __init__(self, message: str):
        super().__init__("decode", message)


@dataclass(slots=True)
class InvalidFill:
    """A fill the adapter could not decode or normalise.

    `key` identifies it for dedupe so the DLQ receives it once, not on every overlapping poll: the
    venue's fill id when it could be read, else a digest of the raw bytes.
    """

    key: str
    error: str
    raw: msgspec.Raw
    #: the venue's execution time when the fill's own time field is readable and valid: the poll
    #: loop then treats the dead letter like a fill of that time (ignored below the overlap window,
    #: remembered while inside it), so it is sent once however long the venue keeps serving it
    executed_at_ns: int | None = None


@dataclass(slots=True)
class FetchResult:
    """Everything one poll returned, all pages together."""

    fills: list[FillEvent] = field(default_factory=list)
    invalid: list[InvalidFill] = field(default_factory=list)
    #: opaque paging hint stored in the checkpoint and handed back on the next poll (e.g. ZLL's
    #: resume offset); None when the venue needs none
    paging_state: Any = None
    #: fills skipped unread because :attr:`VenueAdapter.known` said they were already published
    known: int = 0
    #: (first copy, later copy) of fill ids the venue served twice in this poll with different
    #: values; the first copy is the one kept
    conflicts: list[tuple[FillEvent, FillEvent]] = field(default_factory=list)


def same_values(first: FillEvent, later: FillEvent) -> bool:
    """Whether two copies of one fill carry the same venue values (`observed_at_ns` is ours)."""
    return first == later or msgspec.structs.replace(later, observed_at_ns=first.observed_at_ns) == first


def decimal_text(field: str, text: str) -> str:
    """A venue's decimal string in the event's plain form; :class:`ValueError` naming `field` when
    `text` is not a decimal in plain notation.

    The plain form is what :func:`~publisher.event.plain` gives for the value (no exponent, no
    redundant zeros, `-0` is `0`), computed on the digits without building a :class:`Decimal`
    (that, and a regular expression, cost more than the rest of a fill's normalisation; only a
    derived price needs arithmetic). Only plain notation is accepted: `Decimal()` would also take
    NaN, Infinity, exponents, underscores and surrounding spaces, none of which is a price, size
    or fee.
    """
    whole, _, fraction = text.partition(".")
    # ASCII digits on both sides of at most one point (either side may be empty, not both);
    # isdigit() alone would take other scripts' digits and superscripts
    if not (whole + fraction).isdigit() or not text.isascii():
        return _signed_decimal_text(field, text)
    if fraction:
        fraction = fraction.rstrip("0")
    if not whole or whole[0] == "0":
        whole = whole.lstrip("0") or "0"
    return f"{whole}.{fraction}" if fraction else whole


def _signed_decimal_text(field: str, text: str) -> str:
    # the rare path of decimal_text: a leading sign, or not a decimal at all
    if text[:1] in ("-", "+") and text[1:2] not in ("-", "+", ""):
        digits = decimal_text(field, text[1:])
        return "-" + digits if text[0] == "-" and digits != "0" else digits
    raise ValueError(f"{field} is not a decimal number: {text[:40]!r}")


def is_negative(plain_text: str) -> bool:
    """Whether a :func:`decimal_text` result is below zero."""
    return plain_text[0] == "-"


def is_positive(plain_text: str) -> bool:
    """Whether a :func:`decimal_text` result is above zero."""
    return plain_text[0] != "-" and plain_text != "0"


#: nanoseconds per second
NS = 1_000_000_000
#: the earliest execution time a fill may carry (2000-01-01T00:00:00Z): a time below it is not
#: plausible nanoseconds (a millisecond or microsecond value read as nanoseconds lands in 1970)
MIN_EXECUTED_AT_NS = 946_684_800 * NS
#: how far past our own clock a venue's execution time may lie (its clock and ours drift apart);
#: anything later is garbage, e.g. `ts: 1e25`
MAX_FUTURE_NS = 86_400 * NS
#: the largest value the event's int64 nanosecond fields can carry
MAX_INT64 = 2**63 - 1


def executed_at_problem(executed_at_ns: int, observed_at_ns: int) -> str | None:
    """Why `executed_at_ns` cannot be a fill's execution time (None when it can).

    Out-of-range times (before 2000, beyond int64 nanoseconds, more than a day past our clock)
    make the fill invalid: it goes to the DLQ with this reason, never into the event or the
    checkpoint, where it would overflow or date the fill in 1970 for the window to ignore.
    """
    if executed_at_ns > MAX_INT64:
        return f"execution time {executed_at_ns} is beyond int64 nanoseconds"
    if executed_at_ns < MIN_EXECUTED_AT_NS:
        return f"execution time {executed_at_ns} ns is before 2000-01-01 (not plausible nanoseconds)"
    if executed_at_ns > observed_at_ns + MAX_FUTURE_NS:
        return f"execution time {executed_at_ns} ns is more than a day in the future"
    return None


#: the longest venue identifier (fill id, order id, instrument) the event carries; record keys
#: and consumers' terminals receive these verbatim
MAX_TEXT_LENGTH = 256


def text_problem(field: str, text: str, max_length: int = MAX_TEXT_LENGTH) -> str | None:
    """Why a venue identifier cannot go into the event as is (None when it can): empty, longer
    than `max_length`, or holding control characters (C0, DEL, C1), which would reach Kafka keys
    and terminals verbatim."""
    if not text:
        return f"{field} is empty"
    if len(text) > max_length:
        return f"{field} is longer than {max_length} characters ({len(text)})"
    if not text.isprintable():
        return f"{field} holds control or non-printable characters: {text[:40]!a}"
    return None


# RFC 3339 times: Kalshi's `created_time`, and `backfill_from` in the config

_RFC3339 = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}\Z")


@functools.lru_cache(maxsize=4096)
def _utc_seconds(local: str, offset: str) -> int:
    """Epoch seconds of `YYYY-MM-DDTHH:MM:SS` at UTC offset `Z` or `+HH:MM`; memoised because the
    fills of one poll share a handful of seconds."""
    if not _LOCAL_TIME.match(local):
        raise ValueError("not an RFC 3339 date and time")
    year, month, day = int(local[0:4]), int(local[5:7]), int(local[8:10])
    hour, minute, second = int(local[11:13]), int(local[14:16]), int(local[17:19])
    dt.datetime(year, month, day, hour, minute, second)  # validates the calendar fields
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if offset not in ("Z", "z"):
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"bad UTC offset {offset!r}")
        # local time = UTC + offset, so UTC = local - offset
        seconds -= (1 if offset[0] == "+" else -1) * (hours * 3600 + minutes * 60)
    return seconds


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp, fraction kept exactly.

    `datetime` keeps only microseconds, so the fraction is parsed separately. Digits beyond the
    ninth are truncated (nanoseconds are the event's resolution). Raises :class:`ValueError`.
    """
    try:
        fraction = text[20:-1]
        if text[19:20] == "." and text[-1:] == "Z" and fraction.isdigit() and fraction.isascii():
            # Kalshi's own shape, `...THH:MM:SS.ffffffZ`, without the regular expression's cost
            return _utc_seconds(text[:19], "Z") * 1_000_000_000 + int(fraction[:9].ljust(9, "0"))
        match = _RFC3339.match(text)
        if match is None:
            raise ValueError("not an RFC 3339 timestamp")
        local, fraction, offset = match.groups()
        seconds = _utc_seconds(local, offset)
    except ValueError as exc:
        raise ValueError(f"{exc}: {text[:40]!r}") from None
    return seconds * 1_000_000_000 + (int(fraction[:9].ljust(9, "0")) if fraction else 0)


def repaired_utf8(raw: msgspec.Raw) -> msgspec.Raw | None:
    """`raw` with every byte sequence that is not UTF-8 replaced by U+FFFD, or None when it is
    UTF-8 already.

    A dead letter embeds its fill's JSON verbatim; a fill with invalid UTF-8 (which msgspec skips
    unchecked inside a raw page) would make the dead letter itself invalid JSON, so the DLQ gets
    the repaired copy and the error says so.
    """
    data = bytes(raw)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return msgspec.Raw(data.decode("utf-8", "replace").encode("utf-8"))
    return None


def raw_key(raw: bytes) -> str:
    """The dedupe key of an invalid fill whose venue id could not be read: a digest of its bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


#: fills handled between two yields to the event loop: a 1,000-fill page handled in one go holds
#: the loop for 2-3 ms, and the Kafka transaction in flight (three round trips) and the other
#: sources wait behind every such chunk (pipeline share p99 at 0.2 s polls: 29.8 ms with 1,000-fill
#: pages, 12.3 ms with 200)
SLICE = 200


async def in_slices(items: Sequence[T]) -> AsyncIterator[tuple[int, Sequence[T]]]:
    """`(start, items[start:start + SLICE])` for every slice, yielding to the event loop between
    slices, so one big page does not hold the loop for long."""
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        yield start, items[start : start + SLICE]


def ends_new(known: Callable[[str], bool], first: str | None, last: str | None) -> bool:
    """Whether neither end of a page (the venue ids of its first and last fills) is published yet.

    While pages hold mostly new fills (a backlog), a page whose two ends are new is normalised
    whole without looking up every fill: fills already published show up at one end of a page
    (the overlap re-read follows the new fills, newest or oldest first), and the lookups would
    cost more than normalising the odd published fill in between, which the poll loop drops as
    a duplicate anyway.
    """
    return not ((first is not None and known(first)) or (last is not None and known(last)))


class FillCollector:
    """Gathers one poll's fills and invalid fills, keeping only the first of repeats.

    Paging while the venue inserts fills shows some fills on two pages; dropping them here keeps one
    poll's result free of repeats (the poll loop's dedupe would drop them anyway).
    """

    def __init__(self, paging_state: Any = None):
        self.result = FetchResult(paging_state=paging_state)
        self._seen: set[str] = set()
        #: fill id -> first copy, built on the first repeat only (repeats are rare)
        self._firsts: dict[str, FillEvent] | None = None

    def add(self, item: FillEvent | InvalidFill) -> bool:
        """Record a normalised fill or an invalid one; False (and nothing recorded) for a repeat.

        A repeat whose values differ from the first copy is recorded in
        :attr:`FetchResult.conflicts`.
        """
        key = item.fill_id if isinstance(item, FillEvent) else item.key
        if key in self._seen:
            if isinstance(item, FillEvent):
                self._check_repeat(item)
            return False
        self._seen.add(key)
        if isinstance(item, FillEvent):
            self.result.fills.append(item)
            if self._firsts is not None:
                self._firsts[key] = item
        else:
            self.result.invalid.append(item)
        return True

    def _check_repeat(self, later: FillEvent) -> None:
        if self._firsts is None:
            self._firsts = {fill.fill_id: fill for fill in self.result.fills}
        first = self._firsts.get(later.fill_id)
        if first is not None and not same_values(first, later):
            self.result.conflicts.append((first, later))

    def skip_known(self, key: str | None, known: Callable[[str], bool] | None) -> bool | None:
        """For a fill with venue id `key`: None when it must be decoded, else it is skipped
        unread, being a repeat within this poll (False) or one that `known` (the poll loop's
        dedupe) says was published (True, and counted in :attr:`FetchResult.known`)."""
        if key is None or known is None:
            return None
        if key in self._seen:
            return False
        if not known(key):
            return None
        self._seen.add(key)
        self.result.known += 1
        return True

    def skip_known_page(self, keys: Sequence[str | None], known: Callable[[str], bool]) -> list[bool | None]:
        """:meth:`skip_known` for every fill of a page, in order (one call instead of one per fill:
        a re-read page is mostly fills to skip)."""
        seen = self._seen
        verdicts: list[bool | None] = []
        counted = 0
        for key in keys:
            if key is None:
                verdicts.append(None)
            elif key in seen:
                verdicts.append(False)
            elif known(key):
                seen.add(key)
                counted += 1
                verdicts.append(True)
            else:
                verdicts.append(None)
        self.result.known += counted
        return verdicts

    async def skip_known_sliced(self, keys: Sequence[str | None], known: Callable[[str], bool]) -> list[bool | None]:
        """:meth:`skip_known_page` slice by slice (see :func:`in_slices`)."""
        verdicts: list[bool | None] = []
        async for _, part in in_slices(keys):
            verdicts += self.skip_known_page(part, known)
        return verdicts


class VenueAdapter(abc.ABC):
    """One configured account ("source") on one venue.

    Subclasses set `venue`, are registered in :mod:`publisher.venues`, and receive their source
    config plus an already-configured :class:`publisher.venues.http.VenueClient` (rate limit,
    timeouts, error mapping, request counting).
    """

    venue: ClassVar[str]
    #: set by the poll loop: True for a venue fill id (the dedupe key of a fill or dead letter)
    #: already published. Re-reading the overlap window returns mostly such fills, and an
    #: adapter may skip normalising them, counting them in :attr:`FetchResult.known` instead: the
    #: poll loop would only drop them as duplicates.
    known: Callable[[str], bool] | None = None

    @abc.abstractmethod
    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int]) -> FetchResult:
        """Fetch every fill executed at or after `since_ns` (more is fine: the caller filters).

        `paging_state` is what the previous successful poll returned (None on a first start).
        `clock_ns()` (wall clock, ns) is read as each page arrives and stamps that page's
        events as `observed_at_ns`. Raises :class:`VenueError` when the poll
        cannot complete; no partial result is used then.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources the adapter owns (the HTTP client is closed by its owner)."""


SOURCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"

#: room per fill in the default response limit: a fill with every identifier at its longest
#: (:data:`MAX_TEXT_LENGTH`), JSON-escaped, stays well below it; real fills are under 1 KiB
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
    def venue_name(self) -> str:
        """The venue this source polls (the struct's tag, `venue:` in the config)."""
        return str(self.__struct_config__.tag)
