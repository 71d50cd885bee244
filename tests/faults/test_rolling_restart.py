"""A rolling restart of a three-node cluster under load.

Records are fed at a steady rate while every node in turn is stopped cleanly (SIGTERM,
controlled shutdown) and started again, the next one only once the previous is back. One
at-least-once and one exactly-once stage read the input throughout, supervised. At-least-
once: nothing lost. Exactly-once: nothing lost and nothing duplicated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.devtools.local_kafka import LocalKafka
from tests.faults.chaos import Supervised, assert_stage_counts, run_until_caught_up, stage_args
from tests.procs import Feeder, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 12_000
RATE = 300
"""Records per second fed: the feed lasts about as long as the three restarts."""


def test_rolling_restart_under_load(own_kafka3: LocalKafka, unique_name: Callable[[str], str],
                                    tmp_path: Path) -> None:
    kafka = own_kafka3
    broker = KafkaBroker(kafka.bootstrap_servers)
    admin = broker.admin()
    source, dlq = unique_name("rrin"), unique_name("rrdlq")
    sinks = {"at-least-once": unique_name("rralo"), "exactly-once": unique_name("rreos")}
    for topic in (source, dlq, *sinks.values()):
        admin.create_topic(topic, partitions=3)
    groups = {g: unique_name("rollingeos" if g == "exactly-once" else "rollingalo")
              for g in sinks}
    feeder = Feeder(broker, source, COUNT, keys=30, per_second=RATE, chunk=100).start()
    stages = [Supervised(stage_args(kafka.bootstrap_servers, source, sinks[g], dlq, groups[g],
                                    g), tmp_path / f"{g}.log") for g in sinks]
    try:
        wait_for(lambda: all(sum(admin.high_watermarks(s).values()) > 500
                             for s in sinks.values()), 90, "both stages to be mid-stream")
        began = time.monotonic()
        for node in range(kafka.nodes):
            kafka.stop_node(node)
            for stage in stages:
                stage.poll()
            kafka.start_node(node)
            for stage in stages:
                stage.poll()
        print(f"rolling restart of {kafka.nodes} nodes took {time.monotonic() - began:.1f}s")
        sent = feeder.join(180)
        run_until_caught_up(broker, stages, list(groups.values()), source, 180)
    finally:
        codes = [stage.stop() for stage in stages]
    assert len(sent) == COUNT, f"the feeder sent {len(sent)} of {COUNT}"
    assert_stage_counts(broker, sent, sinks, stages, codes, "rolling restart")
