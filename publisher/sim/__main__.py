"""Run one venue simulator standalone: `python -m publisher.sim kalshi|zll --key-dir DIR ...`.

Used by docker-compose and by out-of-process tests and benchmarks. Credentials live in `--key-dir`
and are created on first start: Kalshi `kalshi-private.pem` (mode 0600; the publisher signs with
it), `kalshi-public.pem` (the simulator verifies with it) and `kalshi-key-id`; ZLL `zll-api-key`.
One line with the venue's base URL is printed when the simulator is ready; it then runs until
SIGTERM or SIGINT. The `/_sim/` control surface is unauthenticated: keep it on a test network.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import secrets
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Literal

from publisher.sim.base import Simulator
from publisher.sim.kalshi import SHAPE_MODES, KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # create with the final mode from the start: a private key is never readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def kalshi_credentials(key_dir: Path, kind: Literal["rsa", "ed25519"] = "rsa") -> tuple[str, bytes]:
    """(key id, public key PEM) from `key_dir`, generating the key pair (of `kind`) and id when
    missing; a key already there is used whatever its kind."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private, public, key_id = (key_dir / name for name in ("kalshi-private.pem", "kalshi-public.pem", "kalshi-key-id"))
    if not private.exists() or not public.exists():
        private_pem, public_pem = generate_key_pair(kind)
        for path in (private, public):
            path.unlink(missing_ok=True)
        _write_new(private, private_pem, 0o600)
        _write_new(public, public_pem, 0o644)
    if not key_id.exists():
        _write_new(key_id, f"{uuid.uuid4()}\n".encode(), 0o644)
    return key_id.read_text().strip(), public.read_bytes()


def zll_api_key(key_dir: Path) -> str:
    """The ZLL API key from `key_dir`, generating a random base64 one when missing."""
    key_dir.mkdir(parents=True, exist_ok=True)
    path = key_dir / "zll-api-key"
    if not path.exists():
        _write_new(path, base64.b64encode(secrets.token_bytes(32)) + b"\n", 0o600)
    return path.read_text().strip()


def build(args: argparse.Namespace) -> Simulator:
    """The simulator the command line asks for (not started)."""
    key_dir = Path(args.key_dir)
    if args.venue == "kalshi":
        key_id, public_pem = kalshi_credentials(key_dir, args.key_kind)
        cutoff_age_s = args.fills_cutoff_age_s
        return KalshiSimulator(
            public_key=public_pem,
            key_id=key_id,
            shape=args.shape,
            max_limit=args.max_limit,
            exchange_indexes=args.exchange_indexes,
            fills_cutoff_ns=None if cutoff_age_s is None else time.time_ns() - int(cutoff_age_s * 1e9),
            host=args.host,
            port=args.port,
            seed=args.seed,
        )
    return ZllSimulator(
        api_key=zll_api_key(key_dir),
        order=args.order,
        listing=args.listing,
        pinned_subaccount=args.pinned_subaccount,
        max_limit=args.max_limit,
        host=args.host,
        port=args.port,
        seed=args.seed,
    )


def _indexes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="python -m publisher.sim", description="Run a venue simulator.")
    venues = top.add_subparsers(dest="venue", required=True)
    for venue, port in (("kalshi", 8081), ("zll", 8082)):
        sub = venues.add_parser(venue, help=f"simulate {venue}")
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=port)
        sub.add_argument("--key-dir", required=True, help="where credentials are read or created")
        sub.add_argument("--fills-per-s", type=float, default=2.0, help="background fills a second (0: none)")
        sub.add_argument("--late-fraction", type=float, default=0.0, help="share of late fills")
        sub.add_argument("--burst-size", type=int, default=1, help="fills sharing one execution time")
        sub.add_argument("--seed", type=int, default=None)
        sub.add_argument("--max-limit", type=int, default=1000, help="largest page the venue serves")
        if venue == "kalshi":
            sub.add_argument("--shape", choices=SHAPE_MODES, default="mixed")
            sub.add_argument("--key-kind", choices=("rsa", "ed25519"), default="rsa",
                             help="the kind of key pair created in --key-dir (an existing one is kept)")
            sub.add_argument("--fills-cutoff-age-s", type=float, default=None, metavar="SECONDS",
                             help="fills executed longer ago than this at start are on the historical endpoint "
                                  "only (default: none; POST /_sim/cutoff moves it)")
            sub.add_argument("--exchange-indexes", type=_indexes, default=(0,), metavar="N,N,...",
                             help="exchange_index shards the fills are spread over (default: 0)")
        else:
            sub.add_argument("--order", choices=("newest", "oldest"), default="newest")
            sub.add_argument("--listing", choices=("sorted", "insertion"), default="sorted",
                             help="sorted by time (a database index) or in the order fills arrived")
            sub.add_argument("--pinned-subaccount", type=int, default=None)
    return top


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with build(args) as sim:
        if args.fills_per_s > 0:
            sim.start_generator(args.fills_per_s, late_fraction=args.late_fraction, burst_size=args.burst_size)
        print(f"{args.venue} simulator listening on {sim.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # e.g. the port is taken: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
