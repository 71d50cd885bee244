"""`processor run`: one stage as a service, in one process or several.

With `--processes N` the parent starts N worker processes, each a member of the stage's
consumer group (so Kafka spreads the partitions over them), serves one aggregated
`/metrics` endpoint, forwards SIGTERM/SIGINT to the workers and exits with the worst of
their exit codes. With a `memory_limit` (even for one worker) a worker whose resident
memory passes it stops cleanly (`processor.runtime.memory_guard`) and the parent starts
a new one in its place.

A stop signal gives the stage `shutdown_timeout` seconds to commit and close; a second
one exits at once, logging what was left uncommitted.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from processor.core.errors import ConfigError, ProcessorError

if TYPE_CHECKING:
    from processor.backends.abstract import Broker
    from processor.ops.health import HealthState, MetricsServer
    from processor.ops.settings import StageConfig
    from processor.runtime.stage import Stage

logger = logging.getLogger(__name__)


_STOP_REQUESTS: list[str] = []
_RUNNING: list[Stage] = []


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    from processor.ops.logs import lifecycle

    name = signal.Signals(signum).name
    if _STOP_REQUESTS:
        _force_exit(name, 128 + signum)
    _STOP_REQUESTS.append(name)
    lifecycle(logger, "shutdown", signal=name, stages=[s.options.name for s in _RUNNING])
    for stage in _RUNNING:
        stage.stop()


def _force_exit(name: str, code: int) -> None:
    """A second stop signal: exit at once, saying what is left uncommitted (at-least-once
    reads it again after a restart; exactly-once has its open transaction aborted)."""
    left = "; ".join(f"stage {s.options.name}: {s.uncommitted()}" for s in _RUNNING)
    logger.warning("second stop signal (%s): exiting now, without finishing the shutdown; "
                   "left uncommitted: %s", name, left or "nothing (no stage running)")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _catch_stop_signals() -> None:
    """SIGTERM/SIGINT stop the stage, or keep it from starting: a clean exit either way,
    within `shutdown_timeout`. A second one exits at once (`_force_exit`)."""
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)


def run_from_args(args: argparse.Namespace) -> int:
    _catch_stop_signals()
    from processor.ops.logs import configure_logging
    from processor.ops.settings import load_config

    flags = {k: v for k, v in vars(args).items() if k not in ("command",)}
    config_path = flags.pop("config", None)
    cfg = load_config(Path(config_path) if config_path else None, os.environ, flags)
    configure_logging(cfg.log_format, cfg.log_level)
    _scrub_secrets(cfg)
    # Resolve handlers in the parent too, so a wrong reference fails before any fork.
    from processor.core.handlers import registry

    registry.resolve_all(cfg.handlers)
    if cfg.processes <= 1 and cfg.memory_limit is None:
        return run_worker(cfg, index=0, serve_metrics=True)
    # A memory limit needs a parent to restart the worker it stops.
    return _run_parent(cfg)


def _scrub_secrets(cfg: StageConfig) -> None:
    from processor.ops.logs import register_secret
    from processor.ops.settings import secret_values

    for value in secret_values({**cfg.kafka, "registry": cfg.schema_registry_password,
                                 "pseudonym": cfg.pseudonym_key}):
        register_secret(value)


def claim_transactional_id(base: str, lock_dir: Path | None = None,
                           slots: int = 1024) -> tuple[str, IO[bytes]]:
    """A transactional id for this process: `<base>-<host>-<slot>`, with the lowest slot
    no other live process on this host holds.

    The slot is held by an advisory lock on a file, released by the kernel when the
    process dies, however it dies. So two replicas on one host never share an id (they
    would fence each other), while a replica restarted after a crash gets its old slot
    back and with it the old id: its `init_transactions` then aborts what the dead one
    left open at once, instead of after `transaction.timeout.ms`. Keep the returned file
    open for the life of the process.
    """
    directory = lock_dir or Path(tempfile.gettempdir()) / "processor-txn-slots"
    directory.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)
    for slot in range(slots):
        handle = (directory / f"{safe}-{slot}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return f"{base}-{host}-{slot}", handle
    raise ProcessorError(f"no free transactional id slot for {base!r} ({slots} in use)")


def prepare_topics(cfg: StageConfig, broker: Broker | None = None) -> None:
    """Fail fast, with one clear line, when the broker is unreachable or a topic is
    missing; with `create_topics`, create the missing ones instead."""
    from processor.backends.kafka import KafkaBroker
    from processor.runtime.build import ensure_topics

    ensure_topics(broker or KafkaBroker(cfg.bootstrap_servers, cfg.kafka), cfg.options,
                  create=cfg.create_topics, partitions=cfg.topic_partitions,
                  replication=cfg.topic_replication)


def serve_metrics_for(cfg: StageConfig, health: HealthState) -> MetricsServer | None:
    """The started `/metrics` server of `cfg`, or None when `metrics_port` is off. A
    port that cannot be bound is one `ConfigError` saying which setting to change."""
    from processor.ops.health import MetricsPortError, MetricsServer

    if cfg.metrics_port is None:
        return None
    server = MetricsServer(health, cfg.metrics_host, cfg.metrics_port)
    try:
        server.start()
    except MetricsPortError as exc:
        raise ConfigError(
            f"{exc}; choose another port with --metrics-port (PROCESSOR_METRICS_PORT, "
            "metrics_port in YAML), 0 for any free port, or off for none") from None
    return server


def run_worker(cfg: StageConfig, index: int, serve_metrics: bool) -> int:
    """Run one stage until SIGTERM/SIGINT; returns the process exit code."""
    from processor.backends.kafka import KafkaBroker
    from processor.ops.health import HealthState
    from processor.runtime.build import build_stage
    from processor.runtime.memory_guard import MEMORY_EXIT, MemoryGuard

    _catch_stop_signals()
    base = cfg.options.transactional_id or f"{cfg.options.name}-{cfg.options.group}"
    txn_id, _slot_lock = claim_transactional_id(base)
    broker = KafkaBroker(cfg.bootstrap_servers, cfg.kafka)
    prepare_topics(cfg, broker)
    health = HealthState()
    # Bound before the stage joins its group: a busy port stops it with nothing to undo.
    server = serve_metrics_for(cfg, health) if serve_metrics else None
    guard = None
    try:
        stage = build_stage(cfg, broker, transactional_id=txn_id, health=health)
        stage.health.set_broker_ok(True)
        _RUNNING.append(stage)
        if _STOP_REQUESTS:
            stage.stop()
        if cfg.memory_limit is not None:
            guard = MemoryGuard(cfg.memory_limit, stage.stop, index).start()
        stage.run()
    finally:
        if guard is not None:
            guard.close()
        if server is not None:
            server.stop()
    return MEMORY_EXIT if guard is not None and guard.tripped else 0


def _worker_main(cfg: StageConfig, index: int, multiproc_dir: str) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    from processor.ops.logs import configure_logging

    configure_logging(cfg.log_format, cfg.log_level)
    _scrub_secrets(cfg)
    try:
        code = run_worker(cfg, index, serve_metrics=False)
    except ProcessorError as exc:
        sys.stderr.write(f"processor run (worker {index}): error: {exc}\n")
        code = 1
    sys.exit(code)


def _run_parent(cfg: StageConfig) -> int:
    from processor.ops.health import HealthState
    from processor.ops.metrics import cleanup_multiprocess, enable_multiprocess, worker_exited
    from processor.runtime.memory_guard import MEMORY_EXIT

    # Once, before the workers start: they would race to create the same topics.
    prepare_topics(cfg)
    health = HealthState()
    health.set_assigned(1)
    health.set_broker_ok(True)
    server = serve_metrics_for(cfg, health)
    multiproc_dir = tempfile.mkdtemp(prefix="processor-metrics-")
    enable_multiprocess(multiproc_dir)
    ctx = multiprocessing.get_context("spawn")

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        worker = ctx.Process(target=_worker_main, args=(cfg, i, multiproc_dir),
                             name=f"worker-{i}")
        worker.start()
        return worker

    workers = [spawn(i) for i in range(cfg.processes)]
    logger.info("started %d worker processes", len(workers))
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = []
    running = list(range(len(workers)))
    try:
        while running:
            for i in list(running):
                w = workers[i]
                w.join(0.5)
                health.beat()
                if w.is_alive():
                    continue
                if w.pid is not None:
                    worker_exited(w.pid)
                if w.exitcode == MEMORY_EXIT and not stopping:
                    logger.warning("worker %d stopped cleanly at its memory limit; "
                                   "restarting it", i)
                    workers[i] = spawn(i)
                    continue
                running.remove(i)
                code = w.exitcode or 0
                if code == MEMORY_EXIT or (stopping and code in (-signal.SIGTERM,
                                                                 -signal.SIGINT)):
                    # Stopped at its limit as we stop, or ended by the signal we forwarded
                    # while it was still starting (nothing read, nothing to commit).
                    code = 0
                codes.append(code)
                if code:
                    forward(signal.SIGTERM, None)
    finally:
        if server is not None:
            server.stop()
        cleanup_multiprocess(multiproc_dir)
    return max(codes, default=0)
