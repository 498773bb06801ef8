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

    # the announced malformed fill is a new fill that reaches the DLQ in every run, and is printed
    to_dlq = {m[0]: int(m[1]) for m in re.findall(r"(kalshi|zll)\s+published.*?to DLQ\s+(\d+)", summary)}
    assert to_dlq == {"kalshi": 1, "zll": 0}, summary
    (dead,) = [i for i, line in enumerate(out.splitlines()) if re.match(r"\s+DLQ\s+kalshi-demo\s+error: ", line)]
    assert "raw (as the venue sent it): {" in out.splitlines()[dead + 1]
    assert "dead letters read back from fills.dlq: 1" in summary
    assert "duplicates: fills re-read in the overlap window" in summary

    # the view: column headers, a missing fee as `-`, seeded history labelled and left out of the lag
    assert re.search(r"^\s+VENUE\s+SOURCE\s+INSTRUMENT\s+SIDE\s+QUANTITY\s+PRICE\s+FEE\s+LAG$", out, re.M)
    assert not any(" None " in f"{line} " for line in fills)
    assert sum(line.endswith(" history") for line in fills) == 6
    lag_fills = int(re.search(r"over (\d+) fills \(the 6 history fills left out", summary)[1])  # type: ignore[index]
    assert lag_fills == seen - 6
    # not a terminal: no colour codes
    assert "\x1b[" not in out


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os
    import pty

    from publisher.demo import Style

    main, secondary = pty.openpty()
    with os.fdopen(secondary, "w") as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert Style.for_stdout().bold("x") == "\x1b[1mx\x1b[0m"
        monkeypatch.setenv("NO_COLOR", "1")
        assert Style.for_stdout().red("x") == "x"
    os.close(main)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert Style.for_stdout().dim("x") == "x"
