"""`fill-publisher demo` on this machine: fills flow from the simulators through the broker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness.stack import free_port

pytestmark = pytest.mark.integration


def test_demo_prints_fills_positions_and_a_summary() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "publisher", "demo", "--duration", "9", "--http-port", str(port)],
        capture_output=True, text=True, timeout=90,
    )
    out = done.stdout
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"http://127.0.0.1:{port}/metrics" in out
    fills = [line for line in out.splitlines() if re.match(r"\s+(kalshi|zll)\s+\S+-demo\s", line)]
    assert any(" kalshi " in f"{line} " for line in fills) and any(" zll " in f"{line} " for line in fills)
    assert "net positions" in out
    summary = out[out.index("summary"):]
    published = {m[0]: int(m[1]) for m in re.findall(r"(kalshi|zll)\s+published\s+(\d+)", summary)}
    assert published["kalshi"] > 0 and published["zll"] > 0
    seen = int(re.search(r"consumer saw (\d+) fills", summary)[1])  # type: ignore[index]
    # the consumer reads back exactly what was committed: no fill lost, none twice
    assert seen == sum(published.values())
    assert "Traceback" not in done.stderr
