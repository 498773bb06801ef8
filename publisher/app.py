"""The running service: wires config -> venue adapters -> pollers -> sink, and owns the lifecycle.

Start-up order matters for exactly-once:
1. serve /healthz, /readyz (503) and /metrics at once, so probes and scrapes work while waiting;
2. initialise the transactional producer, retrying until Kafka answers (this fences an older
   instance and aborts its in-doubt transaction);
3. create missing topics (best effort), then restore every source's checkpoint with a
   read_committed consumer;
4. only then start polling; /readyz turns 200.

SIGTERM/SIGINT: stop polling, commit what is queued, exit 0 within 10 s. Fencing by another
instance: exit 3 at once, publishing nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import httpx

from publisher import __version__
from publisher.checkpoint import Checkpoint, read_checkpoints
from publisher.config import Settings, fills_topic
from publisher.endpoints import make_handler
from publisher.httpserver import HttpServer
from publisher.kafkaclient import consumer_options, ensure_topics
from publisher.metrics import Metrics
from publisher.poll import Backoff, Poller
from publisher.sink import ProducerFencedError, TransactionalSink
from publisher.state import SourceState
from publisher.venues import VENUES
from publisher.venues.transport import SourceTransport

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_FENCED = 3
#: SIGTERM: the contract gives 10 s to exit. Pollers get a moment to finish a poll, the sink the
#: rest of the budget to commit and stop its producer; the remainder covers process exit.
POLL_GRACE_S = 1.5
SHUTDOWN_BUDGET_S = 8.5
#: how long a cancelled start-up may take to clean up
STARTUP_CANCEL_S = 3.0


class Publisher:
    """One service instance. `serve()` runs it until `stop` is set or the producer is fenced."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)
        self.sink = TransactionalSink(settings.config.kafka, settings.sasl_password, self.metrics,
                                      ssl_key_password=settings.ssl_key_password)
        self.pollers: list[Poller] = []
        self.http: HttpServer | None = None
        self._restored = False

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """None when ready (/readyz 200), else what start-up waits for or what is wrong (its 503 body)."""
        if not self._restored:
            # the sink turns healthy once its producer is initialised, the step before the restore
            return "restoring checkpoints" if self.sink.healthy else "waiting for Kafka: producer not initialised"
        if not self.sink.healthy:
            return "Kafka unavailable: the last transaction failed or is taking too long"
        return None

    async def serve(self, stop: asyncio.Event) -> int:
        config = self.settings.config
        self.http = HttpServer(make_handler(self.metrics, self.not_ready_reason), config.http.host, config.http.port)
        await self.http.start()
        log.info("fill-publisher %s serving /metrics /healthz /readyz on %s", __version__, self.http.url)
        transports: list[SourceTransport] = []
        try:
            # start-up (producer, topics, checkpoints) retries for as long as Kafka is away, and
            # any step of it may hang on a stalled connection: SIGTERM must end it regardless
            startup = asyncio.create_task(self._start_up(stop), name="start-up")
            stopped = asyncio.create_task(stop.wait(), name="stop")
            await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not startup.done():
                startup.cancel()
                await asyncio.wait({startup}, timeout=STARTUP_CANCEL_S)
                log.info("stopped before start-up completed; nothing was fetched")
                return EXIT_OK
            checkpoints = startup.result()
            if checkpoints is None:
                return EXIT_OK
            self._build_pollers(checkpoints, transports)
            self._restored = True
            log.info("ready: %d sources polling", len(self.pollers))
            return await self._run(stop)
        except ProducerFencedError as exc:
            log.critical("exiting with status %d: %s", EXIT_FENCED, exc)
            return EXIT_FENCED
        finally:
            await self.sink.close(None, 1.0)
            for transport in transports:
                await transport.aclose()
            await self.http.close()

    async def _start_up(self, stop: asyncio.Event) -> dict[str, Checkpoint] | None:
        """Producer first (fences a zombie, aborts its in-doubt transaction), then checkpoints."""
        try:
            await self.sink.start(stop)
        except asyncio.CancelledError:
            if stop.is_set():
                return None
            raise
        return await self._restore(stop)

    async def _restore(self, stop: asyncio.Event) -> dict[str, Checkpoint] | None:
        """Create topics and read checkpoints, retrying until it works (None: stopped first)."""
        settings = self.settings
        kafka = settings.config.kafka
        names = [s.name for s in settings.config.sources]
        if kafka.create_topics:
            venues = sorted({s.venue_name for s in settings.config.sources})
            await ensure_topics(kafka, settings.sasl_password, [fills_topic(kafka, v) for v in venues],
                                ssl_key_password=settings.ssl_key_password)
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        while not stop.is_set():
            try:
                found = await asyncio.wait_for(
                    read_checkpoints(kafka.checkpoint_topic, names, consumer_options(kafka, settings.sasl_password,
                                                                                   settings.ssl_key_password)),
                    timeout=max(30.0, kafka.request_timeout_s * 2),
                )
            except Exception as exc:  # noqa: BLE001 - any failure: retry; polling must not start
                self.metrics.publish_errors.labels(reason="checkpoint_restore").inc()
                delay = backoff.next_delay()
                log.warning("restoring checkpoints failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            for source in settings.config.sources:
                checkpoint = found.get(source.name)
                if checkpoint is not None and checkpoint.venue != source.venue_name:
                    log.warning("source %s: checkpoint belongs to venue %s, not %s; starting fresh",
                                source.name, checkpoint.venue, source.venue_name, extra={"source": source.name})
                    found.pop(source.name)
                elif checkpoint is None:
                    log.warning("source %s: no checkpoint in %s; first start, publishing fills of the last %gs",
                                source.name, kafka.checkpoint_topic, source.lookback_s,
                                extra={"source": source.name})
            return found
        return None

    def _build_pollers(self, checkpoints: dict[str, Checkpoint], transports: list[SourceTransport]) -> None:
        settings = self.settings
        now_ns = time.time_ns()
        # one TLS context (httpx's default: certifi CAs, verification on) for every source: each
        # building its own costs ~0.8 MiB, 800 MiB for a thousand sources
        tls = httpx.create_ssl_context()
        for source in settings.config.sources:
            venue = VENUES[source.venue_name]
            transport = SourceTransport(source.base_url, tls)
            transports.append(transport)
            source_metrics = self.metrics.source(source.venue_name, source.name)
            adapter = venue.create_adapter(
                source, settings.source_secrets[source.name], transport, source_metrics.requests.inc
            )
            state = SourceState(source, checkpoints.get(source.name), now_ns)
            self.pollers.append(Poller(source, adapter, state, self.sink, source_metrics))

    async def _run(self, stop: asyncio.Event) -> int:
        sink_task = asyncio.create_task(self.sink.run(), name="sink")
        poll_tasks = [asyncio.create_task(p.run(stop), name=f"poll:{p.source.name}") for p in self.pollers]
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({sink_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stopping_since = time.monotonic()
        sink_error = sink_task.exception() if sink_task.done() else None
        fenced = isinstance(sink_error, ProducerFencedError)
        if sink_error is not None and not fenced:
            log.error("sink stopped unexpectedly", exc_info=sink_error)
        stop.set()
        stop_task.cancel()
        if fenced:
            # a zombie must not publish: no grace, nothing more handed to Kafka
            for task in poll_tasks:
                task.cancel()
            await asyncio.gather(*poll_tasks, return_exceptions=True)
            await self.sink.close(None, 1.0)
            log.critical("exiting with status %d: %s; %d fetched fills left to the instance that owns the "
                         "transactional id", EXIT_FENCED, sink_error, self.sink.pending_fills)
            return EXIT_FENCED
        # stop polling: a poll still waiting on the venue after the grace period is abandoned,
        # which loses nothing (it queued nothing yet); a poller held back by the capacity gate
        # (Kafka away) is abandoned the same way
        _, late = await asyncio.wait(poll_tasks, timeout=POLL_GRACE_S) if poll_tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*poll_tasks, return_exceptions=True)
        pending = self.sink.pending_fills
        budget = max(1.0, SHUTDOWN_BUDGET_S - (time.monotonic() - stopping_since))
        drained = await self.sink.close(sink_task, budget)
        if sink_error is not None:
            return EXIT_FAILED
        if drained:
            log.info("stopped: everything fetched was committed (%d fills were in flight at the signal)", pending)
        else:
            log.warning("stopped with %d fetched fills not committed (%s); their sources' "
                        "checkpoints did not move, so the next start fetches them again",
                        self.sink.pending_fills, self.sink.held or "Kafka unavailable")
        return EXIT_OK


def run(settings: Settings) -> int:
    """`fill-publisher run`: serve until SIGTERM/SIGINT; the process exit status."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await Publisher(settings).serve(stop)

    return asyncio.run(main())
