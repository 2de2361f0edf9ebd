"""A real single-node Apache Cassandra 5.0 for the tests, run from Maven Central's jars.

``fetch_jars`` copies ``org.apache.cassandra:cassandra-all`` and its runtime dependencies (what the
binary tarball ships in ``lib/``) with ``mvn dependency:copy-dependencies`` and the ``pom.xml``
beside this file into a cache that outlives the test run (``$BUP_WATCHDOG_CACHE`` or
``~/.cache/bup-watchdog``, then ``cassandra-<version>/lib``); a second run finds it and downloads
nothing.

``CassandraNode`` writes a minimal ``cassandra.yaml`` and ``logback.xml`` into a work directory and
starts ``CassandraDaemon`` on 127.0.0.1 with free ports (native transport, storage, JMX bound to
loopback), Java 17 and the JVM options of Cassandra's own ``conf/jvm-server.options`` and
``conf/jvm17-server.options`` (5.0 branch; FACTS.md), the jamm agent as ``cassandra-env.sh`` adds
it, and a small heap. It is ready when a CQL query answers on the native port. ``stop`` sends
SIGTERM (Cassandra drains and exits) and SIGKILL only if it lingers.

As a script: ``python tests/support/cassandra/node.py fetch`` prefetches the jars (CI does this
before the tests), ``... run [DIR]`` starts a node and keeps it up until Ctrl-C.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if not __package__:  # run as a script: ``support`` is in tests/, two levels up
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from support.process import ManagedProcess, NotReady, free_ports
from support.process import free_port as free_port  # the tests import it from here too

CASSANDRA_VERSION = "5.0.9"
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
POM = Path(__file__).with_name("pom.xml")

# conf/jvm-server.options (5.0), the lines that matter for a test node. Left out on purpose:
# -XX:+AlwaysPreTouch (touches the whole heap at start: slower start for nothing here),
# -XX:+HeapDumpOnOutOfMemoryError (a 1 GB dump in the working directory), -XX:+UseNUMA.
JVM_SERVER_OPTIONS = (
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
)

# conf/jvm17-server.options (5.0): G1, the module flags without which 5.0 fails on JDK 17, Netty.
JVM17_SERVER_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)

LOGBACK_XML = """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
</configuration>
"""


class CassandraError(RuntimeError):
    """The test Cassandra could not be fetched or started; the message says why."""


def cache_root() -> Path:
    """Where downloaded jars live between test runs."""
    env = os.environ.get("BUP_WATCHDOG_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bup-watchdog"


def lib_dir(version: str = CASSANDRA_VERSION) -> Path:
    return cache_root() / f"cassandra-{version}" / "lib"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so two test runs do not download into the same cache at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_jars(version: str = CASSANDRA_VERSION, *, timeout: float = 900.0) -> Path:
    """The directory holding Cassandra's jars, downloading them first if the cache has none."""
    lib = lib_dir(version)
    done = lib / ".complete"
    if done.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise CassandraError(
            "Maven (mvn) is not installed; the Cassandra tests fetch the server's jars with it "
            "(apt-get install maven openjdk-17-jre-headless)"
        )
    with _locked(lib.parent / ".lock"):
        if done.exists():
            return lib
        partial = lib.with_name("lib.partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM),
            f"-Dcassandra.version={version}",
            f"-DoutputDirectory={partial}",
            "dependency:copy-dependencies",
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CassandraError(
                f"fetching Cassandra {version} from Maven Central took over {timeout:g} s"
            ) from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise CassandraError(f"mvn could not fetch Cassandra {version}:\n{tail}")
        if not (partial / f"cassandra-all-{version}.jar").exists():
            raise CassandraError(
                f"mvn finished but cassandra-all-{version}.jar is not in {partial}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        partial.rename(lib)
        done.write_text(f"cassandra-all {version}\n", encoding="utf-8")
    return lib


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise CassandraError("java is not installed (Cassandra 5.0 needs Java 17 here)")
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    first = (proc.stderr or proc.stdout).splitlines()[0] if (proc.stderr or proc.stdout) else ""
    # 'openjdk version "17.0.15" 2025-04-15'
    try:
        major = int(first.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        raise CassandraError(f"cannot tell the Java version from {first!r}") from None
    if major != 17:
        raise CassandraError(f"{java} is Java {major}; this test node is set up for Java 17")
    return java


def _yaml(config: dict[str, object]) -> str:
    # JSON is YAML (and SnakeYAML reads it), so no YAML library is needed.
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n"


class CassandraNode(ManagedProcess):
    """One Cassandra node on 127.0.0.1 with its data, config and log under ``workdir``.

    Ports are picked when first started and kept, so ``stop()`` then ``start()`` brings the same
    node (same data, same address) back, the way an operator's restart would.
    """

    log_tail_lines = 40
    #: SIGTERM makes Cassandra drain: memtables flushed, commit log closed.
    stop_timeout = 60.0
    failure = CassandraError

    def __init__(
        self,
        workdir: Path,
        *,
        version: str = CASSANDRA_VERSION,
        heap: tuple[str, str] = ("512m", "1g"),
    ) -> None:
        super().__init__("Cassandra", workdir / "logs" / "system.log")
        self.workdir = workdir
        self.version = version
        self.heap = heap
        self.address = "127.0.0.1"
        self.native_port = 0
        self.storage_port = 0
        self.jmx_port = 0
        self.config_path = workdir / "conf" / "cassandra.yaml"
        self.start_seconds = 0.0
        self.fetch_seconds = 0.0

    # ---------------------------------------------------------------- configuration

    def cassandra_yaml(self) -> dict[str, object]:
        """A minimal 5.0 config: one node, no auth, small memtables, everything under workdir."""
        d = self.workdir / "data"
        return {
            "cluster_name": "bupwatch-test",
            "num_tokens": 1,
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "listen_address": self.address,
            "rpc_address": self.address,
            "storage_port": self.storage_port,
            "native_transport_port": self.native_port,
            "start_native_transport": True,
            "seed_provider": [
                {
                    "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                    "parameters": [{"seeds": f"{self.address}:{self.storage_port}"}],
                }
            ],
            "endpoint_snitch": "SimpleSnitch",
            "authenticator": "AllowAllAuthenticator",
            "authorizer": "AllowAllAuthorizer",
            "data_file_directories": [str(d / "data")],
            "commitlog_directory": str(d / "commitlog"),
            "saved_caches_directory": str(d / "saved_caches"),
            "hints_directory": str(d / "hints"),
            "cdc_raw_directory": str(d / "cdc_raw"),
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "memtable_heap_space": "64MiB",
            "memtable_offheap_space": "64MiB",
            "concurrent_compactors": 1,
            "auto_snapshot": False,
            "key_cache_size": "8MiB",
            "prepared_statements_cache_size": "8MiB",
        }

    def jvm_args(self, lib: Path, java: str) -> list[str]:
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise CassandraError(f"no jamm jar in {lib}; the jar cache is incomplete")
        return [
            java,
            *JVM_SERVER_OPTIONS,
            *JVM17_SERVER_OPTIONS,
            f"-Xms{self.heap[0]}",
            f"-Xmx{self.heap[1]}",
            # cassandra-env.sh: the jamm agent measures memtable memory; local-only JMX.
            f"-javaagent:{jamm[-1]}",
            f"-Dcassandra.jmx.local.port={self.jmx_port}",
            "-Dcom.sun.management.jmxremote.authenticate=false",
            "-Djava.rmi.server.hostname=127.0.0.1",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{self.config_path}",
            f"-Dcassandra.storagedir={self.workdir / 'data'}",
            f"-Dcassandra.logdir={self.log_path.parent}",
            f"-Dlogback.configurationFile={self.workdir / 'conf' / 'logback.xml'}",
            # One node, its own seed: nothing to wait for.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            f"-Dcassandra.triggers_dir={self.workdir / 'triggers'}",
            # The node's own start-up check asks for one of these (a node that ran out of heap
            # may have half-written state); the JVM dies instead of limping on.
            "-XX:+ExitOnOutOfMemoryError",
            f"-XX:ErrorFile={self.workdir / 'logs' / 'hs_err_%p.log'}",
            "-cp",
            f"{lib}/*",
            MAIN_CLASS,
        ]

    # ---------------------------------------------------------------- life cycle

    def start(self, timeout: float = 180.0) -> None:
        """Start the node (fetching the jars first if needed) and wait until CQL answers."""
        if self.running:
            return
        fetching = time.monotonic()
        lib = fetch_jars(self.version)
        self.fetch_seconds = time.monotonic() - fetching
        java = _java()
        if not self.native_port:
            self.native_port, self.storage_port, self.jmx_port = free_ports(3)
        (self.workdir / "conf").mkdir(parents=True, exist_ok=True)
        (self.workdir / "triggers").mkdir(exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_yaml(self.cassandra_yaml()), encoding="utf-8")
        (self.workdir / "conf" / "logback.xml").write_text(LOGBACK_XML, encoding="utf-8")
        started = time.monotonic()
        self.spawn(
            self.jvm_args(lib, java),
            append=True,
            pdeathsig=True,
            cwd=self.workdir,
            new_session=True,  # a Ctrl-C to the tests is not also sent to the JVM
            env={**os.environ, "MALLOC_ARENA_MAX": "4"},  # as cassandra-env.sh sets it
        )
        self.wait_ready(
            self._answers_cql,
            timeout,
            what=f"answer CQL on {self.address}:{self.native_port}",
            interval=0.5,
        )
        self.start_seconds = time.monotonic() - started

    def _answers_cql(self) -> bool:
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import RoundRobinPolicy

        if not self._port_open():
            return False
        profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
        cluster = Cluster(
            [self.address],
            port=self.native_port,
            connect_timeout=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            protocol_version=5,
        )
        try:
            session = cluster.connect()
            session.execute("SELECT release_version FROM system.local", timeout=10)
            return True
        except Exception as exc:  # any driver error: not ready yet, try again
            raise NotReady(f"{type(exc).__name__}: {exc}") from exc
        finally:
            cluster.shutdown()

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.address, self.native_port), timeout=1):
                return True
        except OSError:
            return False


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "help"
    if cmd == "fetch":
        started = time.monotonic()
        lib = fetch_jars()
        jars = len(list(lib.glob("*.jar")))
        took = time.monotonic() - started
        print(f"Cassandra {CASSANDRA_VERSION}: {jars} jars in {lib} ({took:.1f} s)")
        return 0
    if cmd == "run":
        workdir = Path(argv[2]) if len(argv) > 2 else Path(tempfile.mkdtemp(prefix="cassandra-"))
        node = CassandraNode(workdir)
        node.start()
        print(
            f"Cassandra {CASSANDRA_VERSION} answers CQL on {node.address}:{node.native_port} "
            f"(started in {node.start_seconds:.1f} s; log {node.log_path}); "
            "Ctrl-C or SIGTERM stops it",
            flush=True,
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            while not stop.wait(1.0) and node.running:
                pass
        finally:
            node.stop()
        return 0
    print(f"usage: {argv[0]} fetch | run [DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
