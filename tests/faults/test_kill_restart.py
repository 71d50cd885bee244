"""A stage killed with SIGKILL mid-stream and restarted, several times.

Exactly-once: the output topic, read committed, holds every input id exactly once.
At-least-once: no input id is lost (duplicates are allowed, and counted).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from tests.procs import Feeder, group_caught_up, read_topic, start, stop, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 30_000
KILLS = 3


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_sigkill_and_restart_loses_nothing(
    guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, sink, dlq = unique_name("kin"), unique_name("kout"), unique_name("kdlq")
    for topic in (source, sink, dlq):
        admin.create_topic(topic, partitions=3)
    group = unique_name("kill-group")
    # Fed while the stage is killed and restarted (about 30 s), so it dies mid-stream.
    feeder = Feeder(broker, source, COUNT, keys=30, per_second=1_000).start()
    args = ["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", source,
            "--output-topic", sink, "--group", group, "--name", "killme",
            "--handler", "tests.integration.chain_handlers:hop", "--dlq-topic", dlq,
            "--guarantee", guarantee, "--batch-size", "500", "--commit-interval", "0.3",
            "--set", "session.timeout.ms=6000", "--set", "heartbeat.interval.ms=500",
            "--log-level", "WARNING", "--metrics-port", "0", "--metrics-host", "127.0.0.1"]
    rng = random.Random(11)
    log = tmp_path / "stage.log"
    kills = 0
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(KILLS):
            before = sum(admin.high_watermarks(sink).values())
            proc = running = start(args, log)
            # Kill it once it is visibly mid-stream: outputs written since it started.

            def moving(b: int = before, p: subprocess.Popen[bytes] = running) -> bool:
                return sum(admin.high_watermarks(sink).values()) > b + 500 or (
                    p.poll() is not None)

            wait_for(moving, 90, "the stage to produce")
            time.sleep(rng.uniform(0.1, 0.6))
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        proc = start(args, log)
        sent = feeder.join()
        wait_for(lambda: group_caught_up(broker, group, source), 180, "the group to catch up")
    finally:
        code = stop(proc) if proc is not None else 0
    assert code == 0, log.read_text()[-2000:]

    received = read_topic(broker, sink, COUNT, timeout=90, read_committed=True)
    counts = Counter(a.id for a in received)
    expected = {a.id for a in sent}
    lost = len(expected - counts.keys())
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    print(f"{guarantee}: kills {kills}, sent {COUNT}, received {len(received)}, "
          f"distinct {len(counts)}, duplicates {duplicated}, lost {lost}")
    assert kills == KILLS
    assert lost == 0
    assert counts.keys() == expected
    if guarantee == "exactly-once":
        assert duplicated == 0
        assert len(received) == COUNT
