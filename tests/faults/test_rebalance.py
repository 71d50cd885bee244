"""Replicas joining and leaving mid-stream (cooperative-sticky rebalances).

Stage replicas A, B and C share a group: A starts, B joins, A leaves (SIGTERM), C joins,
B is killed (SIGKILL). Exactly-once leaves every input id exactly once in the output read
committed; at-least-once loses none.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from tests.procs import Feeder, group_caught_up, read_topic, start, stop, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 30_000


@pytest.mark.parametrize(
    ("guarantee", "assignor"),
    [("exactly-once", "range"), ("at-least-once", "range"),
     ("exactly-once", "cooperative-sticky")],
)
def test_replicas_join_and_leave_mid_stream(
    guarantee: str, assignor: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, sink, dlq = unique_name("rin"), unique_name("rout"), unique_name("rdlq")
    for topic in (source, sink, dlq):
        admin.create_topic(topic, partitions=6)
    group = unique_name("rebalance")
    # Fed while the replicas come and go (about 20 s), so every step has work to move.
    feeder = Feeder(broker, source, COUNT, keys=60, per_second=1_500).start()

    def replica(name: str) -> subprocess.Popen[bytes]:
        return start(
            ["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", source,
             "--output-topic", sink, "--group", group, "--name", "rebal",
             "--handler", "tests.integration.chain_handlers:hop", "--dlq-topic", dlq,
             "--guarantee", guarantee, "--batch-size", "200", "--commit-interval", "0.2",
             "--set", "session.timeout.ms=6000", "--set", "heartbeat.interval.ms=500",
             "--set", f"partition.assignment.strategy={assignor}",
             "--log-level", "INFO", "--metrics-port", "0", "--metrics-host", "127.0.0.1"],
            tmp_path / f"{name}.log",
        )

    def outputs() -> int:
        return sum(admin.high_watermarks(sink).values())

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["a"] = replica("a")
        wait_for(lambda: outputs() > 2_000, 90, "replica a to produce")
        procs["b"] = replica("b")
        wait_for(lambda: "assignment" in (tmp_path / "b.log").read_text(), 60,
                 "replica b to be assigned partitions")
        mark = outputs()
        wait_for(lambda: outputs() > mark + 1_000, 90, "a and b to produce together")
        assert stop(procs.pop("a")) == 0, (tmp_path / "a.log").read_text()[-2000:]
        procs["c"] = replica("c")
        wait_for(lambda: "assignment" in (tmp_path / "c.log").read_text(), 60,
                 "replica c to be assigned partitions")
        procs["b"].send_signal(signal.SIGKILL)
        procs.pop("b").wait(10)
        sent = feeder.join()
        wait_for(lambda: group_caught_up(broker, group, source), 180, "c to catch up")
    finally:
        codes = {name: stop(p) for name, p in procs.items()}
    assert codes == {"c": 0}, (tmp_path / "c.log").read_text()[-2000:]

    received = read_topic(broker, sink, COUNT, timeout=90, read_committed=True)
    counts = Counter(a.id for a in received)
    lost = len({a.id for a in sent} - counts.keys())
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    print(f"{guarantee}, {assignor}: sent {COUNT}, received {len(received)}, "
          f"distinct {len(counts)}, duplicates {duplicated}, lost {lost}")
    assert lost == 0
    if guarantee == "exactly-once":
        assert duplicated == 0
