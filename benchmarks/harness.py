"""The harness's side of Kafka: topics, the pre-load, progress probes and the read-back.

Uses confluent-kafka and fastavro directly (not the project's backend), so the harness
measures the project without depending on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

import workload
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from fastavro import parse_schema, schemaless_reader, schemaless_writer

Progress = Callable[[str], None]


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def create_topic(bootstrap: str, name: str, partitions: int,
                 config: dict[str, str] | None = None, timeout: float = 30.0) -> None:
    """Create `name` and wait until its partitions have leaders."""
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout,
    )
    for future in futures.values():
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = client.list_topics(name, timeout=5.0).topics.get(name)
        if meta is not None and meta.error is None and len(meta.partitions) == partitions and all(
            p.leader >= 0 for p in meta.partitions.values()
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} has no leaders after {timeout}s")


def delete_topic(bootstrap: str, name: str) -> None:
    for future in admin(bootstrap).delete_topics([name], operation_timeout=30).values():
        with contextlib.suppress(KafkaException):
            future.result(30)


def list_topics(bootstrap: str) -> set[str]:
    return set(admin(bootstrap).list_topics(timeout=10.0).topics)


# --- the pre-load ----------------------------------------------------------------------


@dataclass
class Preloaded:
    count: int
    partitions: int
    total_bytes: int
    seconds: float

    @property
    def mean_size(self) -> float:
        return self.total_bytes / self.count if self.count else 0.0


def _record(seq: int, payload: bytes) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": workload.now_ms(),
        "media_type": "application/octet-stream",
        "role": "data",
        "scope": "generic",
        "origin": "bench",
        "issuer": "",
        "state": workload.CREATED_STATE,
        "meta": {"seq": seq},
        "payload": payload,
        "checksum": hashlib.sha256(payload).digest(),
        "encrypted_payload": None,
        "encrypted_key": None,
        "ephemeral_public_key": None,
        "signature": None,
    }


def payload_size_for(schema: Any, size: int) -> int:
    """The payload length that makes an encoded artifact about `size` bytes."""
    out = BytesIO()
    schemaless_writer(out, schema, _record(10**6, b""))
    overhead = len(out.getvalue()) + 2  # +2: the payload's length prefix grows
    return max(1, size - overhead)


def preload(bootstrap: str, topic: str, count: int, partitions: int, size: int,
            progress: Progress, prefix: bytes = b"") -> Preloaded:
    """Write `count` valid artifacts of about `size` bytes, round-robin over partitions;
    `prefix` before each (the Confluent wire format's magic byte and schema id)."""
    schema = parse_schema(workload.load_schema_json())
    plen = payload_size_for(schema, size)
    pool = os.urandom(1 << 20)
    span = len(pool) - plen
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "log_level": 4,
        "client.id": "bench-preload",
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000,
    })
    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    began = time.monotonic()
    last = began
    total = 0
    produce = producer.produce
    for seq in range(count):
        start = (seq * 7919) % span
        out = BytesIO()
        out.write(prefix)
        schemaless_writer(out, schema, _record(seq, pool[start:start + plen]))
        data = out.getvalue()
        total += len(data)
        while True:
            try:
                produce(topic, data, partition=seq % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if seq % 10_000 == 0:
            producer.poll(0)
            now = time.monotonic()
            if now - last >= 2.0:
                last = now
                progress(f"pre-load: {seq:,} / {count:,} artifacts written "
                         f"({seq / (now - began):,.0f}/s)")
    if producer.flush(120):
        raise RuntimeError("pre-load: records not acknowledged within 120 s")
    if failures:
        raise RuntimeError(f"pre-load: {len(failures)} records failed: {failures[0]}")
    seconds = time.monotonic() - began
    held = sum(end_offsets(bootstrap, topic).values())
    if held != count:
        raise RuntimeError(f"pre-load: {topic} holds {held} records, expected {count}")
    return Preloaded(count, partitions, total, seconds)


# --- warm-up -------------------------------------------------------------------------------


def warm_up(bootstrap: str, partitions: int) -> None:
    """Make the broker create and load its internal topics (consumer offsets, transaction
    state) before anything is timed: one committed consumer group and one committed
    transaction with offsets, the first of which costs a fresh broker seconds."""
    topic = f"bench-warm-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions)
    group = f"bench-warm-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 4,
                         "transactional.id": f"bench-warm-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(60)
    producer.begin_transaction()
    for p in range(partitions):
        producer.produce(topic, b"warm-up", partition=p)
    producer.commit_transaction(60)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 4,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < partitions and time.monotonic() < deadline:
        seen += len(consumer.consume(partitions, 0.5))
    consumer.commit(asynchronous=False)
    producer.begin_transaction()
    producer.produce(topic, b"warm-up", partition=0)
    producer.send_offsets_to_transaction(
        [TopicPartition(topic, p, 1) for p in range(partitions)],
        consumer.consumer_group_metadata(), 60)
    producer.commit_transaction(60)
    consumer.close()
    delete_topic(bootstrap, topic)


# --- probes ------------------------------------------------------------------------------


class Probe:
    """Watermarks of a topic and committed offsets of a group, without joining it."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
        "log_level": 4,
            "group.id": group,
            "enable.auto.commit": False,
            "client.id": "bench-probe",
        })
        self._partitions: dict[str, list[TopicPartition]] = {}

    def partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._partitions:
            meta = self._consumer.list_topics(topic, timeout=10.0).topics[topic]
            self._partitions[topic] = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        return self._partitions[topic]

    def high_watermarks(self, topic: str) -> int:
        return sum(
            self._consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)[1]
            for tp in self.partitions(topic)
        )

    def committed(self, topic: str) -> int:
        done = 0
        for tp in self._consumer.committed(self.partitions(topic), timeout=10.0):
            if tp.offset >= 0:
                done += tp.offset
        return done

    def close(self) -> None:
        self._consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe",
                         "log_level": 4})
    try:
        meta = consumer.list_topics(topic, timeout=10.0).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1]
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


# --- the read-back -------------------------------------------------------------------------


@dataclass
class Readback:
    """What a contender's output topic holds."""

    records: int = 0
    unique: int = 0
    invalid: int = 0
    """Records that are not a transformed artifact with a correct checksum."""
    first_handled_ms: int | None = None
    last_append_ms: int | None = None
    latencies_ms: list[int] = field(default_factory=list)
    """Per record: broker append time of the output minus the transform's stamp."""
    not_log_append_time: int = 0

    @property
    def duplicates(self) -> int:
        return self.records - self.unique


def read_back(bootstrap: str, topic: str, expected: int, progress: Progress,
              timeout: float = 300.0, transformed: bool = True) -> Readback:
    """Read every committed record of `topic` from the beginning and check it: a valid
    artifact with a correct checksum, transformed (or, with `transformed=False`, as
    pre-loaded: state `created`, no transform stamp, so no latency figure)."""
    schema = parse_schema(workload.load_schema_json())
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "log_level": 4,
        "group.id": f"bench-readback-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    result = Readback()
    seen: set[bytes] = set()
    latencies = result.latencies_ms
    handled_key = workload.HANDLED_KEY
    sha256 = hashlib.sha256
    first_handled: int | None = None
    last_append = 0
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    done: set[int] = {p for p, end in ends.items() if end == 0}
    reached: dict[int, int] = {}
    try:
        while len(done) < len(ends) and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            for msg in batch:
                if msg.error() is not None:
                    continue
                result.records += 1
                reached[msg.partition() or 0] = (msg.offset() or 0) + 1
                ts_type, append_ms = msg.timestamp()
                if ts_type != TIMESTAMP_LOG_APPEND_TIME:
                    result.not_log_append_time += 1
                try:
                    value = msg.value() or b""
                    source = BytesIO(value)
                    if value[:1] == b"\x00":  # the Confluent wire format
                        source.seek(5)  # (an artifact's own first byte is its id's length)
                    record = cast(dict[str, Any], schemaless_reader(source, schema, None))
                except Exception:
                    result.invalid += 1
                    continue
                handled = record["meta"].get(handled_key)
                if not transformed:
                    if (record["state"] != workload.CREATED_STATE or handled is not None
                            or sha256(record["payload"]).digest() != record["checksum"]):
                        result.invalid += 1
                        continue
                    seen.add(uuid.UUID(record["id"]).bytes)
                    last_append = max(last_append, append_ms)
                    continue
                if (
                    record["state"] != workload.TRANSFORMED_STATE
                    or not isinstance(handled, int)
                    or sha256(record["payload"]).digest() != record["checksum"]
                ):
                    result.invalid += 1
                    continue
                seen.add(uuid.UUID(record["id"]).bytes)
                latencies.append(append_ms - handled)
                if first_handled is None or handled < first_handled:
                    first_handled = handled
                if append_ms > last_append:
                    last_append = append_ms
            if not batch:
                # Past the last data record there may be a transaction marker: ask the
                # consumer where it stands.
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if tp.offset > reached.get(tp.partition, 0):
                        reached[tp.partition] = tp.offset
            done = {p for p, end in ends.items() if reached.get(p, 0) >= end}
            now = time.monotonic()
            if now - last >= 5.0:
                last = now
                progress(f"read-back: {result.records:,} / {expected:,} output records checked")
    finally:
        consumer.close()
    result.unique = len(seen)
    result.first_handled_ms = first_handled
    result.last_append_ms = last_append or None
    return result


# --- process memory --------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (by scanning /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rfind(b")") + 2:].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found = [pid]
    index = 0
    while index < len(found):
        found.extend(parents.get(found[index], ()))
        index += 1
    return found


def peak_rss(pids: Sequence[int], peaks: dict[int, int]) -> None:
    """Update `peaks` (pid -> bytes) with each process's VmHWM (its peak RSS so far)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmHWM:"):
                        kb = int(line.split()[1])
                        if kb * 1024 > peaks.get(pid, 0):
                            peaks[pid] = kb * 1024
                        break
        except (OSError, ValueError):
            continue
