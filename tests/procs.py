"""Helpers for tests that run `processor` commands as real processes against Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from processor.backends.abstract import Broker, TopicPartition
from processor.core.artifact import Artifact
from processor.serde.codec import Codec

ROOT = Path(__file__).resolve().parent.parent


def processor_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "processor.cli", *args]


def start(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `processor ARGS` with its output in `log`; tests' handlers are importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with log.open("ab") as out:
        return subprocess.Popen(processor_cmd(*args), stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def produce_artifacts(broker: Broker, topic: str, count: int, keys: int = 50,
                      start: int = 0) -> list[Artifact]:
    """`count` artifacts with meta seq and key; keyed so each key keeps its order."""
    codec = Codec()
    producer = broker.producer(client_id="test-feed")
    sent: list[Artifact] = []
    for i in range(start, start + count):
        key = f"k{i % keys}"
        artifact = Artifact.new(f"payload-{i}".ljust(120, "."), meta={"seq": i, "key": key})
        producer.produce(topic, codec.encode(artifact), key.encode())
        sent.append(artifact)
    assert producer.flush(60) == 0
    assert producer.take_delivery_errors() == []
    producer.close()
    return sent


def read_topic(broker: Broker, topic: str, expect: int, timeout: float,
               read_committed: bool = True, group: str | None = None) -> list[Artifact]:
    """Read a topic from the start until `expect` artifacts or the end after `timeout`."""
    codec = Codec()
    consumer = broker.consumer(group or f"reader-{topic}-{time.time_ns()}",
                               read_committed=read_committed)
    consumer.subscribe([topic])
    out: list[Artifact] = []
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while time.monotonic() < deadline:
        batch = consumer.consume(5000, 0.5)
        for msg in batch:
            out.append(codec.decode(msg.value() or b""))
        if len(out) >= expect:
            # Keep reading briefly: more than expected means duplicates.
            if idle_since is None:
                idle_since = time.monotonic()
            if not batch and time.monotonic() - idle_since > 2.0:
                break
    consumer.close()
    return out


def group_caught_up(broker: Broker, group: str, topic: str) -> bool:
    admin = broker.admin()
    committed = admin.group_offsets(group, [topic])
    ends = admin.high_watermarks(topic)
    return all(committed.get(tp, -1) >= end for tp, end in ends.items() if end > 0)


def committed_total(broker: Broker, group: str, topic: str) -> int:
    return sum(v for tp, v in broker.admin().group_offsets(group, [topic]).items()
               if isinstance(tp, TopicPartition) and v > 0)


class Feeder:
    """Produces artifacts in the background at a steady rate, so that a test's stages have
    work left at every step (a pre-loaded topic can be drained before a test's next step).
    """

    def __init__(self, broker: Broker, topic: str, count: int, keys: int = 50,
                 per_second: int = 2_000, chunk: int = 200) -> None:
        self.sent: list[Artifact] = []
        self._args = (broker, topic, count, keys, per_second, chunk)
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        broker, topic, count, keys, per_second, chunk = self._args
        try:
            start_at = time.monotonic()
            while len(self.sent) < count:
                n = min(chunk, count - len(self.sent))
                self.sent.extend(produce_artifacts(broker, topic, n, keys=keys,
                                                   start=len(self.sent)))
                ahead = len(self.sent) / per_second - (time.monotonic() - start_at)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def __enter__(self) -> Feeder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self, timeout: float = 120.0) -> list[Artifact]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the feeder did not finish in time")
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error}") from self.error
        return self.sent
