"""The soak: a chain of three stages on a local Kafka for a long time, at a steady rate,
with a stage killed (SIGKILL) and restarted periodically.

    make soak                                     # 30 minutes (SOAK_MINUTES=...)
    make soak SOAK_MINUTES=5 SOAK_ARGS="--rate 300 --kill-every 45"
    .venv/bin/python benchmarks/soak.py --minutes 4

Topics soak.0 -> stage a -> soak.1 -> stage b -> soak.2 -> stage c -> soak.3, each stage one
`processor run` process (at-least-once by default). A feeder writes artifacts numbered
0, 1, 2, ... to soak.0 at `--rate` per second. Every `--kill-every` seconds stage b or c
(in turn) is killed with SIGKILL and started again at once; stage a is never killed, so
its resident memory (RSS) over the whole run shows whether memory grows. Every
`--sample-every` seconds the RSS of each stage process and the lag of each group are
recorded.

At the end the feeder stops, the stages drain, and soak.3 is read back: every number
sent must be there (lost = sent - found), each with 3 hops; a number found more than
once is a duplicate (at-least-once allows them after a kill). The result goes to
docs/soak/latest.json and a plot to docs/soak/latest.png (matplotlib, installed with
pip when missing, as benchmarks/bench.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT_DIR = ROOT / "docs" / "soak"
STAGES = ("a", "b", "c")
KILLED = ("b", "c")  # stage a lives through the whole run: its RSS shows any growth

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def hop(artifact: Any) -> Any:
    """The stages' handler (`--handler soak:hop`): count the hops in the metadata."""
    return artifact.with_meta("hops", artifact.get("hops", 0) + 1)


def say(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Stage:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor.cli", *self.args], stdout=out,
                stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class Feeder:
    """Writes numbered artifacts at a steady rate, in a thread."""

    bootstrap: str
    topic: str
    rate: int
    sent: int = 0
    error: str | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from processor.backends.kafka import KafkaBroker
        from processor.core.artifact import Artifact
        from processor.serde.codec import Codec

        codec = Codec()
        producer = KafkaBroker(self.bootstrap).producer(client_id="soak-feeder")
        began = time.monotonic()
        try:
            while not self.stop_event.is_set():
                due = int((time.monotonic() - began) * self.rate)
                while self.sent < due:
                    seq = self.sent
                    artifact = Artifact.new(f"soak {seq} " + "x" * 200, id=str(seq),
                                            meta={"seq": seq})
                    producer.produce(self.topic, codec.encode(artifact), b"k%d" % (seq % 64))
                    self.sent += 1
                producer.poll(0)
                self.stop_event.wait(0.05)
            if producer.flush(60):
                self.error = "the feeder's last records were not acknowledged"
        except Exception as exc:  # reported in the result
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            producer.close()


def stage_args(bootstrap: str, name: str, source: str, sink: str, guarantee: str) -> list[str]:
    return ["run", "--bootstrap-servers", bootstrap, "--input-topic", source,
            "--output-topic", sink, "--group", f"soak-{name}", "--name", f"soak-{name}",
            "--handler", "soak:hop", "--dlq-topic", f"{source}.dlq",
            "--guarantee", guarantee, "--commit-interval", "1.0",
            "--set", "session.timeout.ms=6000", "--set", "heartbeat.interval.ms=1000",
            "--log-level", "WARNING", "--metrics-port", "off"]


def total_lag(bootstrap: str, group: str, topic: str) -> int | None:
    from processor.core.errors import ProcessorError
    from processor.ops.lag import collect_lag

    try:
        return sum(r.lag for r in collect_lag(bootstrap, group, [topic], timeout=5.0))
    except ProcessorError:
        return None


def read_back(bootstrap: str, topic: str, expect: int, timeout: float) -> Counter[int]:
    """How many times each number arrived in `topic` (read committed)."""
    from processor.backends.kafka import KafkaBroker
    from processor.serde.codec import Codec

    codec = Codec()
    consumer = KafkaBroker(bootstrap).consumer(f"soak-reader-{time.time_ns()}",
                                               read_committed=True)
    consumer.subscribe([topic])
    seen: Counter[int] = Counter()
    hops: Counter[int] = Counter()
    deadline = time.monotonic() + timeout
    quiet = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.5)
            for msg in batch:
                artifact = codec.decode(msg.value() or b"")
                seen[int(artifact.get("seq", -1))] += 1
                hops[int(artifact.get("hops", 0))] += 1
            if batch:
                quiet = time.monotonic()
            elif len(seen) >= expect and time.monotonic() - quiet > 3.0:
                break
    finally:
        consumer.close()
    if set(hops) - {3}:
        say(f"records with a hop count other than 3: {dict(hops)}")
    return seen


def ensure_matplotlib() -> str | None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return None
    spec = next(line for line in (HERE / "requirements.txt").read_text().splitlines()
                if line.startswith("matplotlib"))
    say(f"installing {spec} with pip")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec],
                          capture_output=True, text=True, check=False)
    importlib.invalidate_caches()
    return None if done.returncode == 0 else f"pip install {spec} failed: {done.stderr[-300:]}"


def plot(result: dict[str, Any], path: Path) -> str | None:
    why = ensure_matplotlib()
    if why is not None:
        return why
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name in STAGES:
        top.plot(minutes, [s["rss_mb"].get(name) for s in samples],
                 label=f"stage {name}" + (" (killed periodically)" if name in KILLED
                                          else " (never killed)"))
        bottom.plot(minutes, [s["lag"].get(name) for s in samples], label=f"stage {name}")
    for kill in result["kills"]:
        for axis in (top, bottom):
            axis.axvline(kill["t"] / 60, color="grey", alpha=0.3, linewidth=1)
    top.set_ylabel("RSS (MB)")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.set_title(f"soak: {result['minutes']:g} min at {result['rate']}/s, "
                  f"{len(result['kills'])} kills (grey lines); sent {result['sent']}, "
                  f"lost {result['lost']}, duplicated {result['duplicated']}")
    bottom.set_ylabel("lag (records)")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def growth(values: list[float]) -> float | None:
    """Median RSS of the last quarter over the first quarter (after the first minute)."""
    if len(values) < 8:
        return None
    quarter = len(values) // 4
    first = statistics.median(values[:quarter])
    last = statistics.median(values[-quarter:])
    return last / first - 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("SOAK_MINUTES", "30")),
                        help="how long to feed (default: $SOAK_MINUTES or 30)")
    parser.add_argument("--rate", type=int, default=300, help="records per second")
    parser.add_argument("--kill-every", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between two kills (default: %(default)s)")
    parser.add_argument("--sample-every", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--guarantee", default="at-least-once",
                        choices=("at-least-once", "exactly-once"))
    parser.add_argument("--out", type=Path, default=OUT_DIR,
                        help="where latest.json and latest.png go (default: docs/soak)")
    args = parser.parse_args(argv)

    from processor.backends.kafka import KafkaBroker
    from processor.devtools.local_kafka import LocalKafka

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    say(f"starting a local Kafka in {workdir}")
    with LocalKafka(nodes=1, workdir=workdir / "kafka") as kafka:
        bootstrap = kafka.bootstrap_servers
        admin = KafkaBroker(bootstrap).admin()
        topics = [f"soak.{i}" for i in range(4)]
        for topic in topics + [f"{t}.dlq" for t in topics[:3]]:
            admin.create_topic(topic, partitions=args.partitions)
        stages = {name: Stage(name, stage_args(bootstrap, name, topics[i], topics[i + 1],
                                               args.guarantee), workdir / f"stage-{name}.log")
                  for i, name in enumerate(STAGES)}
        for stage in stages.values():
            stage.start()
        feeder = Feeder(bootstrap, topics[0], args.rate)
        feed_thread = threading.Thread(target=feeder.run, name="feeder", daemon=True)
        feed_thread.start()
        say(f"feeding {args.rate}/s for {args.minutes:g} minutes; a kill every "
            f"{args.kill_every:g}s")
        began = time.monotonic()
        samples: list[dict[str, Any]] = []
        kills: list[dict[str, Any]] = []
        next_kill = began + args.kill_every
        next_sample = began
        victim = 0
        end = began + args.minutes * 60
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                next_sample += args.sample_every
                sample = {
                    "t": round(now - began, 1), "sent": feeder.sent,
                    "rss_mb": {n: rss_mb(s.proc.pid) for n, s in stages.items() if s.proc},
                    "lag": {n: total_lag(bootstrap, f"soak-{n}", topics[i])
                            for i, n in enumerate(STAGES)},
                }
                samples.append(sample)
            if now >= next_kill:
                next_kill += args.kill_every
                name = KILLED[victim % len(KILLED)]
                victim += 1
                stages[name].kill()
                stages[name].start()
                kills.append({"t": round(now - began, 1), "stage": name})
                say(f"killed stage {name} (SIGKILL) and started it again; sent so far "
                    f"{feeder.sent}")
            for name, stage in stages.items():
                if stage.proc is not None and stage.proc.poll() is not None:
                    say(f"stage {name} exited by itself ({stage.proc.returncode}); restarting")
                    stage.start()
            time.sleep(min(0.5, max(0.0, min(next_sample, next_kill) - time.monotonic())))
        feeder.stop_event.set()
        feed_thread.join(120)
        sent = feeder.sent
        say(f"fed {sent}; draining")
        fed_at = time.monotonic()
        drained_at = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            lags = [total_lag(bootstrap, f"soak-{n}", topics[i]) for i, n in enumerate(STAGES)]
            if all(lag == 0 for lag in lags):
                drained_at = time.monotonic() - fed_at  # after feeding stopped
                break
            time.sleep(1.0)
        codes = {name: stage.stop() for name, stage in stages.items()}
        seen = read_back(bootstrap, topics[3], sent, timeout=300)
        admin.close()

    found = set(seen)
    lost = sum(1 for seq in range(sent) if seq not in found)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    rss_a = [s["rss_mb"].get("a") for s in samples if s["t"] >= 60]
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "minutes": args.minutes, "rate": args.rate, "guarantee": args.guarantee,
        "partitions": args.partitions, "kill_every": args.kill_every,
        "sent": sent, "received_unique": len(found), "received_total": sum(seen.values()),
        "lost": lost, "duplicated": duplicated, "unexpected": len(found - set(range(sent))),
        "drained_after_s": None if drained_at is None else round(drained_at, 1),
        "stop_codes": codes, "feeder_error": feeder.error,
        "rss_growth_never_killed": growth([v for v in rss_a if v is not None]),
        "rss_mb_never_killed": {"min": min((v for v in rss_a if v), default=None),
                                "max": max((v for v in rss_a if v), default=None)},
        "max_lag": {n: max((s["lag"].get(n) or 0 for s in samples), default=0)
                    for n in STAGES},
        "kills": kills, "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    why = plot(result, args.out / "latest.png")
    say(f"sent {sent}, lost {lost}, duplicated {duplicated}, kills {len(kills)}, "
        f"RSS of stage a {result['rss_mb_never_killed']} MB "
        f"(growth {result['rss_growth_never_killed']}), max lag {result['max_lag']}")
    if why:
        say(why)
    say(f"wrote {args.out / 'latest.json'}" + ("" if why else " and latest.png"))
    return 0 if lost == 0 and drained_at is not None and not feeder.error else 1


if __name__ == "__main__":
    sys.exit(main())
