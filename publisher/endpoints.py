"""The service's own HTTP surface: /metrics, /healthz, /readyz, 404 elsewhere, 405 for other methods.

HEAD is answered like GET (the server leaves the body out). /metrics negotiates its format and
compression with prometheus-client's own exposition helpers: OpenMetrics when the Accept header
asks for it, gzip when Accept-Encoding does, and `?name[]=` restricts it to the named series.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from prometheus_client.exposition import choose_encoder, gzip_accepted

from publisher.httpserver import Handler, Request, Response
from publisher.metrics import Metrics

_TEXT = "text/plain; charset=utf-8"

#: None when ready, else a short reason saying what the service waits for
Readiness = Callable[[], str | None]


def make_handler(metrics: Metrics, readiness: Readiness) -> Handler:
    """A request handler serving the three contract paths.

    /healthz answers from the event loop itself, so a wedged loop shows up as a probe timeout;
    /readyz is 200 when `readiness()` returns None, else 503 with the reason it returned.
    """

    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", _TEXT, [("Allow", "GET, HEAD")])
        if request.path == "/metrics":
            return scrape(metrics, request)
        if request.path == "/healthz":
            return Response(200, b"ok\n", _TEXT)
        if request.path == "/readyz":
            reason = readiness()
            if reason is None:
                return Response(200, b"ready\n", _TEXT)
            return Response(503, f"not ready: {reason}\n".encode(), _TEXT)
        return Response(404, b"not found\n", _TEXT)

    return handle


def scrape(metrics: Metrics, request: Request) -> Response:
    """The registry in the format and encoding the request negotiates."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    registry = metrics.registry
    names = request.query.get("name[]")
    body = encoder(registry.restricted_registry(names) if names else registry)
    headers = [("Vary", "Accept, Accept-Encoding")]
    if gzip_accepted(request.headers.get("accept-encoding", "")):
        # level 1: a scrape is small and frequent, CPU matters more than the last few bytes
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    return Response(200, body, content_type, headers)
