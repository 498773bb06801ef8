"""The page strategy every venue shares (`publisher.venues.pages`), on a toy venue whose codec
counts what it was asked to do: which reading a page gets, what is skipped and counted, the keys
handed back, repeats and conflicts within a poll, and the slices that leave the event loop free."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from publisher.dedupe import SeenWindow, fill_keys
from publisher.event import FillEvent
from publisher.venues import pages
from publisher.venues.errors import VenueDecodeError
from publisher.venues.pages import PageCodec, PageReader, in_slices, same_values
from publisher.venues.results import InvalidFill, raw_key

NOW = 1_800_000_000 * 10**9


class _Key(msgspec.Struct):
    id: str | None = None


class _Fill(msgspec.Struct):
    id: str
    price: str


class _Toy(PageCodec[_Key, _Fill]):
    """A page is a JSON array of `{"id", "price"}`; a price "bad" is refused by normalise."""

    def __init__(self, *, id_prefix: str = "") -> None:
        self.calls: dict[str, int] = {}
        self.id_prefix = id_prefix  # what the ids read ahead of decoding get wrong, if anything

    def _count(self, name: str, n: int = 1) -> None:
        self.calls[name] = self.calls.get(name, 0) + n

    def read_keys(self, body: bytes) -> tuple[Sequence[_Key], str | None]:
        self._count("read_keys")
        return msgspec.json.decode(body, type=list[_Key]), "next"

    def key_ids(self, keys: Sequence[_Key]) -> list[str]:
        return [self.id_prefix + (key.id or "") if key.id else "" for key in keys]

    def read_typed(self, body: bytes) -> tuple[Sequence[_Fill], str | None]:
        self._count("read_typed")
        return msgspec.json.decode(body, type=list[_Fill]), "next"

    def fill_ids(self, fills: Sequence[_Fill]) -> list[str]:
        return [self.id_prefix + fill.id for fill in fills]

    def printable(self, body: bytes) -> bool:
        return True

    def normalise(self, fill: _Fill, observed_at_ns: int, printable: bool) -> FillEvent:
        self._count("normalise")
        if fill.price == "bad":
            raise ValueError("price is not a decimal number: 'bad'")
        return _event(fill.id, fill.price)

    def refused(self, fill: _Fill, raw: msgspec.Raw, error: ValueError, observed_at_ns: int) -> InvalidFill:
        return InvalidFill(key=fill.id, error=str(error), raw=raw)

    def read_raw(self, body: bytes) -> tuple[Sequence[msgspec.Raw], str | None]:
        try:
            return msgspec.json.decode(body, type=list[msgspec.Raw]), "next"
        except msgspec.DecodeError as exc:
            raise VenueDecodeError(f"undecodable fills page: {exc}") from None

    def raw_id(self, raw: msgspec.Raw, observed_at_ns: int) -> str:
        try:
            key = msgspec.json.decode(raw, type=_Key).id
        except msgspec.DecodeError:
            return ""
        return self.id_prefix + key if key else ""

    def decode(self, raw: msgspec.Raw, observed_at_ns: int) -> FillEvent | InvalidFill:
        self._count("decode")
        try:
            return self.normalise(msgspec.json.decode(raw, type=_Fill), observed_at_ns, True)
        except (msgspec.DecodeError, ValueError) as exc:
            return InvalidFill(key=self.raw_id(raw, observed_at_ns) or raw_key(raw), error=str(exc), raw=raw)


def _event(fill_id: str, price: str = "1") -> FillEvent:
    return FillEvent(venue="zll", source="toy", fill_id=fill_id, order_id="o", instrument="X", side="buy",
                     price=price, quantity="1", fee=None, fee_currency="USDC", liquidity=None,
                     executed_at_ns=NOW, observed_at_ns=NOW)


def _page(*items: Any) -> bytes:
    return msgspec.json.encode([{"id": item, "price": "1"} if isinstance(item, str) else item for item in items])


def _published(*fill_ids: str) -> SeenWindow:
    window = SeenWindow(0)
    window.admit_all(fill_keys(fill_ids), [0] * len(fill_ids))
    return window


def _ids(reader: PageReader[Any, Any]) -> list[str]:
    return [fill.fill_id for fill in reader.result.fills]


async def test_a_reread_page_decodes_only_its_new_fills() -> None:
    codec = _Toy()
    reader = PageReader(codec, _published("a", "b", "c"))
    page = await reader.read(_page("a", "b", "n", "c"), NOW)
    assert page.depth == "keys" and page.cursor == "next"
    assert _ids(reader) == ["n"] and reader.result.skipped_published == 3
    assert codec.calls == {"read_keys": 1, "decode": 1, "normalise": 1}
    assert page.outcomes[:2] == [None, None] and page.outcomes[2] == _event("n")
    assert not reader.mostly_new


async def test_the_keys_looked_up_are_the_keys_handed_back() -> None:
    reader = PageReader(_Toy(), _published("a"))
    await reader.read(_page("a", "n1"), NOW)  # keys first, one new
    await reader.read(_page("n2", "n3", "n4"), NOW)  # mostly new now: typed
    assert _ids(reader) == ["n1", "n2", "n3", "n4"]
    assert reader.result.keys == fill_keys(["n1", "n2", "n3", "n4"])


async def test_a_page_of_new_fills_is_read_typed_and_the_next_one_typed_first() -> None:
    codec = _Toy()
    reader = PageReader(codec, _published())
    await reader.read(_page("n1", "n2"), NOW)
    assert reader.mostly_new and codec.calls == {"read_keys": 1, "read_typed": 1, "normalise": 2}
    page = await reader.read(_page("n3", "n4"), NOW)
    assert page.depth == "typed" and codec.calls["read_keys"] == 1  # no keys-first read this time


async def test_a_backlog_page_with_new_ends_is_normalised_whole() -> None:
    reader = PageReader(_Toy(), _published("m"))
    reader.mostly_new = True
    await reader.read(_page("n1", "m", "n2"), NOW)
    # nothing skipped: the published fill between two new ends is the poll loop's to drop
    assert _ids(reader) == ["n1", "m", "n2"] and reader.result.skipped_published == 0


async def test_a_backlog_page_with_a_published_end_is_looked_up_fill_by_fill() -> None:
    reader = PageReader(_Toy(), _published("a", "b"))
    reader.mostly_new = True
    await reader.read(_page("a", "b", "n1"), NOW)
    assert _ids(reader) == ["n1"] and reader.result.skipped_published == 2
    assert not reader.mostly_new  # one new fill of three


async def test_a_malformed_fill_sends_the_page_fill_by_fill_and_becomes_a_dead_letter() -> None:
    codec = _Toy()
    reader = PageReader(codec, _published("a"))
    reader.mostly_new = True  # typed first: the price of the wrong type fails the typed decode
    page = await reader.read(_page("a", {"id": "x", "price": 5}, "n"), NOW)
    assert page.depth == "raw" and page.ids == ["a", "x", "n"]
    assert _ids(reader) == ["n"] and [bad.key for bad in reader.result.invalid] == ["x"]
    assert reader.result.skipped_published == 1 and codec.calls["decode"] == 2


async def test_a_fill_normalise_refuses_is_a_dead_letter_of_its_own_bytes() -> None:
    reader = PageReader(_Toy(), None)
    reader.mostly_new = True
    await reader.read(_page("n1", {"id": "x", "price": "bad"}), NOW)
    [bad] = reader.result.invalid
    assert bad.key == "x" and bytes(bad.raw) == b'{"id":"x","price":"bad"}' and "not a decimal" in bad.error


async def test_an_id_of_the_wrong_type_sends_a_reread_page_fill_by_fill() -> None:
    reader = PageReader(_Toy(), _published("a"))
    page = await reader.read(_page("a", {"id": 7, "price": "1"}), NOW)
    assert page.depth == "raw" and page.ids == ["a", ""] and reader.result.skipped_published == 1
    [bad] = reader.result.invalid
    assert bad.key.startswith("sha256:")  # no id to key it by: its bytes


async def test_an_answer_that_is_no_page_is_a_decode_error() -> None:
    with pytest.raises(VenueDecodeError, match="undecodable fills page"):
        await PageReader(_Toy(), _published()).read(b'{"not": "a list"', NOW)


async def test_repeats_within_a_poll_are_kept_once_and_conflicts_recorded() -> None:
    reader = PageReader(_Toy(), _published())
    await reader.read(_page("a", "b"), NOW)
    page = await reader.read(msgspec.json.encode([{"id": "b", "price": "1"}, {"id": "a", "price": "2"},
                                                  {"id": "c", "price": "1"}]), NOW)
    assert page.repeats == [True, True, False]
    assert _ids(reader) == ["a", "b", "c"]
    [(first, later)] = reader.result.conflicts  # "b" came again alike, "a" with another price
    assert (first.fill_id, first.price, later.price) == ("a", "1", "2")
    assert same_values(_event("b"), _event("b"))


async def test_without_a_window_every_fill_is_read_and_no_keys_are_handed_back() -> None:
    codec = _Toy()
    reader = PageReader(codec, None)
    page = await reader.read(_page("a", "b"), NOW)
    assert page.depth == "typed" and _ids(reader) == ["a", "b"]
    assert reader.result.keys is None and reader.result.skipped_published == 0
    assert "read_keys" not in codec.calls


@pytest.mark.parametrize("mostly_new", [False, True])
async def test_a_fill_whose_id_was_read_otherwise_gets_the_key_of_its_own_id(mostly_new: bool) -> None:
    reader = PageReader(_Toy(id_prefix="?"), _published())
    reader.mostly_new = mostly_new
    await reader.read(_page("n1", "n2"), NOW)
    assert reader.result.keys == fill_keys(["n1", "n2"])


async def test_slices_yield_to_the_event_loop_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "SLICE", 2)
    ticks: list[int] = []

    async def other_task() -> None:
        for n in range(10):
            ticks.append(n)
            await asyncio.sleep(0)

    task = asyncio.create_task(other_task())
    seen = [(start, list(part), len(ticks)) async for start, part in in_slices([1, 2, 3, 4, 5])]
    await task
    assert [(start, part) for start, part, _ in seen] == [(0, [1, 2]), (2, [3, 4]), (4, [5])]
    assert seen[0][2] < seen[-1][2]  # the other task ran between the first slice and the last
