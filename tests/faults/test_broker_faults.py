"""A one-node cluster restarted, or frozen, while two stages read it mid-stream.

One at-least-once and one exactly-once stage read the same input (each in its own group,
writing its own output topic) while the only broker is

* restarted: killed (SIGKILL, a crash) and started again;
* frozen: SIGSTOP for longer than the consumers' session timeout (6 s), then SIGCONT.

The stages run supervised (restarted if they exit, as an orchestrator would) until both
groups have committed the whole input. At-least-once: nothing lost. Exactly-once: nothing
lost and nothing duplicated (the output read committed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.devtools.local_kafka import LocalKafka
from tests.faults.chaos import Supervised, assert_stage_counts, run_until_caught_up, stage_args
from tests.procs import produce_artifacts, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 6_000
FROZEN_FOR = 10.0
"""Seconds the broker stays frozen: longer than session.timeout.ms (6 s)."""


def _under_fault(kafka: LocalKafka, fault: Callable[[], None], what: str,
                 name: Callable[[str], str], tmp_path: Path) -> None:
    broker = KafkaBroker(kafka.bootstrap_servers)
    admin = broker.admin()
    source, dlq = name("bin"), name("bdlq")
    sinks = {"at-least-once": name("balo"), "exactly-once": name("beos")}
    for topic in (source, dlq, *sinks.values()):
        admin.create_topic(topic, partitions=3)
    sent = produce_artifacts(broker, source, COUNT, keys=30)
    groups = {g: name(f"{what}{'eos' if g == 'exactly-once' else 'alo'}") for g in sinks}
    stages = [Supervised(stage_args(kafka.bootstrap_servers, source, sinks[g], dlq, groups[g],
                                    g), tmp_path / f"{g}.log") for g in sinks]
    try:
        # Mid-stream: both stages have written part of the input.
        wait_for(lambda: all(sum(admin.high_watermarks(s).values()) > COUNT // 6
                             for s in sinks.values()), 90, "both stages to be mid-stream")
        began = time.monotonic()
        fault()
        print(f"{what}: fault over after {time.monotonic() - began:.1f}s")
        run_until_caught_up(broker, stages, list(groups.values()), source, 180)
    finally:
        codes = [stage.stop() for stage in stages]
    assert_stage_counts(broker, sent, sinks, stages, codes, what)


def test_broker_restarted_mid_stream(own_kafka: LocalKafka, unique_name: Callable[[str], str],
                                     tmp_path: Path) -> None:
    _under_fault(own_kafka, lambda: own_kafka.restart_node(0), "restart", unique_name,
                 tmp_path)


def test_broker_frozen_past_the_session_timeout(
    own_kafka: LocalKafka, unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    def freeze() -> None:
        own_kafka.freeze_node(0)
        try:
            time.sleep(FROZEN_FOR)
        finally:
            own_kafka.thaw_node(0)

    _under_fault(own_kafka, freeze, "freeze", unique_name, tmp_path)
