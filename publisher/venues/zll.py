"""Zero Latency Labs fills adapter (written next)."""

from __future__ import annotations

from publisher.venues.base import SourceConfig


class ZllSource(SourceConfig, tag="zll", kw_only=True):
    """A ZLL subaccount (optionally one portfolio), read with an API key from a file or env var."""

    secret_field = "api_key"

    api_key_file: str | None = None
    api_key_env: str | None = None
    subaccount_index: int
    portfolio_index: int | None = None


SOURCE_CONFIG = ZllSource
