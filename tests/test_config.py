"""Config loading: the file, environment overrides, secrets, and errors that name the field.

The helpers at the top (`kalshi_pem`, `base_config`, `write_config`) are shared with test_cli.py.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from publisher.config import (
    Config,
    ConfigError,
    HttpConfig,
    KafkaConfig,
    Settings,
    env_source_name,
    fills_topic,
    load_settings,
    venue_of,
)
from publisher.secret import Secret
from tests.harness.tls import Pki

ZLL_KEY = "zll-key-SUPERSECRET-42"


@functools.cache
def kalshi_pem() -> str:
    """A real RSA private key in PEM (the Kalshi adapter's check_secret parses it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def base_config(tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config with both venues; secret files are written into `tmp_path`."""
    (tmp_path / "kalshi.pem").write_text(kalshi_pem())
    (tmp_path / "zll.key").write_text(ZLL_KEY + "\n")
    return {
        "kafka": {"bootstrap_servers": "kafka-0:9092,kafka-1:9092"},
        "sources": [
            {
                "name": "kalshi-main",
                "venue": "kalshi",
                "base_url": "https://external-api.kalshi.com/trade-api/v2",
                "api_key_id": "a952bcbe-ec3b-4b5b-b8f9-11dae589608c",
                "private_key_file": str(tmp_path / "kalshi.pem"),
            },
            {
                "name": "zll-main",
                "venue": "zll",
                "base_url": "https://staging.zerolatencylabs.com",
                "api_key_file": str(tmp_path / "zll.key"),
                "subaccount_index": 0,
            },
        ],
    }


def write_config(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    """Write `data` (a dict, or YAML text as is) to `tmp_path/config.yaml`."""
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path: Path, data: dict[str, Any] | str, environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write_config(tmp_path, data), environ or {})


def config_error(tmp_path: Path, data: dict[str, Any] | str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, environ)
    error = info.value
    assert str(error) == f"{error.field}: {error.problem}"
    assert "\n" not in str(error)
    return error


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


def kalshi(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["sources"][0]


def zll(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["sources"][1]


# --- valid configs ------------------------------------------------------------------------------


def test_full_config_every_key(tmp_path: Path, cfg: dict[str, Any]) -> None:
    (tmp_path / "pw").write_text("sasl-pw\n")
    pki = Pki(tmp_path)
    for name, path in (("ca.pem", pki.cafile), ("cert.pem", pki.client_cert), ("key.pem", pki.client_key)):
        Path(path).rename(tmp_path / name)
    cfg["kafka"] = {
        "bootstrap_servers": "kafka-0:9092",
        "topic_template": "prod.fills.{venue}",
        "dlq_topic": "prod.fills.dlq",
        "checkpoint_topic": "prod.checkpoints",
        "transactional_id_prefix": "fp-a",
        "client_id": "fp-client",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "fp",
        "sasl_password_file": str(tmp_path / "pw"),
        "sasl_password_env": None,
        "ssl_cafile": str(tmp_path / "ca.pem"),
        "ssl_certfile": str(tmp_path / "cert.pem"),
        "ssl_keyfile": str(tmp_path / "key.pem"),
        "check_crcs": False,
        "max_pending_fills": 5000,
        "topic_partitions": 12,
        "replication_factor": 3,
        "create_topics": False,
        "request_timeout_s": 15,
        "transaction_timeout_s": 120.5,
        "max_batch_fills": 1000,
    }
    cfg["http"] = {"host": "127.0.0.1", "port": 9200}
    kalshi(cfg).update(subaccount=3, poll_interval_s=0.5, lookback_s=600, page_limit=1000,
                       max_requests_per_s=5, timeout_s=20, private_key_env=None)
    zll(cfg).update(portfolio_index=2, poll_interval_s=2, lookback_s=0, page_limit=1,
                    max_requests_per_s=0.5, timeout_s=1, api_key_env=None)
    settings = load(tmp_path, cfg)
    config = settings.config
    assert config.kafka == KafkaConfig(**cfg["kafka"])
    assert config.http == HttpConfig(host="127.0.0.1", port=9200)
    k, z = config.sources
    assert (venue_of(k), k.name, k.subaccount, k.poll_interval_s, k.lookback_s, k.page_limit) == (
        "kalshi", "kalshi-main", 3, 0.5, 600, 1000)
    assert (k.max_requests_per_s, k.timeout_s, k.api_key_id) == (5, 20, "a952bcbe-ec3b-4b5b-b8f9-11dae589608c")
    assert (venue_of(z), z.subaccount_index, z.portfolio_index, z.page_limit, z.lookback_s) == ("zll", 0, 2, 1, 0)
    assert settings.sasl_password == Secret("sasl-pw")
    assert fills_topic(config.kafka, "zll") == "prod.fills.zll"


def test_defaults(tmp_path: Path, cfg: dict[str, Any]) -> None:
    settings = load(tmp_path, cfg)
    kafka = settings.config.kafka
    assert kafka.bootstrap_servers == "kafka-0:9092,kafka-1:9092"
    assert (kafka.topic_template, kafka.dlq_topic, kafka.checkpoint_topic) == (
        "fills.{venue}", "fills.dlq", "fill-publisher.checkpoints")
    assert (kafka.transactional_id_prefix, kafka.client_id) == ("fill-publisher", "fill-publisher")
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == ("PLAINTEXT", None, None)
    assert (kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile) == (None, None, None)
    assert kafka.check_crcs is True and kafka.create_topics is True
    assert (kafka.max_pending_fills, kafka.max_batch_fills) == (100_000, 50_000)
    assert (kafka.topic_partitions, kafka.replication_factor) == (6, None)
    assert (kafka.request_timeout_s, kafka.transaction_timeout_s) == (30, 60)
    assert settings.config.http == HttpConfig(host="0.0.0.0", port=9108)
    for source in settings.config.sources:
        assert (source.poll_interval_s, source.lookback_s, source.page_limit) == (1.0, 300, 200)
        assert (source.max_requests_per_s, source.timeout_s) == (10, 10)
    k, z = settings.config.sources
    assert k.subaccount is None and z.portfolio_index is None
    assert fills_topic(kafka, "kalshi") == "fills.kalshi"
    assert settings.sasl_password is None


def test_config_is_immutable(tmp_path: Path, cfg: dict[str, Any]) -> None:
    config = load(tmp_path, cfg).config
    with pytest.raises(AttributeError):
        config.kafka.bootstrap_servers = "x:1"  # type: ignore[misc]
    assert msgspec.convert(msgspec.to_builtins(config), Config) == config


# --- environment overrides ----------------------------------------------------------------------


def test_env_overrides_kafka_and_http_and_converts_types(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["http"] = {"port": 9200}
    env = {
        "FILLPUB_KAFKA__BOOTSTRAP_SERVERS": "other:9093",
        "FILLPUB_KAFKA__CHECK_CRCS": "false",
        "FILLPUB_KAFKA__REPLICATION_FACTOR": "3",
        "FILLPUB_KAFKA__TRANSACTION_TIMEOUT_S": "90.5",
        "FILLPUB_KAFKA__CLIENT_ID": "123",  # a text field keeps the text, not the int 123
        "FILLPUB_HTTP__PORT": "9300",
        "FILLPUB_HTTP__HOST": "127.0.0.1",
    }
    kafka = load(tmp_path, cfg, env).config.kafka
    http = load(tmp_path, cfg, env).config.http
    assert kafka.bootstrap_servers == "other:9093"
    assert kafka.check_crcs is False
    assert kafka.replication_factor == 3
    assert kafka.transaction_timeout_s == 90.5
    assert kafka.client_id == "123"
    assert http == HttpConfig(host="127.0.0.1", port=9300)


def test_env_override_null_unsets(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"]["replication_factor"] = 2
    kafka = load(tmp_path, cfg, {"FILLPUB_KAFKA__REPLICATION_FACTOR": "null"}).config.kafka
    assert kafka.replication_factor is None


def test_env_override_supplies_a_missing_section(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del cfg["kafka"]
    kafka = load(tmp_path, cfg, {"FILLPUB_KAFKA__BOOTSTRAP_SERVERS": "b:9092"}).config.kafka
    assert kafka.bootstrap_servers == "b:9092"


def test_env_override_of_a_source(tmp_path: Path, cfg: dict[str, Any]) -> None:
    zll(cfg)["name"] = "zll.main-2"
    assert env_source_name("zll.main-2") == "ZLL_MAIN_2"
    env = {
        "FILLPUB_SOURCES__KALSHI_MAIN__PAGE_LIMIT": "500",
        "FILLPUB_SOURCES__KALSHI_MAIN__API_KEY_ID": "12345",
        "FILLPUB_SOURCES__ZLL_MAIN_2__PORTFOLIO_INDEX": "7",
    }
    k, z = load(tmp_path, cfg, env).config.sources
    assert (k.page_limit, k.api_key_id) == (500, "12345")
    assert z.portfolio_index == 7


def test_env_secret_override_replaces_the_file_choice(tmp_path: Path, cfg: dict[str, Any]) -> None:
    env = {"FILLPUB_SOURCES__ZLL_MAIN__API_KEY_ENV": "MY_ZLL_KEY", "MY_ZLL_KEY": "from-env-key"}
    settings = load(tmp_path, cfg, env)
    assert settings.config.sources[1].api_key_file is None
    assert settings.source_secrets["zll-main"] == Secret("from-env-key")


def test_non_override_variables_are_ignored(tmp_path: Path, cfg: dict[str, Any]) -> None:
    # FILLPUB_LOG_LEVEL has no `__`; a secret's own variable may look like an override
    zll(cfg)["api_key_env"] = "FILLPUB_SECRETS__ZLL"
    del zll(cfg)["api_key_file"]
    env = {"FILLPUB_LOG_LEVEL": "DEBUG", "FILLPUB_SECRETS__ZLL": "zll-key-value", "OTHER__X": "1"}
    assert load(tmp_path, cfg, env).source_secrets["zll-main"] == Secret("zll-key-value")


@pytest.mark.parametrize(
    ("var", "problem"),
    [
        ("FILLPUB_KAFKA__BOGUS", "unknown kafka setting 'bogus'"),
        ("FILLPUB_HTTP__PROT", "unknown http setting 'prot'"),
        ("FILLPUB_METRICS__PORT", "unknown config section 'metrics'"),
        ("FILLPUB_SOURCES__NOPE__PAGE_LIMIT", "no source in the config file"),
        ("FILLPUB_SOURCES__KALSHI_MAIN__API_KEY_FILE", "unknown kalshi source setting 'api_key_file'"),
        ("FILLPUB_SOURCES__KALSHI_MAIN__VENUE", "cannot be overridden"),
        ("FILLPUB_SOURCES__KALSHI_MAIN", "expected FILLPUB_SOURCES__<NAME>__<KEY>"),
        ("FILLPUB_KAFKA__SASL_PASSWORD", "unknown kafka setting 'sasl_password'"),
    ],
)
def test_env_override_of_unknown_thing_names_the_variable(
    tmp_path: Path, cfg: dict[str, Any], var: str, problem: str
) -> None:
    error = config_error(tmp_path, cfg, {var: "1"})
    assert error.field == var
    assert problem in error.problem


def test_env_override_of_ambiguous_source_name(tmp_path: Path, cfg: dict[str, Any]) -> None:
    extra = copy.deepcopy(kalshi(cfg))
    extra["name"] = "kalshi.main"
    kalshi(cfg)["subaccount"], extra["subaccount"] = 0, 1  # one key's sources read distinct subaccounts
    cfg["sources"].append(extra)
    load(tmp_path, cfg)  # both names are fine until an override needs to tell them apart
    error = config_error(tmp_path, cfg, {"FILLPUB_SOURCES__KALSHI_MAIN__PAGE_LIMIT": "5"})
    assert error.field == "FILLPUB_SOURCES__KALSHI_MAIN__PAGE_LIMIT"
    assert "ambiguous" in error.problem and "'kalshi.main'" in error.problem


def test_env_override_is_validated_and_says_where_it_came_from(tmp_path: Path, cfg: dict[str, Any]) -> None:
    error = config_error(tmp_path, cfg, {"FILLPUB_HTTP__PORT": "99999"})
    assert error.field == "http.port"
    assert "(set by FILLPUB_HTTP__PORT)" in error.problem
    error = config_error(tmp_path, cfg, {"FILLPUB_SOURCES__KALSHI_MAIN__PAGE_LIMIT": "lots"})
    assert error.field == "sources[kalshi-main].page_limit"
    error = config_error(tmp_path, cfg, {"FILLPUB_SOURCES__ZLL_MAIN__API_KEY_FILE": str(tmp_path / "gone")})
    assert error.field == "sources[zll-main].api_key_file"
    assert "No such file" in error.problem and "FILLPUB_SOURCES__ZLL_MAIN__API_KEY_FILE" in error.problem


# --- file errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "field"),
    [("kafka", "kafka.bogus"), ("http", "http.bogus"), ("kalshi", "sources[kalshi-main].bogus"), ("top", "bogus")],
)
def test_unknown_key_rejected_naming_it(tmp_path: Path, cfg: dict[str, Any], where: str, field: str) -> None:
    target = {"kafka": cfg["kafka"], "http": cfg.setdefault("http", {}), "kalshi": kalshi(cfg), "top": cfg}[where]
    target["bogus"] = 1
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == (field, "unknown setting")


def test_inline_secret_is_refused(tmp_path: Path, cfg: dict[str, Any]) -> None:
    kalshi(cfg)["private_key"] = "INLINE-KEY-VALUE"
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[kalshi-main].private_key"
    assert "private_key_file" in error.problem
    assert "INLINE-KEY-VALUE" not in str(error)


def test_duplicate_source_names(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["sources"].append(copy.deepcopy(kalshi(cfg)))
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[2].name"
    assert "duplicate source name 'kalshi-main'" in error.problem


@pytest.mark.parametrize("name", ["Kalshi", "-kalshi", "kalshi main", ""])
def test_bad_source_name(tmp_path: Path, cfg: dict[str, Any], name: str) -> None:
    kalshi(cfg)["name"] = name
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[0].name"
    assert "regex" in error.problem


@pytest.mark.parametrize("limit", [0, 1001, "200"])
def test_page_limit_out_of_range(tmp_path: Path, cfg: dict[str, Any], limit: object) -> None:
    kalshi(cfg)["page_limit"] = limit
    assert config_error(tmp_path, cfg).field == "sources[kalshi-main].page_limit"


def test_missing_bootstrap_servers(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del cfg["kafka"]["bootstrap_servers"]
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == ("kafka.bootstrap_servers", "required setting is missing")


def test_missing_sections(tmp_path: Path, cfg: dict[str, Any]) -> None:
    assert config_error(tmp_path, "").field == "kafka"
    cfg["sources"] = []
    assert config_error(tmp_path, cfg).field == "sources"
    assert config_error(tmp_path, "- a\n- b\n").field == "config"


def test_unknown_venue(tmp_path: Path, cfg: dict[str, Any]) -> None:
    zll(cfg)["venue"] = "nasdaq"
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[zll-main].venue"
    assert "unknown venue 'nasdaq'" in error.problem


def test_source_missing_required_venue_field(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del zll(cfg)["subaccount_index"]
    assert config_error(tmp_path, cfg).field == "sources[zll-main].subaccount_index"


@pytest.mark.parametrize(
    ("template", "problem"),
    [("fills", "must contain {venue}"), ("{venue}.{region}", "only placeholder"), ("{venue!r}", "only placeholder"),
     ("fills.{venue", "expected '}'"), ("fills/{venue}", "not a valid Kafka topic name")],
)
def test_topic_template(tmp_path: Path, cfg: dict[str, Any], template: str, problem: str) -> None:
    cfg["kafka"]["topic_template"] = template
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.topic_template"
    assert problem in error.problem


def test_topics_must_not_collide(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"]["dlq_topic"] = "fills.zll"
    assert config_error(tmp_path, cfg).field == "kafka.dlq_topic"


@pytest.mark.parametrize(("key", "value"), [("security_protocol", "TLS"), ("sasl_mechanism", "GSSAPI")])
def test_enum_values(tmp_path: Path, cfg: dict[str, Any], key: str, value: str) -> None:
    cfg["kafka"][key] = value
    error = config_error(tmp_path, cfg)
    assert error.field == f"kafka.{key}"
    assert "one of:" in error.problem


def test_http_port_range(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["http"] = {"port": 0}
    assert config_error(tmp_path, cfg).field == "http.port"


def test_yaml_syntax_error_gives_position_not_content(tmp_path: Path) -> None:
    error = config_error(tmp_path, "kafka:\n  bootstrap_servers: [unclosed\nsources: SECRETISH\n")
    assert error.field == "config"
    assert "line 3, column" in error.problem
    assert "SECRETISH" not in str(error)


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, "kafka:\n  bootstrap_servers: a:1\nkafka:\n  bootstrap_servers: b:1\n")
    assert error.field == "config"
    assert "duplicate key 'kafka'" in error.problem and "line 3" in error.problem


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.yaml", {})
    assert info.value.field == "config"
    assert "No such file or directory" in info.value.problem


# --- secrets ------------------------------------------------------------------------------------


def test_secret_from_file_strips_trailing_newline(tmp_path: Path, cfg: dict[str, Any]) -> None:
    settings = load(tmp_path, cfg)
    assert settings.source_secrets["zll-main"].reveal() == ZLL_KEY
    assert settings.source_secrets["kalshi-main"].reveal() == kalshi_pem().strip()


def test_secret_from_env(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del kalshi(cfg)["private_key_file"]
    kalshi(cfg)["private_key_env"] = "KALSHI_PEM"
    del zll(cfg)["api_key_file"]
    zll(cfg)["api_key_env"] = "ZLL_KEY"
    settings = load(tmp_path, cfg, {"KALSHI_PEM": kalshi_pem(), "ZLL_KEY": "zll-from-env"})
    assert settings.source_secrets["kalshi-main"].reveal() == kalshi_pem().strip()
    assert settings.source_secrets["zll-main"] == Secret("zll-from-env")


@pytest.mark.parametrize("value", [None, "", "  \n"])
def test_secret_env_missing_or_empty(tmp_path: Path, cfg: dict[str, Any], value: str | None) -> None:
    del zll(cfg)["api_key_file"]
    zll(cfg)["api_key_env"] = "ZLL_KEY"
    error = config_error(tmp_path, cfg, {} if value is None else {"ZLL_KEY": value})
    assert error.field == "sources[zll-main].api_key_env"
    assert "ZLL_KEY" in error.problem


def test_secret_both_file_and_env(tmp_path: Path, cfg: dict[str, Any]) -> None:
    kalshi(cfg)["private_key_env"] = "KALSHI_PEM"
    error = config_error(tmp_path, cfg, {"KALSHI_PEM": kalshi_pem()})
    assert error.field == "sources[kalshi-main].private_key_file"
    assert "only one of private_key_file or private_key_env" in error.problem


def test_secret_neither_file_nor_env(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del zll(cfg)["api_key_file"]
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[zll-main].api_key_file"
    assert "api_key_env" in error.problem


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "binary"])
def test_unreadable_secret_file(tmp_path: Path, cfg: dict[str, Any], kind: str) -> None:
    path = tmp_path / "bad-secret"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_text(" \n")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfeSUPERSECRET")
    zll(cfg)["api_key_file"] = str(path)
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[zll-main].api_key_file"
    assert str(path) in error.problem
    assert "SUPERSECRET" not in str(error)


def test_invalid_kalshi_key_is_refused_without_showing_it(tmp_path: Path, cfg: dict[str, Any]) -> None:
    (tmp_path / "kalshi.pem").write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRET-123\n-----END PRIVATE KEY-----\n")
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[kalshi-main].private_key_file"
    assert "SUPERSECRET" not in str(error) and "SUPERSECRET" not in repr(error)


def test_sasl_needs_mechanism_username_and_one_password(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"].update(security_protocol="SASL_PLAINTEXT")
    assert config_error(tmp_path, cfg).field == "kafka.sasl_mechanism"
    cfg["kafka"].update(sasl_mechanism="PLAIN")
    assert config_error(tmp_path, cfg).field == "kafka.sasl_username"
    cfg["kafka"].update(sasl_username="fp")
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.sasl_password_file"
    assert "sasl_password_env" in error.problem
    cfg["kafka"].update(sasl_password_env="KAFKA_PW", sasl_password_file=str(tmp_path / "pw"))
    assert "only one" in config_error(tmp_path, cfg).problem
    del cfg["kafka"]["sasl_password_file"]
    assert config_error(tmp_path, cfg).field == "kafka.sasl_password_env"  # variable not set
    assert load(tmp_path, cfg, {"KAFKA_PW": "pw-value"}).sasl_password == Secret("pw-value")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [("sasl_username", "fp", "PLAINTEXT does not use SASL"), ("ssl_cafile", "/etc/ssl/ca.pem", "PLAINTEXT does not use TLS")],
)
def test_settings_the_protocol_would_ignore(
    tmp_path: Path, cfg: dict[str, Any], key: str, value: str, problem: str
) -> None:
    cfg["kafka"][key] = value
    error = config_error(tmp_path, cfg)
    assert (error.field, error.problem) == (f"kafka.{key}", f"set, but security_protocol {problem}")


def test_missing_ca_file(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"].update(security_protocol="SSL", ssl_cafile=str(tmp_path / "ca.pem"))
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.ssl_cafile"
    assert "No such file or directory" in error.problem


def test_client_cert_and_key_go_together(tmp_path: Path, cfg: dict[str, Any]) -> None:
    pki = Pki(tmp_path)
    Path(pki.client_cert).rename(tmp_path / "cert.pem")
    cfg["kafka"].update(security_protocol="SSL", ssl_certfile=str(tmp_path / "cert.pem"))
    assert config_error(tmp_path, cfg).field == "kafka.ssl_keyfile"
    cfg["kafka"]["ssl_keyfile"] = str(tmp_path / "key.pem")
    error = config_error(tmp_path, cfg)
    assert (error.field, "No such file" in error.problem) == ("kafka.ssl_keyfile", True)
    Path(pki.client_key).rename(tmp_path / "key.pem")
    assert load(tmp_path, cfg).config.kafka.ssl_keyfile == str(tmp_path / "key.pem")


def test_secrets_never_in_repr_or_errors(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"].update(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                        sasl_password_env="KAFKA_PW")
    settings = load(tmp_path, cfg, {"KAFKA_PW": "kafka-SUPERSECRET-pw"})
    pem_body = kalshi_pem().splitlines()[1]
    for text in (repr(settings), str(settings), repr(settings.source_secrets), str(settings.config)):
        for secret in (ZLL_KEY, "kafka-SUPERSECRET-pw", pem_body):
            assert secret not in text
    # an error raised after the secrets were read names fields only
    cfg["kafka"]["ssl_cafile"] = str(tmp_path / "missing-ca.pem")
    error = config_error(tmp_path, cfg, {"KAFKA_PW": "kafka-SUPERSECRET-pw"})
    assert error.field == "kafka.ssl_cafile"
    assert "SUPERSECRET" not in str(error) and pem_body not in str(error)


@pytest.mark.parametrize(
    ("venue_entry", "field"),
    [
        ({"venue": "kalshi", "subaccount": 64}, "subaccount"),
        ({"venue": "kalshi", "subaccount": -1}, "subaccount"),
        ({"venue": "zll", "subaccount_index": -1}, "subaccount_index"),
        ({"venue": "zll", "subaccount_index": 0, "portfolio_index": -2}, "portfolio_index"),
    ],
)
def test_account_indices_are_range_checked(venue_entry: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"name": "acct", "base_url": "https://venue.invalid"}
    if venue_entry["venue"] == "kalshi":
        base.update(api_key_id="k", private_key_env="UNUSED")
    else:
        base.update(api_key_env="UNUSED", subaccount_index=0)
    raw = {"kafka": {"bootstrap_servers": "k:9092"}, "sources": [{**base, **venue_entry}]}
    with pytest.raises(msgspec.ValidationError, match=field):
        msgspec.convert(raw, Config)
