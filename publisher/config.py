"""The service's configuration: a YAML file, overridden by `FILLPUB_*` environment variables.

:func:`load_settings` reads the file, applies the environment overrides, decodes and validates the
result into :class:`Config`, reads every secret (from a file or an environment variable, never
inline) and checks it offline with the venue's `check_secret`. Whatever is wrong comes back as one
:class:`ConfigError` naming the field (`kafka.bootstrap_servers`, `sources[kalshi-main].page_limit`)
so the CLI can print one line and exit 2.

Environment overrides (they win over the file; values are parsed as YAML scalars, so `9108` is an
int, `true` a bool and `null` unsets an optional setting, then validated like the file):

- `FILLPUB_KAFKA__<KEY>` and `FILLPUB_HTTP__<KEY>`, e.g. `FILLPUB_KAFKA__BOOTSTRAP_SERVERS`.
- `FILLPUB_SOURCES__<NAME>__<KEY>` for a source defined in the file, where NAME is the source name
  upper-cased with `-` and `.` turned into `_` (`kalshi-main` -> `KALSHI_MAIN`), e.g.
  `FILLPUB_SOURCES__KALSHI_MAIN__PAGE_LIMIT=500`. Sources themselves are only defined in the file;
  `name` and `venue` cannot be overridden. If two sources map to the same NAME, overriding it is an
  error (rename one source).
- Overriding one half of a secret pair (`*_file` or `*_env`) drops the other half given by the file,
  so `FILLPUB_SOURCES__ZLL_MAIN__API_KEY_ENV=ZLL_KEY` works whatever the file said.
- A variable of that shape for an unknown section, source or key is an error naming the variable.
  `FILLPUB_*` variables without `__` (e.g. `FILLPUB_LOG_LEVEL`) are not config overrides, and nor
  are variables the config names as a secret's `*_env`.

Relative paths (secrets, TLS files) are relative to the working directory, as they are for the Kafka
client that later opens the TLS files.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import string
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml

from publisher.secret import Secret
from publisher.venues import SOURCE_CONFIG_TYPES, VENUES
from publisher.venues.base import SOURCE_NAME_PATTERN, SourceConfig
from publisher.venues.fields import parse_rfc3339_ns
from publisher.venues.transport import proxy_problem

ENV_PREFIX = "FILLPUB_"

#: Kafka topic names: the broker's own rule (legal characters, at most 249 of them)
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]

#: producer settings `kafka.producer_options` may pass to aiokafka, with their lower bounds; the
#: rest are set by the service itself (transactions, idempotence, acks, timeouts) or by own keys
PRODUCER_OPTIONS: Mapping[str, int] = types.MappingProxyType({
    "linger_ms": 0,
    "max_batch_size": 1024,
    "metadata_max_age_ms": 1000,
    "retry_backoff_ms": 1,
    "connections_max_idle_ms": 1000,
})

_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


class ConfigError(Exception):
    """The configuration (or a secret it names) is unusable.

    `field` names the setting (`kafka.ssl_cafile`, `sources[kalshi-main].private_key_file`,
    `FILLPUB_HTTP__PROT` for a bad override, `config` for the file itself); `str()` is the one-line
    `<field>: <problem>`. Never carries a secret or any file content.
    """

    def __init__(self, field: str, problem: str):
        # one line, whatever a library put into the problem text
        self.field = field
        self.problem = " ".join(problem.split())
        super().__init__(f"{field}: {self.problem}")


def _check_topic(field: str, topic: str) -> None:
    if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
        raise ValueError(f"{field}: {topic!r} is not a valid Kafka topic name ([a-zA-Z0-9._-], at most 249)")


class KafkaConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The `kafka:` section: where and how fills, dead letters and checkpoints are written."""

    bootstrap_servers: str
    topic_template: str = "fills.{venue}"
    dlq_topic: str = "fills.dlq"
    checkpoint_topic: str = "fill-publisher.checkpoints"
    transactional_id_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "fill-publisher"
    client_id: Annotated[str, msgspec.Meta(min_length=1)] = "fill-publisher"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password_file: str | None = None
    sasl_password_env: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: the password of an encrypted ssl_keyfile: a secret, from a file or a variable
    ssl_key_password_file: str | None = None
    ssl_key_password_env: str | None = None
    #: producer record-batch compression (snappy, lz4 and zstd come from cramjam, a dependency)
    compression_type: CompressionType = "none"
    #: further AIOKafkaProducer settings, by aiokafka's names; only PRODUCER_OPTIONS are accepted
    producer_options: dict[str, Any] = msgspec.field(default_factory=dict)
    #: librdkafka's mock broker writes transaction markers with CRC 0; only tests turn this off
    check_crcs: bool = True
    #: fills fetched but not yet committed; above this, polling pauses (memory stays bounded while
    #: Kafka is down, and nothing fetched is dropped)
    max_pending_fills: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    #: used only when the publisher creates missing topics itself
    topic_partitions: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 6
    #: None: the broker's default.replication.factor
    replication_factor: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    create_topics: bool = True
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    transaction_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    #: fills per Kafka transaction at most; a larger backlog is committed in several transactions
    max_batch_fills: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 50_000
    #: the largest record batch the publisher sends (a record's key, value, headers and framing):
    #: at most the topics' max.message.bytes (real Kafka's default 1048588). Larger dead letters
    #: are truncated, larger checkpoints split, so no record can fail a shared transaction
    max_record_bytes: Annotated[int, msgspec.Meta(ge=65536, le=64 * 1024 * 1024)] = 1_000_000

    def __post_init__(self) -> None:
        # Messages start with the field name; load_settings turns that into the full field path.
        servers = [part.strip() for part in self.bootstrap_servers.split(",")]
        if not all(servers):
            raise ValueError("bootstrap_servers: must be a comma-separated list of host:port, without empty entries")
        self._check_topic_template()
        _check_topic("dlq_topic", self.dlq_topic)
        _check_topic("checkpoint_topic", self.checkpoint_topic)
        fills_topics = {fills_topic(self, venue) for venue in VENUES}
        for field in ("dlq_topic", "checkpoint_topic"):
            if getattr(self, field) in fills_topics:
                raise ValueError(f"{field}: {getattr(self, field)!r} is also a fills topic (topic_template)")
        if self.dlq_topic == self.checkpoint_topic:
            raise ValueError("checkpoint_topic: must differ from dlq_topic")
        self._check_sasl()
        self._check_tls()
        self._check_producer()

    def _check_producer(self) -> None:
        if self.compression_type != "none" and not _codec_available(self.compression_type):
            raise ValueError(f"compression_type: {self.compression_type} is not available (the cramjam package "
                             f"is missing)")
        for name, value in self.producer_options.items():
            if name not in PRODUCER_OPTIONS:
                raise ValueError(f"producer_options.{name}: unknown or not settable here "
                                 f"(allowed: {', '.join(PRODUCER_OPTIONS)})")
            if not isinstance(value, int) or isinstance(value, bool) or value < PRODUCER_OPTIONS[name]:
                raise ValueError(f"producer_options.{name}: must be an integer >= {PRODUCER_OPTIONS[name]}")

    def _check_topic_template(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.topic_template))
        except ValueError as exc:
            raise ValueError(f"topic_template: {exc}") from None
        placeholders = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
        if not any(name == "venue" for name, _, _ in placeholders):
            raise ValueError("topic_template: must contain {venue}")
        for name, spec, conv in placeholders:
            if name != "venue" or spec or conv:
                raise ValueError("topic_template: the only placeholder allowed is {venue}")
        for venue in VENUES:
            _check_topic("topic_template", fills_topic(self, venue))

    def _check_sasl(self) -> None:
        if self.security_protocol not in _SASL_PROTOCOLS:
            # settings that would be silently ignored are almost always a forgotten protocol change
            for field in ("sasl_mechanism", "sasl_username", "sasl_password_file", "sasl_password_env"):
                if getattr(self, field) is not None:
                    raise ValueError(
                        f"{field}: set, but security_protocol {self.security_protocol} does not use SASL"
                    )
            return
        if self.sasl_mechanism is None:
            raise ValueError(f"sasl_mechanism: required with security_protocol {self.security_protocol}")
        if not self.sasl_username:
            raise ValueError(f"sasl_username: required with security_protocol {self.security_protocol}")
        _check_one_of("sasl_password", self.sasl_password_file, self.sasl_password_env)

    def _check_tls(self) -> None:
        if self.security_protocol not in _TLS_PROTOCOLS:
            for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_file",
                          "ssl_key_password_env"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field}: set, but security_protocol {self.security_protocol} does not use TLS")
            return
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            missing = "ssl_keyfile" if self.ssl_keyfile is None else "ssl_certfile"
            other = "ssl_certfile" if missing == "ssl_keyfile" else "ssl_keyfile"
            raise ValueError(f"{missing}: required when {other} is set (client certificate and key go together)")
        if self.ssl_keyfile is None:
            for field in ("ssl_key_password_file", "ssl_key_password_env"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field}: set, but there is no ssl_keyfile")
        elif self.ssl_key_password_file is not None and self.ssl_key_password_env is not None:
            raise ValueError("ssl_key_password_file: give only one of ssl_key_password_file or ssl_key_password_env")


class HttpConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The `http:` section: where /metrics, /healthz and /readyz listen."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 9108


#: any venue's source config, told apart by its `venue` field
if TYPE_CHECKING:
    # statically, every source is a SourceConfig; msgspec decodes the tagged union below
    AnySource = SourceConfig
else:
    AnySource = Union[SOURCE_CONFIG_TYPES]  # noqa: UP007 - a tuple of types cannot use `|`


class Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole config file."""

    kafka: KafkaConfig
    sources: Annotated[list[AnySource], msgspec.Meta(min_length=1)]
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)

    def __post_init__(self) -> None:
        first: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            if source.name in first:
                raise ValueError(
                    f"sources[{index}].name: duplicate source name {source.name!r} "
                    f"(also sources[{first[source.name]}])"
                )
            first[source.name] = index


@dataclass(frozen=True)
class Settings:
    """A validated config plus every secret it names, read and checked."""

    config: Config
    source_secrets: Mapping[str, Secret]  # by source name
    sasl_password: Secret | None
    #: the password of an encrypted Kafka client key (kafka.ssl_key_password_*)
    ssl_key_password: Secret | None = None


def _codec_available(codec: str) -> bool:
    from aiokafka import codec as codecs  # noqa: PLC0415 - aiokafka only when compression is asked for

    return bool(getattr(codecs, f"has_{codec}")())


def fills_topic(kafka: KafkaConfig, venue: str) -> str:
    """The fills topic of `venue` (`topic_template` with `{venue}` filled in)."""
    return kafka.topic_template.replace("{venue}", venue)


def venue_of(source: SourceConfig) -> str:
    """A source's venue name (the `venue` tag, which msgspec keeps on the type, not the instance)."""
    return str(type(source).__struct_config__.tag)


def secret_fields(source: SourceConfig) -> tuple[str, str]:
    """The `(<secret>_file, <secret>_env)` field names of a source's secret."""
    base = type(source).secret_field
    return f"{base}_file", f"{base}_env"


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Read, override, validate and resolve the config at `path`; raises :class:`ConfigError`."""
    raw = _read_yaml(path)
    origins = _apply_env_overrides(raw, environ)
    config = _decode(raw, origins)
    try:
        _check_backfill_from(config)
        _check_overlapping_sources(config)
        return _resolve(config, environ)
    except ConfigError as exc:
        if exc.field in origins:
            raise ConfigError(exc.field, f"{exc.problem} (set by {origins[exc.field]})") from None
        raise


def _check_backfill_from(config: Config) -> None:
    """`backfill_from` must be an RFC 3339 time with its UTC offset (e.g. `2026-10-01T00:00:00Z`)."""
    for source in config.sources:
        if source.backfill_from is not None:
            try:
                parse_rfc3339_ns(source.backfill_from)
            except ValueError as exc:
                raise ConfigError(f"sources[{source.name}].backfill_from",
                                  f"not an RFC 3339 time with a UTC offset ({exc})") from None


def _check_overlapping_sources(config: Config) -> None:
    """Two sources reading the same part of one venue account would publish each fill twice under
    two names: a venue module's `account_scope(source)` says what a source reads, as (account,
    part), part None meaning the whole account (Kalshi: api_key_id and subaccount)."""
    claimed: dict[tuple[str, str], list[tuple[SourceConfig, Any]]] = {}
    for source in config.sources:
        scope_of = getattr(VENUES[venue_of(source)], "account_scope", None)
        if scope_of is None:
            continue
        account, part = scope_of(source)
        others = claimed.setdefault((venue_of(source), account), [])
        for other, other_part in others:
            if part is None or other_part is None or part == other_part:
                what = "all subaccounts" if part is None or other_part is None else f"subaccount {part}"
                raise ConfigError(f"sources[{source.name}]",
                                  f"overlaps sources[{other.name}]: both read {what} of the same account "
                                  "(the same API key), so each fill would be published twice; give each "
                                  "source its own subaccount")
        others.append((source, part))


def _resolve(config: Config, environ: Mapping[str, str]) -> Settings:
    """Read and check every secret and TLS file the validated config names."""
    secrets: dict[str, Secret] = {}
    for source in config.sources:
        file_field, env_field = secret_fields(source)
        prefix = f"sources[{source.name}]."
        _check_one_of(prefix + type(source).secret_field, getattr(source, file_field), getattr(source, env_field))
        secret, field = _read_secret(prefix + file_field, getattr(source, file_field),
                                     prefix + env_field, getattr(source, env_field), environ)
        _check_venue_secret(venue_of(source), secret, field)
        secrets[source.name] = secret
        problem = proxy_problem(source.base_url)
        if problem is not None:
            raise ConfigError(prefix + "base_url", problem)
    sasl_password, ssl_key_password = _resolve_kafka(config.kafka, environ)
    return Settings(config=config, source_secrets=types.MappingProxyType(secrets), sasl_password=sasl_password,
                    ssl_key_password=ssl_key_password)


def _resolve_kafka(kafka: KafkaConfig, environ: Mapping[str, str]) -> tuple[Secret | None, Secret | None]:
    """The SASL password and the SSL key password the `kafka:` section names, read; TLS files checked."""
    sasl_password: Secret | None = None
    if kafka.security_protocol in _SASL_PROTOCOLS:
        sasl_password, _ = _read_secret("kafka.sasl_password_file", kafka.sasl_password_file,
                                        "kafka.sasl_password_env", kafka.sasl_password_env, environ)
    ssl_key_password: Secret | None = None
    if kafka.security_protocol in _TLS_PROTOCOLS:
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            _check_readable(f"kafka.{field}", getattr(kafka, field))
        if kafka.ssl_key_password_file is not None or kafka.ssl_key_password_env is not None:
            ssl_key_password, _ = _read_secret("kafka.ssl_key_password_file", kafka.ssl_key_password_file,
                                               "kafka.ssl_key_password_env", kafka.ssl_key_password_env, environ)
        _check_tls_files(kafka, ssl_key_password)
    return sasl_password, ssl_key_password


def load_kafka_settings(
    raw: Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> tuple[KafkaConfig, Secret | None, Secret | None]:
    """A `kafka:` section on its own (for the consumer helper): validated, its secrets read.

    Returns the section, the SASL password and the SSL key password; raises :class:`ConfigError`
    naming `kafka.<field>`.
    """
    try:
        kafka = msgspec.convert(dict(raw), KafkaConfig)
    except msgspec.ValidationError as exc:
        field, problem = _translate(str(exc).replace(" - at `$", " - at `$.kafka", 1), {"kafka": dict(raw)})
        if not field.startswith("kafka"):
            field = f"kafka.{field}" if field != "config" else "kafka"
        raise ConfigError(field, problem) from None
    return (kafka, *_resolve_kafka(kafka, environ))


# --- reading the file -------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML silently keeps the last one, which hides a
    second `kafka:` section or a repeated setting."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # the mapping's own keys must be unique; keys merged in with `<<: *base` may be overridden by
    # them (flatten_mapping puts merged pairs first, so the mapping's own value wins)
    own = [key_node for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge"]
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node in own:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str):
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


#: the largest file read as the config; anything bigger is not one (or not a file: /dev/zero)
MAX_CONFIG_BYTES = 16 << 20
#: the largest secret file (an RSA-4096 key in PEM is ~3.3 KB)
MAX_SECRET_BYTES = 1 << 20
#: the largest TLS file (a bundle of every public root CA is ~300 KB)
MAX_TLS_FILE_BYTES = 16 << 20

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _read_file(field: str, path: str | os.PathLike[str], limit: int) -> bytes:
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


def _read_text(field: str, path: str | os.PathLike[str], limit: int) -> str:
    try:
        return _read_file(field, path, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(field, f"{os.fspath(path)!r} is not UTF-8 text") from None


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    text = _read_text("config", path, MAX_CONFIG_BYTES)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        # only the position and the parser's problem, never the snippet of the file it quotes
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("config", f"invalid YAML{where}: {exc.problem or exc.context or 'syntax error'}") from None
    except yaml.YAMLError:
        raise ConfigError("config", "invalid YAML") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config", "the top level must be a mapping (kafka:, http:, sources:)")
    return raw


# --- environment overrides --------------------------------------------------------------------

_SECTIONS: dict[str, type[msgspec.Struct]] = {"kafka": KafkaConfig, "http": HttpConfig}
_VENUE_TYPES: dict[str, type[SourceConfig]] = {cls.__struct_config__.tag: cls for cls in SOURCE_CONFIG_TYPES}
#: pairs where giving one half in the environment replaces whichever half the file gave
_SECRET_PAIRS = (
    ("sasl_password_file", "sasl_password_env"),
    ("ssl_key_password_file", "ssl_key_password_env"),
    *((f"{cls.secret_field}_file", f"{cls.secret_field}_env") for cls in SOURCE_CONFIG_TYPES),
)


def env_source_name(name: str) -> str:
    """How a source name appears in `FILLPUB_SOURCES__<NAME>__<KEY>`."""
    return name.upper().replace("-", "_").replace(".", "_")


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply `FILLPUB_*` overrides to `raw` in place; returns {field path: variable} for messages."""
    secret_env_names = set(_secret_env_names(raw))
    origins: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or "__" not in var or var in secret_env_names:
            continue
        section, _, rest = var[len(ENV_PREFIX):].partition("__")
        section = section.lower()
        if section in _SECTIONS:
            key = rest.lower()
            _check_env_key(var, _SECTIONS[section], key, f"{section} setting")
            if raw.get(section) is None:
                raw[section] = {}
            target = raw[section]
            if not isinstance(target, dict):
                raise ConfigError(section, "must be a mapping")
            field = f"{section}.{key}"
        elif section == "sources":
            target, label, key = _env_source_target(var, raw, rest)
            field = f"sources[{label}].{key}"
        else:
            raise ConfigError(var, f"unknown config section {section!r} (kafka, http or sources)")
        _set_override(target, key, _env_value(environ[var], _field_type(target, section, key)))
        origins[field] = var
    return origins


def _secret_env_names(raw: dict[str, Any]) -> Iterator[str]:
    sections = [raw.get("kafka")] + (raw["sources"] if isinstance(raw.get("sources"), list) else [])
    for section in sections:
        if isinstance(section, dict):
            for key, value in section.items():
                if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                    yield value


def _check_env_key(var: str, struct: type[msgspec.Struct], key: str, what: str) -> None:
    if key not in struct.__struct_fields__:
        raise ConfigError(var, f"unknown {what} {key!r}")


def _env_source_target(var: str, raw: dict[str, Any], rest: str) -> tuple[dict[str, Any], str, str]:
    env_name, sep, key = rest.partition("__")
    key = key.lower()
    if not sep or not env_name or not key:
        raise ConfigError(var, "expected FILLPUB_SOURCES__<NAME>__<KEY>")
    sources = raw.get("sources")
    matches = [
        (index, source)
        for index, source in enumerate(sources if isinstance(sources, list) else [])
        if isinstance(source, dict) and isinstance(source.get("name"), str)
        and env_source_name(source["name"]) == env_name
    ]
    if not matches:
        raise ConfigError(var, f"no source in the config file whose name maps to {env_name}")
    if len(matches) > 1:
        names = ", ".join(repr(source["name"]) for _, source in matches)
        raise ConfigError(var, f"ambiguous: sources {names} all map to {env_name}; rename one of them")
    index, source = matches[0]
    if key in ("name", "venue"):
        raise ConfigError(var, f"a source's {key} cannot be overridden from the environment")
    venue_type = _VENUE_TYPES.get(source.get("venue"))  # type: ignore[arg-type]
    if venue_type is not None:
        _check_env_key(var, venue_type, key, f"{source['venue']} source setting")
    label = source["name"] if re.match(SOURCE_NAME_PATTERN, source["name"]) else str(index)
    return source, label, key


def _set_override(target: dict[str, Any], key: str, value: Any) -> None:
    target[key] = value
    for pair in _SECRET_PAIRS:
        if key in pair:
            other = pair[1 - pair.index(key)]
            # the environment chose where this secret comes from; the file's choice no longer applies
            target.pop(other, None)


def _field_type(target: dict[str, Any], section: str, key: str) -> Any:
    struct = _SECTIONS.get(section) or _VENUE_TYPES.get(target.get("venue"))  # type: ignore[arg-type]
    if struct is None:
        return Any
    return get_type_hints(struct).get(key, Any)


def _env_value(text: str, field_type: Any) -> Any:
    """An override's value: a YAML scalar, except that text fields keep the text as given
    (`api_key_id=12345` or `client_id=on` are strings, not a number and a bool)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        return text  # a date, a list, a mapping: settings are plain scalars
    if value is not None and not isinstance(value, str) and _text_only(field_type):
        return text
    return value


def _options(field_type: Any) -> tuple[Any, ...]:
    """The alternatives of a union type, without None."""
    options = get_args(field_type) if get_origin(field_type) in (Union, types.UnionType) else (field_type,)
    return tuple(option for option in options if option is not type(None))


def _text_only(field_type: Any) -> bool:
    options = _options(field_type)
    return bool(options) and all(
        option is str or (get_origin(option) is Literal and all(isinstance(v, str) for v in get_args(option)))
        for option in options
    )


# --- decoding and error messages --------------------------------------------------------------

_ERROR = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_FIELD_PREFIX = re.compile(r"^(?P<field>[a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*)*): (?P<problem>.+)$", re.DOTALL)
_NAMED_FIELD = re.compile(r"^Object (?P<kind>missing required|contains unknown) field `(?P<name>[^`]+)`$")
_INLINE_SECRETS = {"sasl_password", "ssl_key_password"} | {cls.secret_field for cls in SOURCE_CONFIG_TYPES}


def _decode(raw: dict[str, Any], origins: Mapping[str, str]) -> Config:
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        field, problem = _translate(str(exc), raw)
        if field in origins:
            problem += f" (set by {origins[field]})"
        raise ConfigError(field, problem) from None


def _translate(text: str, raw: dict[str, Any]) -> tuple[str, str]:
    """msgspec's `<message> - at `$.sources[0].page_limit`` -> (`sources[kalshi-main].page_limit`, problem)."""
    match = _ERROR.match(text)
    assert match is not None  # the pattern matches any text
    message, path = match["message"], match["path"] or ""
    parts: list[str] = []
    for token in _PATH_TOKEN.finditer(path):
        parts.append(token[1] if token[1] is not None else _index_label(parts, int(token[2]), raw))
    named = _NAMED_FIELD.match(message)
    prefixed = _FIELD_PREFIX.match(message)
    if named:
        parts.append(named["name"])
        if named["kind"] == "missing required":
            problem = "required setting is missing"
        elif named["name"] in _INLINE_SECRETS:
            problem = f"secrets are never inline: use {named['name']}_file or {named['name']}_env"
        else:
            problem = "unknown setting"
    elif prefixed:  # raised by our own __post_init__ checks, relative to the struct
        parts.append(prefixed["field"])
        problem = prefixed["problem"]
    elif message.startswith("Invalid value ") and parts[-1:] == ["venue"]:
        problem = f"unknown venue {message[len('Invalid value '):]} (known: {', '.join(VENUES)})"
    elif message.startswith("Invalid enum value "):
        problem = f"invalid value {message[len('Invalid enum value '):]}{_choices(parts)}"
    else:
        problem = message[:1].lower() + message[1:]
    return _join(parts) or "config", problem


def _index_label(parts: list[str], index: int, raw: dict[str, Any]) -> str:
    """`sources[i]` is labelled by the source's name when it has a valid one."""
    if parts == ["sources"]:
        sources = raw.get("sources")
        if isinstance(sources, list) and index < len(sources) and isinstance(sources[index], dict):
            name = sources[index].get("name")
            if isinstance(name, str) and re.match(SOURCE_NAME_PATTERN, name):
                return f"[{name}]"
    return f"[{index}]"


def _join(parts: list[str]) -> str:
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else f".{part}"
    return out


def _choices(parts: list[str]) -> str:
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        return ""
    for option in _options(get_type_hints(_SECTIONS[parts[0]]).get(parts[1])):
        if get_origin(option) is Literal:
            return f" (one of: {', '.join(map(str, get_args(option)))})"
    return ""


# --- secrets and files ------------------------------------------------------------------------


def _check_one_of(field: str, from_file: str | None, from_env: str | None) -> None:
    base = field.rpartition(".")[2]
    if from_file is not None and from_env is not None:
        raise _field_error(f"{field}_file", f"give only one of {base}_file or {base}_env")
    if from_file is None and from_env is None:
        raise _field_error(f"{field}_file", f"required: the file holding the secret (or {base}_env naming a variable)")


def _field_error(field: str, problem: str) -> Exception:
    # inside a struct's __post_init__ msgspec wants ValueError; elsewhere we raise ConfigError
    if "." in field or "[" in field:
        return ConfigError(field, problem)
    return ValueError(f"{field}: {problem}")


def _read_secret(
    file_field: str, path: str | None, env_field: str, env_name: str | None, environ: Mapping[str, str]
) -> tuple[Secret, str]:
    """Read a secret from its file or variable; returns it and the field it came from."""
    if path is not None:
        value = _read_text(file_field, path, MAX_SECRET_BYTES).strip()
        if not value:
            raise ConfigError(file_field, f"{path!r} is empty")
        return Secret(value), file_field
    assert env_name is not None  # _check_one_of ran first
    value = environ.get(env_name, "").strip()
    if not value:
        state = "is empty" if env_name in environ else "is not set"
        raise ConfigError(env_field, f"environment variable {env_name} {state}")
    return Secret(value), env_field


def _check_venue_secret(venue: str, secret: Secret, field: str) -> None:
    check = getattr(VENUES[venue], "check_secret", None)
    if check is None:
        return
    try:
        check(secret)
    except ValueError as exc:
        # the adapter promises a safe message; mask the value anyway in case it slipped in
        raise ConfigError(field, f"invalid {venue} secret: {str(exc).replace(secret.reveal(), '***')}") from None
    except Exception as exc:  # noqa: BLE001 - a library's own message might quote key material
        raise ConfigError(field, f"invalid {venue} secret ({type(exc).__name__})") from None


def _check_readable(field: str, path: str | None) -> None:
    if path is None:
        return
    # read, not os.access: it also catches directories, FIFOs and devices and gives the OS's reason
    _read_file(field, path, MAX_TLS_FILE_BYTES)


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
