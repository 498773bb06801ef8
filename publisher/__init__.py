"""fill-publisher: polls venues' fills endpoints and publishes each fill exactly once to Kafka."""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml is the one place the version is written
    __version__ = version("fill-publisher")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
