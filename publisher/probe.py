"""`fill-publisher check-config --connect`: prove a config works, publishing nothing.

Each source's venue is asked for the fills executed from now on, through the real adapter and
connection pool the service would use (signing, API key, proxy, TLS verification): one fills page
for Kalshi (and its fills cutoff) and for a ZLL venue listing newest first; a ZLL venue listing
oldest first has no time filter, so the adapter gallops to the end of its list (a few pages, about
log2 of the list's pages). The line says how many requests it took. Kafka is asked for its
metadata with the service's client settings. Each check ends with `ok` or the cause, one line each.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
from aiokafka.client import AIOKafkaClient

from publisher.config import Settings, fills_topic
from publisher.kafkaclient import client_options
from publisher.logs import redact
from publisher.venues import VENUES
from publisher.venues.base import SourceConfig
from publisher.venues.errors import VenueError
from publisher.venues.transport import SourceTransport


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, and `None` for ok or the cause."""

    what: str
    problem: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        if self.ok:
            return f"{self.what}: ok{f' ({self.detail})' if self.detail else ''}"
        return f"{self.what}: {self.problem}"


def _cause(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return redact(" ".join(text.split()))


async def check_source(settings: Settings, source: SourceConfig) -> Check:
    """Fetch what `source`'s venue shows from now on through the service's adapter (see the module
    docstring for how many pages that is)."""
    what = f"source {source.name} ({source.venue_name} {source.base_url})"
    transport = SourceTransport(source.base_url, httpx.create_ssl_context())
    requests = 0

    def count() -> None:
        nonlocal requests
        requests += 1

    adapter = VENUES.of(source).adapter(source, settings.source_secrets[source.name], transport, count)
    try:
        now_ns = time.time_ns()
        # the adapter's own timeouts bound each request; this bounds a venue that trickles pages
        await asyncio.wait_for(adapter.fetch(now_ns, None, time.time_ns), timeout=source.timeout_s * 3)
    except VenueError as exc:
        return Check(what, f"{exc.reason}: {redact(str(exc))}")
    except TimeoutError:
        return Check(what, f"timeout: no answer within {source.timeout_s * 3:g}s")
    except Exception as exc:  # noqa: BLE001 - the report names whatever went wrong
        return Check(what, _cause(exc))
    finally:
        await adapter.aclose()
        await transport.aclose()
    return Check(what, None, f"{requests} request{'s' if requests != 1 else ''}")


async def check_kafka(settings: Settings) -> Check:
    """Metadata from the cluster, and whether the topics the service writes exist."""
    kafka = settings.config.kafka
    what = f"kafka {kafka.bootstrap_servers}"
    options = client_options(kafka, settings.sasl_password, settings.ssl_key_password)
    options["client_id"] = f"{kafka.client_id}-check"
    client = AIOKafkaClient(**options)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=kafka.request_timeout_s)
        cluster = await asyncio.wait_for(client.fetch_all_metadata(), timeout=kafka.request_timeout_s)
    except TimeoutError:
        return Check(what, f"timeout: no metadata within {kafka.request_timeout_s:g}s")
    except Exception as exc:  # noqa: BLE001 - the report names whatever went wrong
        return Check(what, _cause(exc))
    finally:
        await client.close()
    sources: list[SourceConfig] = list(settings.config.sources)
    venues = sorted({s.venue_name for s in sources})
    wanted = [*(fills_topic(kafka, v) for v in venues), kafka.dlq_topic, kafka.checkpoint_topic]
    missing = [t for t in wanted if not cluster.partitions_for_topic(t)]
    brokers = len(cluster.brokers())
    if missing and not kafka.create_topics:
        return Check(what, f"topics missing and create_topics is off: {', '.join(missing)}")
    detail = f"{brokers} broker{'s' if brokers != 1 else ''}; " + (
        f"topics to be created at start: {', '.join(missing)}" if missing else "all topics exist")
    return Check(what, None, detail)


async def check_all(settings: Settings) -> list[Check]:
    """Every source's check, in config order, then Kafka's; all run at once."""
    sources: list[SourceConfig] = list(settings.config.sources)
    checks = [check_source(settings, s) for s in sources]
    return list(await asyncio.gather(*checks, check_kafka(settings)))
