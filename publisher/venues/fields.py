"""Checks and conversions of a venue fill's fields: decimal strings, execution times, identifiers.

Every venue's normalisation uses these, so a price, a time or an identifier is judged the same
way whichever venue sent it. Each raises :class:`ValueError` (or returns the problem in words)
naming the field, never quoting a secret.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re


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


def printable_json(body: bytes) -> bool:
    """Whether every string in the JSON document `body` is printable ASCII, judged on the bytes
    without looking at the strings: true when they are ASCII with no backslash and no DEL, because
    JSON allows no raw control character below 0x20 inside a string, and any other non-printable
    character is either an escape or non-ASCII. A few scans of a page in C instead of an
    isprintable() per field of every fill; a page that fails it has its fills checked one by one."""
    return body.isascii() and b"\\" not in body and b"\x7f" not in body
