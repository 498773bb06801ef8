"""`python -m bench [--quick] [--only NAMES] [--profile DIR]`: the benchmarks, one table.

Every piece runs in a process of its own so the publisher's CPU is measured honestly: the
embedded broker (librdkafka mock), the simulators (bench.simserver), the counting consumer
(bench.consumer), the ceiling producer (bench.ceiling) and the publisher (bench.pubchild, which is
`fill-publisher run` plus outside-in measurement). Publisher CPU and RSS come from /proc/<pid>.
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from publisher.embedded_broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTITIONS = 64


# ----------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


class CpuShares:
    """Who used the machine's CPU: each named process and all cores together, read at moments
    chosen by the caller, so a row can say whether the machine, not the process measured, was the limit."""

    def __init__(self, **pids: int | None):
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}

    def read(self) -> dict[str, float]:
        """CPU seconds so far: `machine` (all cores) and each named process."""
        return {"machine": machine_busy_s(), **{name: cpu_s(pid) for name, pid in self._pids.items()}}

    @staticmethod
    def between(first: dict[str, float], last: dict[str, float], wall_s: float) -> str:
        """`1.90 of 2 cores busy: publisher 0.95, simulators 0.40, ...` (cores used on average)."""
        used = {name: (last[name] - first[name]) / max(1e-9, wall_s) for name in first}
        parts = ", ".join(f"{name} {cores:.2f}" for name, cores in used.items() if name != "machine")
        return f"{used['machine']:.2f} of {os.cpu_count()} cores busy: {parts}"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Child:
    """A bench child process whose first stdout line is its readiness (or a JSON description)."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, stdin: bool = False,
                 log: Path | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stderr=open(log, "ab") if log else None,  # noqa: SIM115 - owned by the child
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout_s: float = 120) -> str:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise RuntimeError(f"{self.proc.args} said nothing within {timeout_s}s")
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"{self.proc.args} exited with {self.proc.wait()}")
        return text.strip()

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout_s: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def http(method: str, url: str, body: Any = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def metric(port: int, name: str) -> float:
    text = http("GET", f"http://127.0.0.1:{port}/metrics").decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name) and line.split("{")[0].split(" ")[0] == name)


@dataclass
class Env:
    broker: EmbeddedBroker
    tmp: Path
    profile: Path | None
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str, value: str, target: str = "", verdict: str = "") -> None:
        self.rows.append((name, value, target, verdict))
        print(f"  {name}: {value}  {target} {verdict}", flush=True)

    def topics(self, prefix: str) -> dict[str, str]:
        names = {"kalshi": f"{prefix}fills.kalshi", "zll": f"{prefix}fills.zll",
                 "dlq": f"{prefix}fills.dlq", "checkpoint": f"{prefix}checkpoints"}
        for kind, name in names.items():
            self.broker.create_topic(name, PARTITIONS if kind in ("kalshi", "zll") else 1)
        return names


def sims(env: Env, name: str, **spec: Any) -> tuple[Child, dict[str, Any]]:
    spec = {"key_dir": str(env.tmp / f"{name}-keys"), **spec}
    child = Child("bench.simserver", json.dumps(spec), log=env.tmp / f"{name}-sim.log")
    return child, json.loads(child.line(600))


def source_entries(info: dict[str, Any], n_kalshi: int, n_zll: int, subaccounts: int, **settings: Any) -> list[dict[str, Any]]:
    out = []
    keys = len(info["kalshi_key_ids"])
    for i in range(n_kalshi):
        # as a firm has it: a key serves `subaccounts` subaccounts (up to 64), so more sources need
        # more keys; two sources reading one subaccount of one key are a config error (overlap)
        key = min(i // subaccounts, keys - 1)
        out.append({"name": f"kalshi-{i}", "venue": "kalshi", "base_url": info["kalshi"][i % len(info["kalshi"])],
                    "api_key_id": info["kalshi_key_ids"][key], "private_key_file": info["kalshi_key_files"][key],
                    "subaccount": i % subaccounts if subaccounts > 1 else 0, **settings})
    for i in range(n_zll):
        out.append({"name": f"zll-{i}", "venue": "zll", "base_url": info["zll"][i % len(info["zll"])],
                    "api_key_file": info["zll_key_file"], "subaccount_index": i % subaccounts, **settings})
    return out


def publisher(env: Env, name: str, topics: dict[str, str], sources: list[dict[str, Any]],
              latency: bool = False, cluster: dict[str, Any] | None = None, **kafka: Any) -> tuple[Child, int, Path]:
    port = free_port()
    config = {
        "kafka": {"bootstrap_servers": env.broker.bootstrap_servers, "topic_template": topics["kalshi"].replace("kalshi", "{venue}"),
                  "dlq_topic": topics["dlq"], "checkpoint_topic": topics["checkpoint"],
                  "transactional_id_prefix": f"bench-{name}", "check_crcs": False, "create_topics": False, **kafka},
        "http": {"host": "127.0.0.1", "port": port},
        **({"cluster": cluster} if cluster else {}),
        "sources": sources,
    }
    path = env.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    stats = env.tmp / f"{name}-stats.json"
    child = Child("bench.pubchild", str(path), str(stats), env={"BENCH_LATENCY": "1" if latency else "0"},
                  log=env.tmp / f"{name}-publisher.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            # the log is in a temporary folder removed on the way out: show its end here
            tail = "\n".join((env.tmp / f"{name}-publisher.log").read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"publisher {name} exited; its log ends:\n{tail}")
        try:
            http("GET", f"http://127.0.0.1:{port}/readyz")
            return child, port, stats
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"publisher {name} not ready")


def consumer(env: Env, name: str, topics: list[str], expect: int = 0, latency: bool = False) -> tuple[Child, Path]:
    out = env.tmp / f"{name}-consumer.json"
    spec = {"bootstrap": env.broker.bootstrap_servers, "topics": topics, "expect": expect, "out": str(out),
            "latency": latency, "timeout_s": 900, "idle_s": 8}
    child = Child("bench.consumer", json.dumps(spec), log=env.tmp / f"{name}-consumer.log")
    assert child.line(60) == "ready"
    return child, out


class Profiler:
    """py-spy record of a pid while a phase runs (raw collapsed stacks), when --profile is given."""

    def __init__(self, env: Env, name: str, pid: int):
        self.proc = None
        self.path = None
        if env.profile is not None:
            env.profile.mkdir(parents=True, exist_ok=True)
            self.path = env.profile / f"{name}.txt"
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--format", "raw",
                 "--rate", "200", "--nonblocking", "-o", str(self.path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
            print(f"  profile: {self.path}  (summarise: python -m bench.profile {self.path})", flush=True)


# -------------------------------------------------------------------------------------- benchmarks


def bench_ceiling(env: Env, n: int) -> float:
    print("ceiling: raw aiokafka transactional produce", flush=True)
    best = 0.0
    for mode in ("send", "batch"):
        topics = env.topics(f"c{mode}.")
        cons, out = consumer(env, f"ceiling-{mode}", [topics["kalshi"]], expect=n)
        prod = Child("bench.ceiling", json.dumps({"bootstrap": env.broker.bootstrap_servers, "topic": topics["kalshi"],
                                                  "n": n, "txn": 20_000, "mode": mode}), stdin=True)
        assert prod.line(300) == "ready"
        shares = CpuShares(producer=prod.pid, consumer=cons.pid, broker=env.broker.pid)
        before = shares.read()
        prod.say("go")
        result = json.loads(prod.line(600))
        machine = CpuShares.between(before, shares.read(), result["elapsed_s"])
        cons.proc.wait(600)
        seen = json.loads(out.read_text())
        # all records are committed when the producer returns; the consumer confirms delivery
        # (it can fall behind the mock's ~5 MiB/partition retention at this rate, hence "counted")
        rate = n / result["elapsed_s"]
        api = "send() per record" if mode == "send" else "create_batch()/send_batch() per partition"
        env.row(f"ceiling: {api}, {n:,} records, value {result['value_bytes']:.0f} B",
                f"{rate:,.0f} rec/s committed ({seen['count']:,} counted by the consumer); "
                f"producer CPU {result['cpu_s'] / n * 1e6:.0f} ms/1k records")
        env.row("  machine CPU while producing", machine)
        best = max(best, rate)
        prod.stop()
    return best


def bench_throughput(env: Env, total: int, ceiling: float) -> None:
    print("throughput: backlog drain", flush=True)
    per = total // 10
    sim, info = sims(env, "tp", kalshi=5, kalshi_keys=5, zll=5, backlog=per, span_s=240)
    topics = env.topics("tp.")
    cons, out = consumer(env, "tp", [topics["kalshi"], topics["zll"]], expect=total)
    sources = source_entries(info, 5, 5, 1, poll_interval_s=1.0, lookback_s=300, page_limit=1000,
                             max_requests_per_s=100, timeout_s=30)
    pub, port, stats_path = publisher(env, "tp", topics, sources)
    t_ready, cpu0 = time.time_ns(), cpu_s(pub.pid)
    shares = CpuShares(publisher=pub.pid, simulators=sim.pid, consumer=cons.pid, broker=env.broker.pid)
    prof = Profiler(env, "throughput", pub.pid)
    samples = [(t_ready, shares.read())]
    rereads: list[tuple[int, float]] = []  # scraped twice a second: the count when the drain ended
    while cons.proc.poll() is None:
        time.sleep(0.05)
        samples.append((time.time_ns(), shares.read()))
        if len(samples) % 10 == 0:
            rereads.append((time.time_ns(), metric(port, "fillpub_fills_duplicate_total")))
    prof.stop()
    rereads.append((time.time_ns(), metric(port, "fillpub_fills_duplicate_total")))
    pub.stop()
    sim.stop()
    seen = json.loads(out.read_text())
    # the clock stops when the last fill is committed, as the ceiling's does; the consumer, which
    # shares the machine, only confirms delivery
    timeline = json.loads(stats_path.read_text())["timeline"]
    end = next((t for t, count in timeline if count >= total), seen["last_ns"])
    t_end, at_end = next(((t, c) for t, c in samples if t >= end), samples[-1])
    cpu_end = at_end["publisher"]
    reread = next(count for t, count in rereads if t >= end)
    elapsed = (end - t_ready) / 1e9
    rate = total / elapsed
    ratio = rate / ceiling
    env.row(f"throughput: {total:,} fills, 10 sources, page 1000",
            f"{rate:,.0f} fills/s committed ({elapsed:.1f} s; {seen['count']:,} counted by the consumer)")
    env.row("throughput / ceiling", f"{ratio:.0%}", ">= 50%", "PASS" if ratio >= 0.5 else "GAP")
    env.row("publisher CPU per 1,000 fills", f"{(cpu_end - cpu0) / total * 1000 * 1000:.1f} ms")
    env.row("  machine CPU while draining", CpuShares.between(samples[0][1], at_end, (t_end - t_ready) / 1e9))
    env.row("  fills re-read (already published) while draining", f"{reread:,.0f} ({reread / total:.1f} per new fill)")


def bench_latency(env: Env, interval: float, duration: float, lookback: float) -> None:
    print(f"latency: poll interval {interval}s", flush=True)
    name = f"lat{str(interval).replace('.', '')}"
    sim, info = sims(env, name, kalshi=5, kalshi_keys=5, zll=5, rate_per_s=100)
    topics = env.topics(f"{name}.")
    cons, out = consumer(env, name, [topics["kalshi"], topics["zll"]], latency=True)
    sources = source_entries(info, 5, 5, 1, poll_interval_s=interval, lookback_s=lookback, page_limit=1000,
                             max_requests_per_s=100)
    pub, port, stats_path = publisher(env, name, topics, sources, latency=True)
    time.sleep(5)
    t0, cpu0 = time.time_ns(), cpu_s(pub.pid)
    prof = Profiler(env, name, pub.pid)
    time.sleep(duration)
    t1, cpu1 = time.time_ns(), cpu_s(pub.pid)
    prof.stop()
    n_txn = metric(port, "fillpub_commit_duration_seconds_count")
    commit_ms = metric(port, "fillpub_commit_duration_seconds_sum") / max(1, n_txn) * 1000
    for root in [*info["kalshi_root"], *info["zll"]]:
        http("DELETE", root + "/_sim/generator")
    time.sleep(interval + 3)
    pub.stop()
    cons.stop()
    sim.stop()
    stats = json.loads(stats_path.read_text())
    seen = json.loads(out.read_text())
    commits = stats["commits"]
    e2e, recv = [], []
    for fill_id, recv_ns, executed in seen["samples"]:
        if t0 <= executed < t1:
            recv.append((recv_ns - executed) / 1e6)
            committed = commits.get(fill_id)
            if committed is not None:
                e2e.append((max(recv_ns, committed) - executed) / 1e6)
    share = [ms for t, ms, n in stats["share"] if t0 / 1e9 <= t < t1 / 1e9 and n]
    budget = interval * 1000 + 100
    p99 = pct(e2e, 99)
    env.row(f"latency @ {interval}s poll, 1,000 fills/s, lookback {lookback:g}s: p50 / p99 / max",
            f"{pct(e2e, 50):.0f} / {p99:.0f} / {max(e2e, default=float('nan')):.0f} ms ({len(e2e):,} fills)",
            f"p99 <= {budget:.0f} ms", "PASS" if p99 <= budget else "GAP")
    env.row(f"  pipeline share (fetch done -> committed) @ {interval}s: p50 / p99",
            f"{pct(share, 50):.1f} / {pct(share, 99):.1f} ms ({len(share)} batches; "
            f"mean Kafka transaction {commit_ms:.1f} ms over {n_txn:.0f})",
            "p99 <= 20 ms", "PASS" if pct(share, 99) <= 20 else "GAP")
    env.row(f"  publisher CPU @ {interval}s", f"{(cpu1 - cpu0) / ((t1 - t0) / 1e9):.0%} of one core")


def bench_scale(env: Env, n_sources: int, duration: float) -> None:
    print(f"scale: {n_sources} sources at 1 s", flush=True)
    half = n_sources // 2
    ksim, kinfo = sims(env, "scale-k", kalshi=2, subaccounts=64, rate_per_s=5, kalshi_keys=-(-half // 64))
    zsim, zinfo = sims(env, "scale-z", zll=2, subaccounts=half // 2, rate_per_s=5)
    info = {**kinfo, "zll": zinfo["zll"], "zll_key_file": zinfo["zll_key_file"]}
    topics = env.topics("sc.")
    sources = source_entries(info, half, n_sources - half, 64, poll_interval_s=1.0, max_requests_per_s=10)
    for entry in sources:
        if entry["venue"] == "zll":
            entry["subaccount_index"] = int(entry["name"].split("-")[1]) % (half // 2)
    pub, port, stats_path = publisher(env, "scale", topics, sources)
    time.sleep(10)
    t0, cpu0 = time.time(), cpu_s(pub.pid)
    prof = Profiler(env, "scale", pub.pid)
    rss = []
    while time.time() < t0 + duration:
        time.sleep(1)
        rss.append(rss_mib(pub.pid))
    t1, cpu1 = time.time(), cpu_s(pub.pid)
    prof.stop()
    errors = metric(port, "fillpub_poll_errors_total")
    pub.stop()
    ksim.stop()
    zsim.stop()
    stats = json.loads(stats_path.read_text())
    delays = [d * 1000 for t, d in stats["delays"] if t0 <= t < t1]
    polls = sum(1 for starts in stats["starts"].values() for t in starts if t0 <= t < t1)
    gaps = [b - a for starts in stats["starts"].values() for a, b in itertools.pairwise(starts) if t0 <= a and b < t1]
    cpu = (cpu1 - cpu0) / (t1 - t0)
    mean_gap = sum(gaps) / max(1, len(gaps))
    kept = mean_gap <= 1.1  # polls that overrun make the next one due at once: no "delay", but no schedule
    env.row(f"scale: {n_sources} sources @ 1 s: publisher CPU", f"{cpu:.0%} of one core", "< 100% (not saturated)",
            "PASS" if cpu < 0.95 else "GAP")
    env.row("  RSS (max)", f"{max(rss):.0f} MiB")
    env.row("  poll start delay p50 / p99 / max", f"{pct(delays, 50):.1f} / {pct(delays, 99):.1f} / {max(delays, default=0):.0f} ms",
            "p99 < 100 ms", "PASS" if pct(delays, 99) < 100 and kept else "GAP")
    env.row("  polls per source per s / mean gap between poll starts",
            f"{polls / n_sources / (t1 - t0):.2f} / {mean_gap:.3f} s; poll errors {errors:.0f}",
            "1 / 1.0 s", "PASS" if kept else "GAP")


def bench_scaleout(env: Env, n_sources: int, duration: float, counts: tuple[int, ...] = (1, 2),
                   shards: int = 16) -> None:
    """The same sources served by 1, then 2, ... publisher processes sharing `shards` shards
    (`cluster.shards`), one after the other on one machine: per process, polls on schedule and
    CPU; for the fleet, polls and fills per second. Each run is the others' baseline."""
    print(f"scale-out: {n_sources} sources over {shards} shards, {counts} processes", flush=True)
    half = n_sources // 2
    ksim, kinfo = sims(env, "so-k", kalshi=2, subaccounts=64, rate_per_s=5, kalshi_keys=-(-half // 64))
    zsim, zinfo = sims(env, "so-z", zll=2, subaccounts=half // 2, rate_per_s=5)
    info = {**kinfo, "zll": zinfo["zll"], "zll_key_file": zinfo["zll_key_file"]}
    sources = source_entries(info, half, n_sources - half, 64, poll_interval_s=1.0, max_requests_per_s=10)
    for entry in sources:
        if entry["venue"] == "zll":
            entry["subaccount_index"] = int(entry["name"].split("-")[1]) % (half // 2)
    try:
        for count in counts:
            prefix = f"so{count}."
            topics = env.topics(prefix)
            # the checkpoint topic of a sharded deployment: one partition per shard
            checkpoints = f"{prefix}checkpoints-sharded"
            env.broker.create_topic(checkpoints, shards)
            topics = {**topics, "checkpoint": checkpoints}
            pubs = [publisher(env, f"scaleout-{count}-{i}", topics, sources, transactional_id_prefix=f"bench-so{count}",
                              cluster={"shards": shards}) for i in range(count)]
            deadline = time.monotonic() + 120
            while sum(metric(port, "fillpub_shards_owned") for _, port, _ in pubs) != shards \
                    or any(_readyz(port) != 200 for _, port, _ in pubs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{count} publishers never shared the {shards} shards")
                time.sleep(0.2)
            time.sleep(10)
            owned = [int(metric(port, "fillpub_shards_owned")) for _, port, _ in pubs]
            cpus = CpuShares(**{f"p{i}": child.pid for i, (child, _, _) in enumerate(pubs)},
                          simulators_k=ksim.pid, simulators_z=zsim.pid, broker=env.broker.pid)
            published0 = sum(metric(port, "fillpub_fills_published_total") for _, port, _ in pubs)
            t0, first = time.time(), cpus.read()
            time.sleep(duration)
            t1, last = time.time(), cpus.read()
            published1 = sum(metric(port, "fillpub_fills_published_total") for _, port, _ in pubs)
            errors = sum(metric(port, "fillpub_poll_errors_total") for _, port, _ in pubs)
            for child, _, _ in pubs:
                child.stop()
            starts: dict[str, list[float]] = {}
            delays: list[float] = []
            for _, _, stats_path in pubs:
                stats = json.loads(stats_path.read_text())
                for name, times in stats["starts"].items():
                    starts.setdefault(name, []).extend(t for t in times if t0 <= t < t1)
                delays += [d * 1000 for t, d in stats["delays"] if t0 <= t < t1]
            polls = sum(len(times) for times in starts.values())
            per_process = [(last[f"p{i}"] - first[f"p{i}"]) / (t1 - t0) for i in range(count)]
            env.row(f"scale-out: {count} process{'es' if count > 1 else ''} x {n_sources} sources, {shards} shards",
                    f"shards per process {owned}; polls per source per s {polls / n_sources / (t1 - t0):.2f}; "
                    f"fills/s {(published1 - published0) / (t1 - t0):.0f}; poll errors {errors:.0f}")
            env.row("  CPU per process / poll start delay p50 / p99",
                    f"{' + '.join(f'{c:.0%}' for c in per_process)} of a core / {pct(delays, 50):.1f} / "
                    f"{pct(delays, 99):.1f} ms")
            env.row("  machine", CpuShares.between(first, last, t1 - t0))
    finally:
        ksim.stop()
        zsim.stop()


def _readyz(port: int) -> int:
    try:
        http("GET", f"http://127.0.0.1:{port}/readyz")
        return 200
    except OSError:
        return 503


def bench_memory(env: Env, quick: bool) -> None:
    print("memory", flush=True)
    n = 200_000 if quick else 1_000_000
    result = json.loads(subprocess.run([sys.executable, "-m", "bench.memchild", str(n), "300"], cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout)
    env.row(f"dedupe state, {n:,} fills over 300 s (tracemalloc)", f"{result['bytes_per_fill']:.0f} B/fill",
            "< 200 B/fill", "PASS" if result["bytes_per_fill"] < 200 else "GAP")
    env.row("  RSS growth", f"{result['rss_growth_per_fill']:.0f} B/fill; process max RSS {result['max_rss_mib']:.0f} MiB")
    env.row("  checkpoint carrying that window", f"{result['checkpoint_bytes'] / 1e6:.1f} MB, encoded in {result['checkpoint_encode_ms']:.0f} ms")
    # a Kafka outage: the broker stalls (SIGSTOP) while fills keep arriving
    limit = 100_000
    sim, info = sims(env, "outage", kalshi=5, kalshi_keys=5, zll=5)
    topics = env.topics("out.")
    offered = 120_000
    cons, out = consumer(env, "outage", [topics["kalshi"], topics["zll"]], expect=offered)
    sources = source_entries(info, 5, 5, 1, poll_interval_s=1.0, lookback_s=60, page_limit=1000, max_requests_per_s=100)
    pub, port, _ = publisher(env, "outage", topics, sources, max_pending_fills=limit)
    time.sleep(2)
    rss_before = rss_mib(pub.pid)
    env.broker.pause()
    roots = [*info["kalshi_root"], *info["zll"]]
    try:
        for _ in range(offered // (len(roots) * 1500)):
            for root in roots:
                http("POST", root + "/_sim/fills", {"n": 1500})
            time.sleep(1)
        deadline = time.monotonic() + 30
        pending = 0.0
        while time.monotonic() < deadline:
            pending = metric(port, "fillpub_pending_fills")
            if pending >= limit:
                break
            time.sleep(0.5)
        time.sleep(3)
        rss_at_limit = max(rss_mib(pub.pid) for _ in range(5) if not time.sleep(0.4))
        pending = metric(port, "fillpub_pending_fills")
    finally:
        env.broker.resume()
    t_resume = time.time_ns()
    cons.proc.wait(240)
    seen = json.loads(out.read_text())
    env.row(f"outage at the backlog limit ({limit:,}): pending / RSS",
            f"{pending:,.0f} fills pending; RSS {rss_at_limit:.0f} MiB (before outage {rss_before:.0f} MiB)")
    env.row("  after the broker resumed", f"{seen['count']:,} of {offered:,} fills delivered in "
            f"{(seen['last_ns'] - t_resume) / 1e9:.1f} s")
    pub.stop()
    sim.stop()


def bench_instructions(env: Env, quick: bool) -> None:
    print("instructions per fill (callgrind)", flush=True)
    n = 1000 if quick else 2000
    try:
        counts = json.loads(subprocess.run([sys.executable, "-m", "bench.instructions", str(n)], cwd=ROOT,
                                           capture_output=True, text=True, check=True).stdout)
    except (subprocess.CalledProcessError, ValueError) as exc:
        detail = exc.stderr.strip().splitlines()[-1] if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        env.row("instructions per fill", f"not measured: {detail}")
        return
    pipeline = counts["new"] + counts["records"] + counts["commit"]
    env.row(f"instructions per fill ({n:,} Kalshi + {n:,} ZLL fills, no I/O): ceiling's record building",
            f"{counts['ceiling']:,.0f}")
    env.row("  poll, new fill (request, decode, normalise, dedupe, checkpoint)", f"{counts['new']:,.0f}")
    env.row("  poll, re-read fill (already published)", f"{counts['reread']:,.0f}")
    env.row("  sink: encode and build the record batches", f"{counts['records']:,.0f}")
    env.row("  commit callbacks (counters, lag histogram)", f"{counts['commit']:,.0f}")
    env.row("  ceiling / pipeline per new fill (re-reads excluded)", f"{counts['ceiling'] / pipeline:.0%}")


def summarise(env: Env) -> str:
    lines = ["| benchmark | measured | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in env.rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs (a smoke test)")
    parser.add_argument("--only", default="ceiling,throughput,latency,scale,scaleout,memory,instructions")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the publisher into this folder")
    parser.add_argument("--latency-lookback", type=float, default=30.0)
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    quick = args.quick
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fillpub-bench-") as tmp, EmbeddedBroker(1) as broker:
        env = Env(broker, Path(tmp), args.profile)
        total = 50_000 if quick else 200_000
        ceiling = 0.0
        if "ceiling" in only or "throughput" in only:
            ceiling = bench_ceiling(env, total)
        if "throughput" in only:
            bench_throughput(env, total, ceiling)
        if "latency" in only:
            for interval in (1.0, 0.2):
                bench_latency(env, interval, 8 if quick else 20, args.latency_lookback)
        if "scale" in only:
            bench_scale(env, 200 if quick else 1000, 10 if quick else 30)
        if "scaleout" in only:
            bench_scaleout(env, 200 if quick else 1000, 10 if quick else 30)
        if "memory" in only:
            bench_memory(env, quick)
        if "instructions" in only:
            bench_instructions(env, quick)
        print()
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
              f"bench took {time.monotonic() - started:.0f} s; command: python -m bench {' '.join(argv or sys.argv[1:])}")
        print(summarise(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
