"""Zero Latency Labs fills adapter: `GET /api/v1/fills` with offset paging of unknown order.

Paging strategy
---------------
The list endpoint has no time filter, no cursor and an undocumented order; it pages by `offset`.
Fills inserted while we page (new fills, or late fills slotted in by time) can only SHIFT items to
higher offsets: a later page then repeats items (dropped by dedupe), it never skips one. So any
order is safe to read as long as we know when to stop, and the order is read from the data itself
(the `time` of consecutive fills, within a page and across page boundaries):

* newest-first (times never increase, at least one decrease): start at offset 0 and stop after the
  first page that holds a fill older than `since_ns`; everything after it is older still. Not so
  in a list kept in insertion order, where a late fill (an old `time`, listed now) can end a page
  that looks newest-first, with newer fills after it: so the walk also goes on until it has met
  one of the ids the previous poll saw first (see "The ends of the list"). Everything listed
  before them arrived since that poll and must be read; after them, that poll and those before it
  have read the list already.
* oldest-first (times never decrease, at least one increase): the fills older than `since_ns` sit at
  the front. Their count B, as seen, goes into `paging_state` as a resume offset one page below it
  (`{"resume_offset": max(0, B - limit)}`), so the next poll reads only the tail. B can only grow
  while `since_ns` does not go back, as late fills older than `since_ns` land before it and newer
  ones after it. The resume offset is validated on use: the first fill at it must still be older
  than `since_ns` in an ascending page, else (lookback raised, fills removed, order changed) the
  poll starts over from offset 0. On a first start, when the first page is ascending and entirely
  older than `since_ns`, the boundary is found by galloping (probes at 1, 2, 4, ... pages further)
  and then a binary search with limit-sized probes, O(log n) requests instead of a linear scan.
* unknown order (all times equal so far, single fill) or no order (times go both ways): read to the
  end. If a fill out of order shows up after a skip (resume offset or gallop), the poll starts over
  from offset 0 and reads everything, since the skipped part can no longer be trusted.

A shift shows as repeats (fills already read this poll) at the start of the next page, and a late
fill slotted in among them can sit before them with a time between two fills already read; so
across a page boundary the order is only checked when the page has no repeats (each page on its
own is a consistent snapshot and is always checked). Fills inserted into the part already read are
not seen by this poll but by the next one, which re-reads the whole `since_ns` window. If more
fills arrive between two requests than a page holds, the order may be misjudged as mixed: the poll
then reads to the end, slower but complete.

Every walk stops at a short (< limit) or empty page: that is the end of the list. Times equal to
`since_ns` count as new, so same-timestamp bursts straddling a page boundary are read in full. A
safety cap on pages per poll turns a misbehaving venue into a `decode` error instead of a hang.

The far end: the order checked
------------------------------
The order is read from the pages a poll reads, and a walk that trusts it skips part of the list:
newest-first never reaches the tail, oldest-first resumed never reads the head. In insertion order
those pages can mislead: oldest first, a history added newest first opens the list with falling
times, and a walk that takes it for newest-first never meets the fills appended at the tail (the
mirror: newest first, a history added oldest first looks oldest-first, and the head goes unread).
So no order read from pages is trusted for good: the end the walk did not reach (the far end) is
read again (a look, :class:`_Look`) at the poll after a first start that skipped it, at the next
poll while the ids kept there are not confirmed (so that fills arriving there are named when they
are below the floor), then every `lookback_s / LOOK_SHARE`, and every poll while it is hot:

* the head: from offset 0 forward until the ids the previous poll kept there (fills arriving there
  shift them on: reading forward skips nothing), usually one request;
* the tail: forward from where the kept ids were when it is hot (every fill that arrived since is
  read); otherwise a short page ending the list is searched for from where the end was last
  (galloping, then halving, as for the boundary), one request where the list did not move.

A look is quiet when it finds the kept ids there with nothing beyond them and no fill of the window
this poll had not read. Fills beyond them arrived there since: they are on the pages read, so they
are published now, and that end turns hot (read every poll until it has been quiet for a period,
with a WARNING when it turns). Anything else (the kept ids gone or out of order, or a fill of the
window not published before, listed short of them) means the part of the list skipped cannot be
trusted: the poll reads the whole list. A fill arriving at the far end is thus read at most
`lookback_s / LOOK_SHARE` plus a poll after it arrives; one that was late by more than the rest of
the window by then is below the floor, and counted lost (the ends name it) instead of published.

A list whose window fills arrive at both ends fits no order ZLL may use (insertion order grows at
one end; a sorted list adds at its old end only fills older than every fill listed, and then every
fill listed is in the window and the walk reads it all): when a poll that did not read the whole
list finds that, it fails (:class:`~publisher.venues.errors.ListOrderError`, a `decode` failure of
kind `paging_loop`) rather than guess what the skipped part holds, and the polls of the next
`lookback_s` read the whole list.

The ends of the list
--------------------
A fill the venue lists for the first time when it is already older than `since_ns` was never
published (a poll publishes what it lists inside the window) and must be counted as lost, however
old (:mod:`publisher.floor`). ZLL adds fills at an end of its list: at the head (newest first) or
the tail (oldest first) in insertion order, and there too in a sorted list when they are newer
than every fill listed (or older than every one). So the paging state keeps the first and the last
few ids (:data:`END_IDS`) the walk read, from pages that cover the start or the end of the list
without a gap; the next poll names the fills it meets beyond them, older than `since_ns`
(`FetchResult.arrived_below`). The ids must be met again in their order; a view of an end that did
not find the previous one (a first start, fills removed at that end, a list turned round, an odd
answer) is kept unconfirmed and names nothing until the next poll finds it again, so a venue that
leaves fills out once never has them named when they are back. A late fill sorted into the middle
of the list is no arrival at an end: the memory of published keys judges it, when the walk reads
it (docs/limits.md).
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
import msgspec

from publisher.event import FillEvent, VenueFields
from publisher.secret import Secret
from publisher.venues.base import SourceConfig, VenueAdapter
from publisher.venues.errors import ListOrderError, PagingError, VenueDecodeError, VenueError
from publisher.venues.fields import (
    MAX_FUTURE_NS,
    MAX_INT64,
    MAX_TEXT_LENGTH,
    MIN_EXECUTED_AT_NS,
    decimal_text,
    executed_at_problem,
    is_negative,
    is_positive,
    printable_json,
    text_problem,
)
from publisher.venues.http import VenueClient, describe_json_error
from publisher.venues.pages import Page, PageCodec, PageReader, PublishedFills
from publisher.venues.registry import VenueSpec
from publisher.venues.results import DEAD_LETTER_PREFIX, FetchResult, InvalidFill, raw_key

__all__ = [
    "VENUE",
    "ZllAdapter",
    "ZllAuth",
    "ZllFill",
    "ZllSource",
    "check_secret",
    "create_adapter",
    "describe_error",
    "normalise",
]


class ZllSource(SourceConfig, tag="zll", kw_only=True):
    """A ZLL subaccount (optionally one portfolio), read with an API key from a file or env var."""

    secret_field = "api_key"

    api_key_file: str | None = None
    api_key_env: str | None = None
    subaccount_index: Annotated[int, msgspec.Meta(ge=0)]
    portfolio_index: Annotated[int, msgspec.Meta(ge=0)] | None = None


log = logging.getLogger(__name__)

FILLS_PATH = "/api/v1/fills"
NS = 1_000_000_000

#: generous: 20,000 pages is 4M fills at limit 200; more in one poll means the venue misbehaves
MAX_PAGES_PER_POLL = 20_000
#: pages in a row, at advancing offsets, with the very same body before the poll gives up: a
#: venue that ignores `offset` would otherwise be paged up to the cap above. Not one: exactly a
#: page of fills inserted between two requests repeats a page; four times in a row means the walk
#: makes no progress whatever the cause
MAX_SAME_PAGES = 4
#: fills of one poll looked up by id (`GET /api/v1/fills/{id}`) when their list copy was
#: unusable; the rest are dead-lettered on their list copy alone
MAX_SECOND_LOOKS = 20


# --------------------------------------------------------------------------------------------------
# Authentication and errors


class ZllAuth(httpx.Auth):
    """Adds `X-API-KEY`; reads need no signature."""

    def __init__(self, api_key: Secret):
        self._api_key = api_key

    def __repr__(self) -> str:
        return "ZllAuth(api_key=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach the API key header."""
        request.headers["X-API-KEY"] = self._api_key.reveal()
        yield request


def check_secret(secret: Secret) -> None:
    """Raise :class:`ValueError` unless the API key is non-empty and has no whitespace inside."""
    value = secret.reveal()
    if not value:
        raise ValueError("the ZLL API key is empty")
    if any(ch.isspace() for ch in value):
        raise ValueError("the ZLL API key contains whitespace")
    if not value.isprintable():
        raise ValueError("the ZLL API key contains control characters")


def describe_error(status: int, body: bytes) -> str:
    """`code: detail` from ZLL's `application/problem+json` errors."""
    return describe_json_error(body, code_keys=("code", "type"), message_keys=("detail", "title"))


# --------------------------------------------------------------------------------------------------
# Wire format and normalisation


class ZllFill(msgspec.Struct, kw_only=True, gc=False):
    """A ZLL fill exactly as documented (every field required)."""

    id: str
    account_id: int
    subaccount_index: int
    portfolio_index: int
    market: str
    side: Literal["LONG", "SHORT"]
    price: str
    quantity: str
    fee: str
    liquidity: Literal["TAKER", "MAKER"]
    request_id: str
    time: int


class _Loose(msgspec.Struct, gc=False):
    # what can still be read from a fill that failed to decode: its id for the DLQ key, its time
    # for order detection
    id: Any = None
    time: Any = None


_typed_page_decoder = msgspec.json.Decoder(list[ZllFill])
_page_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_fill_decoder = msgspec.json.Decoder(ZllFill)
_loose_decoder = msgspec.json.Decoder(_Loose)


class _Key(msgspec.Struct, gc=False):
    # the dedupe key and the time: all a fill already published is read for; a field of the
    # wrong type fails the page, which is then read fill by fill
    id: str | None = None
    time: int | None = None


_key_page_decoder = msgspec.json.Decoder(list[_Key])


# memoised: a market's prices and sizes repeat across fills (fees rarely do)
@functools.lru_cache(maxsize=16_384)
def _price(text: str) -> str:
    price = decimal_text("price", text)
    if is_negative(price):
        raise ValueError(f"negative price {price}")
    return price


@functools.lru_cache(maxsize=4096)
def _quantity(text: str) -> str:
    quantity = decimal_text("quantity", text)
    if not is_positive(quantity):
        raise ValueError(f"quantity {quantity} is not positive")
    return quantity


def normalise(fill: ZllFill, *, source: str, observed_at_ns: int, printable: bool = False) -> FillEvent:
    """Turn one ZLL fill into a :class:`FillEvent`; :class:`ValueError` when it is unusable.

    `time` must be plausible nanoseconds: the docs' only example has 19 digits, and a millisecond
    or microsecond value read as nanoseconds would date the fill in 1970, where the poll loop's
    window would ignore it. `printable` says the caller knows every string of the fill is
    printable (see :func:`~publisher.venues.fields.printable_json`).
    """
    fill_id, market, request_id, when = fill.id, fill.market, fill.request_id, fill.time
    # the conditions of text_problem() and executed_at_problem() inlined: this runs for every
    # new fill, and the calls cost more than the checks; they name the problem when one fails
    if not (0 < len(fill_id) <= MAX_TEXT_LENGTH and 0 < len(market) <= MAX_TEXT_LENGTH
            and 0 < len(request_id) <= MAX_TEXT_LENGTH
            and (printable or (fill_id.isprintable() and market.isprintable() and request_id.isprintable()))
            and MIN_EXECUTED_AT_NS <= when <= observed_at_ns + MAX_FUTURE_NS
            and when <= MAX_INT64):
        raise ValueError(text_problem("id", fill_id) or text_problem("market", market)
                         or text_problem("request_id", request_id) or executed_at_problem(when, observed_at_ns)
                         or "unusable identifier or time")
    price = _price(fill.price)
    quantity = _quantity(fill.quantity)
    fee = decimal_text("fee", fill.fee)  # negative is a rebate
    return FillEvent(
        venue="zll",
        source=source,
        fill_id=fill_id,
        order_id=request_id,
        instrument=market,
        side="buy" if fill.side == "LONG" else "sell",
        price=price,
        quantity=quantity,
        fee=fee,
        fee_currency="USDC",
        liquidity="taker" if fill.liquidity == "TAKER" else "maker",
        executed_at_ns=when,
        observed_at_ns=observed_at_ns,
        venue_fields=VenueFields(
            account_id=fill.account_id,
            subaccount_index=fill.subaccount_index,
            portfolio_index=fill.portfolio_index,
        ),
    )


def _plausible(when: int, observed_at_ns: int) -> int | None:
    # a time that is no execution time (wrong unit, garbage) says nothing about the order and
    # must not date a dead letter either
    return when if executed_at_problem(when, observed_at_ns) is None else None


def _loose_fields(raw: msgspec.Raw, observed_at_ns: int) -> tuple[str | None, int | None]:
    """(dedupe key, time) as far as they can be read, exactly as :func:`decode_fill` reads them
    from a fill that fails to decode (and equal to a decodable fill's `id` and `time`); a time
    that is not plausible nanoseconds is None."""
    try:
        loose = _loose_decoder.decode(raw)
    except msgspec.ValidationError:
        return None, None
    except msgspec.DecodeError:
        fixed, note = _valid_utf8(raw)
        if not note:
            return None, None
        try:  # not UTF-8: the fields that are, are the venue's
            loose = _loose_decoder.decode(fixed)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None, None
    # an id with a replacement character was garbled on the way: it is not the venue's id
    key = loose.id if isinstance(loose.id, str) and loose.id and "\ufffd" not in loose.id else None
    when = loose.time if isinstance(loose.time, int) and not isinstance(loose.time, bool) else None
    return key, None if when is None else _plausible(when, observed_at_ns)


def _refused(fill: ZllFill, raw: msgspec.Raw, exc: ValueError, observed_at_ns: int) -> InvalidFill:
    """The dead letter of a decoded fill that :func:`normalise` refused, carrying its bytes `raw`."""
    valid_time = _plausible(fill.time, observed_at_ns)
    key = fill.id if fill.id and text_problem("id", fill.id) is None else raw_key(raw)
    return InvalidFill(key=key, error=str(exc), raw=raw, executed_at_ns=valid_time)


def _valid_utf8(raw: msgspec.Raw) -> tuple[msgspec.Raw, str]:
    """`raw` as a dead letter can carry it: invalid UTF-8 replaced by U+FFFD (a DLQ record is JSON,
    and its consumers decode it as UTF-8), with a note for the error when it was."""
    data = bytes(raw)
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        fixed = data.decode(errors="replace").encode()
        return msgspec.Raw(fixed), f" (invalid UTF-8 at byte {exc.start}, replaced by U+FFFD in raw)"
    return raw, ""


def decode_fill(raw: msgspec.Raw, *, source: str, observed_at_ns: int) -> FillEvent | InvalidFill:
    """Decode and normalise one raw fill; never raises for a bad fill. A dead letter is dated by
    the fill's time when that is readable and plausible."""
    try:
        fill = _fill_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        error = f"undecodable fill: {exc}"
    else:
        try:
            return normalise(fill, source=source, observed_at_ns=observed_at_ns)
        except ValueError as exc:
            return _refused(fill, raw, exc, observed_at_ns)
    raw, note = _valid_utf8(raw)
    key, when = _loose_fields(raw, observed_at_ns)
    if key is not None and text_problem("id", key) is not None:
        key = None
    return InvalidFill(key=key or raw_key(raw), error=error + note, raw=raw, executed_at_ns=when)


class ZllPages(PageCodec[_Key, ZllFill]):
    """A ZLL fills page (a JSON array, no cursor) at each depth of
    :class:`~publisher.venues.pages.PageReader`'s strategy, for one source."""

    def __init__(self, source: str):
        self.source = source

    def read_keys(self, body: bytes) -> tuple[Sequence[_Key], str | None]:
        return _key_page_decoder.decode(body), None

    def key_ids(self, keys: Sequence[_Key]) -> list[str]:
        return [key.id or "" for key in keys]

    def read_typed(self, body: bytes) -> tuple[Sequence[ZllFill], str | None]:
        return _typed_page_decoder.decode(body), None

    def fill_ids(self, fills: Sequence[ZllFill]) -> list[str]:
        return [fill.id for fill in fills]

    def printable(self, body: bytes) -> bool:
        return printable_json(body)

    def normalise(self, fill: ZllFill, observed_at_ns: int, printable: bool) -> FillEvent:
        return normalise(fill, source=self.source, observed_at_ns=observed_at_ns, printable=printable)

    def refused(self, fill: ZllFill, raw: msgspec.Raw, error: ValueError, observed_at_ns: int) -> InvalidFill:
        return _refused(fill, raw, error, observed_at_ns)

    def read_raw(self, body: bytes) -> tuple[Sequence[msgspec.Raw], str | None]:
        try:
            return _page_decoder.decode(body), None
        except msgspec.DecodeError as exc:
            raise VenueDecodeError(f"undecodable fills page: {exc}") from None

    def raw_id(self, raw: msgspec.Raw, observed_at_ns: int) -> str:
        return _loose_fields(raw, observed_at_ns)[0] or ""

    def decode(self, raw: msgspec.Raw, observed_at_ns: int) -> FillEvent | InvalidFill:
        return decode_fill(raw, source=self.source, observed_at_ns=observed_at_ns)


# --------------------------------------------------------------------------------------------------
# Order detection and paging

_Direction = Literal["unknown", "asc", "desc", "mixed"]


class _Order:
    """The order of the times seen so far, in read order (pages concatenated)."""

    def __init__(self, direction: _Direction = "unknown", last: int | None = None):
        self.direction: _Direction = direction
        self.last = last

    def feed(self, times: list[int], *, continues: bool) -> None:
        """Take the next page's times; `continues` says its first fill may be compared with the
        previous page's last one."""
        if not continues:
            self.last = None
        for t in times:
            if self.last is not None and t != self.last and self.direction != "mixed":
                step: _Direction = "asc" if t > self.last else "desc"
                if self.direction == "unknown":
                    self.direction = step
                elif self.direction != step:
                    self.direction = "mixed"
            self.last = t


@dataclass(slots=True)
class _Listing:
    """What the walk needs of one page, fill by fill: each fill's time (None when unreadable or
    not plausible), whether it was read earlier in this poll, and its venue id ("" when unusable)."""

    times: list[int | None]
    repeats: list[bool]
    ids: list[str]
    #: what each entry gave when read in full (None: skipped as published already)
    outcomes: list[FillEvent | InvalidFill | None]

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def of(cls, page: Page, observed_at_ns: int) -> _Listing:
        """The listing of a page :class:`~publisher.venues.pages.PageReader` read: a fill read in
        full is dated as its event or dead letter is, one skipped unread by the entry it was read as."""
        entries = page.entries
        if page.depth == "raw":
            times = [outcome.executed_at_ns if outcome is not None else _loose_fields(raw, observed_at_ns)[1]
                     for outcome, raw in zip(page.outcomes, entries, strict=True)]
        else:  # key items and typed fills both carry the venue's `time`
            times = [outcome.executed_at_ns if outcome is not None else entry.time
                     for outcome, entry in zip(page.outcomes, entries, strict=True)]
        return cls(times, page.repeats, page.ids, page.outcomes)

    def unpublished(self, since_ns: int) -> set[str]:
        """The ids of this page's fills of the window (`since_ns` on) that were first read in full
        in this poll: not repeats, not skipped as published already (so no earlier poll published
        them, when the poll loop's window was asked)."""
        return {outcome.fill_id for outcome, repeat in zip(self.outcomes, self.repeats, strict=True)
                if isinstance(outcome, FillEvent) and not repeat and outcome.executed_at_ns >= since_ns}


def _times(page: _Listing, *, fresh_only: bool = False) -> list[int]:
    # a fill whose time cannot be read says nothing about the order
    return [time for time, repeat in zip(page.times, page.repeats, strict=True)
            if time is not None and not (fresh_only and repeat)]


def _shifted(page: _Listing) -> bool:
    """Whether fills were inserted before this page since the previous one was read.

    Then the page starts with repeats of the previous page's last fills, and a late fill inserted
    among those may come before them here: its time lies between two fills we already read, so
    comparing it with the previous page's last fill would show a step against the order that is
    not there. A page is one consistent snapshot, so only steps within it count then.
    """
    return any(page.repeats)


def _last_time(page: _Listing) -> int:
    # only called on pages that _all_old accepted: every fill there has a time
    time = page.times[-1]
    assert time is not None
    return time


def _ascending(times: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(times))


class _Restart(Exception):
    """The data contradicted an order assumption after pages were skipped: read everything."""


def _resume_offset(paging_state: Any) -> int:
    # the checkpoint is ours but may come from an older version: anything unexpected means "none"
    if isinstance(paging_state, dict):
        value = paging_state.get("resume_offset")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


#: ids the paging state keeps from each end of the list: with a few, a fill removed at an end leaves
#: others to recognise the end by, and their order shows a list turned round
END_IDS = 3


@dataclass(slots=True)
class _End:
    """The first (head) or last (tail) usable ids of the list, in list order, as a poll read them.

    `confirmed`: that poll found, in their order, the ids the poll before it had kept there. Only
    confirmed ids name arrivals: a first view of an end (a first start, a list turned round, fills
    removed there, a venue answering oddly once) must be seen again before it is trusted.
    """

    ids: list[str]
    confirmed: bool

    def saved(self) -> dict[str, Any]:
        """The paging state's form of it."""
        return {"ids": self.ids, "confirmed": self.confirmed}

    @classmethod
    def restore(cls, paging_state: Any, name: str) -> _End | None:
        """The end `name` kept in `paging_state`, or None."""
        # the checkpoint is ours but may come from an older version: anything unexpected means "none"
        value = paging_state.get(name) if isinstance(paging_state, dict) else None
        if not isinstance(value, dict):
            return None
        ids, confirmed = value.get("ids"), value.get("confirmed")
        if (isinstance(ids, list) and 0 < len(ids) <= END_IDS and all(isinstance(i, str) and i for i in ids)
                and isinstance(confirmed, bool)):
            return cls(ids, confirmed)
        return None


def _from_start(read: list[tuple[int, _Listing]], limit: int) -> list[_Listing]:
    """The pages of `read` (a walk's, in read order) that cover the list from offset 0 without a
    gap: each at the offset after the one before, read after it (fills inserted meanwhile shift
    the later page: repeats, never a gap)."""
    pages: list[_Listing] = []
    index = -1
    while True:
        offset = len(pages) * limit
        index = next((i for i in range(index + 1, len(read)) if read[i][0] == offset), -1)
        if index < 0:
            return pages
        pages.append(read[index][1])


def _to_end(read: list[tuple[int, _Listing]], limit: int) -> list[_Listing]:
    """The pages of `read` that cover the list to its end without a gap (see :func:`_from_start`),
    in list order; none when the walk stopped before the end, at a full page."""
    if not read or len(read[-1][1]) >= limit:
        return []
    index = len(read) - 1
    offset = read[index][0]
    pages = [read[index][1]]
    while offset > 0:
        offset -= limit
        index = next((i for i in range(index - 1, -1, -1) if read[i][0] == offset), -1)
        if index < 0:
            break
        pages.append(read[index][1])
    return pages[::-1]


def _entries(pages: list[_Listing], *, backwards: bool) -> Iterator[tuple[str, int | None]]:
    """(id, time) of every entry of `pages`, from the first or from the last."""
    if not backwards:
        for page in pages:
            yield from zip(page.ids, page.times, strict=True)
        return
    for page in reversed(pages):
        ids, times = page.ids, page.times
        for i in range(len(ids) - 1, -1, -1):
            yield ids[i], times[i]


@dataclass(slots=True)
class _Judged:
    """One end of the list as a poll found it (see :func:`_judge_end`)."""

    #: the end this poll leaves in the paging state
    end: _End | None
    #: the entries (id, time) listed beyond the ids the previous poll kept at that end, from the end
    #: inwards: what arrived there since. None when those ids were not found there in their order
    #: (a first view, fills removed, a list turned round): then nobody can tell what arrived
    arrivals: list[tuple[str, int | None]] | None
    #: the arrivals older than `since_ns` with a usable id, when the kept end was confirmed: the
    #: fills first listed below the floor (:attr:`FetchResult.arrived_below`)
    below: set[str]


def _judge_end(name: str, end: _End | None, pages: list[_Listing], since_ns: int, limit: int) -> _Judged:
    """Judge one end of the list on `pages` (read from the start, or to the end, without a gap)
    against `end` (the previous poll's): what arrived beyond it, and the end this poll leaves.

    The entries are met from that end inwards, and only as far as needed: usually the few that
    arrived since the previous poll and the ids kept. Once a kept id is met, the others are
    looked for within a page further (they sat next to it).
    """
    backwards = name == "tail"
    kept = [] if end is None else (end.ids[::-1] if backwards else end.ids)
    wanted = set(kept)
    seen: list[str] = []  # the first END_IDS distinct usable ids met: this poll's end
    where: dict[str, int] = {}  # where each kept id was met first
    before: list[tuple[str, int | None]] = []  # the entries met before the first kept id
    give_up = -1
    for position, (fill_id, when) in enumerate(_entries(pages, backwards=backwards)):
        if fill_id in wanted:
            if not where:
                give_up = position + limit
            where.setdefault(fill_id, position)
        elif not where:
            before.append((fill_id, when))
        if fill_id and len(seen) < END_IDS and fill_id not in seen:
            seen.append(fill_id)
        if len(seen) == END_IDS and (len(where) == len(wanted) or position >= give_up >= 0):
            break
    if not seen:  # an empty list, or no usable id at this end: nothing to know it by
        return _Judged(end, None, set())
    now = seen[::-1] if backwards else seen
    if end is None:
        return _Judged(_End(now, confirmed=False), None, set())
    found = [where[fill_id] for fill_id in kept if fill_id in where]
    if not found or found != sorted(found):
        return _Judged(_End(now, confirmed=False), None, set())  # not where it was: a new view, to be confirmed
    below: set[str] = set()
    if end.confirmed:
        below = {fill_id for fill_id, when in before if fill_id and when is not None and when < since_ns}
    return _Judged(_End(now, confirmed=True), before, below)


#: the far end of a list read in part (the end the walk does not reach: the tail of a list read
#: as newest-first, the head of one resumed as oldest-first) is read again at least every
#: `lookback_s / LOOK_SHARE`: a fill that arrives there when the order was misjudged is then read
#: while it is still inside the window, unless it was already late by more than the rest of it
LOOK_SHARE = 2
#: probes one search for the end of the list may take (galloping, then halving: ~2 log2 of the
#: pages between the guess and the end); more means the end keeps moving faster than it is sought
MAX_END_PROBES = 128


@dataclass(slots=True)
class _Look:
    """When a poll last read the far end of the list, and what it knows of it there.

    `read_ns` None: never (a first start, whose walk stopped before that end): the next poll
    looks. `hot_until_ns`: that end took fills the order of the pages said it would not (or
    changed beyond recognition), so every poll reads it until then. `length`: the list's length
    when its tail was last read, where the next look at the tail starts.
    """

    read_ns: int | None
    hot_until_ns: int = 0
    length: int | None = None

    def saved(self) -> dict[str, Any]:
        """The paging state's form of it."""
        saved: dict[str, Any] = {"read_ns": self.read_ns}
        if self.hot_until_ns:
            saved["hot_until_ns"] = self.hot_until_ns
        if self.length is not None:
            saved["length"] = self.length
        return saved

    @classmethod
    def restore(cls, paging_state: Any, name: str) -> _Look | None:
        """The look at end `name` kept in `paging_state`, or None."""
        # the checkpoint is ours but may come from an older version: anything unexpected means "none"
        looks = paging_state.get("looks") if isinstance(paging_state, dict) else None
        value = looks.get(name) if isinstance(looks, dict) else None
        if not isinstance(value, dict):
            return None
        read_ns, hot, length = value.get("read_ns"), value.get("hot_until_ns", 0), value.get("length")
        if not (read_ns is None or _count(read_ns)) or not _count(hot) or not (length is None or _count(length)):
            return None
        return cls(read_ns, hot, length)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Poll:
    """One poll's walk over the offset-paged list, and the look at the end it does not reach; its
    pages are read by a :class:`~publisher.venues.pages.PageReader` (:attr:`pages`) with
    :class:`ZllPages`."""

    def __init__(self, adapter: ZllAdapter, since_ns: int, clock_ns: Callable[[], int],
                 published: PublishedFills | None, paging_state: Any = None):
        self._adapter = adapter
        self._since = since_ns
        self._clock_ns = clock_ns
        self._limit = adapter.source.page_limit
        self._pages = 0
        #: the previous page's (offset, body) and how often in a row a page came back the same
        self._previous: tuple[int, bytes] | None = None
        self._same = 0
        self.pages = PageReader(adapter.pages, published)
        #: the ends of the list as the previous poll left them
        self._ends = {name: _End.restore(paging_state, name) for name in ("head", "tail")}
        #: when the previous polls last read each end they did not walk to
        self._looks = {name: _Look.restore(paging_state, name) for name in ("head", "tail")}
        self._first_start = paging_state is None
        #: the offset of the last page a look at the tail read
        self._tail_offset = 0
        #: every page the walk read, (offset, listing), in read order; the last walk's start at `_attempt`
        self._read: list[tuple[int, _Listing]] = []
        self._attempt = 0
        #: the pages a look at the far end read, in list order (see :meth:`_look`)
        self._looked: dict[str, list[_Listing]] = {}
        #: the ids the previous poll saw first in the list, and whether this walk has met one: a
        #: newest-first walk stops only past them (see the module docstring)
        head = self._ends["head"]
        self._head_ids = frozenset(head.ids if head is not None else ())
        self._met_head = not self._head_ids

    async def page(self, offset: int, *, walked: bool = True) -> _Listing:
        """Fetch and read the page at `offset`; `walked`: a page of the walk (not of a look)."""
        self._pages += 1
        if self._pages > self._adapter.max_pages:
            raise PagingError(f"more than {self._adapter.max_pages} pages in one poll; the venue keeps paging")
        body = await self._adapter.client.get(FILLS_PATH, params=self._adapter.params(offset))
        self._check_progress(offset, body)
        observed_at_ns = self._clock_ns()
        listing = _Listing.of(await self.pages.read(body, observed_at_ns), observed_at_ns)
        if walked:
            self._read.append((offset, listing))
            if not self._met_head:
                self._met_head = not self._head_ids.isdisjoint(listing.ids)
        return listing

    async def _start(self, offset: int) -> _Listing:
        """The first page of a walk: the ends of the list are judged on the last walk's pages."""
        self._attempt = len(self._read)
        self._met_head = not self._head_ids
        return await self.page(offset)

    def _check_progress(self, offset: int, body: bytes) -> None:
        """Trip the loop guard when full pages at advancing offsets keep coming back the same."""
        previous = self._previous
        self._previous = (offset, body)
        if previous is None or offset <= previous[0] or body != previous[1] or body == b"[]":
            self._same = 0
            return
        self._same += 1
        if self._same >= MAX_SAME_PAGES:
            raise PagingError(f"the venue served the same page {self._same + 1} times in a row, up to "
                              f"offset {offset}: it ignores `offset`")

    def _old(self, t: int) -> bool:
        return t < self._since

    async def run(self, resume: int) -> FetchResult:
        """Walk the list as its order allows, look at the end the walk did not reach when that is
        due, and read the whole list when the look contradicts the walk; see the module docstring."""
        now = self._clock_ns()
        if now < self._adapter.whole_until_ns:  # the list fitted no order lately: no shortcut
            return self._finish(*await self._whole(), now)
        order, boundary = await self._shortcut(resume)
        far = self._far_end()
        if far is not None and await self._look(far, now):
            order, boundary = await self._whole()
        return self._finish(order, boundary, now)

    async def _shortcut(self, resume: int) -> tuple[_Order, int | None]:
        """Resume from a stored offset when it checks out, else start over, reading no more than
        the order of the pages asks for."""
        if resume > 0:
            page = await self._start(resume)
            times = _times(page)
            if times and self._old(times[0]) and _ascending(times):
                try:
                    return await self._walk(resume, page, _Order("asc"), skipped=True)
                except _Restart:
                    return await self._whole()
        first = await self._start(0)
        try:
            return await self._walk(0, first, _Order(), skipped=False)
        except _Restart:
            return await self._whole()

    async def _whole(self) -> tuple[_Order, int | None]:
        """Read the whole list, from offset 0 to its end, trusting no order."""
        self._looked.clear()  # the whole read covers both ends
        return await self._walk(0, await self._start(0), _Order("mixed"), skipped=False)

    def _walked(self) -> tuple[list[_Listing], list[_Listing]]:
        """The last walk's pages that cover the start of the list, and those that cover its end."""
        read = self._read[self._attempt:]
        return _from_start(read, self._limit), _to_end(read, self._limit)

    def _far_end(self) -> Literal["head", "tail"] | None:
        """The end of the list the walk did not reach (None: it read both)."""
        head, tail = self._walked()
        if head and tail:
            return None
        return "tail" if head else "head"

    async def _look(self, far: Literal["head", "tail"], now: int) -> bool:
        """Read the far end of the list when that is due; whether the whole list must be read.

        Due at the poll after a first start whose walk stopped before that end, at the next poll
        while the ids kept there are not confirmed (a look confirms them), then every
        `lookback_s / LOOK_SHARE`, and every poll while the end is hot. Without a record (the end
        was read by the previous poll's walk, or the paging state predates the looks) the first
        look is due that much later than this poll. The look is quiet when it finds the ids the previous poll
        kept there with nothing beyond them and no fill of the window it had not read; fills beyond
        them arrived since and are read here (the end turns hot); anything else (those ids gone or
        out of order, or a fill of the window listed before them and never read) means the part of
        the list the walk skipped cannot be trusted.
        """
        look = self._looks[far]
        if look is None:
            self._looks[far] = _Look(None if self._first_start else now)
            return False
        hot = now < look.hot_until_ns
        end = self._ends[far]
        # an end not confirmed yet names no fill that arrives there: confirm it at the next poll
        wait = self._adapter.look_every_ns if end is not None and end.confirmed else self._adapter.poll_interval_ns // 2
        if look.read_ns is not None and not hot and now - look.read_ns < wait:
            return False
        pages = await (self._look_head() if far == "head" else self._look_tail(look, hot))
        look.read_ns = now
        if pages is None:  # pages of one fill cannot show the end of the list: read it whole
            look.length = None
            return True
        self._looked[far] = pages
        if far == "tail":
            look.length = self._tail_offset + len(pages[-1])
        judged = _judge_end(far, self._ends[far], pages, self._since, self._limit)
        unread = set().union(*(page.unpublished(self._since) for page in pages))
        if judged.arrivals is None:
            whole = self._ends[far] is not None or bool(unread)
        else:
            whole = bool(unread - {fill_id for fill_id, _ in judged.arrivals})
        if whole or judged.arrivals:
            if not hot:
                log.warning("source %s: the %s of the ZLL list %s, which the order of its pages said it "
                            "would not: reading that end every poll for %.0fs%s", self._adapter.source.name,
                            far, "took new fills" if judged.arrivals else "changed",
                            self._adapter.look_every_ns / NS, " and the whole list now" if whole else "")
            look.hot_until_ns = now + self._adapter.look_every_ns
        return whole

    async def _look_head(self) -> list[_Listing]:
        """The head of the list, from offset 0 until the ids the previous poll kept there (fills
        arriving at the head shift them on: reading forward never skips one)."""
        pages: list[_Listing] = []
        offset = 0
        while True:
            page = await self.page(offset, walked=False)
            pages.append(page)
            if len(page) < self._limit or not self._head_ids or not self._head_ids.isdisjoint(page.ids):
                return pages
            offset += self._limit

    async def _look_tail(self, look: _Look, hot: bool) -> list[_Listing] | None:
        """The tail of the list, in list order, ending with a short page (None when the page limit
        is 1). A hot tail is read forward from where its kept ids were, every fill that arrived
        since included; otherwise the end is searched for from where it was (:meth:`_find_end`)."""
        if self._limit < 2:
            return None
        if hot and look.length is not None:
            pages: list[_Listing] = []
            offset = max(0, look.length - END_IDS)
            while True:
                page = await self.page(offset, walked=False)
                pages.append(page)
                self._tail_offset = offset
                if len(page) < self._limit:
                    return pages
                offset += self._limit
        if look.length is not None:
            return [await self._find_end(look.length, self._limit)]
        # a first look: the list is at least as long as the walk read, and likely much longer
        walked = max(offset + len(page) for offset, page in self._read[self._attempt:])
        return [await self._find_end(walked, max(walked, self._limit))]

    async def _find_end(self, guess: int, jump: int) -> _Listing:
        """A short page that ends the list and holds its last few fills (`want`, up to
        :data:`END_IDS` and half a page).

        `guess` is where the end is expected (n, the list's length). A page read at `n - want`
        holds `want` fills and is short for any n from the guess up to `limit - want` above it. A
        full page raises the lower bound of n, an empty one lowers the upper bound: galloping up
        from the lower bound by `jump`, doubled each time, while there is no upper bound, halving
        after, as :meth:`_gallop` does. Where the list has not moved since the guess was made,
        this is one request.
        """
        limit = self._limit
        want = min(END_IDS, limit // 2)
        low, high = 0, None  # low <= n <= high, as far as the pages read so far tell
        for _ in range(MAX_END_PROBES):
            offset = max(0, guess - want)
            page = await self.page(offset, walked=False)
            size = len(page)
            if 0 < size < limit or (size == 0 and offset == 0):
                if size >= want or offset == 0:
                    self._tail_offset = offset
                    return page
                guess, low, high = offset + size, 0, None  # the end is right here: read a little earlier
                continue
            if size == limit:
                low = offset + limit
            else:
                high = offset
            if high is not None and low > high:  # the list moved meanwhile: search afresh
                high = None
            if high is None:
                guess = low + jump
                jump *= 2
            else:
                guess = (low + high + 1) // 2
        raise PagingError(f"the end of the list was not found in {MAX_END_PROBES} probes: it keeps moving")

    def _finish(self, order: _Order, boundary: int | None, now: int) -> FetchResult:
        result = self.pages.result
        state: dict[str, Any] = {}
        if order.direction == "asc" and boundary is not None:
            # one page below the boundary: cheap insurance, and the fill there validates the offset
            resume = max(0, boundary - self._limit)
            if resume > 0:
                state["resume_offset"] = resume
        arrived: set[str] = set()
        walked = dict(zip(("head", "tail"), self._walked(), strict=True))
        fresh: dict[str, list[str]] = {}
        for name in ("head", "tail"):
            pages = self._looked.get(name) or walked[name]
            end = self._ends[name]
            if pages:  # this poll read that end of the list
                judged = _judge_end(name, end, pages, self._since, self._limit)
                end = judged.end
                arrived |= judged.below
                fresh[name] = [fill_id for fill_id, when in judged.arrivals or ()
                               if when is not None and not self._old(when)]
            if end is not None:
                state[name] = end.saved()
        self._check_order(walked["head"], fresh, now)
        looks: dict[str, Any] = {}
        for name, look in self._looks.items():
            if look is None:
                continue
            if walked[name]:  # the walk read it: a look is owed only while the end is hot
                if now >= look.hot_until_ns:
                    continue
                look.read_ns = now
                if name == "tail":
                    look.length = self._read[-1][0] + len(self._read[-1][1])
            looks[name] = look.saved()
        if looks:
            state["looks"] = looks
        result.paging_state = state or None
        result.arrived_below = arrived or None
        return result

    def _check_order(self, head: list[_Listing], fresh: dict[str, list[str]], now: int) -> None:
        """Fail the poll when fills of the window arrived at both ends of a list it did not read
        whole: no order ZLL may use puts them there (one end in insertion order; sorted, only a fill
        older than every fill listed goes to the old end, and then every fill listed is in the
        window and the walk reads them all), so the part skipped may hold more. The polls of the
        next `lookback_s` read the whole list; until then, this one fails loudly instead of guessing.
        """
        whole = bool(head) and len(head[-1]) < self._limit
        if whole or not fresh.get("head") or not fresh.get("tail"):
            return
        self._adapter.whole_until_ns = now + self._adapter.lookback_ns
        raise ListOrderError(
            f"fills of the window arrived at both ends of the list since the previous poll ({len(fresh['head'])} "
            f"at the head, e.g. {fresh['head'][0]}; {len(fresh['tail'])} at the tail, e.g. {fresh['tail'][0]}): "
            f"it fits no order the adapter can read in part; the list is read whole for the next "
            f"{self._adapter.lookback_ns / NS:.0f}s")

    async def _walk(self, offset: int, page: _Listing, order: _Order, *, skipped: bool) -> tuple[_Order, int | None]:
        """Read from `page` (at `offset`) to where the order says to stop.

        Returns the order seen and, for ascending lists, the offset of the first fill not older than
        `since_ns` (the end of the list when all are older). `skipped` says offsets before `offset`
        were not read (so a fill out of order means starting over).
        """
        boundary: int | None = None
        while True:
            order.feed(_times(page), continues=not _shifted(page))
            if order.direction == "mixed" and skipped:
                raise _Restart
            if boundary is None:
                for index, time in enumerate(page.times):
                    if time is not None and not self._old(time):
                        boundary = offset + index
                        break
            if len(page) < self._limit:
                if boundary is None:
                    boundary = offset + len(page)
                return order, boundary
            if order.direction == "desc" and any(self._old(t) for t in _times(page)) and self._met_head:
                return order, None
            if order.direction == "asc" and boundary is None and self._all_old(page):
                offset, page = await self._gallop(offset + self._limit, page)
                skipped = True
                continue
            offset += self._limit
            page = await self.page(offset)

    def _all_old(self, page: _Listing) -> bool:
        # a full page whose every fill, its last included, is known to be older than since_ns
        return len(page) == self._limit and all(time is not None and self._old(time) for time in page.times)

    def _probe(self, page: _Listing, floor: int) -> Literal["new", "old", "here"]:
        """Where an ascending probe page lies: at/after the boundary (or past the end), entirely
        before it, or holding it. A page out of order, or below `floor`, means starting over."""
        times = _times(page)
        fresh = _times(page, fresh_only=True)
        # every fill at or after `lo` that we have not read is at least as new as the last fill
        # before it (a repeat may be older: shifted there from before `lo`)
        if not _ascending(times) or (fresh and fresh[0] < floor):
            raise _Restart
        if not times or not self._old(times[0]):
            return "new"
        return "old" if self._all_old(page) else "here"

    async def _gallop(self, lo: int, before: _Listing) -> tuple[int, _Listing]:
        """Find the page holding the first fill not older than `since_ns` in an ascending list.

        `before` is the (entirely old) page that ends at offset `lo`. Invariant: every fill before
        offset `lo` is older than `since_ns` (insertions only shift fills to higher offsets, and in a
        sorted list a new fill cannot land before an old one); `hi`, once known, is an offset whose
        page started at or after the boundary. Returns an offset and its page from which a linear
        read finds the boundary.
        """
        floor = _last_time(before)
        step = self._limit
        hi: int | None = None
        while hi is None:
            probe = lo + step - self._limit  # lo, then 1, 3, 7, ... pages further
            page = await self.page(probe)
            where = self._probe(page, floor)
            if where == "here" or (where == "new" and probe == lo):
                return probe, page
            if where == "new":
                hi = probe
            else:
                lo, floor = probe + self._limit, _last_time(page)
                step *= 2
        while hi - lo > self._limit:
            mid = lo + (hi - lo) // 2
            page = await self.page(mid)
            where = self._probe(page, floor)
            if where == "here":
                return mid, page
            if where == "new":
                hi = mid
            else:
                lo, floor = mid + self._limit, _last_time(page)
        page = await self.page(lo)
        self._probe(page, floor)
        return lo, page


class ZllAdapter(VenueAdapter):
    """Polls `GET /api/v1/fills` for one subaccount (and optionally one portfolio)."""

    venue = "zll"

    def __init__(self, source: ZllSource, client: VenueClient, *, max_pages: int = MAX_PAGES_PER_POLL):
        self.source = source
        self.client = client
        self.max_pages = max_pages
        self.pages = ZllPages(source.name)
        self.lookback_ns = int(source.lookback_s * NS)
        #: how often the far end of a list read in part is read (see :data:`LOOK_SHARE`)
        self.look_every_ns = self.lookback_ns // LOOK_SHARE
        self.poll_interval_ns = int(source.poll_interval_s * NS)
        #: until when every poll reads the whole list: its ends contradicted every order lately
        #: (kept in memory only: a new process finds out again, failing one poll)
        self.whole_until_ns = 0

    def params(self, offset: int) -> dict[str, str | int]:
        """Query parameters of the page at `offset`."""
        params: dict[str, str | int] = {"subaccount_index": self.source.subaccount_index}
        if self.source.portfolio_index is not None:
            params["portfolio_index"] = self.source.portfolio_index
        params["limit"] = self.source.page_limit
        params["offset"] = offset
        return params

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int],
                    published: PublishedFills | None = None) -> FetchResult:
        """Every fill since `since_ns` (and some older); `paging_state` carries the resume offset
        and the ends of the list, by which the fills first listed below `since_ns` are named.

        A fill whose list copy is unusable is looked up by id once before it is dead-lettered:
        published when that copy is well-formed, else the dead letter says what it held.
        """
        result = await _Poll(self, since_ns, clock_ns, published, paging_state).run(_resume_offset(paging_state))
        if result.invalid:
            await self._second_look(result, clock_ns, published)
        return result

    async def _second_look(self, result: FetchResult, clock_ns: Callable[[], int],
                           published: PublishedFills | None) -> None:
        kept: list[InvalidFill] = []
        looked = 0
        for bad in result.invalid:
            key = bad.key
            if (key.startswith("sha256:") or looked >= MAX_SECOND_LOOKS
                    or (published is not None
                        and any(published.are_published(published.keys((key, DEAD_LETTER_PREFIX + key)))))):
                kept.append(bad)  # no id, too many, or handled already (published or dead-lettered)
                continue
            looked += 1
            copy = await self.lookup(key, clock_ns())
            if isinstance(copy, FillEvent):
                result.fills.append(copy)
                if result.keys is not None and published is not None:
                    result.keys += published.keys((copy.fill_id,))
            else:
                bad.error = f"{bad.error}; by id: {copy}"
                kept.append(bad)
        result.invalid = kept

    async def lookup(self, fill_id: str, observed_at_ns: int) -> FillEvent | str:
        """`GET /api/v1/fills/{id}` normalised, or why that copy cannot be used."""
        try:
            body = await self.client.get(f"{FILLS_PATH}/{urllib.parse.quote(fill_id, safe='')}")
        except VenueError as exc:
            return f"the single-fill endpoint failed ({exc.reason}: {exc})"
        try:
            fill = _fill_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return f"the single-fill endpoint's copy is malformed too: {exc}"
        source = self.source
        if fill.id != fill_id:
            return "the single-fill endpoint answered with another fill"
        if fill.subaccount_index != source.subaccount_index or (
                source.portfolio_index is not None and fill.portfolio_index != source.portfolio_index):
            return "the single-fill endpoint's copy belongs to another subaccount or portfolio"
        try:
            return normalise(fill, source=source.name, observed_at_ns=observed_at_ns)
        except ValueError as exc:
            return f"the single-fill endpoint's copy is invalid too: {exc}"

    async def fetch_one(self, fill_id: str) -> FillEvent | None:
        """The venue's own record of one fill, normalised (None when it cannot be had): the audit
        confirms a mismatch with it."""
        copy = await self.lookup(fill_id, time.time_ns())
        return copy if isinstance(copy, FillEvent) else None


def create_adapter(
    source: ZllSource, secret: Secret, transport: httpx.AsyncBaseTransport, on_request: Callable[[], None]
) -> VenueAdapter:
    """Build the adapter over `transport` (the source's connection pool)."""
    auth = ZllAuth(secret)
    client = VenueClient.for_source(transport, source, auth=auth, describe_error=describe_error, on_request=on_request)
    return ZllAdapter(source, client)


VENUE = VenueSpec(
    name="zll",
    source_config=ZllSource,
    create_adapter=create_adapter,
    check_secret=check_secret,
    venue_fields=frozenset({"account_id", "subaccount_index", "portfolio_index"}),
)
