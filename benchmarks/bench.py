"""The side-by-side benchmark: this project's stage against a hand-written ceiling and
Quix Streams, on a real Apache Kafka broker started for the run.

    make bench                                   # the default: 1,000,000 artifacts
    make bench BENCH_ARGS="--count 50000 --only ceiling,project-alo"
    .venv/bin/python benchmarks/bench.py --profile --count 200000

Every contender reads the same pre-loaded input topic with a new consumer group, writes
its own output topic, and runs in its own subprocess(es). It is done when every input
offset is committed by its group; then the harness stops it (SIGTERM), reads its output
back (checking every record) and computes the row. See `report.DEFINITIONS` for what
each figure means; they are printed with the table.

The baseline-* rows are the project's stage at a fixed commit (`--baseline`, today's code;
`baseline.py`), run beside the working tree's rows in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the sibling modules, from any working directory

import baseline  # noqa: E402
import harness  # noqa: E402
import latency  # noqa: E402
import report  # noqa: E402
import workload  # noqa: E402
from report import Row  # noqa: E402

RESULTS = HERE / "results"
QUIX_VENV = HERE / ".venv-quix"
REQUIREMENTS = HERE / "requirements.txt"


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    processes: int


CONTENDERS = (
    Contender("raw", "raw loop: consume, produce the same bytes, commit; no Avro", 1),
    Contender("raw-sha256", "raw loop + one SHA-256 per record, of a payload's length (the "
              "integrity check alone)", 1),
    Contender("ceiling", "ceiling: confluent-kafka + fastavro loop", 1),
    Contender("ceiling-codec", "hand-written loop with the project's codec", 1),
    Contender("ceiling-2p", "ceiling loop, 2 processes (the machine's scaling bound)", 2),
    # Each baseline row right after the working tree's row it is compared with, so that
    # the two see the same conditions as nearly as one run allows.
    Contender("project-passthrough", "project, at-least-once, 1 process, handler returns "
              "the artifact unchanged", 1),
    Contender("baseline-passthrough", "baseline (today's code at --baseline), pass-through, "
              "at-least-once, 1 process", 1),
    Contender("project-alo", "project, at-least-once, 1 process", 1),
    Contender("baseline-alo", "baseline (today's code at --baseline), at-least-once, "
              "1 process", 1),
    # Tracing (docs/operations.md, "Tracing"): project-alo with spans exported over OTLP
    # to the collector's receiver, started on 127.0.0.1 for each of these rows.
    Contender("project-trace-1", "project, at-least-once, 1 process, tracing on, 1% of "
              "traces sampled (OTLP/gRPC)", 1),
    Contender("project-trace-100", "project, at-least-once, 1 process, tracing on, every "
              "trace sampled (OTLP/gRPC)", 1),
    Contender("project-alo-pure", "project, at-least-once, 1 process, pure-Python codec "
              "(the compiled one switched off)", 1),
    Contender("project-alo-registry", "project, at-least-once, 1 process, schema registry "
              "(Confluent wire format in and out)", 1),
    Contender("project-eos", "project, exactly-once, 1 process", 1),
    Contender("project-alo-2p", "project, at-least-once, 2 processes (processor run)", 2),
    Contender("quix", "Quix Streams, at-least-once, 1 process", 1),
    # Artifact security (docs/security.md): benchmarks/contender_security.py.
    Contender("project-sign", "project, at-least-once, 1 process, every record signed "
              "(Ed25519) and verified", 1),
    Contender("project-seal", "project, at-least-once, 1 process, every payload sealed "
              "(X25519, AES-256-GCM) and opened", 1),
    # Concurrent handlers (contender_concurrency.py); the io-* rows read a smaller input
    # (--io-count): the sync one handles about 200 records/s.
    Contender("io-sync", "project, I/O-bound (5 ms blocking call), sync handler", 1),
    Contender("io-threads-100", "project, I/O-bound (5 ms blocking call), 100 threads", 1),
    Contender("io-async-100", "project, I/O-bound (asyncio.sleep 5 ms), async, 100 in flight",
              1),
    Contender("io-async-1000", "project, I/O-bound (asyncio.sleep 5 ms), async, 1000 in "
              "flight", 1),
    Contender("cpu-batch", "project, at-least-once, 1 process, batch handler", 1),
)
SECURITY_ROWS = {"project-sign": "sign", "project-seal": "seal"}
KEYS = tuple(c.key for c in CONTENDERS)
LATENCY_ROWS = ("ceiling", "project-alo", "quix")
"""The rows measured under load with --latency."""
CAPACITY_SECONDS = 8.0
"""Seconds over which a contender's capacity beside the open loop is counted."""
UNCHANGED = frozenset(("raw", "raw-sha256", "project-passthrough", "baseline-passthrough"))
"""Rows whose outputs are the input artifacts unchanged (not transformed)."""
PURE_PYTHON = frozenset(("project-alo-pure",))
"""Rows run with the codec's pure-Python source (`processor.serde.fast.PURE_PYTHON_ENV`)."""
BASELINE_ROWS = frozenset(("baseline-passthrough", "baseline-alo"))
"""Rows of the project's stage at the baseline commit (`baseline.py`)."""
CONCURRENT_ROWS = ("io-threads-100", "io-async-100", "io-async-1000")
"""The rows whose handlers run concurrently (threads or asyncio)."""
TRACE_ROWS = {"project-trace-1": 0.01, "project-trace-100": 1.0}
"""The traced rows and their `trace_sample_ratio`."""


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- benchmark-only packages ---------------------------------------------------------------


def requirement(name: str) -> str:
    """The line of requirements.txt that names `name` (with its version bounds)."""
    for line in REQUIREMENTS.read_text("utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text.lower().startswith(name):
            return text
    return name


def pip_install(python: str | Path, spec: str, timeout: float = 900.0) -> str | None:
    """Install `spec` with `python -m pip`; None on success, else why not."""
    say(f"installing {spec} into {Path(python).parent.parent} with pip")
    try:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", spec],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip install {spec} failed: {exc}"
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        return f"pip install {spec} failed (exit {done.returncode}): {tail}"
    return None


def ensure_matplotlib() -> str | None:
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    why = pip_install(sys.executable, requirement("matplotlib"))
    importlib.invalidate_caches()
    return why


def quix_python() -> tuple[Path | None, str | None]:
    """The interpreter of the benchmark's Quix Streams environment, created when missing.

    Quix Streams pins an older confluent-kafka than this project, so it lives in its own
    virtual environment (benchmarks/.venv-quix) instead of downgrading the project's.
    """
    python = QUIX_VENV / "bin" / "python"
    check = [str(python), "-c", "import quixstreams, fastavro"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python, None
    if not python.exists():
        say(f"creating the Quix Streams environment {QUIX_VENV}")
        made = subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return None, f"cannot create {QUIX_VENV}: {made.stderr.strip()}"
    why = pip_install(python, requirement("quixstreams"))
    if why is None:
        why = pip_install(python, "fastavro")
    if why is not None:
        return None, why
    return python, None


# --- running one contender -----------------------------------------------------------------


@dataclass
class Run:
    bootstrap: str
    input_topic: str
    count: int
    partitions: int
    input_bytes: int
    run_id: str
    workdir: Path
    timeout: float
    quix: Path | None
    logs: Path
    registry_url: str | None = None
    framed_topic: str | None = None
    baseline: baseline.Baseline | None = None
    baseline_note: str = "not requested"
    """Why there is no baseline, when there is none."""
    otlp_endpoint: str | None = None
    """The OTLP/gRPC endpoint of the receiver a traced row exports to, while it runs."""


def commands(contender: Contender, run: Run, output: str, group: str,
             profile: Path | None, via_runner: bool) -> list[list[str]]:
    common = ["--bootstrap-servers", run.bootstrap, "--input", run.input_topic,
              "--output", output, "--group", group]
    result = [str(run.workdir / f"{contender.key}-{i}.json") for i in range(contender.processes)]
    if contender.key.startswith(("ceiling", "raw")):
        codec = {"ceiling-codec": "project", "raw": "raw",
                 "raw-sha256": "raw-sha256"}.get(contender.key, "fastavro")
        return [[sys.executable, str(HERE / "contender_ceiling.py"), *common,
                 "--result", result[i], "--codec", codec] for i in range(contender.processes)]
    if contender.key.startswith(("io-", "cpu-batch")):
        mode, _, concurrency = contender.key.rpartition("-")
        if not concurrency.isdigit():
            mode, concurrency = contender.key, "1"
        return [[sys.executable, str(HERE / "contender_concurrency.py"), *common,
                 "--result", result[0], "--mode", mode, "--concurrency", concurrency]]
    if contender.key == "quix":
        assert run.quix is not None
        return [[str(run.quix), str(HERE / "contender_quix.py"), *common, "--result", result[0]]]
    if contender.key in BASELINE_ROWS:
        # The commit's own contender script, in the commit's own environment.
        base = run.baseline
        assert base is not None
        cmd = [str(base.python), str(base.bench_dir / "contender_project.py"), *common,
               "--result", result[0], "--guarantee", "at-least-once", "--instance", "0"]
        if contender.key == "baseline-passthrough":
            cmd += ["--handler", "project_handler:passthrough"]
        return [cmd]
    if contender.key in SECURITY_ROWS:
        return [[sys.executable, str(HERE / "contender_security.py"), *common,
                 "--result", result[0], "--security", SECURITY_ROWS[contender.key]]]
    guarantee = "exactly-once" if contender.key == "project-eos" else "at-least-once"
    if contender.key == "project-alo-registry":
        assert run.registry_url is not None
        common += ["--schema-registry-url", run.registry_url]
    if contender.key in TRACE_ROWS:
        assert run.otlp_endpoint is not None
        common += ["--otlp-endpoint", run.otlp_endpoint,
                   "--trace-sample-ratio", str(TRACE_ROWS[contender.key])]
    if contender.processes > 1 and via_runner:
        # The project's own multi-process runner: N workers in one consumer group.
        settings = {**workload.CONSUMER_SETTINGS, **workload.PRODUCER_SETTINGS}
        cmd = [str(Path(sys.executable).with_name("processor")), "run",
               "--bootstrap-servers", run.bootstrap, "--input-topic", run.input_topic,
               "--output-topic", output, "--group", group, "--name", "bench",
               "--handler", "project_handler:transform", "--guarantee", guarantee,
               "--batch-size", str(workload.BATCH_SIZE),
               "--commit-interval", str(workload.COMMIT_INTERVAL),
               "--processes", str(contender.processes),
               "--metrics-port", "0", "--metrics-host", "127.0.0.1", "--log-level", "WARNING"]
        for key, value in settings.items():
            cmd += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
        return [cmd]
    cmds = []
    for i in range(contender.processes):
        # Several processes without the runner: stage subprocesses sharing one group.
        cmd = [sys.executable, str(HERE / "contender_project.py"), *common,
               "--result", result[i], "--guarantee", guarantee, "--instance", str(i)]
        if profile is not None:
            cmd += ["--profile", str(profile)]
        if contender.key == "project-passthrough":
            cmd += ["--handler", "project_handler:passthrough"]
        cmds.append(cmd)
    return cmds


def contender_env(contender: Contender, run: Run | None = None) -> dict[str, str]:
    """The environment of a contender's processes."""
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    if contender.key in BASELINE_ROWS and run is not None and run.baseline is not None:
        # Only the baseline's own scripts: its `processor` is the one its environment has.
        pythonpath = str(run.baseline.bench_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    env.pop("PROCESSOR_PURE_PYTHON", None)
    if contender.key in PURE_PYTHON:
        env["PROCESSOR_PURE_PYTHON"] = "1"
    return env


def _stop(processes: Sequence[subprocess.Popen[bytes]], peaks: dict[int, int],
          timeout: float = 60.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        for p in processes:
            if p.poll() is None:
                harness.peak_rss(harness.descendants(p.pid), peaks)
        time.sleep(0.1)
    for p in processes:
        if p.poll() is None:
            say(f"pid {p.pid} did not stop in {timeout:.0f}s: killing it")
            p.kill()
            p.wait(10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


IO_COUNT = [20_000]
"""Artifacts the io-* rows read (`--io-count`); the sync row a tenth of them."""
_IO_RUNS: dict[tuple[str, int], Run] = {}


def io_input(run: Run, sync: bool) -> Run:
    """The run of an I/O-bound row: an input of its own with `IO_COUNT` artifacts, or a
    tenth of that for the sync row, which handles about 200 a second (each pre-loaded
    once per run)."""
    count = max(1, IO_COUNT[0] // 10) if sync else IO_COUNT[0]
    cached = _IO_RUNS.get((run.run_id, count))
    if cached is None:
        topic = f"bench-in-io{count}-{run.run_id}"
        harness.create_topic(run.bootstrap, topic, run.partitions)
        size = max(100, run.input_bytes // max(1, run.count))
        say(f"pre-loading {count:,} artifacts into {topic} for the I/O-bound rows")
        pre = harness.preload(run.bootstrap, topic, count, run.partitions, size, say)
        cached = dataclasses.replace(run, input_topic=topic, count=pre.count,
                                     input_bytes=pre.total_bytes)
        _IO_RUNS[(run.run_id, count)] = cached
    return cached


def concurrency_ratios(rows: dict[str, Row]) -> None:
    """The concurrent rows against their sync counterpart (target: threads and async at
    100 in flight >= 50x the sync I/O-bound rate), written into the rows' target column."""
    pairs = [("io-threads-100", "io-sync", 50.0), ("io-async-100", "io-sync", 50.0),
             ("io-async-1000", "io-sync", None), ("cpu-batch", "project-alo", None)]
    for key, base, goal in pairs:
        row, ref = rows.get(key), rows.get(base)
        if row is None or ref is None or not (row.ok and ref.ok) or not ref.rate:
            continue
        ratio = row.rate / ref.rate
        text = f"{ratio:.1f}x {base}"
        if goal is not None:
            text += f" (>= {goal:.0f}x: {'met' if ratio >= goal else 'missed'})"
        row.targets.append(text)


def latency_metrics(rows: dict[str, Row]) -> None:
    """Whether the concurrent rows' stages reported handler and end-to-end latency in their
    metrics (read by the contender from the stage's Prometheus registry after the run),
    written into their target column; information, not a target."""
    for key in ("io-sync", *CONCURRENT_ROWS):
        row = rows.get(key)
        if row is None or not row.ok:
            continue
        seen: dict[str, int] = {}
        unread = ""
        for rep in row.details.get("reports", []):
            metrics = rep.get("latency_metrics")
            if not isinstance(metrics, dict):
                unread = "not read (no report)"
                continue
            if "error" in metrics:
                unread = f"not read ({metrics['error']})"
                continue
            for name, n in metrics.items():
                seen[name] = seen.get(name, 0) + int(n)
        if unread and not seen:
            row.targets.append(f"latency metrics {unread}")
            continue
        parts = []
        for name, what in (("handler", "handler latency"), ("end_to_end", "end-to-end latency")):
            n = seen.get(name, 0)
            parts.append(f"{what}: {n:,} observations" if n else f"{what}: none reported")
        row.targets.append("metrics: " + ", ".join(parts))
        row.details["latency_metrics"] = seen


def traced_contender(contender: Contender, run: Run, profile: Path | None = None) -> Row:
    """A traced row: the collector's OTLP receiver (`processor.devtools.otelcol`) started
    on 127.0.0.1 for it, the contender exporting its spans there, the receiver stopped
    after; the spans it received are counted into the row."""
    from processor.devtools.otelcol import LocalOtelReceiver

    row = Row(contender.key, contender.label, contender.processes)
    try:
        receiver = LocalOtelReceiver()
        receiver.start()
    except Exception as exc:  # no `go` to build it, or it did not start
        row.note = f"no OTLP receiver: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        say(f"{contender.label}: {row.note}")
        return row
    try:
        say(f"OTLP receiver on {receiver.grpc_endpoint} for {contender.key}")
        row = run_contender(contender, dataclasses.replace(
            run, otlp_endpoint=receiver.grpc_endpoint), profile=profile)
        # The stage flushed its spans as it stopped; the receiver may still be writing.
        received, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline:
            now = len(receiver.spans())
            if now == received:
                break
            received = now
            time.sleep(1.0)
        row.details["spans_received"] = received
        expected = run.count * TRACE_ROWS[contender.key]
        row.targets.append(f"{received:,} spans received (~{expected:,.0f} expected)")
    finally:
        receiver.stop()
    return row


def trace_cpu(rows: dict[str, Row]) -> None:
    """CPU time per record of the traced rows against tracing off (`project-alo`), from
    the contenders' reports (the stage's runs, every thread of the process): less moved
    by other work on the machine than throughput is. Information, in the target column."""
    def per_record(row: Row | None) -> float | None:
        if row is None or not row.ok or not row.count:
            return None
        cpu = [r.get("cpu_seconds") for r in row.details.get("reports", [])]
        if not cpu or None in cpu:
            return None
        seconds = sum(float(c) for c in cpu)
        row.details["cpu_us_per_record"] = round(seconds / row.count * 1e6, 2)
        return seconds / row.count * 1e6

    off = per_record(rows.get("project-alo"))
    for key in TRACE_ROWS:
        on = per_record(rows.get(key))
        if on is None or off is None:
            continue
        rows[key].targets.append(f"CPU {on:.1f} us/record, {on / off:.2f}x tracing off's "
                                 f"{off:.1f}")


def run_contender(contender: Contender, run: Run, profile: Path | None = None,
                  via_runner: bool = True) -> Row:
    import json

    row = Row(contender.key, contender.label, contender.processes)
    if contender.key in BASELINE_ROWS and run.baseline is None:
        row.note = f"no baseline: {run.baseline_note}"
        return row
    if contender.key == "project-alo-registry" and run.framed_topic is not None:
        # The same artifacts, in the Confluent wire format.
        run = dataclasses.replace(run, input_topic=run.framed_topic)
    if contender.key.startswith("io-"):
        run = io_input(run, sync=contender.key == "io-sync")
    attempt = "" if via_runner else "-stages"
    output = f"bench-out-{contender.key}{attempt}-{run.run_id}"
    group = f"bench-{contender.key}{attempt}-{run.run_id}"
    harness.create_topic(run.bootstrap, output, run.partitions,
                         {"message.timestamp.type": "LogAppendTime"})
    cmds = commands(contender, run, output, group, profile, via_runner)
    logs = [run.logs / f"{contender.key}{attempt}-{i}.log" for i in range(len(cmds))]
    say(f"{contender.label}: starting ({len(cmds)} process(es)); log {logs[0]}")
    probe = harness.Probe(run.bootstrap, group)
    processes: list[subprocess.Popen[bytes]] = []
    peaks: dict[int, int] = {}
    env = contender_env(contender, run)
    began = time.monotonic()
    committed_at: float | None = None
    try:
        for cmd, log in zip(cmds, logs, strict=True):
            with open(log, "wb") as fh:
                processes.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                  cwd=ROOT, env=env))
        last_report = began
        last_done = 0
        while True:
            time.sleep(0.25)
            for p in processes:
                harness.peak_rss(harness.descendants(p.pid), peaks)
            dead = [p for p in processes if p.poll() is not None]
            if dead:
                log = logs[processes.index(dead[0])]
                last_line = (_tail(log, 1) or "no output").strip()
                row.note = f"exited early with code {dead[0].returncode}: {last_line}"
                say(f"{contender.label}: {row.note}; last lines of {log}:\n{_tail(log)}")
                return row
            done = probe.committed(run.input_topic)
            now = time.monotonic()
            if done >= run.count:
                committed_at = time.time()
                break
            if now - began > run.timeout:
                row.note = f"timed out after {run.timeout:.0f}s ({done:,} committed)"
                say(f"{contender.label}: {row.note}")
                return row
            if now - last_report >= 3.0:
                written = probe.high_watermarks(output)
                say(f"{contender.label}: {done:,} / {run.count:,} input committed, "
                    f"{written:,} output offsets ({(done - last_done) / (now - last_report):,.0f}"
                    "/s committed lately)")
                last_report, last_done = now, done
    finally:
        _stop(processes, peaks)
        probe.close()
    say(f"{contender.label}: all {run.count:,} input offsets committed; reading output back")

    results: list[dict[str, Any]] = []
    for i in range(len(cmds)):
        path = run.workdir / f"{contender.key}-{i}.json"
        if path.is_file():
            results.append(json.loads(path.read_text("utf-8")))
    back = harness.read_back(run.bootstrap, output, run.count, say,
                             transformed=contender.key not in UNCHANGED)
    row.details = {"reports": results, "output_records": back.records,
                   "not_log_append_time": back.not_log_append_time}
    firsts = [r["first_consumed"] for r in results if r.get("first_consumed")]
    if firsts:
        start = min(firsts)
    elif back.first_handled_ms is not None:
        start = back.first_handled_ms / 1000.0
        row.details["start"] = "from the first transform stamp (no report)"
    else:
        row.note = "no output"
        return row
    if back.last_append_ms is None:
        row.note = "no output"
        return row
    end = back.last_append_ms / 1000.0
    row.seconds = max(end - start, 1e-3)
    row.count = run.count
    row.rate = run.count / row.seconds
    row.mb_per_s = run.input_bytes / row.seconds / report.MB
    row.duplicates = back.duplicates
    row.invalid = back.invalid
    row.missing = run.count - back.unique
    row.commit_lag_s = committed_at - end if committed_at is not None else None
    lat = sorted(back.latencies_ms)
    if lat:
        row.p50_ms = float(lat[(len(lat) - 1) // 2])
        row.p99_ms = float(lat[int(0.99 * (len(lat) - 1))])
    # /proc sampling sees every process of the tree; a contender's own report (getrusage,
    # at exit) is exact and also covers the last moments the sampling missed.
    for r in results:
        pid, own = int(r.get("pid", 0)), int(r.get("peak_rss_bytes", 0))
        peaks[pid] = max(peaks.get(pid, 0), own)
    per_process = sorted(peaks.values(), reverse=True)
    row.peak_rss_bytes = per_process[0] if per_process else 0
    row.total_rss_bytes = sum(per_process)
    row.details["peak_rss_per_process"] = per_process
    row.details["load_average"] = [round(x, 2) for x in os.getloadavg()]
    row.ok = row.missing == 0 and row.invalid == 0
    if not row.ok:
        row.note = f"{row.missing} missing, {row.invalid} invalid outputs"
    with contextlib.suppress(Exception):
        harness.delete_topic(run.bootstrap, output)
    latency_text = ("" if row.p50_ms is None
                    else f"p50 {row.p50_ms:.0f} ms, p99 {row.p99_ms:.0f} ms, ")
    say(f"{contender.label}: {row.rate:,.0f} artifacts/s over {row.seconds:.2f}s, "
        f"{latency_text}peak RSS {row.peak_rss_bytes / 1e6:.0f} MB")
    return row


# --- conditions ---------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def conditions(args: argparse.Namespace, run: Run, broker: str, rows: Sequence[Row],
               ) -> dict[str, Any]:
    import fastavro

    versions: dict[str, str] = {}
    for row in rows:
        for rep in row.details.get("reports", []):
            for name, version in rep.get("versions", {}).items():
                versions.setdefault(f"{row.key}: {name}", version)
    return {
        "artifacts": f"{run.count:,} pre-loaded, mean {run.input_bytes / run.count:.0f} bytes "
                     f"encoded (--size {args.size}), {run.input_bytes / 1e6:,.1f} MB",
        "partitions": f"{run.partitions} (input and every output topic), replication 1",
        "producer settings (every contender)": ", ".join(
            f"{k}={v}" for k, v in workload.PRODUCER_SETTINGS.items()),
        "consumer settings (every contender)": ", ".join(
            f"{k}={v}" for k, v in workload.CONSUMER_SETTINGS.items()),
        "consume batch": f"{workload.BATCH_SIZE} records (ceiling and project; Quix polls "
                         "one record at a time, its design)",
        "commit interval": f"{workload.COMMIT_INTERVAL}s for every contender",
        "broker": broker,
        "machine": f"{os.cpu_count()} cores ({cpu_model()}), broker, harness and "
                   "contenders share them",
        "load average (1, 5, 15 min) at the end": ", ".join(
            f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "project confluent-kafka / librdkafka": " / ".join(workload.client_versions().values()),
        "fastavro": fastavro.__version__,
        "baseline": ("-" if run.baseline is None else
                     f"commit {run.baseline.commit} (--baseline {run.baseline.rev}), installed "
                     f"in {run.baseline.python.parent.parent}, codec {run.baseline.codec}"),
        "project codec": ", ".join(sorted({
            f"{row.key}: {rep['versions']['codec']}" for row in rows
            for rep in row.details.get("reports", []) if "codec" in rep.get("versions", {})})),
        **{f"reported by {k}": v for k, v in versions.items() if not k.startswith("project")},
    }


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Side-by-side throughput, latency and memory of this project's stage, "
        "a hand-written ceiling and Quix Streams on a local Apache Kafka.",
    )
    parser.add_argument("--count", type=int, default=1_000_000,
                        help="artifacts to pre-load (default: %(default)s)")
    parser.add_argument("--partitions", type=int, default=6,
                        help="partitions of every topic (default: %(default)s)")
    parser.add_argument("--size", type=int, default=300,
                        help="approximate encoded size of an artifact in bytes (default: "
                        "%(default)s)")
    parser.add_argument("--only", metavar="ROW[,ROW]",
                        help=f"run only these rows, of: {', '.join(KEYS)}")
    parser.add_argument("--skip-quix", action="store_true", help="leave the Quix row out")
    parser.add_argument("--io-count", type=int, default=IO_COUNT[0],
                        help="artifacts the I/O-bound io-* rows read, from an input of their "
                        "own (default: %(default)s; the sync row, ~200/s, a tenth of them)")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                        help="use this Kafka instead of starting a local one")
    parser.add_argument("--timeout", type=float,
                        help="seconds each contender may take (default: scales with --count)")
    parser.add_argument("--profile", action="store_true",
                        help="run only the project's 1-process stage under cProfile and "
                        "write the top functions to benchmarks/results/profile-ROW.txt "
                        "(ROW: project-alo, or with --only project-alo-pure or a "
                        "project-trace-* row)")
    parser.add_argument("--latency", action="store_true",
                        help="after the throughput rows, measure latency under load: an "
                        "open-loop producer at --latency-loads of the capacity beside the "
                        "open loop of each of "
                        f"{', '.join(LATENCY_ROWS)} (those selected and measured), and at "
                        "the one rate --latency-rate for each of them (those selected)")
    parser.add_argument("--latency-seconds", type=float, default=15.0,
                        help="seconds of open-loop load per contender and load "
                        "(default: %(default)s)")
    parser.add_argument("--latency-loads", default="0.5,0.8", metavar="F[,F]",
                        help="fractions of each row's capacity beside the open loop to load "
                        "it at (default: %(default)s; an empty string: none, and no capacity "
                        "is measured)")
    parser.add_argument("--latency-rate", type=float, default=10_000.0, metavar="PER_S",
                        help="with --latency, also offer each of "
                        f"{', '.join(LATENCY_ROWS)} this one open-loop rate, the same for "
                        "all (default: %(default)s; 0: no such rows)")
    parser.add_argument("--baseline", default=baseline.DEFAULT_REV, metavar="REV",
                        help="the git commit whose stage the baseline-* rows measure "
                        "(today's code; default: %(default)s)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="leave the baseline-* rows out")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where to write latest.json/.md/.png (default: %(default)s)")
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["--"]:
        given = given[1:]  # a leading `--` separator is allowed
    args = parser.parse_args(given)
    try:
        args.loads = [float(x) for x in args.latency_loads.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--latency-loads: not a list of numbers: {args.latency_loads!r}")
    if not all(0 < x <= 1 for x in args.loads):
        parser.error("--latency-loads: fractions between 0 and 1, e.g. 0.5,0.8")
    if args.latency_rate < 0:
        parser.error("--latency-rate: a rate per second, or 0 for none")
    IO_COUNT[0] = args.io_count
    if args.count < 1 or args.partitions < 1 or args.size < 100:
        parser.error("--count and --partitions must be positive, --size at least 100")
    return args


def selected(args: argparse.Namespace) -> list[Contender]:
    if args.profile:
        wanted = args.only or "project-alo"
        if wanted not in ("project-alo", "project-alo-pure", *TRACE_ROWS):
            raise SystemExit("bench: --profile runs project-alo, project-alo-pure or a "
                             "project-trace-* row")
        return [c for c in CONTENDERS if c.key == wanted]
    keys = list(KEYS)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in keys if k not in KEYS]
        if unknown:
            raise SystemExit(f"bench: unknown row(s) {', '.join(unknown)}; rows: {', '.join(KEYS)}")
    if args.skip_quix and "quix" in keys:
        keys.remove("quix")
    if args.skip_baseline:
        keys = [k for k in keys if k not in BASELINE_ROWS]
    return [c for c in CONTENDERS if c.key in keys]


@contextlib.contextmanager
def kafka(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.bootstrap_servers:
        yield args.bootstrap_servers, f"existing Kafka at {args.bootstrap_servers}"
        return
    from processor.devtools.local_kafka import KAFKA_VERSION, THROUGHPUT_JVM_FLAGS, LocalKafka

    heap = "1g"
    say(f"starting a local Apache Kafka {KAFKA_VERSION} (1 node, KRaft, heap {heap})")
    with LocalKafka(nodes=1, fast_start=False, heap=heap, start_timeout=120) as local:
        say(f"Kafka ready at {local.bootstrap_servers} in {local.startup_seconds or 0:.1f}s")
        yield local.bootstrap_servers, (
            f"Apache Kafka {KAFKA_VERSION}, 1 local node (KRaft, combined broker+controller) "
            f"on 127.0.0.1, heap {heap}, JVM {' '.join(THROUGHPUT_JVM_FLAGS)}")
        say("stopping the local Kafka")


def framed_input(stack: contextlib.ExitStack, bootstrap: str, run_id: str,
                 args: argparse.Namespace) -> tuple[str, str]:
    """For the registry row: a local schema registry (stopped with `stack`) and an input
    topic of the same artifacts in the Confluent wire format, the schema registered."""
    import json

    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from processor.devtools.registry import LocalRegistry

    registry = stack.enter_context(LocalRegistry())
    say(f"schema registry (Apicurio) ready at {registry.url} in "
        f"{registry.startup_seconds or 0:.1f}s")
    topic = f"bench-in-framed-{run_id}"
    client = SchemaRegistryClient({"url": registry.url, "timeout": 10})
    schema_id = client.register_schema(f"{topic}-value",
                                       Schema(json.dumps(workload.load_schema_json()), "AVRO"))
    harness.create_topic(bootstrap, topic, args.partitions)
    say(f"pre-loading the same artifacts in the Confluent wire format (schema id "
        f"{schema_id}) into {topic}")
    harness.preload(bootstrap, topic, args.count, args.partitions, args.size, say,
                    prefix=b"\x00" + int(schema_id).to_bytes(4, "big"))
    return registry.url, topic


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = selected(args)
    notes: list[str] = []
    quix: Path | None = None
    if any(c.key == "quix" for c in chosen):
        quix, why = quix_python()
        if quix is None:
            note = f"Quix Streams row skipped: {why}"
            say(note)
            notes.append(note)
            chosen = [c for c in chosen if c.key != "quix"]
    elif not args.profile and (args.skip_quix or args.only):
        notes.append("Quix Streams row not requested")
    if not args.profile:
        why = ensure_matplotlib()
        if why is not None:
            notes.append(f"no chart: {why}")
    if not chosen:
        say("nothing to run")
        return 1
    timeout = args.timeout or max(180.0, args.count / 2500 + 120)
    args.results.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    latency_rows: list[latency.LatencyRow] = []
    capacities: list[latency.Capacity] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, kafka(args) as (bootstrap, broker), \
            contextlib.ExitStack() as stack:
        run_id = uuid.uuid4().hex[:8]
        topic = f"bench-in-{run_id}"
        say("warming the broker up (consumer offsets and transaction state topics)")
        harness.warm_up(bootstrap, args.partitions)
        harness.create_topic(bootstrap, topic, args.partitions)
        say(f"pre-loading {args.count:,} artifacts of ~{args.size} bytes into {topic} "
            f"({args.partitions} partitions)")
        pre = harness.preload(bootstrap, topic, args.count, args.partitions, args.size, say)
        say(f"pre-loaded {pre.count:,} artifacts ({pre.total_bytes / 1e6:,.1f} MB, mean "
            f"{pre.mean_size:.0f} bytes) in {pre.seconds:.1f}s")
        run = Run(bootstrap, topic, args.count, args.partitions, pre.total_bytes, run_id,
                  Path(tmp), timeout, quix, args.results / "logs")
        run.logs.mkdir(parents=True, exist_ok=True)
        if any(c.key == "project-alo-registry" for c in chosen):
            registry_url, framed_topic = framed_input(stack, bootstrap, run_id, args)
            run = dataclasses.replace(run, registry_url=registry_url, framed_topic=framed_topic)
        if any(c.key in BASELINE_ROWS for c in chosen):
            base, why = prepare_baseline(stack, args.baseline)
            run = dataclasses.replace(run, baseline=base, baseline_note=why)
            if base is None:
                notes.append(f"baseline rows not measured: {why}")
        if args.profile:
            return profile_run(chosen[0], run)
        for contender in chosen:
            row = guarded(contender, run)
            if contender.processes > 1 and not row.ok:
                # `processor run --processes N` failed: measure N stage subprocesses in
                # one group instead, and say so.
                failed = row.note
                say(f"{contender.label}: the runner failed ({failed}); measuring "
                    f"{contender.processes} stage subprocesses in one group instead")
                fallback = Contender(contender.key, contender.label.replace(
                    "(processor run)", "(stage subprocesses)"), contender.processes)
                row = guarded(fallback, run, via_runner=False)
                notes.append(f"{contender.label} failed ({failed}); the row shows "
                             f"{contender.processes} stage subprocesses in one group instead")
            rows.append(row)
        if args.latency:
            capacities, latency_rows = latency_under_load(chosen, rows, run,
                                                          args.latency_seconds, args.loads,
                                                          args.latency_rate)
            if latency_rows:
                notes.append(
                    "latency under load: the open-loop producer runs in the harness on the "
                    "same cores as the contender and the broker")
        cond = conditions(args, run, broker, rows)
        cond["load average (1, 5, 15 min) at the start"] = ", ".join(
            f"{x:.2f}" for x in load_start)
        if max(load_start[0], os.getloadavg()[0]) > (os.cpu_count() or 1):
            notes.append("other work was running on the machine during the run (load average "
                         "above the core count): absolute rates are low, compare rows")
    for row in rows:
        restarts = [r for rep in row.details.get("reports", []) for r in rep.get("restarts", [])]
        if restarts:
            notes.append(f"{row.label}: the stage stopped {len(restarts)} time(s) with "
                         f"'{restarts[0]}' and the benchmark started it again, as a "
                         "supervisor would; the restarts are inside the measured time")
    by_key = {r.key: r for r in rows}
    ceiling = by_key.get("ceiling")
    raw = by_key.get("raw")
    sha = by_key.get("raw-sha256")
    for row in rows:
        if ceiling is not None and ceiling.ok and row.ok:
            row.ratio = row.rate / ceiling.rate
        if raw is not None and raw.ok and row.ok:
            row.raw_ratio = row.rate / raw.rate
        if sha is not None and sha.ok and row.ok:
            row.sha_ratio = row.rate / sha.rate
    targets = report.compute_targets(by_key, args.count, latency_rows)
    concurrency_ratios(by_key)
    trace_cpu(by_key)
    latency_metrics(by_key)
    command = "bench.py " + (shlex.join(sys.argv[1:] if argv is None else list(argv))
                             or "(defaults)")
    print()
    print(report.render_text(rows, targets, cond, notes, latency_rows, capacities))
    report.write_json(args.results / "latest.json", rows, targets, cond, notes, latency_rows,
                      capacities)
    (args.results / "latest.md").write_text(
        report.render_markdown(rows, targets, cond, notes, command, latency_rows, capacities),
        "utf-8")
    why = report.write_chart(args.results / "latest.png", rows,
                             f"{args.count:,} artifacts, {args.partitions} partitions, "
                             f"{os.cpu_count()} cores")
    if why:
        say(why)
    say(f"results written to {args.results}/latest.json, latest.md"
        f"{'' if why else ', latest.png'}")
    return 0 if all(r.ok for r in rows) else 1


def current_codec_compiled() -> bool:
    """Whether the working tree's codec is the compiled one (in this environment)."""
    try:
        from processor.serde import fast
    except Exception:
        return False
    return bool(fast.COMPILED)


def prepare_baseline(stack: contextlib.ExitStack, rev: str
                     ) -> tuple[baseline.Baseline | None, str]:
    """The baseline of commit `rev` (its worktree removed when `stack` closes), or None
    and why not."""
    try:
        base = stack.enter_context(baseline.prepared(rev, current_codec_compiled(), HERE, say))
    except (baseline.BaselineError, OSError, subprocess.SubprocessError) as exc:
        say(f"baseline {rev}: not measured: {exc}")
        return None, str(exc)
    say(f"baseline: commit {base.short} in {base.python.parent.parent} (codec: {base.codec}); "
        f"contender scripts from {base.bench_dir}")
    return base, ""


def latency_under_load(chosen: Sequence[Contender], rows: Sequence[Row], run: Run,
                       seconds: float, loads: Sequence[float], fixed_rate: float = 0.0
                       ) -> tuple[list[latency.Capacity], list[latency.LatencyRow]]:
    """Each of `LATENCY_ROWS` that was measured: its capacity beside the open loop, then
    the latency at each of `loads` of that capacity; then each of `LATENCY_ROWS` selected
    at the one rate `fixed_rate` (when positive), the same for all of them."""
    measured = {r.key: r for r in rows if r.ok and r.rate > 0}
    capacities: list[latency.Capacity] = []
    out: list[latency.LatencyRow] = []
    say("latency under load: encoding the open loop's artifacts")
    pool = latency.templates(2000, 300)

    def fresh_topics(contender: Contender, tag: str) -> tuple[str, str, list[list[str]]]:
        source, sink = f"bench-lat-in-{tag}", f"bench-lat-out-{tag}"
        harness.create_topic(run.bootstrap, source, run.partitions)
        harness.create_topic(run.bootstrap, sink, run.partitions,
                             {"message.timestamp.type": "LogAppendTime"})
        lat_run = dataclasses.replace(run, input_topic=source)
        return source, sink, commands(contender, lat_run, sink, f"bench-lat-{tag}", None, True)

    def drop(*topics: str) -> None:
        for topic in topics:
            with contextlib.suppress(Exception):
                harness.delete_topic(run.bootstrap, topic)

    for contender in chosen:
        if contender.key not in LATENCY_ROWS or contender.key not in measured or not loads:
            continue
        backlog_rate = measured[contender.key].rate
        source, sink, cmds = fresh_topics(contender, f"{contender.key}-cap-{run.run_id}")
        try:
            cap = latency.capacity(contender.key, contender.label, cmds,
                                   contender_env(contender), ROOT, run.logs, run.bootstrap,
                                   source, sink, run.partitions, backlog_rate,
                                   min(seconds, CAPACITY_SECONDS), pool, say)
        except Exception as exc:
            say(f"{contender.label}: capacity failed: {type(exc).__name__}: {exc}")
            cap = latency.Capacity(contender.key, contender.label, backlog_rate,
                                   latency.OVERLOAD * backlog_rate,
                                   note=f"{type(exc).__name__}: {exc}")
        if cap.rate <= 0:
            cap.note = f"{cap.note}; loads set from the backlog rate instead".lstrip("; ")
        drop(source, sink)
        capacities.append(cap)
        basis = cap.rate if cap.rate > 0 else backlog_rate
        for load in loads:
            tag = f"{contender.key}-{int(load * 100)}-{run.run_id}"
            source, sink, cmds = fresh_topics(contender, tag)
            try:
                row = latency.measure(contender.key, contender.label, cmds,
                                      contender_env(contender), ROOT, run.logs, run.bootstrap,
                                      source, sink, run.partitions, load, basis, seconds,
                                      pool, say)
            except Exception as exc:
                say(f"{contender.label} at {load:.0%}: failed: {type(exc).__name__}: {exc}")
                row = latency.LatencyRow(contender.key, contender.label, load, load * basis,
                                         basis_rate=basis,
                                         note=f"{type(exc).__name__}: {exc}")
            out.append(row)
            drop(source, sink)
    if fixed_rate > 0:
        for contender in chosen:
            if contender.key not in LATENCY_ROWS:
                continue
            basis = measured[contender.key].rate if contender.key in measured else 0.0
            tag = f"{contender.key}-fixed-{run.run_id}"
            source, sink, cmds = fresh_topics(contender, tag)
            try:
                row = latency.measure(contender.key, contender.label, cmds,
                                      contender_env(contender), ROOT, run.logs, run.bootstrap,
                                      source, sink, run.partitions, 0.0, basis, seconds,
                                      pool, say, fixed_rate=fixed_rate)
            except Exception as exc:
                say(f"{contender.label} at {fixed_rate:,.0f}/s: failed: "
                    f"{type(exc).__name__}: {exc}")
                row = latency.LatencyRow(contender.key, contender.label, 0.0, fixed_rate,
                                         basis_rate=basis, fixed=True,
                                         note=f"{type(exc).__name__}: {exc}")
            out.append(row)
            drop(source, sink)
    return capacities, out


def guarded(contender: Contender, run: Run, via_runner: bool = True) -> Row:
    """One row; a harness error fails the row, not the benchmark."""
    try:
        if contender.key in TRACE_ROWS:
            return traced_contender(contender, run)
        return run_contender(contender, run, via_runner=via_runner)
    except Exception as exc:
        say(f"{contender.label}: failed: {type(exc).__name__}: {exc}")
        return Row(contender.key, contender.label, contender.processes,
                   note=f"{type(exc).__name__}: {exc}")


def profile_run(contender: Contender, run: Run) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    prof = run.workdir / "stage.prof"
    row = (traced_contender(contender, run, profile=prof) if contender.key in TRACE_ROWS
           else run_contender(contender, run, profile=prof))
    text_path = prof.with_suffix(".txt")
    if not text_path.is_file():
        say(f"no profile written: {row.note}")
        return 1
    header = (
        f"cProfile of the project's stage (at-least-once, 1 process) over {run.count:,} "
        f"pre-loaded artifacts, {run.partitions} partitions; row {contender.key}: "
        f"{contender.label}.\n"
        f"Under the profiler: {row.rate:,.0f} artifacts/s over {row.seconds:.2f}s "
        "(the profiler itself slows the loop; compare shares, not absolute times).\n"
        "Written by benchmarks/bench.py --profile.\n\n"
    )
    out = RESULTS / f"profile-{contender.key}.txt"
    # Paths relative to the checkout: where it lives says nothing about the stage.
    body = text_path.read_text("utf-8").replace(f"{ROOT}/", "")
    out.write_text(header + body, "utf-8")
    say(f"profile written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
