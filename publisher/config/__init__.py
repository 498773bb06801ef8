"""The service's configuration: a YAML file, overridden by `FILLPUB_*` environment variables.

:func:`load_settings` reads the file, applies the environment overrides, decodes and validates the
result into :class:`Config`, reads every secret (from a file or an environment variable, never
inline) and checks it offline with the venue's `check_secret`. Whatever is wrong comes back as one
:class:`ConfigError` naming the field (`kafka.bootstrap_servers`, `sources[kalshi-main].page_limit`)
so the CLI can print one line and exit 2.

Environment overrides (they win over the file; values are parsed as YAML scalars, so `9108` is an
int, `true` a bool and `null` unsets an optional setting, then validated like the file):

- `FILLPUB_<SECTION>__<KEY>` for a section of the file (`kafka`, `http`, `cluster`), e.g.
  `FILLPUB_KAFKA__BOOTSTRAP_SERVERS`.
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

The parts: the schema (`_schema`), the file and the overrides (`_loading`), validation one setting
at a time (`_decode`), secrets and files (`_secrets`), errors and their messages (`_errors`).
Sources are resolved in the venue registry (:data:`publisher.venues.VENUES`) when a config is
loaded, so a venue registered before :func:`load_settings` runs is known to it.
"""

from publisher.config._errors import ConfigError, SettingProblem
from publisher.config._loading import ENV_PREFIX, MAX_CONFIG_BYTES, env_source_name, load_kafka_settings, load_settings
from publisher.config._schema import (
    PRODUCER_OPTIONS,
    ClusterConfig,
    CompressionType,
    Config,
    HttpConfig,
    KafkaConfig,
    SaslMechanism,
    SecurityProtocol,
    fills_topic,
    secret_fields,
    venue_of,
)
from publisher.config._secrets import MAX_SECRET_BYTES, MAX_TLS_FILE_BYTES, Settings

__all__ = [
    "ENV_PREFIX",
    "MAX_CONFIG_BYTES",
    "MAX_SECRET_BYTES",
    "MAX_TLS_FILE_BYTES",
    "PRODUCER_OPTIONS",
    "ClusterConfig",
    "CompressionType",
    "Config",
    "ConfigError",
    "HttpConfig",
    "KafkaConfig",
    "SaslMechanism",
    "SecurityProtocol",
    "SettingProblem",
    "Settings",
    "env_source_name",
    "fills_topic",
    "load_kafka_settings",
    "load_settings",
    "secret_fields",
    "venue_of",
]
