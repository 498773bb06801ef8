"""The venue errors: each carries the contract's reason, and the finer kind its log line names."""

from __future__ import annotations

import pytest

from publisher.metrics import POLL_ERROR_REASONS
from publisher.venues.errors import PagingError, ResponseTooLarge, VenueDecodeError, VenueError


@pytest.mark.parametrize(("error", "reason", "kind"), [
    (VenueError("http_5xx", "HTTP 500"), "http_5xx", None),
    (VenueDecodeError("not JSON"), "decode", "unreadable answer"),
    (ResponseTooLarge("too big"), "decode", "answer too large"),
    (PagingError("a cursor came back"), "decode", "paging does not end"),
])
def test_every_error_has_a_contract_reason(error: VenueError, reason: str, kind: str | None) -> None:
    assert error.reason == reason and error.reason in POLL_ERROR_REASONS
    assert error.kind == kind


def test_retry_after_is_carried() -> None:
    assert VenueError("http_429", "slow down", retry_after_s=3.0).retry_after_s == 3.0
    assert VenueError("timeout", "no answer").retry_after_s is None


def test_a_too_large_answer_is_an_unreadable_one() -> None:
    assert isinstance(ResponseTooLarge("x"), VenueDecodeError)
