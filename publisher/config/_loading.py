"""Loading a config: the YAML file, then the `FILLPUB_*` environment overrides, then validation
and the secrets (see :mod:`publisher.config` for the override rules)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
import yaml

from publisher.config._decode import decode_config, decode_struct
from publisher.config._errors import ROOT, ConfigError
from publisher.config._schema import KafkaConfig, fields, options, secret_bases, sections
from publisher.config._secrets import Settings, read_text, resolve, resolve_kafka
from publisher.secret import Secret
from publisher.venues import VENUES
from publisher.venues.base import SOURCE_NAME_PATTERN

ENV_PREFIX = "FILLPUB_"
#: the largest file read as the config; anything bigger is not one (or not a file: /dev/zero)
MAX_CONFIG_BYTES = 16 << 20


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Read, override, validate and resolve the config at `path`; raises :class:`ConfigError`."""
    raw = _read_yaml(path)
    origins = _apply_env_overrides(raw, environ)
    try:
        return resolve(decode_config(raw), environ)
    except ConfigError as exc:
        if exc.field in origins:
            raise ConfigError(exc.field, f"{exc.problem} (set by {origins[exc.field]})") from None
        raise


def load_kafka_settings(
    raw: Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> tuple[KafkaConfig, Secret | None, Secret | None]:
    """A `kafka:` section on its own (for the consumer helper): validated, its secrets read.

    Returns the section, the SASL password and the SSL key password; raises :class:`ConfigError`
    naming `kafka.<field>`.
    """
    kafka = decode_struct(dict(raw), KafkaConfig, "kafka")
    return (kafka, *resolve_kafka(kafka, environ))


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


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    text = read_text(ROOT, path, MAX_CONFIG_BYTES)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        # only the position and the parser's problem, never the snippet of the file it quotes
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(ROOT, f"invalid YAML{where}: {exc.problem or exc.context or 'syntax error'}") from None
    except yaml.YAMLError:
        raise ConfigError(ROOT, "invalid YAML") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(ROOT, "the top level must be a mapping (kafka:, http:, cluster:, sources:)")
    return raw


# --- environment overrides --------------------------------------------------------------------


def env_source_name(name: str) -> str:
    """How a source name appears in `FILLPUB_SOURCES__<NAME>__<KEY>`."""
    return name.upper().replace("-", "_").replace(".", "_")


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply `FILLPUB_*` overrides to `raw` in place; returns {field path: variable} for messages."""
    struct_sections = sections()
    secret_env_names = set(_secret_env_names(raw, struct_sections))
    origins: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or "__" not in var or var in secret_env_names:
            continue
        section, _, rest = var[len(ENV_PREFIX):].partition("__")
        section = section.lower()
        struct: type[msgspec.Struct] | None
        if section in struct_sections:
            struct = struct_sections[section]
            key = rest.lower()
            _check_env_key(var, struct, key, f"{section} setting")
            if raw.get(section) is None:
                raw[section] = {}
            target = raw[section]
            if not isinstance(target, dict):
                raise ConfigError(section, "must be a mapping")
            field = f"{section}.{key}"
        elif section == "sources":
            target, label, key = _env_source_target(var, raw, rest)
            venue = VENUES.get(target.get("venue"))  # type: ignore[arg-type]
            struct = venue.source_config if venue is not None else None
            field = f"sources[{label}].{key}"
        else:
            raise ConfigError(var, f"unknown config section {section!r} ({', '.join(struct_sections)} or sources)")
        _set_override(target, key, _env_value(environ[var], _field_type(struct, key)), struct)
        origins[field] = var
    return origins


def _secret_env_names(raw: dict[str, Any], struct_sections: Iterable[str]) -> Iterator[str]:
    """The variables the file names as a secret's `*_env` (they are secrets, not overrides)."""
    sources = raw["sources"] if isinstance(raw.get("sources"), list) else []
    for section in [*(raw.get(name) for name in struct_sections), *sources]:
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
    venue = VENUES.get(source.get("venue"))  # type: ignore[arg-type]
    if venue is not None:
        _check_env_key(var, venue.source_config, key, f"{source['venue']} source setting")
    label = source["name"] if re.match(SOURCE_NAME_PATTERN, source["name"]) else str(index)
    return source, label, key


def _set_override(target: dict[str, Any], key: str, value: Any, struct: type[msgspec.Struct] | None) -> None:
    target[key] = value
    for base in _secret_bases_for(struct):
        pair = (f"{base}_file", f"{base}_env")
        if key in pair:
            # the environment chose where this secret comes from; the file's choice no longer applies
            target.pop(pair[1 - pair.index(key)], None)


def _secret_bases_for(struct: type[msgspec.Struct] | None) -> tuple[str, ...]:
    if struct is not None:
        return secret_bases(struct)
    # a source of a venue nobody registered: the load fails on its venue anyway
    return tuple(base for config in VENUES.source_configs() for base in secret_bases(config))


def _field_type(struct: type[msgspec.Struct] | None, key: str) -> Any:
    if struct is None:
        return Any
    field = fields(struct).get(key)
    return Any if field is None else field.type


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


def _text_only(field_type: Any) -> bool:
    """Whether every alternative of the (optional) setting's type is text: `str` or a Literal of strings."""
    kinds = [option.__origin__ if get_origin(option) is Annotated else option
             for option in options(field_type) if option is not type(None)]
    return bool(kinds) and all(
        kind is str or (get_origin(kind) is Literal and all(isinstance(v, str) for v in get_args(kind)))
        for kind in kinds
    )
