"""Bad input over a real Kafka: generated records through a running stage (3,000 in
`make test`; `PROCESSOR_BAD_INPUT_RECORDS=10000` for the long run of docs/reliability.md).

Hypothesis draws batches of records of every kind the stage may meet: valid artifacts,
random bytes, truncated Avro, Avro of another schema, checksum mismatches, tombstones,
artifacts (or handler results) larger than the output topic accepts, huge headers and odd
headers. Each record carries a unique key. The stage (at-least-once, on Kafka, its output
topic's `max.message.bytes` set low) handles them as they come; at the end every key must
be in the output topic or in the dead-letter topic with the reason its kind allows, never
both, never missing, never twice (every key is unique, so the recovery from a too-large
output has nothing to send again). The stage never stops, and its counts add up.

The measured counts are printed as a table (`pytest -s`), the one in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

import fastavro
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from processor.backends.abstract import Headers, Producer
from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.runtime.stage import Stage
from processor.serde.codec import Codec, load_schema
from tests.faults.raw import read_raw
from tests.strategies import artifacts
from tests.unit.stage_support import options

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PER_EXAMPLE = 20
EXAMPLES = int(os.environ.get("PROCESSOR_BAD_INPUT_RECORDS", "3000")) // PER_EXAMPLE
DRIVE_EVERY = 25  # examples sent between two catch-ups of the stage
OUTPUT_LIMIT = 20_000  # the output topic's max.message.bytes
MARGIN = 400  # record framing: sizes this close to the limit may go either way
CODEC = Codec()

OTHER_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "string"}, {"name": "amount", "type": "long"},
        {"name": "note", "type": ["null", "string"]}]})

OUT = "out"
DECODE, CHECKSUM, TOO_LARGE = "decode", "checksum", "too-large"


@dataclass(frozen=True)
class Input:
    """One generated record and the outcomes its kind allows."""

    kind: str
    value: bytes | None
    headers: Headers
    allowed: frozenset[str]


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _size(value: bytes | None, headers: Headers) -> int:
    return len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)


def _by_size(value: bytes | None, headers: Headers, key_len: int = 12) -> frozenset[str]:
    """A record passed through unchanged: out if it fits the output topic, else too-large."""
    size = _size(value, headers) + key_len
    if size > OUTPUT_LIMIT:
        return frozenset({TOO_LARGE})
    if size > OUTPUT_LIMIT - MARGIN:
        return frozenset({OUT, TOO_LARGE})
    return frozenset({OUT})


V1_SCHEMA = fastavro.parse_schema(load_schema("artifact.v1.avsc"))


def _whole_v1(data: bytes) -> bool:
    """Whether `data` is exactly one record of version 1 of the artifact schema."""
    stream = BytesIO(data)
    try:
        fastavro.schemaless_reader(stream, V1_SCHEMA, None)
    except Exception:  # any failure to read means it is not one
        return False
    return stream.tell() == len(data)


HEADER_KEYS = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
HEADER_VALUES = st.none() | st.binary(max_size=64)


@st.composite
def inputs(draw: st.DrawFn) -> Input:
    kind = draw(st.sampled_from([
        "valid", "random-bytes", "truncated", "wrong-schema", "checksum", "tombstone",
        "large", "grows", "huge-headers", "odd-headers"]))
    artifact = draw(artifacts())
    data = CODEC.encode(artifact)
    no_headers: Headers = []
    if kind == "valid":
        return Input(kind, data, no_headers, _by_size(data, no_headers))
    if kind == "random-bytes":
        return Input(kind, draw(st.binary(max_size=512)), no_headers,
                     frozenset({DECODE, CHECKSUM}))
    if kind == "truncated":
        cut = draw(st.integers(min_value=0, max_value=len(data) - 1))
        prefix = data[:cut]
        # A record without a writer identity is read as the current schema, then as the
        # older packaged one (docs/data-contracts.md): cut just before the fields the
        # current version added, it is a whole, valid record of the older version.
        allowed = _by_size(prefix, no_headers) if _whole_v1(prefix) else frozenset({DECODE})
        return Input(kind, prefix, no_headers, allowed)
    if kind == "wrong-schema":
        out = BytesIO()
        fastavro.schemaless_writer(out, OTHER_SCHEMA, {
            "id": draw(st.text(max_size=30)), "amount": draw(st.integers(-2**63, 2**63 - 1)),
            "note": draw(st.none() | st.text(max_size=30))})
        return Input(kind, out.getvalue(), no_headers, frozenset({DECODE, CHECKSUM}))
    if kind == "checksum":
        tampered = Artifact.new(artifact.payload or b"p", meta=dict(artifact.meta))
        encoded = bytearray(CODEC.encode(tampered))
        at = CODEC.encode(tampered).find(tampered.checksum)
        encoded[at + draw(st.integers(0, 31))] ^= 1 << draw(st.integers(0, 7))
        return Input(kind, bytes(encoded), no_headers, frozenset({CHECKSUM}))
    if kind == "tombstone":
        return Input(kind, None, no_headers, frozenset({DECODE}))
    if kind == "large":
        size = draw(st.integers(OUTPUT_LIMIT + 1, 3 * OUTPUT_LIMIT))
        big = CODEC.encode(Artifact.new(_blob(draw(st.integers(0, 1000)), size)))
        return Input(kind, big, no_headers, _by_size(big, no_headers))
    if kind == "grows":  # small in, too large out (the handler makes it so)
        size = draw(st.integers(OUTPUT_LIMIT + 1, 3 * OUTPUT_LIMIT))
        small = CODEC.encode(Artifact.new(b"grow", meta={"grow": size}))
        return Input(kind, small, no_headers, frozenset({TOO_LARGE}))
    if kind == "huge-headers":
        count = draw(st.integers(1, 4))
        sizes = [draw(st.integers(OUTPUT_LIMIT // count + 1, 2 * OUTPUT_LIMIT // count))
                 for _ in range(count)]
        seed = draw(st.integers(0, 1000))
        headers: Headers = [(f"h{i}", _blob(seed + i, n)) for i, n in enumerate(sizes)]
        return Input(kind, data, headers, _by_size(data, headers))
    # odd headers: empty and non-ASCII keys, null values, duplicates, a forged dlq.reason
    odd = draw(st.lists(st.tuples(HEADER_KEYS, HEADER_VALUES), max_size=8))
    odd.append(("dlq.reason", b"forged"))
    odd_headers = cast(Headers, odd)
    return Input(kind, data, odd_headers, _by_size(data, odd_headers))


def grow(artifact: Artifact) -> Outcome:
    """The stage's handler: artifacts marked `grow` come out that many bytes large
    (random bytes: the producer compresses, and the broker judges compressed sizes)."""
    size = artifact.meta.get("grow")
    if isinstance(size, int):
        return artifact.with_payload(_blob(size, size))
    return artifact


@dataclass
class Run:
    """The state shared by the examples: one stage, everything sent so far."""

    broker: KafkaBroker
    stage: Stage
    source: str
    sent: dict[bytes, Input] = field(default_factory=dict)
    examples: int = 0

    def drive(self, timeout: float = 120.0) -> None:
        """Run the stage until it has read and committed everything sent."""
        stage = self.stage
        admin = self.broker.admin()
        end = admin.high_watermarks(self.source)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stage.run_once()
            assigned = stage.consumer.assignment()
            if (len(assigned) == len(end) and not stage.ledger and not stage.oversize.singly
                    and all((stage.consumer.position(tp) or 0) >= end[tp]
                            for tp in assigned)):
                return
        raise AssertionError(f"the stage did not catch up in {timeout:.0f}s: {stage.stats}")


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str) -> Iterator[Run]:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    suffix = time.time_ns()
    source, sink, dlq = f"fuzz-in-{suffix}", f"fuzz-out-{suffix}", f"fuzz-dlq-{suffix}"
    admin.create_topic(source, partitions=3)
    admin.create_topic(sink, partitions=2, config={"max.message.bytes": str(OUTPUT_LIMIT)})
    admin.create_topic(dlq, partitions=2)
    stage = Stage(
        options(input_topic=source, output_topic=sink, dlq_topic=dlq, group=f"fuzz-{suffix}",
                name="fuzz", batch_size=200, poll_timeout=0.05, commit_interval=0.05),
        broker, grow,
        # Batches of small records stay under the output topic's limit: the broker judges
        # a whole batch, and librdkafka does not know the topic's limit.
        producer_settings={"batch.size": OUTPUT_LIMIT // 2, "linger.ms": 5})
    stage.start()
    try:
        yield Run(broker, stage, source)
    finally:
        stage.close()


FEED: dict[str, Any] = {}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(batch=st.lists(inputs(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def check_batch(batch: list[Input]) -> None:
    """One example: send a batch; every DRIVE_EVERY examples, let the stage take in all
    that was sent. (Called by the test below, which hands it the stage through FEED.)"""
    state: Run = FEED["run"]
    producer = FEED["producer"]
    state.examples += 1
    for i, item in enumerate(batch):
        key = b"%05d-%03d" % (state.examples, i)
        producer.produce(state.source, item.value, key, item.headers or None)
        state.sent[key] = item
    if state.examples % DRIVE_EVERY == 0:
        catch_up(state, producer)


def catch_up(state: Run, producer: Producer) -> None:
    assert producer.flush(30) == 0
    assert not producer.take_delivery_errors()
    state.drive()


@pytest.mark.timeout(900)
def test_generated_bad_inputs_over_kafka(run: Run, kafka_bootstrap: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    producer = run.broker.producer(settings={"message.max.bytes": 4_000_000})
    FEED.update(run=run, producer=producer)
    began = time.monotonic()
    try:
        check_batch()
        catch_up(run, producer)
    finally:
        producer.close()
        FEED.clear()
    elapsed = time.monotonic() - began
    stage = run.stage
    stage.commit()
    sent = run.sent
    assert len(sent) == EXAMPLES * PER_EXAMPLE

    out = read_raw(run.broker, stage.options.output_topic or "", 1, timeout=120)
    dlq = read_raw(run.broker, stage.options.dlq_topic or "", 1, timeout=120)
    seen: dict[bytes, Counter[str]] = {}
    for msg in out:
        seen.setdefault(msg.key() or b"", Counter())[OUT] += 1
    for msg in dlq:
        seen.setdefault(msg.key() or b"", Counter())[header_dict(msg.headers())[H_REASON]] += 1

    rows: dict[str, Counter[str]] = {}
    wrong: list[str] = []
    for key, item in sent.items():
        row = rows.setdefault(item.kind, Counter())
        row["sent"] += 1
        outcomes = seen.get(key, Counter())
        if not outcomes:
            row["lost"] += 1
            continue
        row["received"] += 1
        if sum(outcomes.values()) > 1:
            row["duplicated"] += 1
        if len(outcomes) > 1 or not set(outcomes) <= item.allowed:
            wrong.append(f"{key!r} ({item.kind}): {dict(outcomes)}, allowed {set(item.allowed)}")
        for outcome in outcomes:
            row[outcome] += 1
    assert not set(seen) - set(sent), "records nobody sent"

    columns = ["sent", "received", "lost", "duplicated", OUT, DECODE, CHECKSUM, TOO_LARGE]
    total: Counter[str] = Counter()
    lines = ["| input | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind in sorted(rows):
        total.update(rows[kind])
        lines.append(f"| {kind} | " + " | ".join(str(rows[kind][c]) for c in columns) + " |")
    lines.append("| **all** | " + " | ".join(str(total[c]) for c in columns) + " |")
    stats = stage.stats
    with capsys.disabled():
        print(f"\n{len(sent)} records in {elapsed:.0f}s; stage: {stats}")
        print("\n".join(lines))

    assert not wrong, "\n".join(wrong[:20])
    assert total["lost"] == 0
    assert total["duplicated"] == 0
    assert total["received"] == len(sent)
    assert stats.passed + stats.dropped + stats.dead_lettered == stats.consumed
    assert total[TOO_LARGE] > 0 and total[DECODE] > 0 and total[CHECKSUM] > 0
    # Every dead letter is its input untouched.
    values = {key: item.value for key, item in sent.items()}
    assert all(msg.value() == values[msg.key() or b""] for msg in dlq)
    assert not stage.oversize.singly and stage.consumer.assignment()  # still running, in batches
    committed = stage.consumer.committed(stage.consumer.assignment())
    end = run.broker.admin().high_watermarks(run.source)
    assert {tp: committed[tp] for tp in end} == end

