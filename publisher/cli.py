"""The `fill-publisher` command: run, demo, check-config, status, audit, reshard, schema (and `--version`).

A bad config or an unreadable secret ends the process with status 2 and one line on stderr,
`fill-publisher: config error: <field>: <problem>`, never a traceback and never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from publisher import __version__, logs
from publisher.config import ConfigError, Settings, fills_topic, load_settings, secret_fields, venue_of
from publisher.venues import VENUES

PROG = "fill-publisher"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

RUN_EPILOG = """\
environment:
  FILLPUB_<SECTION>__<KEY>        overrides a kafka:, http: or cluster: setting of the file,
                                  e.g. FILLPUB_KAFKA__BOOTSTRAP_SERVERS=kafka-0:9092
  FILLPUB_SOURCES__<NAME>__<KEY>  overrides a setting of the source NAME (upper case,
                                  - and . as _), e.g. FILLPUB_SOURCES__KALSHI_MAIN__PAGE_LIMIT=500
  FILLPUB_LOG_LEVEL               DEBUG, INFO (default), WARNING, ERROR, CRITICAL
  FILLPUB_LOG_FORMAT              text (default) or json (one object per line)
  HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY
                                  the proxy for venue requests (http or https proxies)

exit status:
  0  stopped by SIGTERM/SIGINT after committing what was in flight
  2  config error or unreadable secret (one line on stderr names the field)
  3  fenced: another instance took the Kafka transactional id (without cluster.shards > 1;
     see docs/runbooks.md)
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also what `--help` shows)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Polls trading venues' fills endpoints and publishes every fill exactly once to Kafka."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the service until SIGTERM/SIGINT", epilog=RUN_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", required=True, metavar="PATH", help="YAML config file")

    demo = commands.add_parser(
        "demo", help="simulated venues, an embedded broker and the publisher on this machine, no set-up"
    )
    demo.add_argument("--duration", type=_positive_float, metavar="SECONDS", help="stop by itself after this long")
    demo.add_argument("--http-port", type=_port, metavar="PORT", help="port for /metrics, /healthz, /readyz")

    check = commands.add_parser(
        "check-config", help="validate a config and read its secrets (--connect: also try the venues and Kafka)",
        epilog="exit status: 0 ok, 1 a --connect check failed, 2 config error",
    )
    check.add_argument("--config", required=True, metavar="PATH", help="YAML config file")
    check.add_argument("--connect", action="store_true",
                       help="ask each source's venue for its fills from now on (one page; an oldest-first ZLL list "
                            "a few) and Kafka for its metadata; publishes nothing")

    status = commands.add_parser(
        "status", help="each source's committed checkpoint: shard, watermark, dedupe window, when written",
        epilog="exit status: 0 ok, 1 Kafka could not be read, 2 config error",
    )
    status.add_argument("--config", required=True, metavar="PATH", help="YAML config file")
    status.add_argument("--json", action="store_true", help="a JSON array of {source, shard, watermark, "
                        "window_fills, written_at}")

    commands.add_parser("schema", help="print the JSON Schema of the published event")

    reshard = commands.add_parser(
        "reshard", help="offline, every instance stopped: move each source's checkpoint to where the config's "
                        "cluster.shards keeps it (fences every instance of the old layout first)",
        epilog="exit status: 0 done, 1 Kafka failed (run it again), 2 config error",
    )
    reshard.add_argument("--config", required=True, metavar="PATH", help="the NEW YAML config file")
    reshard.add_argument("--dry-run", action="store_true", help="print what would move; fence and write nothing")

    audit = commands.add_parser("audit", help="compare the venues' fills with the committed records on Kafka")
    audit.add_argument("--config", required=True, metavar="PATH", help="YAML config file")
    audit.add_argument("--source", action="append", default=[], metavar="NAME", help="audit only this source (repeatable)")
    audit.add_argument("--since", type=_positive_float, metavar="SECONDS", help="window length (default: lookback_s)")
    audit.add_argument("--json", action="store_true", help="print the contract's JSON document")
    return parser


def _load(path: str) -> Settings:
    settings = load_settings(path)
    # defence in depth: even a careless log call cannot print these
    for secret in settings.source_secrets.values():
        logs.register_secret(secret.reveal())
    for kafka_secret in (settings.sasl_password, settings.ssl_key_password):
        if kafka_secret is not None:
            logs.register_secret(kafka_secret.reveal())
    return settings


def _summary(path: str, settings: Settings) -> str:
    """What check-config prints: where things go and where secrets come from, never their values."""
    config = settings.config
    kafka = config.kafka
    topics = sorted({fills_topic(kafka, venue_of(s)) for s in config.sources})
    lines = [
        f"config OK: {path}",
        f"kafka: bootstrap_servers={kafka.bootstrap_servers} security_protocol={kafka.security_protocol}",
        f"  topics: {', '.join(topics)}; dlq {kafka.dlq_topic}; checkpoints {kafka.checkpoint_topic}",
        f"  transactional_id_prefix={kafka.transactional_id_prefix}",
        f"http: {config.http.host}:{config.http.port}",
    ]
    from publisher.shards import layout  # noqa: PLC0415 - Kafka's partitioner (aiokafka): not for --version

    shards = layout(config)
    if shards.grouped:
        lines.append(f"cluster: {len(shards.shards)} shards, consumer group {shards.group_id}"
                     + (f", static member {config.cluster.instance_id}" if config.cluster.instance_id else ""))
    lines.append(f"sources ({len(config.sources)}):")
    for source in config.sources:
        file_field, env_field = secret_fields(source)
        origin = (
            f"{file_field}={getattr(source, file_field)}"
            if getattr(source, file_field) is not None
            else f"{env_field}={getattr(source, env_field)}"
        )
        describe = VENUES.of(source).describe_secret
        kind = f", {describe(settings.source_secrets[source.name])}" if describe is not None else ""
        shard = f" shard={shards.shard_of_source(source.name)}" if shards.grouped else ""
        lines.append(f"  {source.name}: venue={venue_of(source)}{shard} base_url={source.base_url} {origin} "
                     f"(secret ok{kind})")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from publisher.event import json_schema_text  # noqa: PLC0415 - keep the CLI start light

        sys.stdout.write(json_schema_text())
        return 0
    try:
        logs.configure_logging()
    except ValueError as exc:  # an unknown FILLPUB_LOG_LEVEL; the message names the variable
        return _config_error(exc)
    try:
        if args.command == "check-config":
            settings = _load(args.config)
            print(_summary(args.config, settings), flush=True)
            return _connect(settings) if args.connect else EXIT_OK
        if args.command == "status":
            return _status(_load(args.config), args.json)
        if args.command == "run":
            settings = _load(args.config)
            from publisher.app import run  # noqa: PLC0415 - heavy (Kafka, HTTP clients): only when actually running

            return run(settings)
        if args.command == "reshard":
            return _reshard(_load(args.config), args.dry_run)
        if args.command == "audit":
            from publisher.audit import main as audit_main  # noqa: PLC0415 - heavy, as for run

            return audit_main(_load(args.config), args.source, args.since, args.json)
        if args.command == "demo":
            from publisher.demo import main as demo_main  # noqa: PLC0415 - needs the demo extra

            return demo_main(args.duration, args.http_port)
    except ConfigError as exc:
        return _config_error(exc)
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse accepts only the above


def _connect(settings: Settings) -> int:
    from publisher.probe import check_all  # noqa: PLC0415 - Kafka and HTTP clients: only for --connect

    print("connecting (nothing is published):", flush=True)
    checks = asyncio.run(check_all(settings))
    for check in checks:
        print(f"  {check.line()}")
    return EXIT_OK if all(check.ok for check in checks) else EXIT_FAILED


def _status(settings: Settings, as_json: bool) -> int:
    from publisher.status import read_status, render  # noqa: PLC0415 - the Kafka client: only for status

    timeout = settings.config.kafka.request_timeout_s * 2
    try:
        statuses = asyncio.run(asyncio.wait_for(read_status(settings), timeout))
    except TimeoutError:
        print(f"{PROG}: kafka: no answer from {settings.config.kafka.bootstrap_servers} within {timeout:g}s",
              file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - whatever Kafka's client raised, said in one line
        print(logs.redact(f"{PROG}: kafka: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    print(render(statuses, as_json))
    return EXIT_OK


def _reshard(settings: Settings, dry_run: bool) -> int:
    from publisher.reshard import reshard  # noqa: PLC0415 - Kafka clients: only for reshard

    shards = settings.config.cluster.shards
    print(f"{'planning' if dry_run else 'resharding'} to {shards} shard{'s' if shards > 1 else ''} "
          f"(checkpoint topic {settings.config.kafka.checkpoint_topic}):", flush=True)
    try:
        moves = asyncio.run(reshard(settings, dry_run=dry_run))
    except Exception as exc:  # noqa: BLE001 - whatever Kafka's client raised, said in one line
        print(logs.redact(f"{PROG}: kafka: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    for move in moves:
        print(f"  {move.line()}")
    moved = sum(1 for m in moves if m.moves)
    print(f"{'would move' if dry_run else 'moved'} {moved} checkpoint{'s' if moved != 1 else ''}"
          + ("" if dry_run else "; every instance of the old layout is fenced: start the new one"))
    return EXIT_OK


def _config_error(exc: Exception) -> int:
    print(f"{PROG}: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: runs the command and exits with its status."""
    sys.exit(_main(argv))
