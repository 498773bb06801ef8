"""The config file's schema: one msgspec Struct per section, and checks across a section's fields.

A section is one Struct plus one field of :class:`Config`; the loader walks the Structs' fields
itself, so a new section needs nothing else (environment overrides `FILLPUB_<SECTION>__<KEY>`
included). A check across fields raises :class:`SettingProblem` naming the field, relative to its
Struct.
"""

from __future__ import annotations

import functools
import re
import string
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from publisher.config._errors import SettingProblem, one_of_problem
from publisher.venues import VENUES
from publisher.venues.base import SourceConfig

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

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def _check_topic(field: str, topic: str) -> None:
    if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
        raise SettingProblem(field, f"{topic!r} is not a valid Kafka topic name ([a-zA-Z0-9._-], at most 249)")


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
        servers = [part.strip() for part in self.bootstrap_servers.split(",")]
        if not all(servers):
            raise SettingProblem("bootstrap_servers", "must be a comma-separated list of host:port, without empty entries")
        self._check_topic_template()
        _check_topic("dlq_topic", self.dlq_topic)
        _check_topic("checkpoint_topic", self.checkpoint_topic)
        fills_topics = {fills_topic(self, venue) for venue in VENUES}
        for field in ("dlq_topic", "checkpoint_topic"):
            if getattr(self, field) in fills_topics:
                raise SettingProblem(field, f"{getattr(self, field)!r} is also a fills topic (topic_template)")
        if self.dlq_topic == self.checkpoint_topic:
            raise SettingProblem("checkpoint_topic", "must differ from dlq_topic")
        self._check_sasl()
        self._check_tls()
        self._check_producer()

    def _check_producer(self) -> None:
        if self.compression_type != "none" and not _codec_available(self.compression_type):
            raise SettingProblem("compression_type", f"{self.compression_type} is not available (the cramjam "
                                                     f"package is missing)")
        for name, value in self.producer_options.items():
            if name not in PRODUCER_OPTIONS:
                raise SettingProblem(f"producer_options.{name}", f"unknown or not settable here "
                                                                 f"(allowed: {', '.join(PRODUCER_OPTIONS)})")
            if not isinstance(value, int) or isinstance(value, bool) or value < PRODUCER_OPTIONS[name]:
                raise SettingProblem(f"producer_options.{name}", f"must be an integer >= {PRODUCER_OPTIONS[name]}")
        batch = self.producer_options.get("max_batch_size")
        if batch is not None and batch > self.max_record_bytes:
            # the broker refuses a batch above the topics' max.message.bytes on every retry: its
            # source would be held back for good (publisher.sink.held)
            raise SettingProblem("producer_options.max_batch_size", f"must be at most max_record_bytes "
                                                                    f"({self.max_record_bytes}), the largest record "
                                                                    f"batch the publisher sends")

    def _check_topic_template(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.topic_template))
        except ValueError as exc:
            raise SettingProblem("topic_template", str(exc)) from None
        placeholders = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
        if not any(name == "venue" for name, _, _ in placeholders):
            raise SettingProblem("topic_template", "must contain {venue}")
        for name, spec, conv in placeholders:
            if name != "venue" or spec or conv:
                raise SettingProblem("topic_template", "the only placeholder allowed is {venue}")
        for venue in VENUES:
            _check_topic("topic_template", fills_topic(self, venue))

    def _check_sasl(self) -> None:
        if self.security_protocol not in SASL_PROTOCOLS:
            # settings that would be silently ignored are almost always a forgotten protocol change
            for field in ("sasl_mechanism", "sasl_username", "sasl_password_file", "sasl_password_env"):
                if getattr(self, field) is not None:
                    raise SettingProblem(field, f"set, but security_protocol {self.security_protocol} does not use SASL")
            return
        if self.sasl_mechanism is None:
            raise SettingProblem("sasl_mechanism", f"required with security_protocol {self.security_protocol}")
        if not self.sasl_username:
            raise SettingProblem("sasl_username", f"required with security_protocol {self.security_protocol}")
        problem = one_of_problem("sasl_password", self.sasl_password_file, self.sasl_password_env)
        if problem is not None:
            raise SettingProblem("sasl_password_file", problem)

    def _check_tls(self) -> None:
        if self.security_protocol not in TLS_PROTOCOLS:
            for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_file",
                          "ssl_key_password_env"):
                if getattr(self, field) is not None:
                    raise SettingProblem(field, f"set, but security_protocol {self.security_protocol} does not use TLS")
            return
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            missing = "ssl_keyfile" if self.ssl_keyfile is None else "ssl_certfile"
            other = "ssl_certfile" if missing == "ssl_keyfile" else "ssl_keyfile"
            raise SettingProblem(missing, f"required when {other} is set (client certificate and key go together)")
        if self.ssl_keyfile is None:
            for field in ("ssl_key_password_file", "ssl_key_password_env"):
                if getattr(self, field) is not None:
                    raise SettingProblem(field, "set, but there is no ssl_keyfile")
        elif self.ssl_key_password_file is not None and self.ssl_key_password_env is not None:
            raise SettingProblem("ssl_key_password_file", "give only one of ssl_key_password_file or ssl_key_password_env")


class HttpConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The `http:` section: where /metrics, /healthz and /readyz listen."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 9108


class ClusterConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The `cluster:` section: several instances sharing the sources (see :mod:`publisher.shards`)."""

    #: sources are split into this many shards; fixed for the life of a deployment (changing it is
    #: the offline step `fill-publisher reshard`). 1: one instance owns every source, no group
    shards: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    #: the Kafka consumer group the instances share the shards through; None: the
    #: transactional id prefix
    group_id: Annotated[str, msgspec.Meta(min_length=1, max_length=249)] | None = None
    #: static group membership (group.instance.id, e.g. the pod name): a restarted instance that
    #: comes back within the session timeout gets its shards back without a rebalance
    instance_id: Annotated[str, msgspec.Meta(min_length=1, max_length=249)] | None = None
    #: an instance that stops heartbeating loses its shards to the others after this long; the
    #: brokers bound it (group.min/max.session.timeout.ms, 6 s to 30 min by default)
    session_timeout_s: Annotated[float, msgspec.Meta(ge=1, le=1800)] = 10.0


#: any venue's source config, told apart by its `venue` field
if TYPE_CHECKING:
    # statically, every source is a SourceConfig
    AnySource = SourceConfig
else:
    # for msgspec.convert(raw, Config): the venues registered when this module is imported.
    # load_settings resolves each source's venue in the registry when it runs instead, so a venue
    # registered later (a test's own) loads there too
    AnySource = Union[VENUES.source_configs()]  # noqa: UP007 - a tuple of types cannot use `|`


class Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole config file."""

    kafka: KafkaConfig
    sources: Annotated[list[AnySource], msgspec.Meta(min_length=1)]
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        first: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            if source.name in first:
                raise SettingProblem(f"sources[{index}].name", f"duplicate source name {source.name!r} "
                                                                f"(also sources[{first[source.name]}])")
            first[source.name] = index


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


@functools.cache
def fields(struct: type[msgspec.Struct]) -> Mapping[str, msgspec.structs.FieldInfo]:
    """A Struct's fields by the name the file gives them, each with its annotated type (cached:
    msgspec resolves the type hints on every call)."""
    return types.MappingProxyType({field.encode_name: field for field in msgspec.structs.fields(struct)})


def sections() -> dict[str, type[msgspec.Struct]]:
    """The sections of :class:`Config` that are one Struct each (`kafka`, `http`), by name."""
    return {name: field.type for name, field in fields(Config).items() if _is_struct(field.type)}


def options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (`X | None` -> `(X, NoneType)`); `(hint,)` for any other."""
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)


def _is_struct(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def secret_bases(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    """The secrets a Struct reads, by the pair of fields that names each: `<base>_file` and
    `<base>_env` (`sasl_password`, `private_key`)."""
    names = struct.__struct_fields__
    return tuple(name[: -len("_file")] for name in names
                 if name.endswith("_file") and name[: -len("_file")] + "_env" in names)


def inline_secrets() -> frozenset[str]:
    """Every secret's base name in every section and venue: a key by that name is a secret
    written inline, refused as such wherever it appears."""
    structs = [*sections().values(), *VENUES.source_configs()]
    return frozenset(base for struct in structs for base in secret_bases(struct))
