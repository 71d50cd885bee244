"""Helpers for the stage's tests on the in-memory broker: options, topics, feeding and
reading records, a clock the test moves by hand, and metrics that record every call."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

from processor.backends.abstract import Broker, Message, TopicPartition
from processor.backends.kafka import KafkaBroker
from processor.backends.memory import MemoryAdmin, MemoryBroker, MemoryConsumer, MemoryProducer
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome, Routed
from processor.core.options import QUICK_RETRY, StageOptions
from processor.serde.codec import Codec

CODEC = Codec()


def options(**overrides: object) -> StageOptions:
    base: dict[str, object] = dict(
        name="s1", input_topic="in", output_topic="out", group="g", dlq_topic="dlq",
        batch_size=50, poll_timeout=0.0, commit_interval=0.01, retry=QUICK_RETRY,
    )
    base.update(overrides)
    return StageOptions(**base)  # type: ignore[arg-type]


def make_broker(partitions: int = 3, extra: tuple[str, ...] = ()) -> MemoryBroker:
    broker = MemoryBroker()
    admin = broker.admin()
    for topic in ("in", "out", "dlq", *extra):
        admin.create_topic(topic, partitions=partitions if topic == "in" else 2)
    return broker


def feed(broker: Broker, values: list[bytes], keys: list[bytes] | None = None) -> None:
    producer = broker.producer()
    for i, value in enumerate(values):
        producer.produce("in", value, keys[i] if keys else str(i % 7).encode())
    producer.flush()


def read_all(broker: Broker, topic: str, read_committed: bool = False) -> list[Message]:
    consumer = broker.consumer(f"reader-{topic}-{id(object())}", read_committed=read_committed)
    consumer.subscribe([topic])
    out: list[Message] = []
    for _ in range(20):
        batch = consumer.consume(10_000, 0.01)
        out.extend(batch)
        if not batch and out:
            break
    consumer.close()
    return out


def seqs(messages: list[Message]) -> list[int]:
    """The `seq` metadata of the artifacts in `messages`, in order."""
    return [CODEC.decode(m.value() or b"").get("seq", -1) for m in messages]


def artifacts(n: int) -> list[Artifact]:
    return [Artifact.new(f"payload {i}", meta={"seq": i}) for i in range(n)]


def identity(a: Artifact) -> Outcome:
    return a


def route_by_seq(a: Artifact) -> Outcome:
    """Drops every third artifact, fans the next out in two, routes the third to `audit`."""
    seq = a.get("seq", 0)
    if seq % 3 == 0:
        return None
    if seq % 3 == 1:
        return [a, a.with_payload(b"copy")]
    return Routed("audit", a)


def committed(broker: Broker, group: str = "g", topic: str = "in") -> dict[TopicPartition, int]:
    return broker.admin().group_offsets(group, [topic])


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingMetrics:
    """`processor.ops.metrics.Metrics` that remembers every call: counters are summed,
    observations listed, gauges keep their last value."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.produced_by_topic: Counter[str] = Counter()
        self.produced_bytes_by_topic: Counter[str] = Counter()
        self.dead_by_reason: Counter[str] = Counter()
        self.rebalances: Counter[str] = Counter()
        self.observed: defaultdict[str, list[float]] = defaultdict(list)
        self.gauges: dict[str, float] = {}
        self.paused_by_reason: dict[str, int] = {}
        self.lags: dict[int, int] = {}
        self.forgotten: list[int] = []

    def batch(self, n: int) -> None:
        self.observed["batch"].append(n)

    def consumed(self, n: int, nbytes: int) -> None:
        self.counts["consumed"] += n
        self.counts["consumed_bytes"] += nbytes

    def produced(self, topic: str, n: int, nbytes: int) -> None:
        self.produced_by_topic[topic] += n
        self.produced_bytes_by_topic[topic] += nbytes

    def dropped(self, n: int) -> None:
        self.counts["dropped"] += n

    def dead_lettered(self, reason: str, n: int) -> None:
        self.dead_by_reason[reason] += n

    def retried(self, n: int) -> None:
        self.counts["retried"] += n

    def failed(self, n: int) -> None:
        self.counts["failed"] += n

    def handler_latency(self, seconds: float) -> None:
        self.observed["handler"].append(seconds)

    def end_to_end_latency(self, seconds: float) -> None:
        self.observed["e2e"].append(seconds)

    def commit_latency(self, seconds: float) -> None:
        self.observed["commit"].append(seconds)

    def transaction_latency(self, seconds: float) -> None:
        self.observed["transaction"].append(seconds)

    def in_flight(self, n: int) -> None:
        self.gauges["in_flight"] = n

    def paused(self, reason: str, n: int) -> None:
        self.paused_by_reason[reason] = n

    def assigned(self, n: int) -> None:
        self.gauges["assigned"] = n

    def lag(self, partition: int, value: int) -> None:
        self.lags[partition] = value

    def forget_partitions(self, partitions: list[int]) -> None:
        self.forgotten.extend(partitions)

    def rebalance(self, kind: str, n: int = 1) -> None:
        self.rebalances[kind] += n


class KafkaWithoutKafka(KafkaBroker):
    """A `KafkaBroker` whose clients are in-memory ones; it remembers their settings."""

    def __init__(self, settings: Mapping[str, object] | None = None,
                 bootstrap_servers: str = "127.0.0.1:1") -> None:
        super().__init__(bootstrap_servers, settings)
        self.memory = make_broker()
        self.given: dict[str, Mapping[str, object]] = {}

    def admin(self) -> MemoryAdmin:  # type: ignore[override]
        return self.memory.admin()

    def consumer(  # type: ignore[override]
        self, group: str, *, read_committed: bool = False, auto_offset_reset: str = "earliest",
        client_id: str | None = None, settings: Mapping[str, object] | None = None,
    ) -> MemoryConsumer:
        self.given["consumer"] = dict(settings or {})
        return self.memory.consumer(group, read_committed=read_committed, client_id=client_id)

    def producer(  # type: ignore[override]
        self, *, transactional_id: str | None = None, client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> MemoryProducer:
        self.given["producer"] = dict(settings or {})
        return self.memory.producer(transactional_id=transactional_id, client_id=client_id)
