"""Shutdown with the broker gone: a stage exits within `shutdown_timeout` and loses nothing.

Two ways to lose the broker at shutdown, each tried several times on a cluster of the
test's own:

* together: the stage and its one-node broker get SIGTERM at the same moment (as
  `docker compose down` does), about half a second after the stage dead-lettered a record,
  while it holds handled records not yet committed;
* broker first: the broker stops, the stage runs on without it for a few seconds, then gets
  SIGTERM;
* second signal: as broker first, and a second SIGTERM a moment after the first: the stage
  exits at once, with a log line saying what it left uncommitted.

Each time the stage must exit within `shutdown_timeout` plus a few seconds. Then the broker
starts again, the stage is restarted and catches up: every input is in the output or the
dead-letter topic (at-least-once: duplicates allowed and counted, losses not).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.devtools.local_kafka import LocalKafka
from tests.faults.handlers import REJECT_EVERY
from tests.procs import (
    group_caught_up,
    produce_artifacts,
    read_topic,
    start,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SHUTDOWN_TIMEOUT = 4.0
GRACE = 4.0
"""Seconds allowed beyond `shutdown_timeout` (interpreter exit, log flushing)."""
COUNT = 2_000
TRIALS = {"together": 2, "broker-first": 1, "second-signal": 1}
SECOND_SIGNAL_AFTER = 1.0


def _stage_args(bootstrap: str, source: str, sink: str, dlq: str, group: str) -> list[str]:
    return ["run", "--bootstrap-servers", bootstrap, "--input-topic", source,
            "--output-topic", sink, "--group", group, "--name", "shutdown",
            "--handler", "tests.faults.handlers:slow_reject", "--dlq-topic", dlq,
            "--batch-size", "100", "--commit-interval", "1.0",
            "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
            "--set", "session.timeout.ms=6000", "--set", "heartbeat.interval.ms=500",
            "--log-level", "INFO", "--metrics-port", "off"]


def _trial(kafka: LocalKafka, order: str, name: Callable[[str], str], log: Path
           ) -> tuple[float, int, int, int, int]:
    """One trial; returns (exit seconds, sent, received, duplicated, lost), where received
    counts the output and the dead letters together."""
    bootstrap = kafka.bootstrap_servers
    broker = KafkaBroker(bootstrap)
    admin = broker.admin()
    source, sink, dlq = name("sin"), name("sout"), name("sdlq")
    for topic in (source, sink, dlq):
        admin.create_topic(topic, partitions=3)
    group = name("shutdown")
    sent = produce_artifacts(broker, source, COUNT, keys=30)
    args = _stage_args(bootstrap, source, sink, dlq, group)
    proc = start(args, log)
    try:
        # Mid-stream, about half a second after a dead letter.
        wait_for(lambda: sum(admin.high_watermarks(dlq).values()) > 0 or proc.poll() is not None,
                 60, "a first dead letter")
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
        if order == "together":
            stopper = threading.Thread(target=kafka.stop_node, args=(0,))
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            stopper.start()
        else:
            kafka.stop_node(0)
            time.sleep(3.0)
            stopper = None
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            if order == "second-signal":
                time.sleep(SECOND_SIGNAL_AFTER)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(SHUTDOWN_TIMEOUT + GRACE + 20)
        exit_seconds = time.monotonic() - began
        if stopper is not None:
            stopper.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    kafka.start_node(0)

    # Restarted on the broker back: it re-reads what was not committed.
    proc = start(args, log)
    try:
        wait_for(lambda: group_caught_up(broker, group, source), 120, "the group to catch up")
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-3000:]
    received = read_topic(broker, sink, COUNT - COUNT // REJECT_EVERY, timeout=60)
    dead = read_topic(broker, dlq, COUNT // REJECT_EVERY, timeout=30)
    counts = Counter(a.id for a in received + dead)
    lost = len({a.id for a in sent} - counts.keys())
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    return exit_seconds, len(sent), len(received) + len(dead), duplicated, lost


@pytest.mark.parametrize("order", list(TRIALS))
def test_stage_exits_in_time_when_the_broker_goes(
    order: str, own_kafka: LocalKafka, unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    results = []
    for trial in range(TRIALS[order]):
        log = tmp_path / f"stage-{trial}.log"
        result = _trial(own_kafka, order, unique_name, log)
        results.append(result)
        exit_seconds, sent, received, duplicated, lost = result
        print(f"shutdown {order} trial {trial}: exited in {exit_seconds:.1f}s "
              f"(limit {SHUTDOWN_TIMEOUT + GRACE:.0f}s), sent {sent}, received {received}, "
              f"duplicated {duplicated}, lost {lost}")
        assert exit_seconds <= SHUTDOWN_TIMEOUT + GRACE, (
            f"trial {trial}: the stage took {exit_seconds:.1f}s to exit:\n"
            + log.read_text()[-3000:])
        if order == "second-signal":
            assert exit_seconds < SECOND_SIGNAL_AFTER + 1.5, exit_seconds
            assert "left uncommitted: stage shutdown: " in log.read_text()
        assert lost == 0
    assert len(results) == TRIALS[order]
