"""Config errors and their messages.

Every message is built here from structured facts (a field path, the setting's type, the value),
never by reading another library's message: msgspec's text is used, verbatim, only as the problem
of one scalar value it refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

#: the field of a problem with the file as a whole
ROOT = "config"
UNKNOWN_SETTING = "unknown setting"
MISSING_SETTING = "required setting is missing"


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


class SettingProblem(ValueError):
    """A config struct's own check across its fields failed; `field` is relative to the struct
    (`sasl_mechanism`, `producer_options.acks`, `sources[2].name`).

    A :class:`ValueError` whose text is `<field>: <problem>`, so that msgspec, which turns a
    ValueError raised while it builds a struct into a ValidationError, reports it as before; the
    config loader builds its structs itself and reads `field` and `problem` from the exception.
    """

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def child(path: str, name: str) -> str:
    """The path of setting `name` inside the setting at `path` ("" being the file itself)."""
    return f"{path}.{name}" if path else name


def item(path: str, label: str) -> str:
    """The path of the list item labelled `label` (its index, or a source's name)."""
    return f"{path}[{label}]"


def unknown_setting(name: str, inline_secrets: Iterable[str]) -> str:
    """Why a key the struct does not have is refused: inline secrets are named as such."""
    if name in inline_secrets:
        return f"secrets are never inline: use {name}_file or {name}_env"
    return UNKNOWN_SETTING


def unknown_venue(value: str, known: Iterable[str]) -> str:
    """A source's `venue` that no registered venue has."""
    return f"unknown venue {value!r} (known: {', '.join(known)})"


def invalid_choice(value: str, choices: Iterable[Any]) -> str:
    """A text setting whose value is not one of its choices."""
    return f"invalid value {value!r} (one of: {', '.join(map(str, choices))})"


def refused(exc: msgspec.ValidationError) -> str:
    """msgspec's own words for one value it refused, as a problem (first letter lower-cased)."""
    text = str(exc)
    return text[:1].lower() + text[1:]


def one_of_problem(base: str, from_file: str | None, from_env: str | None) -> str | None:
    """Why a secret's pair `<base>_file`/`<base>_env` is unusable (the field to name is
    `<base>_file`); None when exactly one of them is given."""
    if from_file is not None and from_env is not None:
        return f"give only one of {base}_file or {base}_env"
    if from_file is None and from_env is None:
        return f"required: the file holding the secret (or {base}_env naming a variable)"
    return None
