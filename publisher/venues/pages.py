"""Reading one poll's pages of fills: one strategy for every venue, each venue supplying its decoders.

Most fills of a page re-read in the overlap window were published already, and decoding and
normalising them again would be thrown away. How a page is cheapest to read depends on what it
holds; what it gives never depends on the way taken:

- **keys first** (the overlap re-read, the usual case): only each fill's id is decoded, the ids are
  looked up in what the source published (:class:`PublishedFills`), and only the new fills are
  decoded in full, from the page's raw items;
- **typed** (a backlog, pages of mostly new fills): the whole page is decoded in one go straight
  into the venue's types and every fill normalised. Only when one end of the page is published
  already is every fill looked up: fills already published show up at an end of a page (the
  re-read follows the new fills, newest or oldest first), and the odd published fill between two
  new ends is cheaper to normalise than to look up every fill for; the poll loop's dedupe drops it;
- **fill by fill** (a page with a fill that does not fit the venue's types, or is not UTF-8): each
  item is decoded on its own, so one bad fill becomes a dead letter and the rest of the page is read.

A poll starts keys first and reads the next page typed first while the last one held mostly new
fills. Within a poll every fill is kept once (an insertion at the venue shifts fills onto the next
page, where they repeat); a repeat with other values than the copy kept is a conflict, which the
poll loop counts.

Each fill's dedupe key is computed once, by the :class:`PublishedFills` the poll loop hands to the
adapter, and returned beside the fill (:attr:`FetchResult.keys`): the key looked up is the key the
poll loop admits. Work is done in slices (:func:`in_slices`) that leave the event loop free.

A venue supplies a :class:`PageCodec`: how to read a page's ids cheaply, how to decode it typed,
how to normalise one typed fill (and make a dead letter of one it refuses), and how to read it fill
by fill.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import msgspec

from publisher.event import FillEvent
from publisher.venues.results import FetchResult, InvalidFill

T = TypeVar("T")
#: a venue's cheapest decoded form of a fill: its id, and what else it needs of a fill it skips
K = TypeVar("K")
#: a venue's typed fill, as its wire format declares it
F = TypeVar("F")

#: how a page was read: keys first, typed, or fill by fill (see the module docstring)
Depth = Literal["keys", "typed", "raw"]


class PublishedFills(Protocol):
    """What a source has published already (fills and dead letters), as its adapter may ask while
    reading a poll's pages: the poll loop's dedupe window."""

    def keys(self, fill_ids: Sequence[str]) -> list[bytes]:
        """The dedupe key of each venue fill id, in order: the key the poll loop admits it under."""
        ...

    def are_published(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether the fill (or dead letter) of each dedupe key is published already, in order."""
        ...


def same_values(first: FillEvent, later: FillEvent) -> bool:
    """Whether two copies of one fill carry the same venue values (`observed_at_ns` is ours)."""
    return first == later or msgspec.structs.replace(later, observed_at_ns=first.observed_at_ns) == first


#: fills handled between two yields to the event loop: a page of 1,000 handled in one go holds the
#: loop long enough that the Kafka transaction in flight (three round trips) and the other sources
#: wait behind it; the size was chosen by the latency bench (bench/README.md)
SLICE = 200


async def in_slices(items: Sequence[T]) -> AsyncIterator[tuple[int, Sequence[T]]]:
    """`(start, items[start:start + SLICE])` for every slice, yielding to the event loop between
    slices, so one big page does not hold the loop for long."""
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        yield start, items[start : start + SLICE]


class PageCodec(abc.ABC, Generic[K, F]):
    """How one venue's page of fills is decoded at each depth of :class:`PageReader`'s strategy.

    Every `*_ids` method gives the venue fill id :meth:`normalise` would give the fill (the
    dedupe key is computed from it), or "" for a fill without a usable one (it is then read in
    full, and normally becomes a dead letter). Every read raises :class:`msgspec.DecodeError`
    (or its subclass :class:`msgspec.ValidationError`) when an item does not fit, except
    :meth:`read_raw`, which only fails for an answer that is no page at all.
    """

    @abc.abstractmethod
    def read_keys(self, body: bytes) -> tuple[Sequence[K], str | None]:
        """The page's fills decoded only as far as their ids (and what the venue needs of a fill it
        skips), and the page's cursor: the cheapest read."""

    @abc.abstractmethod
    def key_ids(self, keys: Sequence[K]) -> list[str]:
        """The venue fill id of each of :meth:`read_keys`' items."""

    @abc.abstractmethod
    def read_typed(self, body: bytes) -> tuple[Sequence[F], str | None]:
        """The page's fills decoded into the venue's types in one go, and the page's cursor."""

    @abc.abstractmethod
    def fill_ids(self, fills: Sequence[F]) -> list[str]:
        """The venue fill id of each typed fill."""

    @abc.abstractmethod
    def printable(self, body: bytes) -> bool:
        """Whether every string of the page is known printable (its fills need no check each)."""

    @abc.abstractmethod
    def normalise(self, fill: F, observed_at_ns: int, printable: bool) -> FillEvent:
        """One typed fill as an event; :class:`ValueError` naming the problem when it is unusable."""

    @abc.abstractmethod
    def refused(self, fill: F, raw: msgspec.Raw, error: ValueError, observed_at_ns: int) -> InvalidFill:
        """The dead letter of a typed fill :meth:`normalise` refused; `raw` is its bytes."""

    @abc.abstractmethod
    def read_raw(self, body: bytes) -> tuple[Sequence[msgspec.Raw], str | None]:
        """The page's fills as raw bytes each, and the page's cursor; a
        :class:`~publisher.venues.errors.VenueDecodeError` when the answer is no page at all."""

    @abc.abstractmethod
    def raw_id(self, raw: msgspec.Raw, observed_at_ns: int) -> str:
        """The venue fill id of one raw fill, as far as it can be read without decoding the rest."""

    @abc.abstractmethod
    def decode(self, raw: msgspec.Raw, observed_at_ns: int) -> FillEvent | InvalidFill:
        """One raw fill decoded and normalised on its own; never raises for a bad fill."""


@dataclass(slots=True)
class Page:
    """One page as :class:`PageReader` read it, entry by entry in the venue's order."""

    cursor: str | None
    depth: Depth
    #: the page's fills as decoded at `depth`: the codec's key items, typed fills, or raw fills
    entries: Sequence[Any]
    #: the venue fill id of each entry ("" for one without a usable id)
    ids: list[str]
    #: what each entry gave when read in full (a fill or a dead letter); None: skipped unread
    outcomes: list[FillEvent | InvalidFill | None]
    #: whether each entry was read earlier in this poll (an insertion at the venue shifted it here)
    repeats: list[bool]

    @classmethod
    def of(cls, cursor: str | None, depth: Depth, entries: Sequence[Any], ids: list[str]) -> Page:
        """A page of `entries` none of which has been read in full yet."""
        return cls(cursor, depth, entries, ids, [None] * len(ids), [False] * len(ids))


class PageReader(Generic[K, F]):
    """Reads one poll's pages, one :meth:`read` each, into one :class:`FetchResult`
    (:attr:`result`); see the module docstring for the strategy.

    With `published` (the poll loop's dedupe window), fills already published are skipped unread
    where that is cheaper (counted in :attr:`FetchResult.skipped_published`) and every fill's
    dedupe key is returned in :attr:`FetchResult.keys`; without it, every fill is read in full.
    """

    def __init__(self, codec: PageCodec[K, F], published: PublishedFills | None, paging_state: Any = None):
        self.codec = codec
        self.published = published
        self.result = FetchResult(paging_state=paging_state, keys=None if published is None else [])
        #: the last page read held mostly new fills: read the next one typed first; a poll starts
        #: as a re-read of fills already published, the usual case
        self.mostly_new = False
        #: venue ids (of fills) and keys (of dead letters) read in full or skipped in this poll
        self._seen: set[str] = set()
        #: fill id -> first copy, built on the first repeat only (repeats are rare)
        self._firsts: dict[str, FillEvent] | None = None

    async def read(self, body: bytes, observed_at_ns: int) -> Page:
        """Read one page into :attr:`result` in whichever way is cheapest for it."""
        codec = self.codec
        published = self.published
        keys: list[bytes] | None = None
        if published is not None and not self.mostly_new:
            try:
                items, cursor = codec.read_keys(body)
            except msgspec.DecodeError:
                # an id of the wrong type, a fill that is not an object, a string that is not
                # UTF-8, or a broken page (which read_fill_by_fill reports)
                return await self.read_fill_by_fill(body, observed_at_ns)
            page = Page.of(cursor, "keys", items, codec.key_ids(items))
            keys = published.keys(page.ids)
            fresh = await self._skip_published(page, keys)
            self.mostly_new = 2 * len(fresh) > len(page.ids)
            if len(fresh) < len(page.ids):
                if fresh:
                    page_raws, _ = codec.read_raw(body)
                    decode = codec.decode
                    async for _, part in in_slices(fresh):
                        for i in part:
                            self._add(page, i, decode(page_raws[i], observed_at_ns), keys[i])
                return page
            # every fill is new (and its key computed): the typed decode reads them all at once
        try:
            fills, cursor = codec.read_typed(body)
        except msgspec.DecodeError:
            return await self.read_fill_by_fill(body, observed_at_ns)  # a fill of the wrong shape
        page = Page.of(cursor, "typed", fills, codec.fill_ids(fills))
        indices: Sequence[int] = range(len(fills))
        if published is not None and keys is None:
            keys = published.keys(page.ids)
            if fills and any(published.are_published((keys[0], keys[-1]))):
                indices = await self._skip_published(page, keys)
                self.mostly_new = 2 * len(indices) > len(fills)
        printable = codec.printable(body)
        normalise = codec.normalise
        raws: Sequence[msgspec.Raw] = ()
        async for _, part in in_slices(indices):
            for i in part:
                try:
                    outcome: FillEvent | InvalidFill = normalise(fills[i], observed_at_ns, printable)
                except ValueError as exc:
                    # the dead letter carries the venue's bytes: read the page raw (rare)
                    raws = raws or codec.read_raw(body)[0]
                    outcome = codec.refused(fills[i], raws[i], exc, observed_at_ns)
                self._add(page, i, outcome, None if keys is None else keys[i])
        return page

    async def read_fill_by_fill(self, body: bytes, observed_at_ns: int) -> Page:
        """Read one page into :attr:`result` decoding each fill on its own: the reading for a page
        with a malformed fill, and the reference the other readings must agree with."""
        codec = self.codec
        raws, cursor = codec.read_raw(body)
        raw_id = codec.raw_id
        page = Page.of(cursor, "raw", raws, [raw_id(raw, observed_at_ns) for raw in raws])
        indices: Sequence[int] = range(len(raws))
        keys = None
        if self.published is not None:
            keys = self.published.keys(page.ids)
            indices = await self._skip_published(page, keys)
        decode = codec.decode
        async for _, part in in_slices(indices):
            for i in part:
                self._add(page, i, decode(raws[i], observed_at_ns), None if keys is None else keys[i])
        return page

    async def _skip_published(self, page: Page, keys: list[bytes]) -> list[int]:
        """Skip the entries of `page` read earlier in this poll (marked as repeats) and those
        published already (counted in :attr:`FetchResult.skipped_published`); returns the
        indices of the others, which must be read in full."""
        assert self.published is not None
        published = self.published.are_published(keys)
        seen = self._seen
        repeats = page.repeats
        fresh: list[int] = []
        skipped = 0
        async for start, part in in_slices(page.ids):
            for i, fill_id in enumerate(part, start):
                if fill_id in seen:
                    repeats[i] = True
                elif published[i]:  # never true for "": no fill without an id is ever published
                    seen.add(fill_id)
                    skipped += 1
                else:
                    fresh.append(i)
        self.result.skipped_published += skipped
        return fresh

    def _add(self, page: Page, i: int, outcome: FillEvent | InvalidFill, key: bytes | None) -> None:
        """Record entry `i`'s outcome in :attr:`result`, unless it repeats one read earlier in this
        poll (a repeat with other values is recorded as a conflict). `key` is the dedupe key of the
        entry's id, looked up already."""
        page.outcomes[i] = outcome
        result = self.result
        if isinstance(outcome, InvalidFill):
            if outcome.key in self._seen:
                page.repeats[i] = True
            else:
                self._seen.add(outcome.key)
                result.invalid.append(outcome)
            return
        fill_id = outcome.fill_id
        if fill_id in self._seen:
            page.repeats[i] = True
            self._check_repeat(outcome)
            return
        self._seen.add(fill_id)
        result.fills.append(outcome)
        if self._firsts is not None:
            self._firsts[fill_id] = outcome
        if result.keys is not None:
            assert self.published is not None
            # the key of the id the entry was looked up under is the fill's, unless a codec read
            # the id otherwise than normalising did: then the fill's own id decides
            if key is None or page.ids[i] != fill_id:
                key = self.published.keys((fill_id,))[0]
            result.keys.append(key)

    def _check_repeat(self, later: FillEvent) -> None:
        if self._firsts is None:
            self._firsts = {fill.fill_id: fill for fill in self.result.fills}
        first = self._firsts.get(later.fill_id)
        if first is not None and not same_values(first, later):
            self.result.conflicts.append((first, later))
