"""The config file's mapping, validated against the schema one setting at a time.

The walk follows msgspec's own order (a mapping's keys as written, then its missing settings, then
the Struct's checks across fields), so the first problem found is the one msgspec would find, but
it knows at every step which setting it is at. Each setting's value is converted on its own with
`msgspec.convert(value, <its annotated type>)`, so a refused value is named by the walk's path and
msgspec's text is only ever the problem of that one value. Sources are resolved by their `venue`
in the venue registry when the config is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec

from publisher.config._errors import (
    MISSING_SETTING,
    ROOT,
    ConfigError,
    SettingProblem,
    child,
    invalid_choice,
    item,
    refused,
    unknown_setting,
    unknown_venue,
)
from publisher.config._schema import Config, fields, inline_secrets, options, venue_of
from publisher.venues import VENUES
from publisher.venues.base import SOURCE_NAME_PATTERN, SourceConfig
from publisher.venues.fields import parse_rfc3339_ns

T = TypeVar("T", bound=msgspec.Struct)

#: the field that names a source's venue
VENUE_FIELD = str(SourceConfig.__struct_config__.tag_field)


def decode_config(raw: Mapping[str, Any]) -> Config:
    """`raw` (the file's top-level mapping, overrides applied) as a validated :class:`Config`;
    :class:`ConfigError` naming the first setting that is wrong."""
    config = decode_struct(raw, Config, "")
    _check_backfill_from(config)
    _check_shards(config)
    _check_overlapping_sources(config)
    return config


def decode_struct(raw: Any, struct: type[T], path: str) -> T:
    """`raw` as a `struct` (a section at `path`, "" for the whole file); :class:`ConfigError`."""
    return _Walk(inline_secrets()).struct(raw, struct, path)


class _Walk:
    """One walk over a config mapping."""

    def __init__(self, inline_secrets: Iterable[str]):
        self._inline_secrets = frozenset(inline_secrets)

    def struct(self, raw: Any, struct: type[T], path: str) -> T:
        if not isinstance(raw, dict):
            raise ConfigError(path or ROOT, _refusal(raw, struct))
        struct_fields = fields(struct)
        skip = struct.__struct_config__.tag_field  # a tagged struct's tag was read by the caller
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if skip is not None and key == skip:
                continue
            field = struct_fields.get(key) if isinstance(key, str) else None
            if field is None:
                raise ConfigError(child(path, str(key)), unknown_setting(str(key), self._inline_secrets))
            values[field.name] = self.value(value, field.type, child(path, key))
        for key, field in struct_fields.items():
            if field.required and field.name not in values:
                raise ConfigError(child(path, key), MISSING_SETTING)
        try:
            return struct(**values)
        except SettingProblem as exc:
            raise ConfigError(child(path, exc.field), exc.problem) from None

    def value(self, raw: Any, hint: Any, path: str) -> Any:
        base, metas = _unannotated(hint)
        if isinstance(base, type) and issubclass(base, msgspec.Struct):
            return self.struct(raw, base, path)
        if get_origin(base) is list and _is_source(get_args(base)[0]):
            _convert(raw, Annotated[list[Any], *metas] if metas else list[Any], path)
            return [self.source(entry, item(path, _label(entry, index))) for index, entry in enumerate(raw)]
        if get_origin(base) is dict and not metas:
            _convert(raw, dict[Any, Any], path)
            value_type = get_args(base)[1]
            for key in raw:
                if not isinstance(key, str):
                    raise ConfigError(child(path, str(key)), unknown_setting(str(key), self._inline_secrets))
            return {key: self.value(value, value_type, child(path, key)) for key, value in raw.items()}
        return _scalar(raw, hint, path)

    def source(self, raw: Any, path: str) -> SourceConfig:
        """A `sources:` entry, as the source config of the venue it names."""
        if not isinstance(raw, dict):
            raise ConfigError(path, _refusal(raw, dict[str, Any]))
        if VENUE_FIELD not in raw:
            raise ConfigError(child(path, VENUE_FIELD), MISSING_SETTING)
        name = _scalar(raw[VENUE_FIELD], str, child(path, VENUE_FIELD))
        if name not in VENUES:
            raise ConfigError(child(path, VENUE_FIELD), unknown_venue(name, VENUES))
        return self.struct(raw, VENUES[name].source_config, path)


def _unannotated(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """`Annotated[T, m1, m2]` -> `(T, (m1, m2))`; any other type -> `(type, ())`."""
    if get_origin(hint) is Annotated:
        return hint.__origin__, hint.__metadata__
    return hint, ()


def _is_source(hint: Any) -> bool:
    """Whether `hint` is a venue's source config, or a union of them (`sources:` entries)."""
    return all(isinstance(option, type) and issubclass(option, SourceConfig) for option in options(hint))


def _label(entry: Any, index: int) -> str:
    """`sources[i]` is labelled by the source's name when it has a valid one."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and re.match(SOURCE_NAME_PATTERN, name) else str(index)


def _scalar(raw: Any, hint: Any, path: str) -> Any:
    try:
        return msgspec.convert(raw, hint)
    except msgspec.ValidationError as exc:
        choices = _choices(hint)
        if choices and isinstance(raw, str):
            raise ConfigError(path, invalid_choice(raw, choices)) from None
        raise ConfigError(path, refused(exc)) from None


def _choices(hint: Any) -> tuple[Any, ...]:
    """The values of a `Literal` setting (optional or not); () for any other type."""
    return tuple(value for option in options(hint) if get_origin(option) is Literal for value in get_args(option))


def _convert(raw: Any, hint: Any, path: str) -> None:
    """Check `raw`'s shape (a list's length, a mapping) before walking into it."""
    try:
        msgspec.convert(raw, hint)
    except msgspec.ValidationError as exc:
        raise ConfigError(path, refused(exc)) from None


def _refusal(raw: Any, hint: Any) -> str:
    """msgspec's words for `raw` not being a `hint` at all (a mapping expected)."""
    try:
        msgspec.convert(raw, hint)
    except msgspec.ValidationError as exc:
        return refused(exc)
    return "expected a mapping"


# --- checks across sources, once every source decoded -------------------------------------------


def _check_backfill_from(config: Config) -> None:
    """`backfill_from` must be an RFC 3339 time with its UTC offset (e.g. `2026-10-01T00:00:00Z`)."""
    for source in config.sources:
        if source.backfill_from is not None:
            try:
                parse_rfc3339_ns(source.backfill_from)
            except ValueError as exc:
                raise ConfigError(f"sources[{source.name}].backfill_from",
                                  f"not an RFC 3339 time with a UTC offset ({exc})") from None


def _check_shards(config: Config) -> None:
    """A source pinned to a shard must name one of `cluster.shards`."""
    shards = config.cluster.shards
    for source in config.sources:
        if source.shard is not None and source.shard >= shards:
            raise ConfigError(f"sources[{source.name}].shard",
                              f"{source.shard} is not a shard: cluster.shards is {shards} (shards 0 to {shards - 1})")


def _check_overlapping_sources(config: Config) -> None:
    """Two sources reading the same part of one venue account would publish each fill twice under
    two names: a venue's `account_scope(source)` says what a source reads, as (account, part), part
    None meaning the whole account (Kalshi: api_key_id and subaccount)."""
    claimed: dict[tuple[str, str], list[tuple[SourceConfig, Any]]] = {}
    for source in config.sources:
        scope = VENUES.of(source).scope(source)
        if scope is None:
            continue
        account, part = scope
        others = claimed.setdefault((venue_of(source), account), [])
        for other, other_part in others:
            if part is None or other_part is None or part == other_part:
                what = "all subaccounts" if part is None or other_part is None else f"subaccount {part}"
                raise ConfigError(f"sources[{source.name}]",
                                  f"overlaps sources[{other.name}]: both read {what} of the same account "
                                  "(the same API key), so each fill would be published twice; give each "
                                  "source its own subaccount")
        others.append((source, part))
