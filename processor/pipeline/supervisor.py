"""`processor pipeline up`: every stage of a pipeline file as local `processor run`
processes, under one supervisor in the foreground.

The supervisor starts `scale.replicas` processes of each stage, in file order. Each gets
its stage's effective settings as the `PROCESSOR_*` variables a compose file would give
it (`processor.pipeline.render.stage_env`, on the target `local`), with these changes:

* the cluster of the command's client settings, when it was given any, in place of the
  file's `bootstrap_servers` (and its `kafka` settings added);
* `metrics_host` 127.0.0.1 and a free port of its own for `/metrics` and `/healthz`;
* `replica_id` its replica number (0, 1, ...), so that a restarted replica takes back
  the transactional ids of the one it replaces;
* none of the supervisor's own `PROCESSOR_*` variables but those its stage's `secrets`
  name (a settings file of `PROCESSOR_CONFIG` would apply to every stage).

Each replica writes its output to `<stage>.log` (`<stage>.<N>.log` when the stage has
several) in the run directory, `.processor/run/<pipeline name>/` by default, where the
state file `state.json` says what runs: the supervisor's pid, each replica's pid,
metrics URL, log file and restarts (`processor pipeline status` and `down` read it).

A replica that exits while nothing asked it to is started again after a delay that
doubles from `Backoff.initial` up to `Backoff.limit`; one that ran `Backoff.stable`
seconds counts as well again. A replica that crashes `max_crashes` times in a row stops
the pipeline: the supervisor then exits 1.

SIGTERM or SIGINT (Ctrl-C) stops the stages in file order, the first stage first: each
stage after the first is given up to `drain_wait` seconds to read what the stages
stopped before it wrote (until its consumer lag is 0), then SIGTERM, then up to its
`shutdown_timeout` and `stop_margin` seconds to drain and commit, then SIGKILL. A second
signal kills what is left at once. The exit status is 0 when every replica stopped in
time, 1 when one had to be killed or kept crashing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from processor.core.errors import ConfigError, ProcessorError
from processor.ops.setting_sources import ENV_PREFIX
from processor.ops.settings import env_name
from processor.pipeline.load import Pipeline, StagePlan
from processor.pipeline.render import _kafka_env, stage_env, target_stage

__all__ = [
    "RUN_ROOT", "STATE_FILE", "Backoff", "ClientSettings", "Replica", "StageProcesses",
    "Supervisor", "process_alive", "read_state", "run_dir_of", "stop_supervisor",
    "supervisor_alive",
]

logger = logging.getLogger(__name__)

RUN_ROOT: Final = Path(".processor") / "run"
"""Where run directories are made, below the current directory."""
STATE_FILE: Final = "state.json"
TARGET: Final = "local"
DEFAULT_STOP_MARGIN: Final = 10.0
"""Seconds a stopping stage gets beyond its `shutdown_timeout` before SIGKILL."""
DEFAULT_DRAIN_WAIT: Final = 10.0
"""Seconds a stage gets, once the stages before it stopped, to read what they wrote."""
DEFAULT_MAX_CRASHES: Final = 5
_TICK: Final = 0.2


def default_command() -> list[str]:
    """How a replica is started: `processor run` with this interpreter."""
    return [sys.executable, "-m", "processor.cli", "run"]


@dataclass(frozen=True)
class Backoff:
    """The delay before a crashed replica starts again: `initial` seconds after its first
    crash in a row, doubled at each further one, at most `limit`; a replica that ran
    `stable` seconds starts its count again."""

    initial: float = 1.0
    limit: float = 30.0
    stable: float = 60.0

    def delay(self, crashes: int) -> float:
        """The delay after the `crashes`-th crash in a row (1, 2, ...)."""
        return float(min(self.limit, self.initial * 2.0 ** max(0, crashes - 1)))


@dataclass(frozen=True)
class ClientSettings:
    """The cluster of the command's client settings, which replaces the file's."""

    bootstrap_servers: str
    kafka: Mapping[str, str] = field(default_factory=dict)


def run_dir_of(pipeline: Pipeline, path: Path | str) -> Path:
    """`.processor/run/<pipeline name>` (the file's stem when the file names none)."""
    return RUN_ROOT / (pipeline.name or Path(path).stem)


def free_port(host: str = "127.0.0.1") -> int:
    """A port of `host` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Replica:
    """One `processor run` process of a stage, and what the supervisor knows of it."""

    stage: str
    index: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    started: float = 0.0
    """When it was started (time.time())."""
    restarts: int = 0
    crashes: int = 0
    """Crashes in a row."""
    restart_at: float | None = None
    """When it is due to start again (monotonic), after a crash."""
    state: str = "starting"
    """starting, running, restarting, stopping, stopped, killed, failed."""
    exit_code: int | None = None
    _ran_from: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class StageProcesses:
    """A stage's settings as its processes get them, and its replicas."""

    plan: StagePlan
    env: dict[str, str]
    """The stage's variables, without the per-replica ones."""
    grace: float
    """Seconds a stop may take before SIGKILL."""
    replicas: list[Replica]

    @property
    def name(self) -> str:
        return self.plan.name


def _log_path(run_dir: Path, stage: str, index: int, replicas: int) -> Path:
    return run_dir / (f"{stage}.log" if replicas == 1 else f"{stage}.{index}.log")


def stage_processes(pipeline: Pipeline, run_dir: Path, *,
                    client: ClientSettings | None = None,
                    stop_margin: float = DEFAULT_STOP_MARGIN) -> list[StageProcesses]:
    """Every stage of a valid `pipeline` as it would run locally (see the module's doc)."""
    pipeline.require_valid()
    out = []
    for plan in pipeline.stages.values():
        target = target_stage(pipeline, plan, TARGET)
        env = stage_env(target)
        env.update({name: str(value).lower() if isinstance(value, bool) else str(value)
                    for name, value in plan.env.items()})
        if client is not None:
            env[env_name("bootstrap_servers")] = client.bootstrap_servers
            for key, value in client.kafka.items():
                env[_kafka_env(plan.name, key)] = value
        env[env_name("metrics_host")] = "127.0.0.1"
        grace = math.ceil(target.config.options.shutdown_timeout) + stop_margin
        count = target.scale.replicas
        replicas = [Replica(plan.name, i, _log_path(run_dir, plan.name, i, count))
                    for i in range(count)]
        out.append(StageProcesses(plan, env, grace, replicas))
    return out


def _inherited(environ: Mapping[str, str], plan: StagePlan) -> dict[str, str]:
    """The supervisor's environment without its `PROCESSOR_*` variables, but those that
    carry the stage's `secrets` (`PROCESSOR_<FIELD>`, `..._FILE`, `PROCESSOR_KAFKA__<KEY>`)."""
    kept: set[str] = set()
    for setting in plan.secrets:
        top, _, sub = setting.partition(".")
        name = _kafka_env(plan.name, sub) if top == "kafka" and sub else env_name(setting)
        kept |= {name, name + "_FILE"}
    return {k: v for k, v in environ.items()
            if not k.startswith(ENV_PREFIX) or k in kept}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The state file of `run_dir`, or None when there is none."""
    try:
        data = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProcessorError(f"cannot read {run_dir / STATE_FILE}: {exc}") from None
    if not isinstance(data, dict):
        raise ProcessorError(f"{run_dir / STATE_FILE}: not a state file")
    return data


def supervisor_alive(state: Mapping[str, Any] | None) -> bool:
    """Whether the supervisor a state file names still runs."""
    if not state or state.get("state") == "stopped":
        return False
    pid = state.get("supervisor", {}).get("pid")
    return isinstance(pid, int) and process_alive(pid)


def stop_supervisor(run_dir: Path, timeout: float | None = None,
                    clock: Callable[[], float] = time.monotonic) -> int:
    """SIGTERM to the supervisor of `run_dir`, then wait until it is gone; its exit
    status (as its state file says; 1 when it went without saying, 3 if it did not
    finish within `timeout`, by default what its stages' stops may take). A `ProcessorError`
    when nothing runs there."""
    state = read_state(run_dir)
    if not supervisor_alive(state):
        raise ProcessorError(f"no pipeline runs from {run_dir} (no live supervisor in "
                             f"{run_dir / STATE_FILE})")
    assert state is not None
    pid = int(state["supervisor"]["pid"])
    os.kill(pid, signal.SIGTERM)
    wait = timeout if timeout is not None else float(state.get("stop_timeout", 120)) + 30
    deadline = clock() + wait
    while process_alive(pid) and clock() < deadline:
        time.sleep(0.1)
        after = read_state(run_dir) or {}
        if after.get("state") == "stopped":
            # the pid may linger as a zombie of its parent; the state file is its word
            break
    after = read_state(run_dir) or {}
    if after.get("state") != "stopped":
        return 3 if process_alive(pid) else 1
    code = after.get("exit_code")
    return code if isinstance(code, int) else 1


class Supervisor:
    """Runs a valid pipeline's stages as local processes (see the module's doc)."""

    def __init__(self, pipeline: Pipeline, run_dir: Path, *, source: str = "",
                 client: ClientSettings | None = None,
                 command: Sequence[str] | None = None,
                 backoff: Backoff = Backoff(),
                 max_crashes: int = DEFAULT_MAX_CRASHES,
                 stop_margin: float = DEFAULT_STOP_MARGIN,
                 drain_wait: float = DEFAULT_DRAIN_WAIT,
                 environ: Mapping[str, str] | None = None,
                 cwd: Path | None = None,
                 lag_of: Callable[[StageProcesses], int | None] | None = None) -> None:
        self.pipeline = pipeline.require_valid()
        self.run_dir = run_dir
        self.source = source or pipeline.source
        self.command = list(command) if command is not None else default_command()
        self.backoff = backoff
        self.max_crashes = max_crashes
        self.drain_wait = drain_wait
        self.environ = dict(os.environ if environ is None else environ)
        self.cwd = cwd
        self.stages = stage_processes(pipeline, run_dir, client=client,
                                      stop_margin=stop_margin)
        self._lag_of = lag_of or _scraped_lag
        self._signals: list[int] = []
        self._wake = threading.Event()
        self._failed: str | None = None
        self.killed: list[str] = []
        self.started = time.time()

    # --- signals --------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop the pipeline (a signal handler calls it; so may a test's thread)."""
        self._signals.append(signum)
        self._wake.set()

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self._signals:
            logger.info("%s: stopping the stages in order (again to kill them at once)",
                        signal.Signals(signum).name)
        self.request_stop(signum)

    def catch_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # --- processes ------------------------------------------------------------------

    def _spawn(self, stage: StageProcesses, replica: Replica) -> None:
        env = _inherited(self.environ, stage.plan)
        env.update(stage.env)
        replica.port = free_port()
        env[env_name("metrics_port")] = str(replica.port)
        written = stage.env.get(env_name("replica_id"))
        if written is None or written == "ordinal":
            env[env_name("replica_id")] = str(replica.index)
        replica.log.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes]
        with replica.log.open("ab") as out:
            replica.process = subprocess.Popen(
                self.command, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        replica.started = time.time()
        replica._ran_from = time.monotonic()
        replica.state = "running"
        replica.restart_at = None
        logger.info("stage %s: replica %d started (pid %d, metrics %s, log %s)",
                    stage.name, replica.index, replica.process.pid, replica.metrics_url,
                    replica.log)

    def start(self) -> None:
        """Start every replica of every stage, in file order, and write the state."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            for replica in stage.replicas:
                self._spawn(stage, replica)
        self.write_state("running")

    def _check(self, now: float) -> bool:
        """Notice replicas that exited and start the due ones again; whether anything
        changed."""
        changed = False
        for stage in self.stages:
            for replica in stage.replicas:
                process = replica.process
                if replica.state == "running" and process is not None and (
                        code := process.poll()) is not None:
                    changed = True
                    replica.exit_code = code
                    if now - replica._ran_from >= self.backoff.stable:
                        replica.crashes = 0
                    replica.crashes += 1
                    if replica.crashes > self.max_crashes:
                        replica.state = "failed"
                        self._failed = (f"stage {stage.name}: replica {replica.index} "
                                        f"crashed {replica.crashes} times in a row (last "
                                        f"exit status {code}); see {replica.log}")
                        logger.error("%s: giving up, stopping the pipeline", self._failed)
                        return True
                    delay = self.backoff.delay(replica.crashes)
                    replica.state = "restarting"
                    replica.restart_at = now + delay
                    logger.warning("stage %s: replica %d exited with status %s (crash %d "
                                   "in a row); starting it again in %.1fs (see %s)",
                                   stage.name, replica.index, code, replica.crashes, delay,
                                   replica.log)
                elif (replica.state == "restarting" and replica.restart_at is not None
                      and now >= replica.restart_at):
                    replica.restarts += 1
                    self._spawn(stage, replica)
                    changed = True
        return changed

    def run(self) -> int:
        """Supervise until a stop signal (or a replica that keeps crashing), then stop the
        stages in order; the exit status (see the module's doc)."""
        try:
            while not self._signals and self._failed is None:
                if self._check(time.monotonic()):
                    self.write_state("running")
                self._wake.wait(_TICK)
        finally:
            self.stop_all()
        code = 1 if self.killed or self._failed else 0
        self.write_state("stopped", code)
        return code

    def up(self) -> int:
        """`start`, then `run`, with the signals caught."""
        self.catch_signals()
        self.start()
        return self.run()

    # --- stopping -------------------------------------------------------------------

    def _drain(self, stage: StageProcesses) -> None:
        """Wait (at most `drain_wait` seconds) until the stage has read everything on its
        inputs: its lag, from its metrics, 0 twice in a row."""
        if not any(r.running() for r in stage.replicas) or self.drain_wait <= 0:
            return
        deadline = time.monotonic() + self.drain_wait
        zero = 0
        while time.monotonic() < deadline and len(self._signals) < 2:
            lag = self._lag_of(stage)
            if lag is None:
                return
            zero = zero + 1 if lag == 0 else 0
            if zero >= 2:
                return
            self._wake.clear()
            self._wake.wait(0.25)
        logger.warning("stage %s: still %s records behind after %.0fs; stopping it "
                       "anyway", stage.name, self._lag_of(stage), self.drain_wait)

    def _stop_stage(self, stage: StageProcesses) -> None:
        for replica in stage.replicas:
            if replica.state in ("restarting", "starting"):
                replica.state = "stopped"
            if replica.running():
                assert replica.process is not None
                replica.state = "stopping"
                replica.process.send_signal(signal.SIGTERM)
        self.write_state("stopping")
        deadline = time.monotonic() + stage.grace
        for replica in stage.replicas:
            process = replica.process
            if process is None or replica.state != "stopping":
                continue
            while process.poll() is None and time.monotonic() < deadline and len(
                    self._signals) < 2:
                self._wake.clear()
                self._wake.wait(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()
                replica.state = "killed"
                self.killed.append(f"{stage.name}.{replica.index}")
                logger.error("stage %s: replica %d (pid %d) did not stop within %.0fs: "
                             "killed", stage.name, replica.index, process.pid, stage.grace)
            else:
                replica.state = "stopped"
            replica.exit_code = process.returncode
        logger.info("stage %s: stopped", stage.name)

    def stop_all(self) -> None:
        """Stop every stage in file order (see the module's doc)."""
        for position, stage in enumerate(self.stages):
            if position > 0:
                self._drain(stage)
            self._stop_stage(stage)

    # --- the state file -------------------------------------------------------------

    def state(self, state: str, exit_code: int | None = None) -> dict[str, Any]:
        stop_timeout = sum(s.grace + self.drain_wait for s in self.stages)
        return {
            "pipeline": self.pipeline.name or Path(self.source).stem,
            "file": str(Path(self.source).resolve()) if self.source else None,
            "run_dir": str(self.run_dir),
            "state": state,
            "exit_code": exit_code,
            "stop_timeout": stop_timeout,
            "supervisor": {"pid": os.getpid(), "started": self.started},
            "stages": [{
                "name": stage.name,
                "input_topics": list(stage.plan.options.input_topics),
                "output_topics": [t for t in (stage.plan.options.output_topic,
                                              *stage.plan.options.outputs.values())
                                  if t is not None],
                "dlq_topic": stage.plan.options.dlq_topic,
                "replicas": [{
                    "index": r.index, "pid": r.pid, "state": r.state,
                    "metrics": r.metrics_url, "health": r.health_url, "log": str(r.log),
                    "restarts": r.restarts, "started": r.started, "exit_code": r.exit_code,
                } for r in stage.replicas],
            } for stage in self.stages],
        }

    def write_state(self, state: str, exit_code: int | None = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.run_dir / STATE_FILE, self.state(state, exit_code))


def _scraped_lag(stage: StageProcesses) -> int | None:
    """The stage's consumer lag summed over its running replicas, from their metrics;
    None when none answers."""
    from processor.pipeline.status import scrape

    total: int | None = None
    for replica in stage.replicas:
        if not replica.running():
            continue
        sample = scrape(replica.metrics_url, timeout=1.0)
        if sample is not None:
            total = (total or 0) + int(sample.lag)
    return total


def refuse_second_run(run_dir: Path) -> None:
    """A `ConfigError` when a live supervisor runs from `run_dir` already."""
    state = read_state(run_dir)
    if supervisor_alive(state):
        assert state is not None
        raise ConfigError(f"the pipeline runs already from {run_dir} (supervisor pid "
                          f"{state['supervisor']['pid']}): processor pipeline down first")
