"""Real Apache Kafka for tests: fetch the broker jars with Maven, run KRaft clusters on loopback.

librdkafka's mock cluster (the fast tests, the demo) cannot show what exactly-once rests on:
read_committed filtering, fencing, the abort of a dead producer's open transaction, the log
cleaner, leader fail-over. This module runs the real broker without Docker:

- :func:`fetch` resolves `org.apache.kafka:kafka_2.13` (:data:`KAFKA_VERSION`) and an slf4j
  binding for log4j2 with `mvn dependency:copy-dependencies` from a generated POM into a cache
  outside the work tree (`~/.cache/fill-publisher/kafka/<version>/libs`, or
  `$FILLPUB_KAFKA_CACHE/<version>/libs`); a second run fetches nothing.
  `python -m tests.harness.kafka fetch` does it ahead of a test run (CI).
- :class:`KafkaCluster` starts n combined broker+controller nodes (static quorum voters, free
  loopback ports, storage formatted with `kafka.tools.StorageTool`, log4j2 at WARN into a file per
  node), optionally with a SASL_SSL listener (SCRAM-SHA-512 users created at format time, the
  test PKI), and is ready once Metadata lists every node and one transactional round trip
  (produce, commit, read back read_committed) worked. Nodes can be stopped, SIGKILLed, frozen and
  started again; :meth:`KafkaCluster.leader_of` and :meth:`KafkaCluster.coordinator_of` say
  which node to hit.
- :func:`read_committed` and :func:`count_fills` are the plain consumer's judgement of delivery:
  what an application reading with `isolation.level=read_committed` sees.

:func:`unavailable_reason` says why the real broker cannot run here (no java, no mvn and no cached
jars); the fixtures skip with that reason, or fail when `FILLPUB_REQUIRE_REAL_KAFKA=1` (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import ConsumerRecord

from tests.harness.stack import free_port
from tests.harness.tls import Pki

KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
#: log4j2 comes with the broker; its slf4j (1.x) binding does not, and the broker logs through slf4j
LOG4J_VERSION = "2.25.5"
CACHE_ENV = "FILLPUB_KAFKA_CACHE"
REQUIRE_ENV = "FILLPUB_REQUIRE_REAL_KAFKA"
SCRAM_MECHANISM = "SCRAM-SHA-512"
_COMPLETE = ".complete"
_JVM_OPTS = ["-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fill-publisher.tests</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version><scope>runtime</scope></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %c: %m%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
"""


# -- jars ----------------------------------------------------------------------------------------

def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "fill-publisher" / "kafka"


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / version / "libs"


def cached(version: str = KAFKA_VERSION) -> bool:
    return (libs_dir(version) / _COMPLETE).exists()


def unavailable_reason(version: str = KAFKA_VERSION) -> str | None:
    """Why the real broker cannot run here, or None."""
    if shutil.which("java") is None:
        return f"real Kafka tests need a Java runtime (java not on PATH) to run Apache Kafka {version}"
    if not cached(version) and shutil.which("mvn") is None:
        return (f"real Kafka tests need Maven (mvn not on PATH) to fetch the Apache Kafka {version} jars "
                f"into {libs_dir(version)}")
    return None


def fetch(version: str = KAFKA_VERSION) -> Path:
    """The broker's jars, fetched with Maven into the cache unless they are there already.

    Fetched into a temporary sibling directory and renamed into place, so an interrupted fetch
    never looks complete; concurrent fetches (several test runs) are harmless, the last rename
    wins with identical content.
    """
    libs = libs_dir(version)
    if cached(version):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=libs.parent))
    try:
        (work / "pom.xml").write_text(_POM.format(scala=SCALA_VERSION, kafka=version, log4j=LOG4J_VERSION))
        target = work / "libs"
        result = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={target}"],
            capture_output=True, text=True, timeout=900,
        )
        jars = list(target.glob("*.jar")) if target.exists() else []
        if result.returncode != 0 or not any(j.name == f"kafka_{SCALA_VERSION}-{version}.jar" for j in jars):
            raise RuntimeError(f"mvn could not fetch Apache Kafka {version} (exit {result.returncode}):\n"
                               f"{(result.stdout + result.stderr)[-3000:]}")
        (target / _COMPLETE).write_text(f"kafka_{SCALA_VERSION} {version}\n")
        if libs.exists():
            shutil.rmtree(libs, ignore_errors=True)
        with contextlib.suppress(OSError):  # another run put identical jars there first
            target.rename(libs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not cached(version):
        raise RuntimeError(f"fetching Apache Kafka {version} left no complete copy in {libs}")
    return libs


def _classpath(version: str) -> str:
    return f"{libs_dir(version)}/*"


# -- cluster -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScramUser:
    name: str
    password: str


@dataclass
class SaslSsl:
    """A SASL_SSL listener with SCRAM-SHA-512 users, on every node of the cluster."""

    pki: Pki
    users: list[ScramUser]


@dataclass
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    home: Path
    sasl_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def log_path(self) -> Path:
        """The broker's WARN-and-above log (log4j2)."""
        return self.home / "server.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster:
    """n combined broker+controller KRaft nodes on 127.0.0.1; see the module docstring.

    Replication follows the node count: one node gets replication factor 1 and min ISR 1 for
    everything (aiokafka's transactional producer hangs otherwise), three nodes get 3 and 2.
    `broker_config` adds or overrides server properties on every node.
    """

    def __init__(self, home: Path, nodes: int = 1, *, sasl_ssl: SaslSsl | None = None,
                 broker_config: dict[str, str] | None = None, version: str = KAFKA_VERSION):
        self.home = home
        self.version = version
        self.sasl_ssl = sasl_ssl
        self.broker_config = broker_config or {}
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes = [
            KafkaNode(i, free_port(), free_port(), home / f"node-{i}",
                      free_port() if sasl_ssl is not None else None)
            for i in range(1, nodes + 1)
        ]
        #: seconds each start of the whole cluster took until ready (fetch excluded)
        self.ready_after_s: float | None = None

    # ---------------------------------------------------------------- addresses

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        assert self.sasl_ssl is not None, "cluster has no SASL_SSL listener"
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    # ---------------------------------------------------------------- configuration

    def _properties(self, node: KafkaNode) -> dict[str, str]:
        n = len(self.nodes)
        replication = str(min(n, 3))
        min_isr = "1" if n < 3 else "2"
        listeners = [f"PLAINTEXT://127.0.0.1:{node.port}", f"CONTROLLER://127.0.0.1:{node.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{node.port}"]
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in self.nodes),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "log.dirs": str(node.home / "data"),
            "num.partitions": "1",
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "3",
            "transaction.state.log.segment.bytes": str(1024 * 1024),
            "group.initial.rebalance.delay.ms": "0",
            # shard tests detect a dead instance within a 3 s group session (Kafka's default floor is 6 s)
            "group.min.session.timeout.ms": "3000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            "log.cleaner.backoff.ms": "500",
            "num.recovery.threads.per.data.dir": "1",
            # a fast fail-over in tests: shorter broker session and liveness checks
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "500",
            "controller.quorum.election.timeout.ms": "1000",
            "controller.quorum.fetch.timeout.ms": "2000",
            "replica.lag.time.max.ms": "5000",
            "leader.imbalance.check.interval.seconds": "5",
            "auto.create.topics.enable": "true",
        }
        if self.sasl_ssl is not None:
            pki = self.sasl_ssl.pki
            listeners.append(f"SASL_SSL://127.0.0.1:{node.sasl_port}")
            advertised.append(f"SASL_SSL://127.0.0.1:{node.sasl_port}")
            keystore = node.home / "keystore.pem"
            keystore.write_text(Path(pki.server_key).read_text() + Path(pki.server_cert).read_text())
            props.update({
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(keystore),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": pki.cafile,
                "ssl.client.auth": "none",
            })
        props["listeners"] = ",".join(listeners)
        props["advertised.listeners"] = ",".join(advertised)
        props.update(self.broker_config)
        return props

    def _write_config(self, node: KafkaNode) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text("".join(f"{k}={v}\n" for k, v in self._properties(node).items()))
        (node.home / "log4j2.properties").write_text(_LOG4J2.format(path=node.log_path))

    def _java(self, node: KafkaNode, main: str, *args: str) -> list[str]:
        return ["java", *_JVM_OPTS, f"-Dlog4j2.configurationFile={node.home / 'log4j2.properties'}",
                "-cp", _classpath(self.version), main, *args]

    def _format_command(self, node: KafkaNode) -> list[str]:
        args = ["format", "-t", self.cluster_id, "-c", str(node.config_path), "--ignore-formatted"]
        for user in self.sasl_ssl.users if self.sasl_ssl is not None else []:
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user.name},password={user.password}]"]
        return self._java(node, "kafka.tools.StorageTool", *args)

    # ---------------------------------------------------------------- lifecycle

    async def start(self, timeout_s: float = 120.0) -> KafkaCluster:
        """Format every node's storage (in parallel), start them, wait until ready."""
        fetch(self.version)
        started = time.monotonic()
        for node in self.nodes:
            self._write_config(node)
        formats = [await asyncio.create_subprocess_exec(
            *self._format_command(node), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            for node in self.nodes]
        for node, proc in zip(self.nodes, formats, strict=True):
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                # the output names the users but not their passwords, which stay in argv only
                raise RuntimeError(f"formatting node {node.node_id} failed:\n{out.decode(errors='replace')[-2000:]}")
        for node in self.nodes:
            self._spawn(node)
        await self.wait_ready(timeout_s)
        self.ready_after_s = time.monotonic() - started
        return self

    def _spawn(self, node: KafkaNode) -> None:
        out = open(node.home / "stdout.log", "ab")  # noqa: SIM115 - the child owns it from here
        node.proc = subprocess.Popen(self._java(node, "kafka.Kafka", str(node.config_path)),
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    async def start_node(self, node_id: int, timeout_s: float = 60.0) -> float:
        """Start a stopped or killed node again (same ports, same data); seconds until Metadata
        lists it again."""
        node = self.node(node_id)
        assert not node.alive, f"node {node_id} is running"
        started = time.monotonic()
        self._spawn(node)
        # the others keep listing a dead node until its broker session expires: ask the node itself
        await self._wait_nodes({node_id}, timeout_s, via=node)
        return time.monotonic() - started

    def kill_node(self, node_id: int) -> None:
        """SIGKILL: no controlled shutdown, no leadership hand-over."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(30)

    async def stop_node(self, node_id: int, timeout_s: float = 30.0) -> None:
        """SIGTERM: controlled shutdown (leaderships moved away first); SIGKILL after `timeout_s`."""
        node = self.node(node_id)
        if node.proc is None or node.proc.poll() is not None:
            return
        node.proc.terminate()
        deadline = time.monotonic() + timeout_s
        while node.proc.poll() is None:
            if time.monotonic() > deadline:
                node.proc.kill()
            await asyncio.sleep(0.1)

    def pause_node(self, node_id: int) -> None:
        proc = self.node(node_id).proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def resume_node(self, node_id: int) -> None:
        proc = self.node(node_id).proc
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Kill every node (tests keep nothing), leaving logs and data for a failed test's reader."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait(30)

    def __enter__(self) -> KafkaCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, chars: int = 2000) -> str:
        out = []
        for node in self.nodes:
            for path in (node.log_path, node.home / "stdout.log"):
                if path.exists():
                    out.append(f"--- node {node.node_id} {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    # ---------------------------------------------------------------- readiness and lookups

    def _client(self, via: KafkaNode | None = None) -> AIOKafkaClient:
        bootstrap = f"127.0.0.1:{via.port}" if via is not None else self._alive_bootstrap()
        return AIOKafkaClient(bootstrap_servers=bootstrap, client_id="kafka-harness", request_timeout_ms=10000)

    def _alive_bootstrap(self) -> str:
        alive = [f"127.0.0.1:{n.port}" for n in self.nodes if n.alive]
        return ",".join(alive) or self.bootstrap

    async def _wait_nodes(self, node_ids: set[int], timeout_s: float, via: KafkaNode | None = None) -> None:
        """Until Metadata from a live node (or from `via`) lists the nodes `node_ids`."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None and node.node_id in node_ids:
                    raise RuntimeError(f"node {node.node_id} exited with {node.proc.returncode}\n{self.log_tail()}")
            client = self._client(via)
            try:
                await client.bootstrap()
                listed = {b.nodeId for b in (await client.fetch_all_metadata()).brokers()}
                if node_ids <= listed:
                    return
                last = f"metadata lists {sorted(listed)}"
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            finally:
                await client.close()
            await asyncio.sleep(0.3)
        raise TimeoutError(f"nodes {sorted(node_ids)} not listed after {timeout_s}s ({last})\n{self.log_tail()}")

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Every live node in Metadata, then one transactional round trip read back read_committed
        (creates the transaction state topic, which an open port says nothing about)."""
        deadline = time.monotonic() + timeout_s
        await self._wait_nodes({n.node_id for n in self.nodes if n.alive}, timeout_s)
        topic = "harness.warmup"
        while True:
            try:
                await asyncio.wait_for(self._warm_up(topic), max(1.0, deadline - time.monotonic()))
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"warm-up transaction failed: {exc!r}\n{self.log_tail()}") from exc
                await asyncio.sleep(0.5)

    async def _warm_up(self, topic: str) -> None:
        marker = uuid.uuid4().hex.encode()
        # a short transaction timeout: tests may give the broker a small transaction.max.timeout.ms
        producer = AIOKafkaProducer(bootstrap_servers=self._alive_bootstrap(), transactional_id="harness-warmup",
                                    enable_idempotence=True, acks="all", request_timeout_ms=10000,
                                    transaction_timeout_ms=10000)
        try:
            await producer.start()
            async with producer.transaction():
                await producer.send_and_wait(topic, marker)
        finally:
            await producer.stop()
        records = await read_committed(self._alive_bootstrap(), [topic])
        if marker not in {r.value for r in records}:
            raise RuntimeError("warm-up record not visible to read_committed")

    async def leader_of(self, topic: str, partition: int) -> int:
        """The node leading `topic`[`partition`] now."""
        client = self._client()
        await client.bootstrap()
        try:
            cluster = await client.fetch_all_metadata()
            leader = cluster.leader_for_partition(TopicPartition(topic, partition))
        finally:
            await client.close()
        if leader is None or leader < 0:
            raise RuntimeError(f"{topic}[{partition}] has no leader")
        return int(leader)

    async def coordinator_of(self, transactional_id: str) -> int:
        """The node acting as transaction coordinator for `transactional_id` now."""
        client = self._client()
        await client.bootstrap()
        try:
            return int(await client.coordinator_lookup(CoordinationType.TRANSACTION, transactional_id))
        finally:
            await client.close()

    async def wait_in_sync(self, topics: Sequence[str], timeout_s: float = 60.0) -> float:
        """Until every partition of `topics` has all its replicas in sync (a restarted node caught
        up); seconds it took. Internal topics count too, e.g. `__transaction_state`."""
        started = time.monotonic()
        deadline = started + timeout_s
        last: object = None
        while True:
            client = self._client()
            try:
                await client.bootstrap()
                resp = await client.send(client.get_random_node(),
                                         MetadataRequest(list(topics), allow_auto_topic_creation=False))
                lagging = [(topic, p_id) for _err, topic, _internal, partitions, *_ in resp.topics
                           for _p_err, p_id, _leader, replicas, isr, *_ in partitions if set(isr) != set(replicas)]
                if not lagging:
                    return time.monotonic() - started
                last = f"out of sync: {lagging[:5]}"
            except Exception as exc:  # noqa: BLE001 - a node is still starting
                last = exc
            finally:
                await client.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas not in sync after {timeout_s}s ({last})")
            await asyncio.sleep(0.3)

    async def create_topic(self, name: str, partitions: int = 1, configs: dict[str, str] | None = None) -> None:
        from tests.harness.broker import TopicSpec, ensure_topics

        replication = min(len(self.nodes), 3)
        await ensure_topics(self._alive_bootstrap(), [TopicSpec(name, partitions, replication, configs or {})])


# -- the plain read_committed judge --------------------------------------------------------------

async def read_committed(bootstrap: str, topics: Sequence[str], *, timeout_s: float = 60.0,
                         **client_options: Any) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topics` a `read_committed` consumer sees, from the start to the end offsets
    (the last stable offsets) taken when it starts. Topics that do not exist read as empty.

    `client_options` are extra consumer arguments (security settings)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False, auto_offset_reset="earliest", group_id=None,
                                client_id="read-committed-judge", **client_options)
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        assignment: list[TopicPartition] = []
        for topic in topics:
            partitions = await consumer._client.fetch_all_metadata()
            assignment += [TopicPartition(topic, p) for p in sorted(partitions.partitions_for_topic(topic) or ())]
        if not assignment:
            return out
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        end = await consumer.end_offsets(assignment)
        remaining = {tp for tp in assignment if end[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read_committed did not reach the end offsets of {sorted(remaining)}")
            batches = await consumer.getmany(*remaining, timeout_ms=200)
            for records in batches.values():
                out.extend(records)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return out


async def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    """The topic's configs as the broker describes them (defaults included)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (resource,) = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


def header(record: Any, name: str) -> bytes | None:
    for key, value in record.headers:
        if key == name:
            return bytes(value) if value is not None else None
    return None


def source_and_fill(record: Any) -> tuple[str, str]:
    """(source, fill_id) from the contract's headers: what a fill's identity is to a consumer."""
    source, fill_id = header(record, "source"), header(record, "fill_id")
    return (source or b"").decode(), (fill_id or b"").decode()


@dataclass
class FillCount:
    """How often each expected (source, fill_id) was seen, and what was not expected."""

    expected: int
    seen: int
    missing: list[Hashable] = field(default_factory=list)
    duplicated: dict[Hashable, int] = field(default_factory=dict)
    unexpected: list[Hashable] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def __str__(self) -> str:
        return (f"expected {self.expected} fills exactly once, saw {self.seen}: "
                + ("OK" if self.ok else f"MISMATCH missing {len(self.missing)} {self.missing[:10]}, "
                   f"duplicated {len(self.duplicated)} {list(self.duplicated.items())[:10]}, "
                   f"unexpected {len(self.unexpected)} {self.unexpected[:10]}"))


def count_fills(records: Iterable[Any], expected: Iterable[Hashable]) -> FillCount:
    """Compare the (source, fill_id) of `records` with `expected`, each to appear exactly once."""
    wanted = list(dict.fromkeys(expected))
    wanted_set = set(wanted)
    counts: Counter[Hashable] = Counter(source_and_fill(r) for r in records)
    return FillCount(
        expected=len(wanted), seen=sum(counts.values()),
        missing=[k for k in wanted if k not in counts],
        duplicated={k: n for k, n in counts.items() if n > 1 and k in wanted_set},
        unexpected=[k for k in counts if k not in wanted_set],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.kafka",
                                     description="Real Apache Kafka for the test suite.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"fetch the Apache Kafka {KAFKA_VERSION} jars into the cache")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        reason = unavailable_reason()
        if reason is not None:
            print(reason, file=sys.stderr)
            return 1
        print(fetch())
    return 0


if __name__ == "__main__":
    sys.exit(main())
