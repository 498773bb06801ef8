"""The venue errors: each carries the contract's reason, and the finer kind its log line names."""

from __future__ import annotations

from typing import get_args

import pytest

from publisher.metrics import POLL_ERROR_REASONS, POLL_FAILURE_KINDS
from publisher.venues.errors import (
    ErrorReason,
    FailureKind,
    PagingError,
    ResponseTooLarge,
    VenueDecodeError,
    VenueError,
)


@pytest.mark.parametrize(("error", "reason", "summary", "kind"), [
    (VenueError("http_5xx", "HTTP 500"), "http_5xx", None, "unreadable_answer"),
    (VenueError("decode", "an adapter's own"), "decode", None, "unreadable_answer"),
    (VenueDecodeError("not JSON"), "decode", "unreadable answer", "unreadable_answer"),
    (ResponseTooLarge("too big"), "decode", "answer too large", "answer_too_large"),
    (PagingError("a cursor came back"), "decode", "paging does not end", "paging_loop"),
])
def test_every_error_has_a_contract_reason_and_a_kind(error: VenueError, reason: str, summary: str | None,
                                                      kind: str) -> None:
    assert error.reason == reason and error.reason in POLL_ERROR_REASONS
    assert error.summary == summary
    assert error.kind == kind and error.kind in POLL_FAILURE_KINDS  # counted under it when reason is decode


def test_retry_after_is_carried() -> None:
    assert VenueError("http_429", "slow down", retry_after_s=3.0).retry_after_s == 3.0
    assert VenueError("timeout", "no answer").retry_after_s is None


def test_a_too_large_answer_is_an_unreadable_one() -> None:
    assert isinstance(ResponseTooLarge("x"), VenueDecodeError)


def test_the_metric_label_sets_are_the_types() -> None:
    assert POLL_ERROR_REASONS == get_args(ErrorReason)
    assert POLL_FAILURE_KINDS == get_args(FailureKind)
