"""A local Apache Kafka 4.x cluster (KRaft) for tests, `processor broker` and benchmarks.

The broker's jars come from Maven Central: the package data file `kafka/pom.xml` depends on
`org.apache.kafka:kafka_2.13` plus a Log4j 2 binding, and `mvn dependency:copy-dependencies`
copies them once into a cache directory (`~/.cache/processor/kafka-4.1.1/libs`, or
`$PROCESSOR_KAFKA_HOME/libs`). Every node is a combined broker and controller listening on
free 127.0.0.1 ports; its storage is formatted with `kafka.tools.StorageTool` and it runs
as `java -cp 'libs/*' kafka.Kafka server.properties`. A cluster is ready when an admin
client sees all of its brokers.

    with LocalKafka(nodes=1) as kafka:
        broker = KafkaBroker(kafka.bootstrap_servers)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import FrameType, TracebackType

from processor.core.errors import ProcessorError
from processor.devtools.kafka_security import LISTENER, BrokerSecurity, set_properties

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"

#: Flags that make a small broker JVM start quickly: the client compiler only (no C2
#: warm-up), the serial collector (no GC threads to start), no perf-data file. The broker
#: is slower under heavy load with them; pass `fast_start=False` for benchmarks.
FAST_START_JVM_FLAGS: tuple[str, ...] = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Xshare:auto",
)
THROUGHPUT_JVM_FLAGS: tuple[str, ...] = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")

_PACKAGE_DATA = Path(__file__).resolve().parent / "kafka"
_MARKER = ".complete"
FORMAT_ARGFILE = "format.args"
"""The Java argument file of a node's storage format command (it holds passwords)."""


class LocalKafkaError(ProcessorError):
    """The local Kafka cluster could not be prepared or started."""


class ToolMissing(LocalKafkaError):
    """`java` or `mvn` is not installed."""


@dataclass(frozen=True)
class NodeConfig:
    """The ports and directories of one node."""

    node_id: int
    broker_port: int
    controller_port: int
    directory: Path
    external_port: int | None = None
    """A second client listener (EXTERNAL), for clients that reach the node through
    something in between, such as a fault-injecting proxy."""
    advertised_external_port: int | None = None
    """The port the EXTERNAL listener advertises (the proxy's), so that clients
    reconnecting after a metadata refresh go through it too."""

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.directory / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def stdout_file(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"


# --- tools and jars ----------------------------------------------------------------------


def require_tool(name: str, debian_package: str) -> str:
    """The full path of `name`, or ToolMissing naming the package to install."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(
            f"`{name}` was not found on PATH; the local Kafka broker needs it "
            f"(on Debian/Ubuntu: apt-get install {debian_package})"
        )
    return path


def require_java() -> str:
    return require_tool("java", "openjdk-17-jre-headless")


def require_maven() -> str:
    return require_tool("mvn", "maven")


def kafka_home() -> Path:
    """The cache directory holding `libs/` (env PROCESSOR_KAFKA_HOME overrides it)."""
    configured = os.environ.get("PROCESSOR_KAFKA_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "processor" / f"kafka-{KAFKA_VERSION}"


def deploy_dir() -> Path:
    """The pom and the configuration templates, shipped as package data (`kafka/`)."""
    directory = _PACKAGE_DATA
    if not (directory / "pom.xml").is_file():
        raise LocalKafkaError(
            f"{directory / 'pom.xml'} not found: the package is installed without its data "
            "files; reinstall it"
        )
    return directory


def ensure_jars(home: Path | None = None, timeout: float = 900.0) -> Path:
    """Copy the broker's jars into `<home>/libs` once; returns that directory.

    A marker file records a finished copy, and a file lock keeps concurrent test sessions
    from copying at the same time.
    """
    home = home or kafka_home()
    libs = home / "libs"
    marker = libs / _MARKER
    if marker.is_file():
        return libs
    mvn = require_maven()
    pom = deploy_dir() / "pom.xml"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return libs
        logger.info("resolving Kafka %s jars from Maven Central into %s", KAFKA_VERSION, libs)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
        try:
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 f"-DoutputDirectory={staging}"],
                capture_output=True, text=True, timeout=timeout, check=False,
            )
            if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
                raise LocalKafkaError(
                    f"mvn could not copy the Kafka jars (exit {result.returncode}):\n{tail}"
                )
            shutil.rmtree(libs, ignore_errors=True)
            staging.rename(libs)
            marker.write_text(KAFKA_VERSION + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


# --- configuration -----------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 (held together while choosing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


def new_cluster_id() -> str:
    """A random cluster id in Kafka's form (a url-safe base64 uuid, 22 characters)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # would read as a command-line option
            return text


def plan_nodes(nodes: int, workdir: Path) -> list[NodeConfig]:
    """Node ids 0..nodes-1, each with a broker and a controller port and a directory."""
    if nodes < 1:
        raise LocalKafkaError(f"nodes must be at least 1, got {nodes}")
    ports = free_ports(2 * nodes)
    return [
        NodeConfig(i, ports[2 * i], ports[2 * i + 1], workdir / f"node-{i}")
        for i in range(nodes)
    ]


def render_server_properties(node: NodeConfig, cluster: Sequence[NodeConfig],
                             template: str | None = None) -> str:
    """The server.properties of `node` in `cluster`."""
    size = len(cluster)
    if size == 1:
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}"
    else:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster)
        quorum = f"controller.quorum.voters={voters}"
    if template is None:
        template = (deploy_dir() / "server.properties").read_text()
    text = Template(template).substitute(
        node_id=node.node_id,
        broker_port=node.broker_port,
        controller_port=node.controller_port,
        quorum=quorum,
        log_dir=node.data_dir,
        replication=size,
        txn_min_isr=min(2, size),
        min_insync=2 if size >= 3 else 1,
        offsets_partitions=4,
        txn_partitions=4,
    )
    if node.external_port is not None:
        advertised = node.advertised_external_port or node.external_port
        text = (text
                .replace("listeners=PLAINTEXT://", f"listeners=EXTERNAL://127.0.0.1:"
                         f"{node.external_port},PLAINTEXT://", 1)
                .replace("advertised.listeners=PLAINTEXT://", "advertised.listeners="
                         f"EXTERNAL://127.0.0.1:{advertised},PLAINTEXT://", 1)
                .replace("listener.security.protocol.map=", "listener.security.protocol.map="
                         "EXTERNAL:PLAINTEXT,", 1))
    return text


def argfile_text(args: Sequence[str]) -> str:
    """`args` as a Java launcher argument file (`java @FILE`): one argument a line, each
    in double quotes, a backslash or a double quote in it escaped by a backslash."""
    quoted = ('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' for arg in args)
    return "".join(line + "\n" for line in quoted)


def write_argfile(path: Path, args: Sequence[str]) -> None:
    """Write `args` into the new file `path`, readable by its owner only."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(argfile_text(args))


def render_log4j(node: NodeConfig, template: str | None = None) -> str:
    if template is None:
        template = (deploy_dir() / "log4j2.properties").read_text()
    return Template(template).substitute(log_file=node.log_file)


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the broker when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


# --- the cluster -------------------------------------------------------------------------


class LocalKafka:
    """A local KRaft cluster of `nodes` combined broker+controller JVMs on 127.0.0.1."""

    def __init__(
        self,
        nodes: int = 1,
        workdir: str | Path | None = None,
        *,
        heap: str = "512m",
        fast_start: bool = True,
        start_timeout: float | None = None,
        advertise_external: Sequence[int] = (),
        security: BrokerSecurity | None = None,
    ) -> None:
        """`advertise_external`, one port per node: each node gets a second client
        listener (EXTERNAL, on a free port: `external_bootstrap(i)`) that advertises
        127.0.0.1 and that port, where a proxy in front of the listener listens.

        `security` makes the client listener SASL_SSL, with SCRAM users and ACLs
        (`processor.devtools.kafka_security`); clients then need `client_settings()`."""
        if nodes < 1:
            raise LocalKafkaError(f"nodes must be 1 or more, got {nodes}")
        if security is not None and advertise_external:
            raise LocalKafkaError("advertise_external is for plaintext clusters only")
        self.security = security
        self.nodes = nodes
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.heap = heap
        self.jvm_flags = FAST_START_JVM_FLAGS if fast_start else THROUGHPUT_JVM_FLAGS
        self.start_timeout = start_timeout if start_timeout is not None else 30.0 + 15.0 * nodes
        if advertise_external and len(advertise_external) != nodes:
            raise LocalKafkaError(
                f"advertise_external needs one port per node ({nodes}), got "
                f"{len(advertise_external)}")
        self.advertise_external = tuple(advertise_external)
        self.cluster_id = new_cluster_id()
        self.node_configs: list[NodeConfig] = []
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        # Class-data-sharing archives being written by a JVM (at its exit): temp -> final.
        self._pending_archives: dict[int, tuple[Path, Path]] = {}
        self._java = ""
        self._libs = Path()
        self.startup_seconds: float | None = None

    # -- context manager --

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def bootstrap_servers(self) -> str:
        if not self.node_configs:
            raise LocalKafkaError("the local Kafka cluster is not started")
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.node_configs)

    def client_settings(self, user: str | None = None) -> dict[str, str]:
        """librdkafka settings a client needs besides `bootstrap.servers`: none for a
        plaintext cluster; for a secured one, those of `user` (default: the admin)."""
        if self.security is None:
            return {}
        return (self.security.client_settings() if user is None
                else self.security.client_settings(user))

    def node_bootstrap(self, index: int) -> str:
        return f"127.0.0.1:{self.node_configs[index].broker_port}"

    def external_target(self, index: int) -> tuple[str, int]:
        """Where node `index`'s EXTERNAL listener listens (what a proxy forwards to)."""
        port = self.node_configs[index].external_port
        if port is None:
            raise LocalKafkaError("the cluster was started without advertise_external")
        return "127.0.0.1", port

    # -- lifecycle --

    def start(self) -> None:
        """Prepare jars and configuration, format storage, start every node, wait until ready."""
        began = time.monotonic()
        self._java = require_java()
        self._libs = ensure_jars()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="kafka-local-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_configs = plan_nodes(self.nodes, self.workdir)
        if self.advertise_external:
            ports = free_ports(self.nodes)
            self.node_configs = [
                dataclasses.replace(node, external_port=ports[i],
                                    advertised_external_port=self.advertise_external[i])
                for i, node in enumerate(self.node_configs)]
        server_template = (deploy_dir() / "server.properties").read_text()
        log4j_template = (deploy_dir() / "log4j2.properties").read_text()
        for node in self.node_configs:
            node.directory.mkdir(parents=True, exist_ok=True)
            properties = render_server_properties(node, self.node_configs, server_template)
            if self.security is not None:
                properties = set_properties(properties.replace("PLAINTEXT://", f"{LISTENER}://"),
                                            self.security.server_properties())
            node.properties_file.write_text(properties)
            node.log4j_file.write_text(render_log4j(node, log4j_template))
        try:
            self._format_all()
            for node in self.node_configs:
                self._spawn(node)
            self.wait_ready(range(self.nodes), self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        logger.info("local Kafka (%d node(s)) ready at %s in %.1fs",
                    self.nodes, self.bootstrap_servers, self.startup_seconds)

    def _class_sharing(self, main_class: str) -> tuple[list[str], tuple[Path, Path] | None]:
        """JVM flags for an application class-data-sharing archive of `main_class`.

        Loading Kafka's classes from a CDS archive more than halves the start-up time
        (measured: broker ready 3.0s -> 1.3s, storage format 2.8s -> 0.7s). The first JVM
        of a kind writes the archive at its exit into a temporary file that is renamed
        into place once the JVM ended cleanly; later JVMs map it. A stale or mismatching
        archive is ignored by the JVM (-Xshare:auto), never fatal.
        """
        key = hashlib.sha256(
            "\0".join([self._java, main_class, *self.jvm_flags]).encode()).hexdigest()[:12]
        directory = self._libs.parent / "cds"
        final = directory / f"{main_class}-{key}.jsa"
        if final.is_file():
            return [f"-XX:SharedArchiveFile={final}"], None
        if any(pending[1] == final for pending in self._pending_archives.values()):
            return [], None
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f"{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        return [f"-XX:ArchiveClassesAtExit={temporary}"], (temporary, final)

    def _adopt_archive(self, pid: int, returncode: int | None) -> None:
        pending = self._pending_archives.pop(pid, None)
        if pending is None:
            return
        temporary, final = pending
        clean_exit = returncode in (0, 143, -signal.SIGTERM)
        if clean_exit and temporary.is_file() and temporary.stat().st_size > 0:
            with contextlib.suppress(OSError):
                os.replace(temporary, final)
                logger.debug("saved class-data-sharing archive %s", final)
        with contextlib.suppress(OSError):
            temporary.unlink()

    def _java_command(self, node: NodeConfig, main_class: str, *args: str,
                      argfile: Path | None = None
                      ) -> tuple[list[str], tuple[Path, Path] | None]:
        """The command running `main_class` with `args`; with `argfile`, the class and
        its arguments are written there (mode 0600) and the command names the file
        (`java @FILE`), so that secrets among them are never on a command line, where
        every local user could read them (`ps`, /proc/PID/cmdline)."""
        heap = self.heap if main_class == "kafka.Kafka" else "256m"
        sharing, pending = self._class_sharing(main_class)
        tail = [main_class, *args]
        if argfile is not None:
            write_argfile(argfile, tail)
            tail = [f"@{argfile}"]
        return [
            self._java,
            f"-Xmx{heap}",
            *self.jvm_flags,
            *sharing,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node.log4j_file}",
            f"-Dkafka.logs.dir={node.directory}",
            "-cp", f"{self._libs}/*",
            *tail,
        ], pending

    def _format_all(self) -> None:
        """Format every node's storage (in parallel: each is a JVM start)."""
        running: list[tuple[NodeConfig, subprocess.Popen[str]]] = []
        argfiles: list[Path] = []
        try:
            for node in self.node_configs:
                args = ["format", "-t", self.cluster_id, "-c", str(node.properties_file)]
                if self.nodes == 1:
                    args.append("--standalone")
                argfile = None
                if self.security is not None:
                    # The SCRAM users' passwords: in a file of the node's, not in argv.
                    args += self.security.format_arguments()
                    argfile = node.directory / FORMAT_ARGFILE
                    argfiles.append(argfile)
                command, pending = self._java_command(node, "kafka.tools.StorageTool", *args,
                                                      argfile=argfile)
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if pending is not None:
                    self._pending_archives[process.pid] = pending
                running.append((node, process))
            outputs = []
            for _, process in running:
                try:
                    output, _ = process.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    output, _ = process.communicate()
                outputs.append(output)
        finally:
            for process in (p for _, p in running if p.poll() is None):
                process.kill()
                process.wait()
            for argfile in argfiles:
                argfile.unlink(missing_ok=True)
        for (node, process), output in zip(running, outputs, strict=True):
            self._adopt_archive(process.pid, process.returncode)
            if process.returncode != 0:
                raise LocalKafkaError(
                    f"formatting the storage of node {node.node_id} failed "
                    f"(exit {process.returncode}):\n{output[-4000:]}")

    def _spawn(self, node: NodeConfig) -> None:
        command, pending = self._java_command(node, "kafka.Kafka", str(node.properties_file))
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(node.stdout_file, "ab") as out:
            # start_new_session: Ctrl-C in a terminal reaches only us, and we stop the
            # brokers cleanly. The death signal (main thread only: it fires when the
            # starting *thread* ends) keeps brokers from outliving a killed test run.
            self._processes[node.node_id] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if in_main_thread else None,
            )
        pid = self._processes[node.node_id].pid
        if pending is not None:
            self._pending_archives[pid] = pending
        logger.debug("started Kafka node %d (pid %d)", node.node_id, pid)

    def wait_ready(self, node_ids: Sequence[int] | range, timeout: float) -> None:
        """Wait until the brokers `node_ids` are registered and serve metadata."""
        from confluent_kafka.admin import AdminClient

        wanted = set(node_ids)
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0,
                             "socket.connection.setup.timeout.ms": 2000,
                             "reconnect.backoff.max.ms": 200, **self.client_settings()})
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while True:
            for node_id in wanted:
                process = self._processes.get(node_id)
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    raise LocalKafkaError(
                        f"Kafka node {node_id} exited (code {code}) while starting; "
                        f"end of its log:\n{self.log_tail(node_id)}")
            try:
                metadata = admin.list_topics(timeout=1.0)
                seen = set(metadata.brokers)
                if wanted <= seen:
                    return
            except Exception:  # a KafkaException while the brokers start
                pass
            if time.monotonic() > deadline:
                first_missing = min(wanted - seen)
                raise LocalKafkaError(
                    f"Kafka node(s) {sorted(wanted - seen)} not ready after {timeout:.0f}s "
                    f"(brokers seen: {sorted(seen)}); end of node {first_missing}'s log:\n"
                    f"{self.log_tail(first_missing)}")
            time.sleep(0.1)

    def warm_up(self, timeout: float = 30.0) -> None:
        """Have the cluster hand out its first producer id, through a transactional
        producer's `init_transactions`.

        A fresh cluster answers the first producers' requests for an id with "coordinator
        load in progress" while it fetches a block of ids from its controller; librdkafka
        retries, but logs a warning in the client's output. Asking once here (about a
        second) also creates the transaction log, which exactly-once stages need. The
        warm-up's own client logs only errors: the same warning is expected here.
        """
        from processor.backends.kafka import KafkaBroker

        producer = KafkaBroker(self.bootstrap_servers, self.client_settings()).producer(
            transactional_id=f"processor-broker-warm-up-{self.cluster_id}",
            client_id="processor-broker", settings={"log_level": 3})
        try:
            producer.init_transactions(timeout)
        finally:
            producer.close()

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        node = self.node_configs[node_id]
        parts = [tail(node.log_file, lines)]
        stdout = tail(node.stdout_file, 10).strip()
        if stdout:
            parts.append(f"--- stdout ---\n{stdout}")
        return "\n".join(parts)

    def running(self, node_id: int) -> bool:
        process = self._processes.get(node_id)
        return process is not None and process.poll() is None

    def exited_nodes(self) -> list[int]:
        """Nodes whose JVM ended although nobody stopped them."""
        return [i for i, p in self._processes.items() if p.poll() is not None]

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (a crash: no controlled shutdown)."""
        process = self._processes.pop(node_id, None)
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        self._adopt_archive(process.pid, process.returncode)
        logger.info("killed Kafka node %d", node_id)

    def stop_node(self, node_id: int, timeout: float = 20.0) -> None:
        """Stop one node cleanly (SIGTERM), killing it after `timeout`."""
        process = self._processes.pop(node_id, None)
        if process is not None:
            _terminate([process], timeout)
            self._adopt_archive(process.pid, process.returncode)

    def start_node(self, node_id: int, timeout: float | None = None) -> None:
        """Start a stopped or killed node again and wait until it is back in the cluster."""
        if self.running(node_id):
            return
        self._spawn(self.node_configs[node_id])
        self.wait_ready([node_id], timeout if timeout is not None else self.start_timeout)

    def restart_node(self, node_id: int, timeout: float | None = None) -> None:
        self.kill_node(node_id)
        self.start_node(node_id, timeout)

    def freeze_node(self, node_id: int) -> None:
        """SIGSTOP one node: its sockets stay open and nothing answers (a long GC pause,
        a hung VM). `thaw_node` lets it run on."""
        process = self._processes.get(node_id)
        if process is None or process.poll() is not None:
            raise LocalKafkaError(f"Kafka node {node_id} is not running")
        process.send_signal(signal.SIGSTOP)
        logger.info("froze Kafka node %d", node_id)

    def thaw_node(self, node_id: int) -> None:
        """SIGCONT a node frozen by `freeze_node`."""
        process = self._processes.get(node_id)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            logger.info("thawed Kafka node %d", node_id)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every node, SIGKILL what remains after `timeout`; remove a temporary workdir."""
        processes = list(self._processes.values())
        self._processes.clear()
        _terminate(processes, timeout)
        for process in processes:
            self._adopt_archive(process.pid, process.returncode)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _terminate(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
                process.send_signal(signal.SIGCONT)  # a frozen node must see it
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("Kafka pid %d ignored SIGTERM for %.0fs; killing it",
                           process.pid, timeout)
            process.kill()
            process.wait(timeout=30)


# --- `processor broker` --------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main_broker(nodes: int = 1, *, secure: Path | None = None,
                users: Sequence[str] = ()) -> int:
    """`processor broker [--nodes 1|3] [--secure DIR [--user NAME]...]`: run a local
    cluster until Ctrl-C or SIGTERM (see `processor.devtools.kafka_security`)."""
    stop = threading.Event()
    try:
        require_java()
        if not (kafka_home() / "libs" / _MARKER).is_file():
            require_maven()
    except ToolMissing as error:
        print(f"processor broker: error: {error}", file=sys.stderr)
        return 2
    security = None
    if secure is not None:
        security = BrokerSecurity.create(secure, users={name: "" for name in users})
    kafka = LocalKafka(nodes=nodes, security=security)
    with stop_signals(stop):
        try:
            kafka.start()
        except LocalKafkaError as error:
            print(f"processor broker: error: {error}", file=sys.stderr)
            return 2 if isinstance(error, ToolMissing) else 1
        try:
            kafka.warm_up()
            if security is not None:
                written = security.write_client_files(kafka.bootstrap_servers)
                kept = ("certificates reused" if not security.renewed
                        else f"made {', '.join(security.renewed)}")
                print(f"SASL_SSL (SCRAM-SHA-512) with ACLs; CA {security.certificates.ca} "
                      f"({kept}); client settings of {', '.join(sorted(written))} in "
                      f"{security.directory}/USER.properties and USER.kafka.yaml",
                      file=sys.stderr)
            print(kafka.bootstrap_servers, flush=True)
            print(f"Kafka {KAFKA_VERSION}, {nodes} node(s), ready in "
                  f"{kafka.startup_seconds or 0.0:.1f}s; Ctrl-C stops it", file=sys.stderr)
            while not stop.wait(0.5):
                dead = kafka.exited_nodes()
                if dead:
                    print(f"processor broker: error: node(s) {dead} exited unexpectedly; end "
                          f"of node {dead[0]}'s log:\n{kafka.log_tail(dead[0])}",
                          file=sys.stderr)
                    return 1
        except ProcessorError as error:
            print(f"processor broker: error: {error}", file=sys.stderr)
            return 1
        finally:
            kafka.stop()
    return 0
