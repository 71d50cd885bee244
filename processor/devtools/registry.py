"""A local Confluent-compatible schema registry for tests and development: Apicurio Registry.

Apicurio Registry 3.x (Apache-2.0) serves the Confluent schema registry API at
`/apis/ccompat/v7`, with in-memory storage by default. Its Quarkus application comes from
Maven Central as one archive (`io.apicurio:apicurio-registry-app:3.3.3`, classifier `all`,
type `tar.gz`, about 160 MB), which `mvn dependency:copy` fetches once and `ensure_registry`
unpacks into a cache directory (`~/.cache/processor/apicurio-registry-3.3.3`, or
`$PROCESSOR_REGISTRY_HOME`), next to the cached Kafka jars. It runs as
`java -jar quarkus-run.jar` on a free 127.0.0.1 port and is ready in a few seconds.

It needs Java 21 or later (its classes are compiled for 21): `find_java` takes
`$PROCESSOR_REGISTRY_JAVA`, then `$JAVA_HOME`, then `java` on PATH, then the JDKs under
`/usr/lib/jvm`, and uses the first of version 21 or later.

    with LocalRegistry() as registry:
        client = SchemaRegistryClient({"url": registry.url, "timeout": 10})
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from processor.devtools.local_kafka import (
    LocalKafkaError,
    ToolMissing,
    free_ports,
    require_maven,
    tail,
)

logger = logging.getLogger(__name__)

REGISTRY_VERSION = "3.3.3"
REGISTRY_ARTIFACT = f"io.apicurio:apicurio-registry-app:{REGISTRY_VERSION}:tar.gz:all"
MIN_JAVA = 21
CONFLUENT_API = "/apis/ccompat/v7"
_MARKER = ".complete"
_JVM_DIR = Path("/usr/lib/jvm")


class RegistryError(LocalKafkaError):
    """The local schema registry could not be prepared or started."""


def registry_home() -> Path:
    """The cache directory of the unpacked registry (env PROCESSOR_REGISTRY_HOME overrides)."""
    configured = os.environ.get("PROCESSOR_REGISTRY_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "processor" / f"apicurio-registry-{REGISTRY_VERSION}"


def java_version(java: str) -> int | None:
    """The feature version of a `java` binary (17, 21, 25...), or None if it does not run."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def find_java(minimum: int = MIN_JAVA) -> str:
    """A `java` of version `minimum` or later (see the module documentation)."""
    candidates: list[str] = []
    for variable in ("PROCESSOR_REGISTRY_JAVA", "JAVA_HOME"):
        value = os.environ.get(variable)
        if value:
            path = Path(value)
            candidates.append(str(path / "bin" / "java") if path.is_dir() else value)
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    if _JVM_DIR.is_dir():
        candidates.extend(str(p / "bin" / "java") for p in sorted(_JVM_DIR.iterdir(), reverse=True)
                          if (p / "bin" / "java").is_file())
    seen: list[str] = []
    for java in dict.fromkeys(candidates):
        version = java_version(java)
        seen.append(f"{java} ({version or 'does not run'})")
        if version is not None and version >= minimum:
            return java
    raise ToolMissing(
        f"the schema registry needs Java {minimum} or later; found "
        f"{', '.join(seen) or 'no java'}. Install one (Debian: apt-get install "
        f"openjdk-{minimum}-jre-headless where available) or set PROCESSOR_REGISTRY_JAVA")


def ensure_registry(home: Path | None = None, timeout: float = 900.0) -> Path:
    """Fetch and unpack the registry once; returns the directory of `quarkus-run.jar`."""
    home = home or registry_home()
    app = home / "app"
    marker = app / _MARKER
    if marker.is_file():
        return app
    mvn = require_maven()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return app
        logger.info("fetching %s from Maven Central into %s", REGISTRY_ARTIFACT, home)
        staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=home))
        try:
            result = subprocess.run(
                [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={REGISTRY_ARTIFACT}",
                 f"-DoutputDirectory={staging}"],
                capture_output=True, text=True, timeout=timeout, check=False, cwd=staging)
            archives = list(staging.glob("*.tar.gz"))
            if result.returncode != 0 or not archives:
                output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
                raise RegistryError(f"mvn could not fetch {REGISTRY_ARTIFACT} (exit "
                                    f"{result.returncode}):\n{output}")
            unpacked = staging / "app"
            with tarfile.open(archives[0]) as archive:
                archive.extractall(unpacked, filter="data")
            if not (unpacked / "quarkus-run.jar").is_file():
                raise RegistryError(f"{archives[0].name} has no quarkus-run.jar")
            shutil.rmtree(app, ignore_errors=True)
            unpacked.rename(app)
            marker.write_text(REGISTRY_VERSION + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return app


class LocalRegistry:
    """Apicurio Registry on a free 127.0.0.1 port, in-memory; `url` is its Confluent API."""

    def __init__(self, *, start_timeout: float = 90.0, heap: str = "384m") -> None:
        self.start_timeout = start_timeout
        self.heap = heap
        self.port = 0
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API, for `SchemaRegistryClient` and `--schema-registry-url`."""
        return self.base_url + CONFLUENT_API

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "registry.log"

    def start(self) -> None:
        began = time.monotonic()
        java = find_java()
        app = ensure_registry()
        self.port, management = free_ports(2)
        self._workdir = Path(tempfile.mkdtemp(prefix="registry-local-"))
        # Quarkus's management interface (health, metrics) would listen on 0.0.0.0:9000:
        # loopback only, and a free port of its own, so that two registries can run.
        env = {**os.environ, "QUARKUS_HTTP_HOST": "127.0.0.1",
               "QUARKUS_HTTP_PORT": str(self.port), "QUARKUS_LOG_LEVEL": "WARN",
               "QUARKUS_PROFILE": "prod", "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
               "QUARKUS_MANAGEMENT_PORT": str(management)}
        with open(self.log_file, "ab") as out:
            self._process = subprocess.Popen(
                [java, f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Djava.io.tmpdir=" + str(self._workdir), "-jar", "quarkus-run.jar"],
                cwd=app, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        logger.info("schema registry ready at %s in %.1fs", self.url, self.startup_seconds)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RegistryError(f"the schema registry exited (code "
                                    f"{self._process.returncode}) while starting; end of its "
                                    f"log:\n{tail(self.log_file)}")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(self.url + "/subjects", timeout=2) as answer:
                if answer.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RegistryError(f"the schema registry was not ready after "
                                    f"{self.start_timeout:.0f}s; end of its log:\n"
                                    f"{tail(self.log_file)}")
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the registry (SIGKILL after `timeout`) and remove its work directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def main_registry(heap: str = "384m") -> int:
    """`processor registry`: run a local schema registry until Ctrl-C or SIGTERM. The
    first line on stdout is its Confluent-compatible URL (the `/apis/ccompat/v7` path
    included), printed once it answers; everything else goes to stderr."""
    import sys
    import threading

    from processor.devtools.local_kafka import stop_signals

    stop = threading.Event()
    try:
        java = find_java()
        if not (registry_home() / _MARKER).is_file():
            require_maven()
    except ToolMissing as error:
        print(f"processor registry: error: {error}", file=sys.stderr)
        return 2
    registry = LocalRegistry(heap=heap)
    with stop_signals(stop):
        try:
            registry.start()
        except LocalKafkaError as error:
            print(f"processor registry: error: {error}", file=sys.stderr)
            return 2 if isinstance(error, ToolMissing) else 1
        try:
            print(registry.url, flush=True)
            print(f"Apicurio Registry {REGISTRY_VERSION} on {java}, in memory (its schemas "
                  f"are gone when it stops), ready in {registry.startup_seconds or 0.0:.1f}s; "
                  "Ctrl-C stops it", file=sys.stderr)
            while not stop.wait(0.5):
                if not registry.running:
                    print(f"processor registry: error: the registry exited unexpectedly; end "
                          f"of its log:\n{tail(registry.log_file)}", file=sys.stderr)
                    return 1
        finally:
            registry.stop()
    return 0
