"""`python -m publisher.healthcheck`: the container's HEALTHCHECK, on the port the service serves.

The port is `FILLPUB_HTTP__PORT` if set, else `http.port` of the config file (`--config`, default
the image's `/etc/fill-publisher/config.yaml`), else the default 9108; the host is the config's
`http.host` unless it listens on every address, then 127.0.0.1. Exit 0 when `/healthz` answers
200, 1 otherwise. The file is read as plain YAML: no secret is read and nothing is validated (a
bad config is `run`'s business, with exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import yaml

DEFAULT_CONFIG = "/etc/fill-publisher/config.yaml"
DEFAULT_PORT = 9108
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def healthz_url(config_path: str, environ: Mapping[str, str] = os.environ) -> str:
    """Where the service's `/healthz` is, from the environment and the config file."""
    http: dict[str, Any] = {}
    try:
        with open(config_path, encoding="utf-8") as fh:
            document = yaml.safe_load(fh)
        if isinstance(document, dict) and isinstance(document.get("http"), dict):
            http = document["http"]
    except (OSError, yaml.YAMLError):
        pass  # the defaults, as the service itself would use without an http: section
    port = environ.get("FILLPUB_HTTP__PORT") or http.get("port") or DEFAULT_PORT
    host = str(environ.get("FILLPUB_HTTP__HOST") or http.get("host") or "")
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{int(port)}/healthz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m publisher.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH")
    parser.add_argument("--timeout", type=float, default=4.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    url = healthz_url(args.config)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as answer:
            healthy = answer.status == 200
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
