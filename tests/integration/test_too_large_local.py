"""An output over the producer's own `message.max.bytes`, refused by librdkafka inside
`produce()` rather than by the broker: reported as a failed delivery like the broker's
refusal, so its input is dead-lettered as `too-large` and the stage goes on."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.runtime.stage import Stage
from processor.serde.codec import Codec
from tests.faults.raw import read_raw
from tests.unit.stage_support import options

pytestmark = [pytest.mark.kafka]

CODEC = Codec()


def grow(artifact: Artifact) -> Outcome:
    size = artifact.meta.get("grow")
    if isinstance(size, int):
        return artifact.with_payload(random.Random(size).randbytes(size))
    return artifact


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_outputs_over_the_producers_limit_are_dead_lettered(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, sink, dlq = unique_name("tl-in"), unique_name("tl-out"), unique_name("tl-dlq")
    for topic in (source, sink, dlq):
        admin.create_topic(topic, partitions=2)
    producer = broker.producer()
    grown = set()
    for i in range(200):
        meta = {"seq": i}
        if i % 10 == 3:
            meta["grow"] = 50_000
            grown.add(str(i).encode())
        producer.produce(source, CODEC.encode(Artifact.new(f"r{i}", meta=meta)),
                         str(i).encode())
    assert producer.flush(30) == 0
    producer.close()

    stage = Stage(options(input_topic=source, output_topic=sink, dlq_topic=dlq,
                          group=unique_name("tl-g"), guarantee=guarantee,
                          transactional_id=unique_name("tl-txn"), poll_timeout=0.2),
                  broker, grow, producer_settings={"message.max.bytes": 20_000})
    end = admin.high_watermarks(source)
    stage.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # until everything is read and committed
            stage.run_once()
            if (set(stage.consumer.assignment()) == set(end) and not stage.ledger
                    and all(stage.consumer.position(tp) == off for tp, off in end.items())):
                break
    finally:
        stage.close()
    stats = stage.stats
    assert stats.dead_letter_reasons == {"too-large": 20}, stats
    dead = read_raw(broker, dlq, expect=20)
    assert {m.key() for m in dead} == grown
    assert {header_dict(m.headers())[H_REASON] for m in dead} == {"too-large"}
    out = read_raw(broker, sink, expect=180)
    assert {m.key() for m in out} == {str(i).encode() for i in range(200)} - grown
    if guarantee == "exactly-once":
        assert len(out) == 180 and len(dead) == 20
