"""Kalshi Trade API v2 fills adapter (written next)."""

from __future__ import annotations

from publisher.venues.base import SourceConfig


class KalshiSource(SourceConfig, tag="kalshi", kw_only=True):
    """A Kalshi account: key id plus RSA private key (PEM) from a file or env var."""

    secret_field = "private_key"

    api_key_id: str
    private_key_file: str | None = None
    private_key_env: str | None = None
    subaccount: int | None = None


SOURCE_CONFIG = KalshiSource
