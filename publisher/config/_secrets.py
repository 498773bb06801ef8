"""Secrets and the files a config names: read, bounded, checked offline.

A secret comes from a file (`<name>_file`) or an environment variable (`<name>_env`), never from
the config itself, and is checked with its venue's `check_secret` (through the venue registry).
Files are read only when they are regular files, up to a limit, so a FIFO, a device or an endless
file cannot hang the service at start. Relative paths are relative to the working directory, as
they are for the Kafka client that later opens the TLS files.
"""

from __future__ import annotations

import os
import ssl
import stat
import types
from collections.abc import Mapping
from dataclasses import dataclass

from publisher.config._errors import ConfigError, child, one_of_problem
from publisher.config._schema import SASL_PROTOCOLS, TLS_PROTOCOLS, Config, KafkaConfig, secret_fields, venue_of
from publisher.secret import Secret
from publisher.venues import VENUES
from publisher.venues.transport import proxy_problem

#: the largest secret file (an RSA-4096 key in PEM is ~3.3 KB)
MAX_SECRET_BYTES = 1 << 20
#: the largest TLS file (a bundle of every public root CA is ~300 KB)
MAX_TLS_FILE_BYTES = 16 << 20

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


@dataclass(frozen=True)
class Settings:
    """A validated config plus every secret it names, read and checked."""

    config: Config
    source_secrets: Mapping[str, Secret]  # by source name
    sasl_password: Secret | None
    #: the password of an encrypted Kafka client key (kafka.ssl_key_password_*)
    ssl_key_password: Secret | None = None


def resolve(config: Config, environ: Mapping[str, str]) -> Settings:
    """Read and check every secret and TLS file the validated config names."""
    secrets: dict[str, Secret] = {}
    for source in config.sources:
        file_field, env_field = secret_fields(source)
        prefix = f"sources[{source.name}]"
        _check_one_of(prefix, type(source).secret_field, getattr(source, file_field), getattr(source, env_field))
        secret, field = _read_secret(child(prefix, file_field), getattr(source, file_field),
                                     child(prefix, env_field), getattr(source, env_field), environ)
        _check_venue_secret(venue_of(source), secret, field)
        secrets[source.name] = secret
        problem = proxy_problem(source.base_url)
        if problem is not None:
            raise ConfigError(child(prefix, "base_url"), problem)
    sasl_password, ssl_key_password = resolve_kafka(config.kafka, environ)
    return Settings(config=config, source_secrets=types.MappingProxyType(secrets), sasl_password=sasl_password,
                    ssl_key_password=ssl_key_password)


def resolve_kafka(kafka: KafkaConfig, environ: Mapping[str, str]) -> tuple[Secret | None, Secret | None]:
    """The SASL password and the SSL key password the `kafka:` section names, read; TLS files checked."""
    sasl_password: Secret | None = None
    if kafka.security_protocol in SASL_PROTOCOLS:
        sasl_password, _ = _read_secret("kafka.sasl_password_file", kafka.sasl_password_file,
                                        "kafka.sasl_password_env", kafka.sasl_password_env, environ)
    ssl_key_password: Secret | None = None
    if kafka.security_protocol in TLS_PROTOCOLS:
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            _check_readable(f"kafka.{field}", getattr(kafka, field))
        if kafka.ssl_key_password_file is not None or kafka.ssl_key_password_env is not None:
            ssl_key_password, _ = _read_secret("kafka.ssl_key_password_file", kafka.ssl_key_password_file,
                                               "kafka.ssl_key_password_env", kafka.ssl_key_password_env, environ)
        _check_tls_files(kafka, ssl_key_password)
    return sasl_password, ssl_key_password


def _check_one_of(prefix: str, base: str, from_file: str | None, from_env: str | None) -> None:
    problem = one_of_problem(base, from_file, from_env)
    if problem is not None:
        raise ConfigError(child(prefix, f"{base}_file"), problem)


def _read_secret(
    file_field: str, path: str | None, env_field: str, env_name: str | None, environ: Mapping[str, str]
) -> tuple[Secret, str]:
    """Read a secret from its file or variable; returns it and the field it came from."""
    if path is not None:
        value = read_text(file_field, path, MAX_SECRET_BYTES).strip()
        if not value:
            raise ConfigError(file_field, f"{path!r} is empty")
        return Secret(value), file_field
    assert env_name is not None  # the struct's or _check_one_of's check ran first
    value = environ.get(env_name, "").strip()
    if not value:
        state = "is empty" if env_name in environ else "is not set"
        raise ConfigError(env_field, f"environment variable {env_name} {state}")
    return Secret(value), env_field


def _check_venue_secret(venue: str, secret: Secret, field: str) -> None:
    try:
        VENUES[venue].check_secret(secret)
    except ValueError as exc:
        # the adapter promises a safe message; mask the value anyway in case it slipped in
        raise ConfigError(field, f"invalid {venue} secret: {str(exc).replace(secret.reveal(), '***')}") from None
    except Exception as exc:  # noqa: BLE001 - a library's own message might quote key material
        raise ConfigError(field, f"invalid {venue} secret ({type(exc).__name__})") from None


def _check_readable(field: str, path: str | None) -> None:
    if path is None:
        return
    # read, not os.access: it also catches directories, FIFOs and devices and gives the OS's reason
    read_file(field, path, MAX_TLS_FILE_BYTES)


def _check_tls_files(kafka: KafkaConfig, key_password: Secret | None = None) -> None:
    """Load the TLS files the way the Kafka client will, so a file that is readable but holds no
    certificate or key is a config error now rather than an endless "kafka not reachable" later."""
    context = ssl.create_default_context()
    if kafka.ssl_cafile is not None:
        try:
            context.load_verify_locations(cafile=kafka.ssl_cafile)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError("kafka.ssl_cafile", f"no usable CA certificate in {kafka.ssl_cafile!r} "
                                                  f"({type(exc).__name__})") from None
    if kafka.ssl_certfile is not None:
        try:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile,
                                    key_password.reveal() if key_password is not None else None)
        except (ssl.SSLError, ValueError) as exc:
            # the library's text can quote neither key nor file content; the class name is enough
            raise ConfigError("kafka.ssl_certfile", f"client certificate and key do not load "
                                                    f"({type(exc).__name__})") from None


def read_file(field: str, path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), at most `limit` of them;
    :class:`ConfigError` for `field` otherwise. A FIFO, a device or an endless file would hang
    or exhaust the service at start, so only regular files are read."""
    shown = repr(os.fspath(path))
    try:
        # non-blocking: opening a FIFO nobody writes to would wait forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(field, f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise ConfigError(field, f"cannot read {shown}: it is {kind}, not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ConfigError(field, f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(field, f"cannot read {shown}: larger than {limit} bytes")
    return data


def read_text(field: str, path: str | os.PathLike[str], limit: int) -> str:
    """:func:`read_file`, decoded as UTF-8."""
    try:
        return read_file(field, path, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(field, f"{os.fspath(path)!r} is not UTF-8 text") from None
