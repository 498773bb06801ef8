"""`python -m bench.endpoints [--uvicorn-path DIR]`: what the service's HTTP endpoints cost per server.

Each candidate serves the service's own handler (a registry with 20 sources' series) in a child
process; this process is the client (http.client). Measured from /proc/<pid>: the server's CPU
(user + system) per /metrics scrape (one keep-alive connection, as Prometheus scrapes; plain and
with the Accept/Accept-Encoding Prometheus sends) and per probe (a new connection per request, as
the kubelet probes), and its RSS after start, after the scrapes and with 100 idle connections.

Candidates: `handwritten` (the stdlib-streams server the simulators keep), `h11` (the service's
server), and `uvicorn` (an established ASGI server, h11 protocol, prometheus-client's ASGI app)
when `--uvicorn-path` points at a directory where uvicorn is installed (pip install --target).
Prints one JSON object per candidate; results are in bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}

_CHILD = """
import asyncio, sys
from publisher.endpoints import make_handler
from publisher.metrics import Metrics

kind = sys.argv[1]
metrics = Metrics()
for i in range(20):
    source = metrics.source("kalshi" if i % 2 else "zll", f"source-{i}")
    source.published.inc(1000 + i)
    source.lag.observe_many([0.2, 0.4, 1.1])
    source.poll_duration.observe(0.05)

async def main():
    if kind == "uvicorn":
        import uvicorn
        from prometheus_client import make_asgi_app
        metrics_app = make_asgi_app(metrics.registry)

        async def app(scope, receive, send):
            if scope["path"] == "/metrics":
                return await metrics_app(scope, receive, send)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"ok\\n"})

        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        print(sock.getsockname()[1], flush=True)
        config = uvicorn.Config(app, fd=None, log_level="warning", lifespan="off", access_log=False, http="h11")
        await uvicorn.Server(config).serve(sockets=[sock])
        return
    if kind == "h11":
        from publisher.httpserver import HttpServer
    else:
        from publisher.sim.httpserver import HttpServer
    server = HttpServer(make_handler(metrics, lambda: None))
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _measure(kind: str, scrapes: int, probes: int, env: dict[str, str]) -> dict[str, Any]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, kind], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env=env)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        time.sleep(0.5)
        result: dict[str, Any] = {"server": kind, "rss_start_mib": round(_rss_mib(child.pid), 1)}
        for label, headers in (("scrape_plain", {}), ("scrape_prometheus", PROMETHEUS_HEADERS)):
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/metrics", headers=headers)
            size = len(conn.getresponse().read())
            before = _cpu_s(child.pid)
            for _ in range(scrapes):
                conn.request("GET", "/metrics", headers=headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 200
            result[f"{label}_cpu_us"] = round((_cpu_s(child.pid) - before) / scrapes * 1e6)
            result[f"{label}_bytes"] = size
            conn.close()
        before = _cpu_s(child.pid)
        for _ in range(probes):
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/healthz", headers={"Connection": "close"})
            assert conn.getresponse().status == 200
            conn.close()
        result["probe_cpu_us"] = round((_cpu_s(child.pid) - before) / probes * 1e6)
        result["rss_after_mib"] = round(_rss_mib(child.pid), 1)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        time.sleep(0.5)
        result["rss_100_idle_mib"] = round(_rss_mib(child.pid), 1)
        for sock in idle:
            sock.close()
        return result
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvicorn-path", help="a directory where uvicorn is installed (pip install --target)")
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="the median round per figure is kept")
    args = parser.parse_args()
    kinds = ["handwritten", "h11"]
    env = dict(os.environ)
    if args.uvicorn_path:
        kinds.append("uvicorn")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), args.uvicorn_path])
    for kind in kinds:
        rounds = [_measure(kind, args.scrapes, args.probes, env) for _ in range(args.rounds)]
        median = {key: sorted(r[key] for r in rounds)[len(rounds) // 2] if key != "server" else kind
                  for key in rounds[0]}
        print(json.dumps(median), flush=True)


if __name__ == "__main__":
    main()
