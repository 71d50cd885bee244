"""`processor run`: one stage as a service, in one process or several.

With `--processes N` the parent starts N worker processes, each a member of the stage's
consumer group (so Kafka spreads the partitions over them), serves one aggregated
`/metrics` endpoint, forwards SIGTERM/SIGINT to the workers and exits with the worst of
their exit codes. With a `memory_limit` (even for one worker) a worker whose resident
memory passes it stops cleanly (`processor.runtime.memory_guard`) and the parent starts
a new one in its place.

A stop signal gives the stage `shutdown_timeout` seconds to commit and close; a second
one exits at once, logging what was left uncommitted.

The entry is `run_service(cfg, connect)`: it takes the settings
`processor.ops.settings.load_config` built, never the command line, which
`processor.cli.run` reads, and the `BrokerFactory` that makes each process's broker (the
caller names the backend: `KafkaBroker`; the runtime imports none).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Final, TypeAlias

from processor.core.errors import ConfigError, ProcessorError

if TYPE_CHECKING:
    from processor.backends.abstract import Broker
    from processor.ops.health import HealthState, MetricsServer
    from processor.ops.settings import StageConfig
    from processor.runtime.stage import Stage

logger = logging.getLogger(__name__)

BrokerFactory: TypeAlias = "Callable[[str, Mapping[str, object]], Broker]"
"""Makes a broker from `bootstrap_servers` and the `kafka` client settings (`KafkaBroker`
itself is one). It crosses to the worker processes, so it is a module-level name."""



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


def catch_stop_signals() -> None:
    """SIGTERM/SIGINT stop the stage, or keep it from starting: a clean exit either way,
    within `shutdown_timeout`. A second one exits at once (`_force_exit`). `run_service`
    calls it; a caller that reads the settings first calls it before, so that a signal
    while they load is not lost either."""
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)


def run_service(cfg: StageConfig, connect: BrokerFactory) -> int:
    """Run the stage `cfg` describes until SIGTERM/SIGINT, in one process or, with
    `processes` above 1 or a `memory_limit`, in worker processes under this one; returns
    the process exit code. A `ProcessorError` (a `ConfigError` included) is the caller's
    to report."""
    catch_stop_signals()
    from processor.ops.logs import configure_logging

    configure_logging(cfg.log_format, cfg.log_level)
    _scrub_secrets(cfg)
    # Resolve handlers, read the key files and check the replica's identity first, so a
    # wrong reference, a bad key or a replica_id that does not fit the host fails once,
    # before any fork and before the metrics endpoint says "serving".
    from processor.core.handlers import registry
    from processor.security.policy import Keyring

    registry.resolve_all(cfg.handlers)
    if cfg.security.active:
        Keyring.load(cfg.security)
    replica_identity(cfg.replica_id)
    if cfg.processes <= 1 and cfg.memory_limit is None:
        return run_worker(cfg, 0, True, connect)
    # A memory limit needs a parent to restart the worker it stops.
    return _run_parent(cfg, connect)


def _scrub_secrets(cfg: StageConfig) -> None:
    from processor.ops.logs import register_secret
    from processor.ops.settings import secret_values

    for value in secret_values({**cfg.kafka, "registry": cfg.schema_registry_password,
                                 "pseudonym": cfg.pseudonym_key}):
        register_secret(value)


ORDINAL: Final = "ordinal"
"""The `replica_id` that stands for the ordinal N of a StatefulSet pod's host name NAME-N."""

_STATEFULSET_POD = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?-(?P<ordinal>0|[1-9][0-9]*)")


def statefulset_ordinal(hostname: str) -> int | None:
    """The ordinal N of a Kubernetes StatefulSet pod, whose host name is
    `<statefulset name>-N` (`processor-validate-2` -> 2), or None for a host name of
    another form. A fully qualified name is read by its first label.

    A Deployment's pod (`processor-validate-5d8f7c9b4-x2x7k`) may end in digits too, which
    is why the ordinal is taken only when `replica_id` asks for it (`ORDINAL`)."""
    match = _STATEFULSET_POD.fullmatch(hostname.partition(".")[0])
    return int(match["ordinal"]) if match else None


def replica_identity(replica_id: str | None, hostname: str | None = None) -> str:
    """This replica's identity in its transactional ids: `replica_id` when set, the
    ordinal of a StatefulSet pod for `ordinal`, else the host name (`hostname`, by
    default `socket.gethostname()`).

    It must stay the same when the replica restarts, and differ between live replicas
    of a stage on different hosts: a Kubernetes Deployment's pod gets a new host name
    at every restart, a StatefulSet's keeps its name and ordinal."""
    host = socket.gethostname() if hostname is None else hostname
    if replica_id is None:
        return host
    if replica_id == ORDINAL:
        ordinal = statefulset_ordinal(host)
        if ordinal is None:
            raise ConfigError(
                f"replica_id {ORDINAL}: the host name {host!r} is not a StatefulSet pod's "
                "(NAME-N); set replica_id (PROCESSOR_REPLICA_ID, --replica-id) to this "
                "replica's own stable identity, or leave it unset for the host name")
        return str(ordinal)
    return replica_id


def claim_transactional_id(base: str, lock_dir: Path | None = None, slots: int = 1024,
                           identity: str | None = None) -> tuple[str, IO[bytes]]:
    """A transactional id for this process: `<base>-<identity>-<slot>` (`identity` from
    `replica_identity`, by default the host name), with the lowest slot no other live
    process of this host holds for that base and identity.

    The slot is held by an advisory lock on a file, released by the kernel when the
    process dies, however it dies. So two processes of one replica (`--processes N`) or
    two replicas on one host never share an id (they would fence each other), while a
    process restarted after a crash gets its old slot back and with it the old id: its
    `init_transactions` then aborts what the dead one left open at once, instead of after
    `transaction.timeout.ms`. Across a restart in a new pod or on another host (a fresh
    lock directory), the replica's processes take the slots from 0 up again: the same ids
    as before, as long as the identity is the same. Keep the returned file open for the
    life of the process.
    """
    directory = lock_dir or Path(tempfile.gettempdir()) / "processor-txn-slots"
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"{base}-{socket.gethostname() if identity is None else identity}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in prefix)
    for slot in range(slots):
        handle = (directory / f"{safe}-{slot}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return f"{prefix}-{slot}", handle
    raise ProcessorError(f"no free transactional id slot for {prefix!r} ({slots} in use)")


def prepare_topics(cfg: StageConfig, broker: Broker) -> None:
    """Fail fast, with one clear line, when the broker is unreachable or a topic is
    missing; with `create_topics`, create the missing ones instead."""
    from processor.runtime.build import ensure_topics

    ensure_topics(broker, cfg.options,
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


def run_worker(cfg: StageConfig, index: int, serve_metrics: bool,
               connect: BrokerFactory) -> int:
    """Run one stage until SIGTERM/SIGINT; returns the process exit code."""
    from processor.ops.health import HealthState
    from processor.runtime.build import build_stage
    from processor.runtime.memory_guard import MEMORY_EXIT, MemoryGuard

    catch_stop_signals()
    base = cfg.options.transactional_id or f"{cfg.options.name}-{cfg.options.group}"
    txn_id, _slot_lock = claim_transactional_id(base,
                                                identity=replica_identity(cfg.replica_id))
    broker = connect(cfg.bootstrap_servers, cfg.kafka)
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


def _worker_main(cfg: StageConfig, index: int, multiproc_dir: str,
                 connect: BrokerFactory) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    from processor.ops.logs import configure_logging

    configure_logging(cfg.log_format, cfg.log_level, worker=index)
    _scrub_secrets(cfg)
    try:
        code = run_worker(cfg, index, False, connect)
    except ProcessorError as exc:
        sys.stderr.write(f"processor run (worker {index}): error: {exc}\n")
        code = 1
    sys.exit(code)


def _run_parent(cfg: StageConfig, connect: BrokerFactory) -> int:
    from processor.ops.health import HealthState
    from processor.ops.metrics import cleanup_multiprocess, enable_multiprocess, worker_exited
    from processor.runtime.memory_guard import MEMORY_EXIT

    # Once, before the workers start: they would race to create the same topics.
    prepare_topics(cfg, connect(cfg.bootstrap_servers, cfg.kafka))
    health = HealthState()
    health.set_assigned(1)
    health.set_broker_ok(True)
    server = serve_metrics_for(cfg, health)
    multiproc_dir = tempfile.mkdtemp(prefix="processor-metrics-")
    enable_multiprocess(multiproc_dir)
    ctx = multiprocessing.get_context("spawn")

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        worker = ctx.Process(target=_worker_main, args=(cfg, i, multiproc_dir, connect),
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
