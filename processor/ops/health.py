"""Liveness and readiness, and the small HTTP server of `/metrics`, `/healthz`, `/readyz`.

* `/healthz` (liveness) answers 200 while the stage's poll loop is alive: the loop calls
  `HealthState.beat()` on every turn, and when no beat came for longer than `stuck_after`
  seconds (default 30) the answer is 503, so an orchestrator restarts the process. It
  answers 503 too while a handler call is stuck past the stage's `handler_timeout`
  (`handler_stuck`): the loop goes on, but that call holds a thread until it returns.
* `/readyz` (readiness) answers 200 only when the stage has partitions assigned
  (`set_assigned(n)` with n > 0) and the broker answered its last request
  (`set_broker_ok(True)`); otherwise 503 with the reason in the body.
* `/metrics` serves the Prometheus exposition of `processor.ops.metrics` (aggregated over
  every worker in multiprocess mode): the plain text format, or OpenMetrics (which shows
  the latency histograms' exemplars) when the request's `Accept` header asks for
  `application/openmetrics-text`, as prometheus_client's own server does.

A port that cannot be bound (in use, privileged, an address not of this host) raises
`MetricsPortError`, one line naming the address, before anything else starts.

The clock is injectable (`HealthState(clock=...)`) so tests drive time by hand.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from processor.core.errors import ConfigError
from processor.ops import metrics

logger = logging.getLogger(__name__)

DEFAULT_STUCK_AFTER = 30.0
OPENMETRICS = "application/openmetrics-text"
"""The media type of OpenMetrics, which `/metrics` serves when a scraper asks for it."""


class MetricsPortError(ConfigError):
    """The metrics server could not bind its address."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host, self.port, self.errno = host, port, error.errno
        reason = {
            errno.EADDRINUSE: "the port is in use by another process",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "the address is not one of this host's",
        }.get(error.errno or 0, error.strerror or str(error))
        super().__init__(f"cannot serve metrics on {host}:{port}: {reason}")

    @property
    def in_use(self) -> bool:
        return self.errno == errno.EADDRINUSE


class HealthState:
    """What the stage tells the probes. Every method is cheap and thread-safe."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, stuck_after: float = DEFAULT_STUCK_AFTER
    ) -> None:
        if stuck_after <= 0:
            raise ValueError("stuck_after must be greater than 0")
        self._clock = clock
        self.stuck_after = stuck_after
        self._last_beat = clock()
        self._assigned = 0
        self._broker_ok = False
        self._stuck: dict[str, tuple[float, float]] = {}  # what -> (since, deadline)
        self._lock = threading.Lock()

    def beat(self) -> None:
        """The poll loop is alive (call once per loop turn)."""
        self._last_beat = self._clock()

    def handler_stuck(self, what: str, deadline: float) -> None:
        """A handler call on `what` outran its `deadline` (seconds) and is still running."""
        with self._lock:
            self._stuck[what] = (self._clock() - deadline, deadline)

    def handler_unstuck(self, what: str) -> None:
        """The stuck call on `what` returned at last."""
        with self._lock:
            self._stuck.pop(what, None)

    def set_assigned(self, n: int) -> None:
        self._assigned = n

    def set_broker_ok(self, ok: bool) -> None:
        self._broker_ok = ok

    @property
    def assigned(self) -> int:
        return self._assigned

    @property
    def broker_ok(self) -> bool:
        return self._broker_ok

    def seconds_since_beat(self) -> float:
        return self._clock() - self._last_beat

    def is_healthy(self) -> bool:
        return self.seconds_since_beat() <= self.stuck_after and not self._stuck

    def is_ready(self) -> bool:
        return self._assigned > 0 and self._broker_ok

    def health_reason(self) -> str:
        since = self.seconds_since_beat()
        if since > self.stuck_after:
            return (f"stuck: the poll loop has not run for {since:.1f}s "
                    f"(limit {self.stuck_after:g}s)")
        with self._lock:
            stuck = dict(self._stuck)
        if stuck:
            now = self._clock()
            calls = ", ".join(f"{what} for {now - began:.1f}s (limit {limit:g}s)"
                              for what, (began, limit) in sorted(stuck.items()))
            return f"stuck: handler call(s) past their deadline: {calls}"
        return "ok"

    def ready_reason(self) -> str:
        problems = []
        if self._assigned <= 0:
            problems.append("no partitions assigned")
        if not self._broker_ok:
            problems.append("broker not reachable")
        return "ready" if not problems else "not ready: " + ", ".join(problems)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        health = self.server.health
        if path == "/metrics":
            registry = self.server.registry_factory()
            # OpenMetrics (with exemplars) when the scraper's Accept header names
            # application/openmetrics-text (prometheus_client's own choice of version
            # and escaping); else the plain text format, as ever.
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            if content_type.startswith(OPENMETRICS):
                self._send(200, encoder(registry), content_type)
            else:
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = health.is_healthy()
            self._send(200 if ok else 503, (health.health_reason() + "\n").encode())
        elif path == "/readyz":
            ok = health.is_ready()
            self._send(200 if ok else 503, (health.ready_reason() + "\n").encode())
        elif path == "/":
            self._send(200, b"/metrics /healthz /readyz\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("http %s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        health: HealthState,
        registry_factory: Callable[[], CollectorRegistry],
    ) -> None:
        self.health = health
        self.registry_factory = registry_factory
        super().__init__(address, _Handler)


class MetricsServer:
    """A threaded HTTP server for `/metrics`, `/healthz` and `/readyz`.

    `port=0` picks a free port; after `start()`, `.port` is the port actually bound.
    `start()` raises `MetricsPortError` when the address cannot be bound.
    Without `registry`, `/metrics` serves `processor.ops.metrics.registry_for_exposition()`
    (which aggregates all workers in multiprocess mode).
    """

    def __init__(
        self,
        health: HealthState,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.health = health
        self.host = host
        self.port = port
        self._registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _registry_now(self) -> CollectorRegistry:
        return self._registry if self._registry is not None else metrics.registry_for_exposition()

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the metrics server is running already")
        try:
            server = _Server((self.host, self.port), self.health, self._registry_now)
        except OSError as exc:
            raise MetricsPortError(self.host, self.port, exc) from None
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"metrics-http-{self.port}", daemon=True,
        )
        self._thread.start()
        logger.info("serving %s/metrics, /healthz and /readyz (bound to %s:%d)", self.url,
                    self.host, self.port)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
