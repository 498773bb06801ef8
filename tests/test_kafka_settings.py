"""Kafka client settings operators expect: compression, producer pass-through, an SSL key password.

The config accepts, refuses (naming the field) and maps them into aiokafka's keyword arguments; an
encrypted client key loads with its password into the SSL context. A publisher running with zstd
and a pass-through option is in tests/test_ops_cli.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from test_config import base_config, config_error, load

from publisher.config import PRODUCER_OPTIONS, KafkaConfig
from publisher.kafkaclient import client_options, consumer_options, producer_options
from tests.harness.tls import Pki


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_compression_type_loads_and_reaches_the_producer(tmp_path: Path, cfg: dict[str, Any], codec: str) -> None:
    cfg["kafka"]["compression_type"] = codec
    kafka = load(tmp_path, cfg).config.kafka
    options = producer_options(kafka, None, linger_ms=0)
    assert options.get("compression_type") == (None if codec == "none" else codec)
    # consumers and the admin client never get producer-only settings
    assert "compression_type" not in consumer_options(kafka, None)


def test_unknown_compression_type_names_the_field(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"]["compression_type"] = "brotli"
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.compression_type"
    assert "zstd" in error.problem  # the choices are listed


def test_producer_options_pass_through_over_the_service_defaults(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"]["producer_options"] = {"linger_ms": 5, "max_batch_size": 262144}
    kafka = load(tmp_path, cfg).config.kafka
    options = producer_options(kafka, None, linger_ms=0, max_batch_size=1048576, transactional_id="t")
    assert options["linger_ms"] == 5 and options["max_batch_size"] == 262144
    assert options["transactional_id"] == "t"


@pytest.mark.parametrize(("options", "field"), [
    ({"lingerms": 5}, "kafka.producer_options.lingerms"),
    ({"transactional_id": 1}, "kafka.producer_options.transactional_id"),
    ({"acks": 1}, "kafka.producer_options.acks"),
    ({"linger_ms": -1}, "kafka.producer_options.linger_ms"),
    ({"linger_ms": "5"}, "kafka.producer_options.linger_ms"),
])
def test_producer_option_typo_or_unsafe_setting_is_a_config_error(
    tmp_path: Path, cfg: dict[str, Any], options: dict[str, Any], field: str
) -> None:
    cfg["kafka"]["producer_options"] = options
    assert config_error(tmp_path, cfg).field == field


def test_values_schema_allows_exactly_the_producer_options() -> None:
    import json

    schema = json.loads((Path(__file__).resolve().parent.parent / "helm/fill-publisher/values.schema.json").read_text())
    kafka = schema["properties"]["config"]["properties"]["kafka"]["properties"]
    assert set(kafka["producer_options"]["properties"]) == set(PRODUCER_OPTIONS)
    assert kafka["compression_type"]["enum"] == ["none", "gzip", "snappy", "lz4", "zstd"]


def _encrypted_client_key(pki: Pki, tmp_path: Path, password: str) -> str:
    key = serialization.load_pem_private_key(Path(pki.client_key).read_bytes(), password=None)
    path = tmp_path / "client-encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(password.encode())))
    return str(path)


def test_ssl_key_password_decrypts_the_client_key(tmp_path: Path, cfg: dict[str, Any]) -> None:
    pki = Pki(tmp_path)
    password = "key-Pa55-never-shown-3c1d"
    (tmp_path / "key-password").write_text(password + "\n")
    cfg["kafka"].update(security_protocol="SSL", ssl_cafile=pki.cafile, ssl_certfile=pki.client_cert,
                        ssl_keyfile=_encrypted_client_key(pki, tmp_path, password),
                        ssl_key_password_file=str(tmp_path / "key-password"))
    settings = load(tmp_path, cfg)
    assert settings.ssl_key_password is not None and settings.ssl_key_password.reveal() == password
    assert password not in repr(settings)
    context = client_options(settings.config.kafka, None, settings.ssl_key_password)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    # from the environment as well, naming the variable
    del cfg["kafka"]["ssl_key_password_file"]
    cfg["kafka"]["ssl_key_password_env"] = "KAFKA_KEY_PASSWORD"
    from_env = load(tmp_path, cfg, {"KAFKA_KEY_PASSWORD": password}).ssl_key_password
    assert from_env is not None and from_env.reveal() == password


def test_wrong_or_missing_ssl_key_password_is_a_config_error(tmp_path: Path, cfg: dict[str, Any]) -> None:
    pki = Pki(tmp_path)
    cfg["kafka"].update(security_protocol="SSL", ssl_cafile=pki.cafile, ssl_certfile=pki.client_cert,
                        ssl_keyfile=_encrypted_client_key(pki, tmp_path, "right-password"))
    (tmp_path / "key-password").write_text("wrong-password\n")
    cfg["kafka"]["ssl_key_password_file"] = str(tmp_path / "key-password")
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.ssl_certfile" and "wrong-password" not in str(error)
    cfg["kafka"]["ssl_key_password_env"] = "X"
    assert config_error(tmp_path, cfg).field == "kafka.ssl_key_password_file"  # both halves given
    del cfg["kafka"]["ssl_key_password_env"]
    cfg["kafka"]["ssl_key_password"] = "inline"
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.ssl_key_password" and "never inline" in error.problem


def test_ssl_key_password_without_tls_is_refused(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["kafka"]["ssl_key_password_env"] = "X"
    assert config_error(tmp_path, cfg).field == "kafka.ssl_key_password_env"


def test_kafka_config_defaults() -> None:
    kafka = KafkaConfig(bootstrap_servers="k:9092")
    assert kafka.compression_type == "none" and kafka.producer_options == {}
