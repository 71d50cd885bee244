"""Outputs larger than their topic accepts, on the in-memory broker (which refuses records
over a topic's `max.message.bytes` in a delivery report, as Kafka does): the input is
dead-lettered as `too-large`, the stage goes on, nothing past a failed output is
committed before its input is dead-lettered, and the counts add up. Also tombstones."""

from __future__ import annotations

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.memory import MemoryBroker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.runtime.commit import OutputTooLarge
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.runtime.stage import Stage, StageStats
from tests.unit.stage_support import CODEC, RecordingMetrics, committed, identity, options, read_all

LIMIT = 4_000


def broker_with_small_output(partitions: int = 2) -> MemoryBroker:
    broker = MemoryBroker()
    admin = broker.admin()
    admin.create_topic("in", partitions=partitions)
    admin.create_topic("out", partitions=2, config={"max.message.bytes": str(LIMIT)})
    admin.create_topic("dlq", partitions=2)
    return broker


def feed_sizes(broker: MemoryBroker, sizes: list[int], same_key: bool = False) -> None:
    producer = broker.producer()
    for i, size in enumerate(sizes):
        artifact = Artifact.new(b"x" * size, meta={"seq": i})
        producer.produce("in", CODEC.encode(artifact), b"k" if same_key else str(i).encode(),
                         partition=i % len(broker.admin().high_watermarks("in")))
    producer.flush()


def seq_of(data: bytes | None) -> str:
    return str(CODEC.decode(data or b"").get("seq"))


def grow(artifact: Artifact) -> Outcome:
    """Makes every output ten times its input."""
    return artifact.with_payload(artifact.payload * 10)


def drain(stage: Stage, broker: MemoryBroker, count: int) -> StageStats:
    """Run the stage until all `count` input records are committed (committing whenever
    it is idle), then close it."""
    stage.start()
    for _ in range(5_000):
        if not stage.run_once():
            stage.commit()
        if sum(committed(broker).values()) == count:
            break
    stage.close()
    return stage.stats


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
@pytest.mark.parametrize("handler", [identity, grow], ids=["pass-through", "grow"])
@pytest.mark.parametrize("same_key", [False, True], ids=["own-keys", "one-key"])
@pytest.mark.parametrize("batch_size", [50, 3], ids=["batch-50", "batch-3"])
def test_too_large_outputs_are_dead_lettered_and_the_stage_goes_on(
        guarantee: str, handler: object, same_key: bool, batch_size: int) -> None:
    broker = broker_with_small_output()
    sizes = [10, 50, 9_000, 20, 200, 7_000, 30, 1_000, 5, 5_000] * 5
    feed_sizes(broker, sizes, same_key)
    metrics = RecordingMetrics()
    stage = Stage(options(guarantee=guarantee, commit_interval=1000.0, max_in_flight=20,
                          batch_size=batch_size),
                  broker, handler, metrics=metrics)  # type: ignore[arg-type]
    stats = drain(stage, broker, len(sizes))

    growth = 10 if handler is grow else 1
    too_big = {str(i) for i, size in enumerate(sizes) if size * growth + 300 > LIMIT}
    fits = {str(i) for i in range(len(sizes))} - too_big
    assert 0 < len(too_big) < len(sizes)
    out = read_all(broker, "out", read_committed=True)
    dlq = read_all(broker, "dlq", read_committed=True)
    out_keys = [seq_of(m.value()) for m in out]
    dlq_keys = [seq_of(m.value()) for m in dlq]
    assert set(out_keys) == fits
    assert sorted(dlq_keys) == sorted(too_big)  # each exactly once
    assert {header_dict(m.headers())[H_REASON] for m in dlq} == {"too-large"}
    if guarantee == "exactly-once" or not same_key:
        # No duplicates: exactly-once aborted them; at-least-once skips the re-read
        # records whose outputs the failed commit acknowledged (their keys are not those
        # of a refused output; with one key for all, every record is a suspect).
        assert sorted(out_keys) == sorted(fits)
    assert stats.dead_letter_reasons == {"too-large": len(too_big)}
    assert metrics.dead_by_reason == {"too-large": len(too_big)}
    # Records re-read after the failed commit are counted again, as in any re-read.
    assert stats.consumed >= len(sizes)
    assert stats.passed + stats.dropped + stats.dead_lettered == stats.consumed
    assert sum(committed(broker).values()) == len(sizes)
    assert not stage.oversize.singly  # back to batches


def test_a_dead_letter_too_large_for_its_own_topic_stops_the_stage_uncommitted() -> None:
    broker = MemoryBroker()
    admin = broker.admin()
    admin.create_topic("in", partitions=1)
    admin.create_topic("out", partitions=1, config={"max.message.bytes": str(LIMIT)})
    admin.create_topic("dlq", partitions=1, config={"max.message.bytes": str(LIMIT)})
    feed_sizes(broker, [10, 9_000, 10])
    stage = Stage(options(), broker, identity)
    with pytest.raises(OutputTooLarge, match=r"9\d+ bytes to dlq"):
        stage.run(idle_timeout=0.3)
    # Only what precedes the record that has nowhere to go is committed.
    assert committed(broker).get(TopicPartition("in", 0), 0) <= 1


def test_a_tombstone_is_dead_lettered_as_a_tombstone() -> None:
    broker = broker_with_small_output(partitions=1)
    producer = broker.producer()
    producer.produce("in", None, b"gone", [("h", b"v")])
    producer.flush()
    stage = Stage(options(), broker, identity)
    stats = stage.run(idle_timeout=0.2)
    assert stats.dead_letter_reasons == {"decode": 1}
    [dead] = read_all(broker, "dlq")
    assert dead.value() is None
    assert dead.key() == b"gone"
    assert ("h", b"v") in (dead.headers() or [])
