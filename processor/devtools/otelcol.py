"""A local OTLP receiver for tests and development: the OpenTelemetry Collector's own.

The OpenTelemetry Collector's OTLP receiver (`go.opentelemetry.io/collector/receiver/
otlpreceiver`, Apache-2.0), built from its Go modules through the Go module proxy into a
small program, `otelrecv`, whose only pipeline writes every trace request it accepts to
a file as OTLP/JSON, one request a line (the collector's own `ptrace.JSONMarshaler`).
`ensure_receiver` builds it once (`go build`, about two minutes) into a cache directory
(`~/.cache/processor/otelrecv-<version>`, or `$PROCESSOR_OTELRECV_HOME`), next to the
cached Kafka jars; `go` must be on PATH, and the module proxy the environment names
(`GOPROXY`) reachable for that first build.

It listens on 127.0.0.1 only, OTLP/gRPC and OTLP/HTTP on free ports:

    with LocalOtelReceiver() as receiver:
        settings = TracingSettings("otlp", receiver.grpc_endpoint)
        ...
        spans = receiver.spans()   # every span received so far, flattened
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from processor.devtools.local_kafka import LocalKafkaError, free_ports, require_tool, tail

logger = logging.getLogger(__name__)

COLLECTOR_VERSION = "v0.165.0"
"""The version of the collector's receiver modules (`otlpreceiver`, `receivertest`,
`componenttest`); the rest follows from their go.mod files."""
MODULES = (
    f"go.opentelemetry.io/collector/receiver/otlpreceiver@{COLLECTOR_VERSION}",
    f"go.opentelemetry.io/collector/receiver/receivertest@{COLLECTOR_VERSION}",
    f"go.opentelemetry.io/collector/component/componenttest@{COLLECTOR_VERSION}",
)
BINARY = "otelrecv"
_MARKER = ".complete"

GO_MOD = """module processor.local/otelrecv

go 1.24
"""

MAIN_GO = """// otelrecv: the OpenTelemetry Collector's OTLP receiver (gRPC and HTTP) writing every
// trace request it accepts to a file, one OTLP/JSON object a line.
package main

import (
\t"context"
\t"flag"
\t"fmt"
\t"os"
\t"os/signal"
\t"sync"
\t"syscall"

\t"go.opentelemetry.io/collector/component/componenttest"
\t"go.opentelemetry.io/collector/consumer"
\t"go.opentelemetry.io/collector/pdata/ptrace"
\t"go.opentelemetry.io/collector/receiver/otlpreceiver"
\t"go.opentelemetry.io/collector/receiver/receivertest"
)

func fail(err error) {
\tfmt.Fprintln(os.Stderr, err)
\tos.Exit(1)
}

func main() {
\tgrpcAddr := flag.String("grpc", "127.0.0.1:4317", "OTLP/gRPC listen address")
\thttpAddr := flag.String("http", "127.0.0.1:4318", "OTLP/HTTP listen address")
\tout := flag.String("out", "spans.jsonl", "file the traces are appended to")
\tflag.Parse()

\tfile, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
\tif err != nil {
\t\tfail(err)
\t}
\tvar mu sync.Mutex
\tmarshaler := &ptrace.JSONMarshaler{}
\tsink, err := consumer.NewTraces(func(_ context.Context, td ptrace.Traces) error {
\t\tdata, err := marshaler.MarshalTraces(td)
\t\tif err != nil {
\t\t\treturn err
\t\t}
\t\tmu.Lock()
\t\tdefer mu.Unlock()
\t\tif _, err := file.Write(append(data, '\\n')); err != nil {
\t\t\treturn err
\t\t}
\t\treturn file.Sync()
\t})
\tif err != nil {
\t\tfail(err)
\t}

\tfactory := otlpreceiver.NewFactory()
\tcfg := factory.CreateDefaultConfig().(*otlpreceiver.Config)
\tcfg.Protocols.GRPC.GetOrInsertDefault().NetAddr.Endpoint = *grpcAddr
\tcfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = *httpAddr
\tctx := context.Background()
\treceiver, err := factory.CreateTraces(ctx, receivertest.NewNopSettings(factory.Type()), cfg, sink)
\tif err != nil {
\t\tfail(err)
\t}
\tif err := receiver.Start(ctx, componenttest.NewNopHost()); err != nil {
\t\tfail(err)
\t}
\tfmt.Printf("ready grpc=%s http=%s\\n", *grpcAddr, *httpAddr)

\tsignals := make(chan os.Signal, 1)
\tsignal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
\t<-signals
\t_ = receiver.Shutdown(ctx)
\tmu.Lock()
\t_ = file.Close()
\tmu.Unlock()
}
"""


class ReceiverError(LocalKafkaError):
    """The local OTLP receiver could not be built or started."""


def receiver_home() -> Path:
    """The cache directory of the built receiver (env PROCESSOR_OTELRECV_HOME overrides)."""
    configured = os.environ.get("PROCESSOR_OTELRECV_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "processor" / f"otelrecv-{COLLECTOR_VERSION}"


def _build_id() -> str:
    """What the cached binary was built from: the modules' version and our source."""
    source = hashlib.sha256((GO_MOD + MAIN_GO).encode()).hexdigest()[:16]
    return f"{COLLECTOR_VERSION} {source}\n"


def _built(marker: Path, binary: Path) -> bool:
    try:
        return binary.is_file() and marker.read_text() == _build_id()
    except OSError:
        return False


def ensure_receiver(home: Path | None = None, timeout: float = 900.0) -> Path:
    """Build the receiver once (through the Go module proxy); returns the binary."""
    home = home or receiver_home()
    binary = home / BINARY
    marker = home / _MARKER
    if _built(marker, binary):
        return binary
    go = require_tool("go", "golang-go")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _built(marker, binary):
            return binary
        logger.info("building the OpenTelemetry Collector's OTLP receiver %s into %s",
                    COLLECTOR_VERSION, home)
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=home))
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        try:
            (staging / "go.mod").write_text(GO_MOD)
            (staging / "main.go").write_text(MAIN_GO)
            for step in ([go, "get", *MODULES], [go, "build", "-o", BINARY, "."]):
                result = subprocess.run(step, cwd=staging, env=env, capture_output=True,
                                        text=True, timeout=timeout, check=False)
                if result.returncode != 0:
                    output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
                    raise ReceiverError(f"{' '.join(step[:2])} failed (exit "
                                        f"{result.returncode}):\n{output}")
            (staging / BINARY).replace(binary)
            marker.write_text(_build_id())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return binary


def _hex(value: str) -> str:
    """An id of OTLP/JSON (hex; base64 in some writers) as lowercase hex."""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    return base64.b64decode(value).hex() if value else ""


def _value(any_value: dict[str, Any]) -> object:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in any_value:
            return any_value[key]
    if "intValue" in any_value:
        return int(any_value["intValue"])
    return any_value


def flatten(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The spans of one OTLP/JSON trace request, each a dict: name, kind, trace_id,
    span_id, parent_span_id (hex; "" for a root), attributes (plain values), events
    (name and attributes), links (trace_id, span_id), status, service."""
    spans: list[dict[str, Any]] = []
    for resource in request.get("resourceSpans", []):
        service = next((_value(a["value"]) for a in resource.get("resource", {}).get(
            "attributes", []) if a["key"] == "service.name"), None)
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                spans.append({
                    "name": span.get("name"),
                    "kind": span.get("kind"),
                    "trace_id": _hex(span.get("traceId", "")),
                    "span_id": _hex(span.get("spanId", "")),
                    "parent_span_id": _hex(span.get("parentSpanId", "")),
                    "attributes": {a["key"]: _value(a["value"])
                                   for a in span.get("attributes", [])},
                    "events": [{"name": e.get("name"),
                                "attributes": {a["key"]: _value(a["value"])
                                               for a in e.get("attributes", [])}}
                               for e in span.get("events", [])],
                    "links": [{"trace_id": _hex(k.get("traceId", "")),
                               "span_id": _hex(k.get("spanId", ""))}
                              for k in span.get("links", [])],
                    "status": span.get("status", {}),
                    "service": service,
                })
    return spans


class LocalOtelReceiver:
    """The collector's OTLP receiver on free 127.0.0.1 ports, writing to a file."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.grpc_port = 0
        self.http_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    def __enter__(self) -> LocalOtelReceiver:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def spans_file(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "spans.jsonl"

    @property
    def log_file(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "otelrecv.log"

    def start(self) -> None:
        binary = ensure_receiver()
        self.grpc_port, self.http_port = free_ports(2)
        self._workdir = Path(tempfile.mkdtemp(prefix="otelrecv-"))
        with open(self.log_file, "ab") as out:
            self._process = subprocess.Popen(
                [str(binary), f"-grpc=127.0.0.1:{self.grpc_port}",
                 f"-http=127.0.0.1:{self.http_port}", f"-out={self.spans_file}"],
                cwd=self._workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise ReceiverError(f"the OTLP receiver exited (code "
                                    f"{self._process.returncode}) while starting:\n"
                                    f"{tail(self.log_file)}")
            with contextlib.suppress(OSError):
                if "ready" in self.log_file.read_text():
                    return
            if time.monotonic() > deadline:
                raise ReceiverError(f"the OTLP receiver was not ready after "
                                    f"{self.start_timeout:.0f}s:\n{tail(self.log_file)}")
            time.sleep(0.05)

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far (see `flatten`)."""
        try:
            text = self.spans_file.read_text()
        except FileNotFoundError:
            return []
        found: list[dict[str, Any]] = []
        for line in text.splitlines():
            if line.strip():
                with contextlib.suppress(ValueError):  # a line being written
                    found.extend(flatten(json.loads(line)))
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the receiver (SIGKILL after `timeout`) and remove its directory."""
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
