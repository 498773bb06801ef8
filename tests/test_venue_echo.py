"""A venue is one module: the echo venue (tests/venue_echo.py), registered by these tests only,
is configured, overridden, checked and polled like Kalshi and ZLL without any product file naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from publisher.config import ConfigError, Settings, fills_topic, load_settings, venue_of
from publisher.metrics import POLL_ERROR_REASONS
from publisher.secret import Secret
from publisher.venues import VENUES
from publisher.venues.errors import VenueError
from publisher.venues.registry import VenueSpec
from tests import venue_echo
from tests.test_config import write_config

REPO = Path(__file__).resolve().parent.parent
TOKEN = "echo-SUPERSECRET-token"
NOW_NS = 1_795_300_000_000_000_000


@pytest.fixture
def echo() -> Iterator[VenueSpec[venue_echo.EchoSource]]:
    with venue_echo.registered() as venue:
        yield venue


def echo_config(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "echo.token").write_text(TOKEN + "\n")
    return {
        "kafka": {"bootstrap_servers": "k:9092"},
        "sources": [{"name": "echo-one", "venue": "echo", "base_url": "https://echo.invalid/v1",
                     "token_file": str(tmp_path / "echo.token"), "desk": "rates"}],
    }


def load(tmp_path: Path, cfg: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write_config(tmp_path, cfg), environ or {})


def config_error(tmp_path: Path, cfg: dict[str, Any], environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, cfg, environ)
    return info.value


def test_an_unregistered_venue_is_unknown(tmp_path: Path) -> None:
    error = config_error(tmp_path, echo_config(tmp_path))
    assert (error.field, error.problem) == ("sources[echo-one].venue", "unknown venue 'echo' (known: kalshi, zll)")


def test_a_registered_venue_loads_from_the_file(tmp_path: Path, echo: VenueSpec[Any]) -> None:
    settings = load(tmp_path, echo_config(tmp_path))
    (source,) = settings.config.sources
    assert isinstance(source, venue_echo.EchoSource) and source.desk == "rates"
    assert VENUES.of(source) is echo and venue_of(source) == "echo"
    assert settings.source_secrets["echo-one"] == Secret(TOKEN)
    assert fills_topic(settings.config.kafka, venue_of(source)) == "fills.echo"


def test_environment_overrides_reach_a_registered_venue(tmp_path: Path, echo: VenueSpec[Any]) -> None:
    env = {"FILLPUB_SOURCES__ECHO_ONE__DESK": "credit", "FILLPUB_SOURCES__ECHO_ONE__TOKEN_ENV": "ECHO_TOKEN",
           "ECHO_TOKEN": "echo-from-env", "FILLPUB_SOURCES__ECHO_ONE__PAGE_LIMIT": "50"}
    settings = load(tmp_path, echo_config(tmp_path), env)
    (source,) = settings.config.sources
    assert isinstance(source, venue_echo.EchoSource)
    assert (source.desk, source.page_limit, source.token_file) == ("credit", 50, None)  # the env's half wins
    assert settings.source_secrets["echo-one"] == Secret("echo-from-env")
    error = config_error(tmp_path, echo_config(tmp_path), {"FILLPUB_SOURCES__ECHO_ONE__BOGUS": "1"})
    assert (error.field, error.problem) == ("FILLPUB_SOURCES__ECHO_ONE__BOGUS", "unknown echo source setting 'bogus'")


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"desk": None}, "sources[echo-one].desk", "required setting is missing"),
        ({"token": "echo-inline"}, "sources[echo-one].token", "secrets are never inline: use token_file or token_env"),
        ({"token_env": "ECHO_TOKEN"}, "sources[echo-one].token_file", "give only one of token_file or token_env"),
        ({"desk": 5}, "sources[echo-one].desk", "expected `str`, got `int`"),
    ],
)
def test_a_registered_venue_is_validated_like_the_others(
    tmp_path: Path, echo: VenueSpec[Any], change: dict[str, Any], field: str, problem: str
) -> None:
    cfg = echo_config(tmp_path)
    source = cfg["sources"][0]
    for key, value in change.items():
        if value is None:
            del source[key]
        else:
            source[key] = value
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == (field, problem)


def test_the_secret_is_checked_by_the_venue(tmp_path: Path, echo: VenueSpec[Any]) -> None:
    cfg = echo_config(tmp_path)
    (tmp_path / "echo.token").write_text("SUPERSECRET-without-prefix\n")
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == ("sources[echo-one].token_file", "invalid echo secret: an echo token "
                                                                            "starts with 'echo-'")
    assert "SUPERSECRET" not in str(error)


def test_a_registered_venue_has_a_fills_topic(tmp_path: Path, echo: VenueSpec[Any]) -> None:
    cfg = echo_config(tmp_path)
    cfg["kafka"]["dlq_topic"] = "fills.echo"
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == ("kafka.dlq_topic", "'fills.echo' is also a fills topic (topic_template)")


def check_config(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`fill-publisher check-config` in a process that registered the echo venue first."""
    launcher = ("import sys; from publisher.venues import VENUES; from tests import venue_echo; "
                "VENUES.register(venue_echo.VENUE); from publisher.cli import main; main()")
    return subprocess.run([sys.executable, "-c", launcher, "check-config", "--config", str(write_config(tmp_path, cfg))],
                          cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if not k.startswith("FILLPUB_")})


def test_check_config_of_a_registered_venue(tmp_path: Path) -> None:
    result = check_config(tmp_path, echo_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "echo-one: venue=echo base_url=https://echo.invalid/v1 token_file=" in result.stdout
    assert "(secret ok, echo token)" in result.stdout and "topics: fills.echo;" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    cfg = echo_config(tmp_path)
    (tmp_path / "echo.token").write_text("not-an-echo-token\n")
    result = check_config(tmp_path, cfg)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["fill-publisher: config error: sources[echo-one].token_file: invalid echo "
                                          "secret: an echo token starts with 'echo-'"]


def echo_venue(requests: list[httpx.Request], status: int = 200) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        fills = [
            {"id": "e-1", "order": "o-1", "symbol": "UST10Y", "side": "buy", "px": "99.5000", "qty": "10",
             "ts_ns": NOW_NS - 5_000_000_000},
            {"id": "e-2", "order": "o-2", "symbol": "UST2Y", "side": "sell", "px": "not-a-price", "qty": "1",
             "ts_ns": NOW_NS - 4_000_000_000},
        ]
        return httpx.Response(status, content=json.dumps({"fills": fills}).encode())

    return httpx.MockTransport(answer)


async def test_a_registered_venue_polls_into_fill_events(tmp_path: Path, echo: VenueSpec[Any]) -> None:
    settings = load(tmp_path, echo_config(tmp_path))
    (source,) = settings.config.sources
    requests: list[httpx.Request] = []
    counted: list[int] = []
    adapter = VENUES.of(source).adapter(source, settings.source_secrets[source.name], echo_venue(requests),
                                        lambda: counted.append(1))
    result = await adapter.fetch(NOW_NS - 60_000_000_000, None, lambda: NOW_NS)
    (fill,) = result.fills
    assert (fill.venue, fill.source, fill.fill_id, fill.instrument, fill.side) == ("echo", "echo-one", "e-1", "UST10Y", "buy")
    assert (fill.price, fill.quantity, fill.observed_at_ns) == ("99.5", "10", NOW_NS)
    (invalid,) = result.invalid
    assert invalid.error == "px is not a decimal number: 'not-a-price'"
    assert requests[0].headers["Authorization"] == f"Bearer {TOKEN}" and counted == [1]
    assert requests[0].url.params["since_ns"] == str(NOW_NS - 60_000_000_000)


async def test_a_registered_venues_errors_have_the_contracts_reasons(tmp_path: Path, echo: VenueSpec[Any]) -> None:
    settings = load(tmp_path, echo_config(tmp_path))
    (source,) = settings.config.sources
    adapter = echo.adapter(source, settings.source_secrets[source.name], echo_venue([], status=503), lambda: None)
    with pytest.raises(VenueError) as info:
        await adapter.fetch(NOW_NS, None, lambda: NOW_NS)
    assert info.value.reason == "http_5xx" and info.value.reason in POLL_ERROR_REASONS
