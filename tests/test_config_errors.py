"""Config errors come from the loader's own walk over the schema, not from msgspec's wording.

msgspec's text may change with any release; here every ValidationError it raises says something
else entirely, and each error still names the right field and, where the loader builds the
message itself, the same problem. Only the problem of one refused value is msgspec's own text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from publisher.config import ConfigError, KafkaConfig, SettingProblem, load_kafka_settings
from tests.test_config import base_config, config_error, kalshi, zll

REWORDED = "something else entirely"


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


@pytest.fixture
def reworded(monkeypatch: pytest.MonkeyPatch) -> None:
    real = msgspec.convert

    def convert(*args: Any, **kwargs: Any) -> Any:
        try:
            return real(*args, **kwargs)
        except msgspec.ValidationError:
            raise msgspec.ValidationError(REWORDED) from None

    monkeypatch.setattr(msgspec, "convert", convert)


def setting(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        target = {"kafka": cfg["kafka"], "kalshi": kalshi(cfg), "zll": zll(cfg), "top": cfg}[section]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return change


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (setting("kalshi", "page_limit", 0), "sources[kalshi-main].page_limit", REWORDED),
        (setting("kalshi", "page_limit", "200"), "sources[kalshi-main].page_limit", REWORDED),
        (setting("zll", "portfolio_index", -2), "sources[zll-main].portfolio_index", REWORDED),
        (setting("kafka", "max_record_bytes", 1), "kafka.max_record_bytes", REWORDED),
        (setting("top", "http", {"port": 0}), "http.port", REWORDED),
        (setting("top", "http", 5), "http", REWORDED),
        (setting("top", "sources", []), "sources", REWORDED),
        (setting("kalshi", "name", "Bad Name"), "sources[0].name", REWORDED),
        (setting("kafka", "bootstrap_servers", ...), "kafka.bootstrap_servers", "required setting is missing"),
        (setting("zll", "subaccount_index", ...), "sources[zll-main].subaccount_index", "required setting is missing"),
        (setting("zll", "venue", ...), "sources[zll-main].venue", "required setting is missing"),
        (setting("kafka", "bogus", 1), "kafka.bogus", "unknown setting"),
        (setting("top", 1, 1), "1", "unknown setting"),
        (setting("kalshi", "private_key", "x"), "sources[kalshi-main].private_key",
         "secrets are never inline: use private_key_file or private_key_env"),
        (setting("zll", "venue", "nasdaq"), "sources[zll-main].venue", "unknown venue 'nasdaq' (known: kalshi, zll)"),
        (setting("kafka", "security_protocol", "TLS"), "kafka.security_protocol",
         "invalid value 'TLS' (one of: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"),
        (setting("kafka", "sasl_mechanism", "GSSAPI"), "kafka.sasl_mechanism",
         "invalid value 'GSSAPI' (one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"),
        (setting("kafka", "topic_template", "fills"), "kafka.topic_template", "must contain {venue}"),
        (setting("kafka", "producer_options", {"acks": 1}), "kafka.producer_options.acks",
         "unknown or not settable here (allowed: linger_ms, max_batch_size, metadata_max_age_ms, retry_backoff_ms, "
         "connections_max_idle_ms)"),
        (lambda cfg: cfg["sources"].append(dict(zll(cfg))), "sources[2].name",
         "duplicate source name 'zll-main' (also sources[1])"),
    ],
)
def test_fields_and_messages_do_not_depend_on_msgspecs_wording(
    tmp_path: Path, cfg: dict[str, Any], reworded: None, change: Callable[[dict[str, Any]], None], field: str,
    problem: str
) -> None:
    change(cfg)
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == (field, problem)


def test_an_override_is_named_whatever_msgspec_says(tmp_path: Path, cfg: dict[str, Any], reworded: None) -> None:
    error = config_error(tmp_path, cfg, {"FILLPUB_HTTP__PORT": "99999"})
    assert (error.field, error.problem) == ("http.port", f"{REWORDED} (set by FILLPUB_HTTP__PORT)")


def test_the_kafka_section_alone_is_named_whatever_msgspec_says(reworded: None) -> None:
    with pytest.raises(ConfigError) as info:
        load_kafka_settings({"bootstrap_servers": "k:9092", "max_pending_fills": 0}, {})
    assert (info.value.field, info.value.problem) == ("kafka.max_pending_fills", REWORDED)
    with pytest.raises(ConfigError) as info:
        load_kafka_settings({"bootstrap_servers": "k:9092", "sasl_username": "u"}, {})
    assert info.value.field == "kafka.sasl_username"


def test_a_struct_check_is_structured_and_still_a_value_error() -> None:
    # built directly (tests, the demo) the struct raises what it always raised: a ValueError
    # whose text starts with the field, which msgspec.convert reports with its own path
    with pytest.raises(SettingProblem) as info:
        KafkaConfig(bootstrap_servers="a:1,,b:2")
    assert isinstance(info.value, ValueError)
    assert (info.value.field, str(info.value)) == ("bootstrap_servers", f"bootstrap_servers: {info.value.problem}")
    with pytest.raises(msgspec.ValidationError, match=r"^bootstrap_servers: must be a comma-separated"):
        msgspec.convert({"bootstrap_servers": " "}, KafkaConfig)
