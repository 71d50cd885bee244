"""Backpressure: a stage pauses its partitions while too much output is unacknowledged."""

from __future__ import annotations

from collections.abc import Mapping

from processor.backends.abstract import Admin, Consumer
from processor.backends.memory import MemoryBroker, MemoryProducer
from processor.core.artifact import Artifact
from processor.core.options import StageOptions
from processor.ops.metrics import PAUSE_BACKPRESSURE, PAUSE_RETRY
from processor.runtime.stage import Stage
from processor.serde.codec import Codec
from tests.unit.stage_support import RecordingMetrics


class SlowAcks(MemoryBroker):
    """The in-memory broker, but its producers report `unacked` records outstanding."""

    def __init__(self) -> None:
        super().__init__()
        self.unacked = 0

    def producer(self, *, transactional_id: str | None = None, client_id: str | None = None,
                 settings: Mapping[str, object] | None = None) -> MemoryProducer:
        inner = super().producer(transactional_id=transactional_id, client_id=client_id,
                                 settings=settings)
        inner.outstanding = lambda: self.unacked  # type: ignore[method-assign]
        return inner


def test_partitions_pause_above_the_limit_and_resume_at_half() -> None:
    broker = SlowAcks()
    admin: Admin = broker.admin()
    for topic in ("in", "out"):
        admin.create_topic(topic, partitions=2)
    feed = broker.producer()
    codec = Codec()
    for i in range(100):
        feed.produce("in", codec.encode(Artifact.new(f"p{i}")), str(i).encode())
    metrics = RecordingMetrics()
    stage = Stage(StageOptions(name="fc", input_topic="in", output_topic="out", group="g",
                               batch_size=10, poll_timeout=0.0, max_in_flight=40),
                  broker, lambda a: a, metrics=metrics)
    stage.start()
    consumer: Consumer = stage.consumer
    stage.run_once()
    first = stage.stats.consumed
    assert first > 0
    assert consumer.paused() == []

    broker.unacked = 40  # at the limit: everything assigned is paused
    stage.run_once()
    paused = consumer.paused()
    assert sorted(paused) == sorted(consumer.assignment())
    assert len(paused) == 2
    assert metrics.paused_by_reason == {PAUSE_BACKPRESSURE: 2, PAUSE_RETRY: 0}
    stuck = stage.stats.consumed
    for _ in range(5):
        assert stage.run_once() == 0
    assert stage.stats.consumed == stuck

    broker.unacked = 25  # still above half the limit: stays paused
    assert stage.run_once() == 0
    assert consumer.paused() != []

    broker.unacked = 20  # half: resume and read on
    stage.run_once()
    assert consumer.paused() == []
    assert metrics.paused_by_reason[PAUSE_BACKPRESSURE] == 0
    for _ in range(30):
        stage.run_once()
    assert stage.stats.consumed == 100
