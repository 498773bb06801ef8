"""An embedded Kafka-protocol broker: librdkafka's mock cluster, run in a child process.

`fill-publisher demo`, the tests and the benchmarks need a broker on a machine with no Kafka.
librdkafka (inside the `confluent-kafka` wheel) ships an in-memory mock cluster that speaks enough
of the protocol for aiokafka's idempotent and transactional producers and group consumers.

It runs in a child process started with `subprocess` (never `fork`: the parent may already hold
threads or a Go runtime), so that:

- `kill()` (SIGKILL) is a dead cluster whose data is gone, as after a real crash;
- `pause()`/`resume()` (SIGSTOP/SIGCONT) is a stalled broker that keeps its data;
- librdkafka's threads never share a process with the code under test.

The child drives librdkafka's mock API directly through ctypes (`rd_kafka_mock_cluster_new`),
which also gives us what the `test.mock.num.brokers` shortcut does not:

- a controller id that names a real broker (the shortcut advertises controller 0, which no broker
  has, so aiokafka's admin client fails with `'NoneType' object has no attribute 'nodeId'`);
- explicit topic creation with a chosen partition count (:meth:`EmbeddedBroker.create_topic`):
  the mock does not implement the CreateTopics API at all (it is absent from its ApiVersions),
  it only auto-creates topics with 4 partitions on first Metadata/Produce.

When the shared library cannot be located the child falls back to the `test.mock.num.brokers`
shortcut through `confluent_kafka.Producer`; then `create_topic` is unavailable.

Limits of this broker: control batches carry CRC 0 (consumers need
`check_crcs=False`), read_committed is not filtered, InitProducerId does not fence, and each
partition keeps only its newest ~5 MiB. Topic configs such as `cleanup.policy=compact` are
accepted by nothing here: the mock has no configs.

One broker is the default. With several, the mock spreads partition leaders and the transaction
coordinator over the brokers, which only adds connections (and proxy ports) without adding any
replication semantics: every "replica" is the same in-memory log, and an auto-created topic's
replication factor is min(3, brokers) either way. Pass `num_brokers=3` to exercise multi-broker
routing (leaders on different hosts, coordinator elsewhere).

Command line (compose and benchmarks): `python -m publisher.embedded_broker [--brokers N]` prints
the bootstrap string on stdout and serves until killed. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["BrokerNotAvailable", "EmbeddedBroker", "confluent_kafka_available"]

INSTALL_HINT = "install the demo extra: pip install 'fill-publisher[demo]'"

# How long the child may take to print its bootstrap line; it normally takes well under a second.
_START_TIMEOUT_S = 15.0
# How often the child looks for its parent: bounds how long an orphan survives a crashed run.
_PARENT_POLL_S = 0.5


class BrokerNotAvailable(RuntimeError):
    """The embedded broker cannot run here (confluent-kafka missing) or failed to start."""


def confluent_kafka_available() -> bool:
    """Whether the `confluent-kafka` package (which ships librdkafka) is installed."""
    return importlib.util.find_spec("confluent_kafka") is not None


class EmbeddedBroker:
    """A librdkafka mock cluster in a child process.

    Usable as a (sync) context manager, also from async code: `start()` blocks for well under
    two seconds. `bootstrap_servers` is valid after `start()`; it changes when the broker is
    started again after `stop()`/`kill()` (the ports are new and the data is gone).
    """

    def __init__(self, num_brokers: int = 1, *, start_timeout_s: float = _START_TIMEOUT_S):
        if num_brokers < 1:
            raise ValueError("num_brokers must be at least 1")
        self.num_brokers = num_brokers
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._bootstrap: str | None = None
        self._can_create_topics = False
        # Serialises commands on the control pipe; tests may call from several threads.
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """`host:port,host:port` of the mock brokers; raises if the broker is not running."""
        if self._bootstrap is None or not self.running:
            raise BrokerNotAvailable("the embedded broker is not running")
        return self._bootstrap

    @property
    def pid(self) -> int | None:
        """The child's process id while it exists."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the child and wait for its bootstrap line; idempotent while running."""
        if self.running:
            return self
        if not confluent_kafka_available():
            raise BrokerNotAvailable(f"the embedded broker needs confluent-kafka: {INSTALL_HINT}")
        cmd = [
            sys.executable, "-m", "publisher.embedded_broker",
            "--brokers", str(self.num_brokers), "--control", "--exit-with-parent",
        ]
        # The package must be importable by the child even when the parent found it through
        # sys.path manipulation (pytest rootdir, a bench script) rather than an installed dist.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True,
            bufsize=1, env=env, start_new_session=True,
        )
        self._proc = proc
        try:
            hello = self._read_reply(self._start_timeout_s)
        except BaseException:
            self.kill()
            raise
        self._bootstrap = hello["bootstrap"]
        self._can_create_topics = bool(hello.get("create_topic"))
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the child (SIGTERM, then SIGKILL); its data is gone either way."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGCONT)  # a paused child cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL the child: every client sees connections refused, and all data is lost."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_pipes()

    def pause(self) -> None:
        """SIGSTOP the child: connections stay open but nothing answers; data is kept."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused child; clients carry on where they stalled."""
        self._signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self._bootstrap}" if self.running else "stopped"
        return f"EmbeddedBroker(num_brokers={self.num_brokers}, {state})"

    # -- topics ----------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, replication_factor: int = 1) -> bool:
        """Create `name` with `partitions` partitions; False if it already existed.

        The mock has no CreateTopics API and no topic configs, so this goes through the mock's
        own control API in the child. Topics not created here are auto-created with 4 partitions
        on first use.
        """
        if not self._can_create_topics:
            raise BrokerNotAvailable(
                "this embedded broker runs without librdkafka's mock API; topics can only be "
                "auto-created (4 partitions)"
            )
        reply = self._command({"op": "create_topic", "topic": name, "partitions": partitions,
                               "replication_factor": replication_factor})
        if reply.get("error") == "TOPIC_ALREADY_EXISTS":
            return False
        if reply.get("error"):
            raise BrokerNotAvailable(f"creating topic {name!r} failed: {reply['error']}")
        return True

    # -- internals -------------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise BrokerNotAvailable("the embedded broker is not running")
        assert self._proc is not None
        os.kill(self._proc.pid, sig)

    def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if not self.running:
                raise BrokerNotAvailable("the embedded broker is not running")
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
            return self._read_reply(10.0)

    def _read_reply(self, timeout_s: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        # select() on the raw fd is safe here: replies are single lines and we read exactly one
        # per request, so nothing is left behind in the TextIOWrapper's buffer between calls.
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            raise BrokerNotAvailable(f"the embedded broker did not answer within {timeout_s:g} s")
        line = proc.stdout.readline()
        if not line:
            code = proc.wait(5)
            raise BrokerNotAvailable(f"the embedded broker exited with status {code} "
                                     "(see its stderr above)")
        return json.loads(line)

    def _close_pipes(self) -> None:
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        self._proc = None
        self._bootstrap = None


# ------------------------------------------------------------------------------------------------
# The child process
# ------------------------------------------------------------------------------------------------

_RD_KAFKA_PRODUCER = 0
_RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS = 36


class _MockCluster:
    """librdkafka's mock cluster through ctypes; lives only in the child process."""

    def __init__(self, lib_path: str, num_brokers: int):
        lib = ctypes.CDLL(lib_path)
        lib.rd_kafka_conf_new.restype = ctypes.c_void_p
        lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                          ctypes.c_char_p, ctypes.c_size_t]
        lib.rd_kafka_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                                     ctypes.c_size_t]
        lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
        lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
        lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_set_controller_id.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
        lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                   ctypes.c_int, ctypes.c_int]
        lib.rd_kafka_err2name.restype = ctypes.c_char_p
        lib.rd_kafka_err2name.argtypes = [ctypes.c_int]
        self._lib = lib

        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        # The handle only hosts the mock cluster; it never connects anywhere, so silence its
        # "no bootstrap.servers" notice.
        lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))
        self._rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self._mcluster = lib.rd_kafka_mock_cluster_new(self._rk, num_brokers)
        if not self._mcluster:
            raise RuntimeError("rd_kafka_mock_cluster_new failed (see librdkafka log above)")
        # Broker ids are 1..N; the mock's default controller id names no broker.
        lib.rd_kafka_mock_set_controller_id(self._mcluster, 1)
        self.bootstrap: str = lib.rd_kafka_mock_cluster_bootstraps(self._mcluster).decode()

    def create_topic(self, name: str, partitions: int, replication_factor: int) -> str | None:
        """Error name, or None on success."""
        err = self._lib.rd_kafka_mock_topic_create(self._mcluster, name.encode(), partitions,
                                                   replication_factor)
        if err == 0:
            return None
        if err == _RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS:
            return "TOPIC_ALREADY_EXISTS"
        return self._lib.rd_kafka_err2name(err).decode()


def _find_librdkafka() -> str | None:
    """The librdkafka shared library shipped in the confluent-kafka wheel, if it can be found."""
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or spec.origin is None:
        return None
    pkg = Path(spec.origin).parent
    patterns = [
        str(pkg.parent / "confluent_kafka.libs" / "librdkafka*.so*"),  # Linux (auditwheel)
        str(pkg / ".dylibs" / "librdkafka*.dylib"),  # macOS (delocate)
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _start_with_producer(num_brokers: int) -> tuple[object, str]:
    """Fallback: the `test.mock.num.brokers` shortcut; the producer must be kept alive."""
    import confluent_kafka  # noqa: PLC0415 - optional dependency (the demo extra)

    producer = confluent_kafka.Producer({"test.mock.num.brokers": num_brokers,
                                         "bootstrap.servers": "", "log_level": 3})
    brokers = producer.list_topics(timeout=10).brokers.values()
    return producer, ",".join(f"{b.host}:{b.port}" for b in brokers)


def _emit(out: IO[str], msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg) + "\n")
    out.flush()


def _serve(num_brokers: int, control: bool, exit_with_parent: bool) -> int:
    parent = os.getppid()
    lib_path = _find_librdkafka()
    cluster: _MockCluster | None = None
    # The fallback's producer owns the mock cluster: this reference keeps it alive while we serve.
    if lib_path is not None:
        cluster = _MockCluster(lib_path, num_brokers)
        bootstrap = cluster.bootstrap
    else:
        _keepalive, bootstrap = _start_with_producer(num_brokers)

    if control:
        _emit(sys.stdout, {"bootstrap": bootstrap, "create_topic": cluster is not None})
    else:
        print(bootstrap, flush=True)

    while True:
        if exit_with_parent and os.getppid() != parent:
            return 0  # orphaned: the test run that owned us is gone
        if not control:
            time.sleep(_PARENT_POLL_S)
            continue
        ready, _, _ = select.select([sys.stdin], [], [], _PARENT_POLL_S)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            return 0  # the parent closed our pipe or died
        cmd = json.loads(line)
        if cmd.get("op") == "create_topic" and cluster is not None:
            err = cluster.create_topic(cmd["topic"], int(cmd["partitions"]),
                                       int(cmd.get("replication_factor", 1)))
            _emit(sys.stdout, {"error": err})
        else:
            _emit(sys.stdout, {"error": f"unknown command {cmd.get('op')!r}"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m publisher.embedded_broker`."""
    parser = argparse.ArgumentParser(
        prog="python -m publisher.embedded_broker",
        description="Run librdkafka's in-memory mock Kafka cluster on 127.0.0.1 and print its "
                    "bootstrap servers.",
    )
    parser.add_argument("--brokers", type=int, default=1, help="number of mock brokers")
    parser.add_argument("--control", action="store_true",
                        help="JSON-lines control protocol on stdin/stdout (EmbeddedBroker)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the parent process dies")
    args = parser.parse_args(argv)
    if not confluent_kafka_available():
        print(f"fill-publisher: the embedded broker needs confluent-kafka: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    # SIGTERM ends the serve loop via the default action; SIGINT should too, without a traceback.
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    code = _serve(args.brokers, args.control, args.exit_with_parent)
    # Skip interpreter teardown: librdkafka's threads make it take a second or more, and the
    # in-memory cluster has nothing worth flushing.
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
