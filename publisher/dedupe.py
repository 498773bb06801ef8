"""Per-source memory of the fills already handed to the sink, bounded by the overlap window.

Polls overlap on purpose (each re-reads the last `lookback_s` seconds to catch late fills), so most
fills arrive several times. A source remembers the key of every fill whose execution time lies
inside the window and forgets it once the window's floor has passed it: the poll loop never
accepts a fill older than the floor, so a forgotten key can never be needed again. Memory is
therefore proportional to the fills inside the window, never to history.

Keys are 16-byte BLAKE2b digests of the venue's fill id: a fixed, small size whatever the venue's
id format (UUID strings cost 85 bytes as Python objects, the digest 49), and a collision chance of
about n^2 / 2^129, i.e. nil for any realistic n. Keys are grouped by execution second, which makes
pruning a walk over a few buckets and the checkpoint a compact map of second -> packed digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

_NS = 1_000_000_000
KEY_SIZE = 16


_blake2b = hashlib.blake2b


def fill_key(fill_id: str) -> bytes:
    """The dedupe key of one venue fill id (see :func:`fill_keys`)."""
    return fill_keys((fill_id,))[0]


def fill_keys(fill_ids: Iterable[str]) -> list[bytes]:
    """The dedupe key of each venue fill id, its 16-byte BLAKE2b digest (one call for a whole
    poll's fills)."""
    return [_blake2b(fill_id.encode(), digest_size=KEY_SIZE).digest() for fill_id in fill_ids]


class SeenWindow:
    """The set of fill keys a source has accepted whose execution time is at or after `floor_ns`.

    The caller admits fills in :meth:`admit` (which also answers "is it new?") and moves the floor
    forward with :meth:`advance`; keys of seconds wholly below the floor are dropped. Keys of the
    floor's own second are kept: the venue filters on whole seconds.
    """

    __slots__ = ("_buckets", "_floor_s", "_keys", "_packed")

    def __init__(self, floor_ns: int = 0):
        self._keys: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}
        self._floor_s = floor_ns // _NS
        # packed digests per second, cached for checkpoints; a bucket's entry is dropped on change
        self._packed: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def keys(self, fill_ids: Sequence[str]) -> list[bytes]:
        """:func:`fill_keys`: the key of each venue fill id (what an adapter admits fills under,
        as :class:`~publisher.venues.pages.PublishedFills`)."""
        return fill_keys(fill_ids)

    def are_published(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key is in the window, in order (one call for a page of fills)."""
        known = self._keys
        return [key in known for key in keys]

    @property
    def floor_ns(self) -> int:
        return self._floor_s * _NS

    def admit(self, key: bytes, at_ns: int) -> bool:
        """Remember `key` (executed at `at_ns`); True when it was not known yet."""
        return self.admit_all((key,), (at_ns,))[0]

    def admit_all(self, keys: Iterable[bytes], times_ns: Iterable[int]) -> list[bool]:
        """:meth:`admit` for each key with its time, in order (a key repeated among them is new
        the first time only); one call for a whole poll's fills."""
        known, buckets, floor_s = self._keys, self._buckets, self._floor_s
        verdicts = []
        changed = set()
        for key, at_ns in zip(keys, times_ns, strict=True):
            if key in known:
                verdicts.append(False)
                continue
            known.add(key)
            second = at_ns // _NS
            if second < floor_s:
                second = floor_s
            bucket = buckets.get(second)
            if bucket is None:
                buckets[second] = [key]
            else:
                bucket.append(key)
            changed.add(second)
            verdicts.append(True)
        for second in changed:
            self._packed.pop(second, None)
        return verdicts

    def advance(self, floor_ns: int) -> dict[int, list[bytes]]:
        """Move the floor forward (never back) and forget keys of seconds below it; returns the
        forgotten keys by second."""
        floor_s = floor_ns // _NS
        dropped: dict[int, list[bytes]] = {}
        if floor_s <= self._floor_s:
            return dropped
        self._floor_s = floor_s
        for second in [s for s in self._buckets if s < floor_s]:
            keys = dropped[second] = self._buckets.pop(second)
            self._keys.difference_update(keys)
            self._packed.pop(second, None)
        return dropped

    def packed(self) -> dict[int, bytes]:
        """Second -> concatenated 16-byte keys: the checkpoint's compact form of the window."""
        packed = self._packed
        for second, keys in self._buckets.items():
            if second not in packed:
                packed[second] = b"".join(keys)
        return dict(packed)

    @classmethod
    def from_packed(cls, floor_ns: int, packed: Mapping[int, bytes]) -> SeenWindow:
        """Rebuild a window from :meth:`packed` output, dropping what lies below `floor_ns`."""
        window = cls(floor_ns)
        for second, blob in packed.items():
            if second < window._floor_s:
                continue
            if len(blob) % KEY_SIZE:
                raise ValueError(f"corrupt dedupe bucket for second {second}")
            count = len(blob) // KEY_SIZE
            window.admit_all([blob[i : i + KEY_SIZE] for i in range(0, len(blob), KEY_SIZE)], [second * _NS] * count)
        return window
