"""The service's own HTTP surface: /metrics, /healthz, /readyz, and 404 for anything else."""

from __future__ import annotations

from collections.abc import Callable

from publisher.httpserver import Handler, Request, Response
from publisher.metrics import CONTENT_TYPE, Metrics

_TEXT = "text/plain; charset=utf-8"


def make_handler(metrics: Metrics, is_ready: Callable[[], bool]) -> Handler:
    """A request handler serving the three contract paths.

    /healthz answers from the event loop itself, so a wedged loop shows up as a probe timeout;
    /readyz is 200 only once checkpoints are restored and the producer is connected and healthy.
    """

    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", _TEXT, [("Allow", "GET, HEAD")])
        if request.path == "/metrics":
            return Response(200, metrics.exposition(), CONTENT_TYPE)
        if request.path == "/healthz":
            return Response(200, b"ok\n", _TEXT)
        if request.path == "/readyz":
            if is_ready():
                return Response(200, b"ready\n", _TEXT)
            return Response(503, b"not ready\n", _TEXT)
        return Response(404, b"not found\n", _TEXT)

    return handle
