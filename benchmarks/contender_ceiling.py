"""The ceiling: the tightest hand-written confluent-kafka + fastavro loop doing the work.

With `--codec raw` it is the raw loop instead: consume, produce the same bytes, commit; no
Avro, no transform (the physical limit of a Python stage on this client). `--codec
raw-sha256` adds one SHA-256 per record to that loop: the integrity check every stage makes
(an artifact's checksum is the SHA-256 of its payload), and nothing else. It hashes as many
bytes of the record as its payload has (learnt from the first record), so that the hash
costs what a stage's check costs.

Batch consume, schemaless decode with the schema parsed once, verify the checksum, the
shared transform, schemaless encode (the verified checksum is kept), produce; every
`COMMIT_INTERVAL` seconds flush the producer and then commit the consumed offsets
synchronously (at-least-once: offsets are committed only after their outputs were
acknowledged). No metrics, no dead letters, no error policy: a bad record is counted and
skipped. Runs until SIGTERM, then flushes, commits and writes its report.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import time
from io import BytesIO
from pathlib import Path
from types import FrameType
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from fastavro import parse_schema, schemaless_reader, schemaless_writer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--codec", choices=("fastavro", "project", "raw", "raw-sha256"),
                        default="fastavro",
                        help="fastavro (the ceiling the targets use), the project's codec "
                        "and Artifact in the same hand-written loop, or raw: no Avro at all, "
                        "the consumed bytes are produced unchanged (the physical limit of a "
                        "Python stage on this client); raw-sha256: the raw loop hashing "
                        "each record once, as many bytes as its payload has")
    args = parser.parse_args()

    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    schema = parse_schema(workload.load_schema_json())
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap_servers,
        "group.id": args.group,
        "client.id": "bench-ceiling",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **workload.CONSUMER_SETTINGS,
    })
    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({
        "bootstrap.servers": args.bootstrap_servers,
        "client.id": "bench-ceiling",
        **workload.PRODUCER_SETTINGS,
        # Only failures come back to Python: acknowledged records cost no callback.
        "delivery.report.only.error": True,
        "on_delivery": on_delivery,
    })

    consumer.subscribe([args.input])
    out_topic = args.output
    consume = consumer.consume
    produce = producer.produce
    poll = producer.poll
    sha256 = hashlib.sha256
    transform = workload.transform_record
    offsets: dict[tuple[str, int], int] = {}
    consumed = produced = bad = commits = 0
    first_consumed: float | None = None
    last_commit = time.monotonic()

    from processor.core.errors import DecodeError
    from processor.serde.codec import Codec

    codec = Codec()
    decode, encode = codec.decode, codec.encode
    handled_key, state = workload.HANDLED_KEY, workload.TRANSFORMED_STATE
    clock = time.time_ns

    def project_batch(batch: list[Any], offsets: dict[tuple[str, int], int],
                      out_topic: str) -> int:
        nonlocal bad
        n = 0
        for msg in batch:
            if msg.error() is not None:
                continue
            offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
            n += 1
            try:
                artifact = decode(msg.value() or b"")
            except DecodeError:
                bad += 1
                continue
            data = encode(artifact.with_meta(handled_key, clock() // 1_000_000)
                          .with_state(state))
            while True:
                try:
                    produce(out_topic, data, msg.key())
                    break
                except BufferError:
                    poll(0.05)
        return n

    digest_bytes = 0  # raw-sha256: the payload's length, from the first record

    def raw_batch(batch: list[Any], offsets: dict[tuple[str, int], int],
                  out_topic: str, digest: bool) -> int:
        nonlocal bad, digest_bytes
        n = 0
        for msg in batch:
            if msg.error() is not None:
                continue
            offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
            n += 1
            if digest:
                value = msg.value() or b""
                if not digest_bytes:
                    first = cast(dict[str, Any], schemaless_reader(BytesIO(value), schema, None))
                    digest_bytes = len(first["payload"])
                if len(sha256(value[:digest_bytes]).digest()) != 32:
                    bad += 1  # never: the digest is used, as a stage's comparison uses it
                    continue
            while True:
                try:
                    produce(out_topic, msg.value(), msg.key())
                    break
                except BufferError:
                    poll(0.05)
        return n

    def commit() -> None:
        nonlocal commits
        if producer.flush(30.0):
            raise KafkaException("outputs not acknowledged within 30 s")
        if failures:
            raise KafkaException(f"delivery failed: {failures[0]}")
        if offsets:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
            offsets.clear()
            commits += 1

    while not stop:
        batch = consume(num_messages=workload.BATCH_SIZE, timeout=0.1)
        if batch:
            if first_consumed is None:
                first_consumed = time.time()
            if args.codec in ("raw", "raw-sha256"):
                consumed += raw_batch(batch, offsets, out_topic, args.codec == "raw-sha256")
                produced = consumed - bad
                poll(0)
                batch = []
            elif args.codec == "project":
                consumed += project_batch(batch, offsets, out_topic)
                produced = consumed - bad
                poll(0)
                batch = []
            for msg in batch:
                if msg.error() is not None:
                    continue
                record = cast(dict[str, Any],
                              schemaless_reader(BytesIO(msg.value() or b""), schema, None))
                offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                consumed += 1
                if sha256(record["payload"]).digest() != record["checksum"]:
                    bad += 1
                    continue
                transform(record)
                out = BytesIO()
                schemaless_writer(out, schema, record)
                while True:
                    try:
                        produce(out_topic, out.getvalue(), msg.key())
                        break
                    except BufferError:
                        poll(0.05)  # the local queue is full: serve deliveries, retry
                produced += 1
            poll(0)
        now = time.monotonic()
        if now - last_commit >= workload.COMMIT_INTERVAL:
            commit()
            last_commit = now
    commit()
    consumer.close()
    workload.write_result(
        args.result,
        contender=f"ceiling-{args.codec}",
        first_consumed=first_consumed,
        consumed=consumed,
        produced=produced,
        bad=bad,
        commits=commits,
        versions=workload.client_versions(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
