"""Run `fill-publisher run` as a real child process against simulators and a broker.

:class:`Stack` owns the pieces a delivery test needs: simulators (in the test's event loop), their
credentials written to files, a config file with test-unique topic names, and the publisher as a
child process that receives real SIGTERM/SIGKILL. Expected fills come from the simulators'
canonical stores; delivered fills come from the raw log (see :mod:`tests.harness.delivery`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from publisher.sim.base import Simulator
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator
from tests.harness.delivery import LogRecord, committed, fill_id_header, read_log

NS = 1_000_000_000


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float = 30.0,
    *,
    interval_s: float = 0.1,
    context: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` (sync or async) until it holds; AssertionError naming `what` after `timeout_s`.

    `context` adds diagnostics (e.g. the publisher's log tail) to the failure message.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{extra}")
        await asyncio.sleep(interval_s)


def secret_needles(secrets: Iterable[str]) -> list[str]:
    """What must never appear in output: each secret whole, and each line of a multi-line one
    (a PEM body line leaked alone is still a leak); PEM armour lines are public and left out."""
    needles: set[str] = set()
    for secret in secrets:
        needles.add(secret.strip())
        needles.update(line.strip() for line in secret.splitlines()
                       if line.strip() and not line.startswith("-----"))
    return sorted(needles, key=len, reverse=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SourceSpec:
    """One configured source and the simulator (and filter) whose fills it should publish."""

    name: str
    sim: Simulator[Any]
    settings: dict[str, Any]
    #: which of the simulator's fills belong to this source
    subaccount: int | None = None

    def owns(self, fill: Any) -> bool:
        if self.subaccount is None:
            return True
        if isinstance(self.sim, ZllSimulator):
            return fill.subaccount_index == self.subaccount
        return (fill.subaccount or 0) == self.subaccount


class PublisherProcess:
    """`python -m publisher run --config PATH` in a child process, logs to a file."""

    def __init__(self, config_path: Path, log_path: Path, http_port: int, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.http_port = http_port
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PublisherProcess:
        env = {**os.environ, "FILLPUB_LOG_LEVEL": "INFO", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "publisher", "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def get(self, path: str) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return await client.get(self.url + path)
        except httpx.HTTPError:
            return None

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"publisher exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            response = await self.get("/readyz")
            if response is not None and response.status_code == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"publisher not ready after {timeout_s}s:\n{self.logs()[-3000:]}")

    async def metrics_text(self) -> str:
        """The current /metrics exposition."""
        response = await self.get("/metrics")
        assert response is not None and response.status_code == 200
        return response.text

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` matching `labels` in the current exposition."""
        response = await self.get("/metrics")
        assert response is not None and response.status_code == 200
        total = 0.0
        for line in response.text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    async def terminate(self, timeout_s: float = 15.0) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await self._wait(timeout_s)
        return code, time.monotonic() - started

    async def kill(self) -> int:
        assert self.proc is not None
        self.proc.kill()
        return await self._wait(10)

    async def _wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"publisher did not exit within {timeout_s}s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.logs()[-chars:]

    def log_lines(self, *needles: str) -> list[str]:
        """Log lines containing every one of `needles`."""
        return [line for line in self.logs().splitlines() if all(n in line for n in needles)]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Stack:
    """Config, credentials and topics for one test; see the module docstring."""

    tmp: Path
    bootstrap: str
    prefix: str
    sources: list[SourceSpec] = field(default_factory=list)
    kafka_extra: dict[str, Any] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    #: further config sections (e.g. `cluster`)
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def topics(self) -> dict[str, str]:
        return {
            "kalshi": f"{self.prefix}fills.kalshi",
            "zll": f"{self.prefix}fills.zll",
            "dlq": f"{self.prefix}fills.dlq",
            "checkpoint": f"{self.prefix}checkpoints",
        }

    async def kalshi(self, name: str, sim: KalshiSimulator | None = None, *, subaccount: int | None = None,
                     **settings: Any) -> KalshiSimulator:
        """Add a Kalshi source (and a simulator unless one is shared)."""
        key_id = str(uuid.uuid4())
        private_pem, public_pem = generate_key_pair()
        if sim is None:
            sim = KalshiSimulator(public_key=public_pem, key_id=key_id, shape="mixed", seed=len(self.sources))
            await sim.start()
        else:
            sim.add_key(key_id, public_pem)
        key_file = self.tmp / f"{name}.pem"
        key_file.write_bytes(private_pem + b"\n")
        entry = {"name": name, "venue": "kalshi", "base_url": sim.url, "api_key_id": key_id,
                 "private_key_file": str(key_file), **settings}
        if subaccount is not None:
            entry["subaccount"] = subaccount
        self.sources.append(SourceSpec(name, sim, entry, subaccount))
        return sim

    async def zll(self, name: str, *, order: str = "newest", listing: str = "sorted", subaccount: int = 0,
                  **settings: Any) -> ZllSimulator:
        """Add a ZLL source with a simulator of its own (`order`, `listing`: see ZllSimulator)."""
        api_key = base64.b64encode(os.urandom(24)).decode()
        sim = ZllSimulator(api_key=api_key, order=order, listing=listing, subaccounts=(subaccount,),  # type: ignore[arg-type]
                           seed=100 + len(self.sources))
        await sim.start()
        key_file = self.tmp / f"{name}.key"
        key_file.write_text(api_key + "\n")
        entry = {"name": name, "venue": "zll", "base_url": sim.url, "api_key_file": str(key_file),
                 "subaccount_index": subaccount, **settings}
        self.sources.append(SourceSpec(name, sim, entry, subaccount))
        return sim

    def write_config(self, **kafka: Any) -> Path:
        topics = self.topics
        config = {
            "kafka": {
                "bootstrap_servers": self.bootstrap,
                "topic_template": f"{self.prefix}fills.{{venue}}",
                "dlq_topic": topics["dlq"],
                "checkpoint_topic": topics["checkpoint"],
                "transactional_id_prefix": f"{self.prefix}publisher",
                "check_crcs": False,
                **self.kafka_extra,
                **kafka,
            },
            "http": {"host": "127.0.0.1", "port": self.http_port},
            **self.sections,
            "sources": [s.settings for s in self.sources],
        }
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def publisher(self, **kafka: Any) -> PublisherProcess:
        return PublisherProcess(self.write_config(**kafka), self.tmp / "publisher.log", self.http_port)

    def secrets(self) -> list[str]:
        """Every source's secret as the publisher reads it (file text, surrounding whitespace stripped)."""
        out = []
        for spec in self.sources:
            for key in ("private_key_file", "api_key_file"):
                if key in spec.settings:
                    out.append(Path(spec.settings[key]).read_text().strip())
        return out

    async def records(self, *names: str) -> list[LogRecord]:
        """Committed records of the named topics (`kalshi`, `zll`, `dlq`, `checkpoint`)."""
        return committed(await read_log(self.bootstrap, [self.topics[n] for n in names]))

    async def wait_for_fills(self, expected_ids: Iterable[str], timeout_s: float = 30.0) -> list[LogRecord]:
        """Committed fills records, read again until every expected id is among them (or time runs out:
        the caller's exactly-once check then reports what is missing)."""
        wanted = set(expected_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            records = await self.records("kalshi", "zll")
            if wanted <= {fill_id_header(r) for r in records} or time.monotonic() > deadline:
                return records
            await asyncio.sleep(0.3)

    def expected(self, since_ns: int) -> dict[str, tuple[SourceSpec, Any]]:
        """fill id -> (source, canonical fill) for every visible fill executed at or after `since_ns`."""
        out: dict[str, tuple[SourceSpec, Any]] = {}
        for spec in self.sources:
            for fill in spec.sim.fills:
                if fill.executed_at_ns >= since_ns and spec.owns(fill):
                    out[fill.fill_id] = (spec, fill)
        return out

    async def close(self) -> None:
        seen: set[int] = set()
        for spec in self.sources:
            if id(spec.sim) in seen:
                continue
            seen.add(id(spec.sim))
            await spec.sim.stop_generator()
            await spec.sim.close()
