"""`processor produce` and `processor tail`: artifacts into and out of a Kafka topic, as
JSON lines (the JSON form of `processor.serde.jsonform`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from processor.cli.common import (
    Subcommands,
    add_bootstrap,
    command_parser,
    need_bootstrap,
    positive_float,
    positive_int,
)
from processor.core.artifact import Artifact, MediaType
from processor.core.errors import DecodeError, InvalidArtifact, ProcessorError

PROGRESS_EVERY = 1.0
"""Seconds between `produce`'s progress lines on stderr."""


def add_parsers(sub: Subcommands) -> None:
    produce = command_parser(
        sub, "produce", help="produce artifacts from JSON lines to a topic",
        description="Produce one Avro-encoded artifact per JSON line to a topic, and wait "
        "until the broker has acknowledged every one.\n\n"
        "By default each line is the payload of a new artifact (media type "
        "application/json, the line number in its metadata under `line`); with --artifacts "
        "each line is a whole artifact in the JSON form that `processor tail` prints. A "
        "line that does not parse is skipped and reported on stderr; the exit status is "
        "then 1.",
        epilog="examples:\n"
        "  processor produce --topic orders.raw orders.jsonl\n"
        "  processor tail --topic a --from-beginning --count 10 | "
        "processor produce --topic b --artifacts\n"
        "  processor produce --topic orders.raw --generate 100000 --key-field customer",
    )
    add_bootstrap(produce)
    produce.add_argument("--topic", required=True, help="the topic to write to")
    produce.add_argument("file", nargs="?", default="-", metavar="FILE.jsonl",
                         help="input file, or - for standard input (the default)")
    produce.add_argument("--artifacts", action="store_true",
                         help="each line is a whole artifact in JSON form")
    produce.add_argument("--key-field", metavar="NAME",
                         help="use this field of each JSON line (or artifact meta key) as "
                         "the record key; records with one key stay in order")
    produce.add_argument("--generate", type=positive_int, metavar="N",
                         help="produce N generated demo orders (some deliberately bad) "
                         "instead of reading input")
    produce.set_defaults(func=cmd_produce)

    tail = command_parser(
        sub, "tail", help="print the artifacts of a topic as JSON lines",
        description="Read a topic and print each artifact as one JSON line (bytes as "
        "base64, textual payloads as text). A record that is not an artifact is reported "
        "on stderr. Nothing is committed: tail never moves a consumer group.\n\n"
        "Runs until Ctrl-C or SIGTERM, or until --count or --timeout stops it.",
        epilog="examples:\n"
        "  processor tail --topic orders.enriched --from-beginning --count 10\n"
        "  processor tail --topic orders.dlq --from-beginning --timeout 5",
    )
    add_bootstrap(tail)
    tail.add_argument("--topic", required=True, help="the topic to read")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest retained record (default: only new records)")
    tail.add_argument("--count", type=positive_int, metavar="N",
                      help="stop after N records")
    tail.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                      help="stop when no record arrived for this long")
    tail.set_defaults(func=cmd_tail)


def _lines(path: str) -> Iterator[tuple[int, str]]:
    if path == "-":
        yield from enumerate(sys.stdin, 1)
        return
    p = Path(path)
    if not p.is_file():
        raise ProcessorError(f"{path}: no such file")
    with p.open(encoding="utf-8") as fh:
        yield from enumerate(fh, 1)


def _key_of(artifact: Artifact, field: str | None) -> bytes | None:
    """The record key: the artifact's meta value `field`, else that field of a JSON payload."""
    if not field:
        return None
    value = artifact.meta.get(field)
    if value is None and artifact.media_type == MediaType.JSON:
        try:
            obj = json.loads(artifact.payload)
        except ValueError:
            obj = None
        value = obj.get(field) if isinstance(obj, dict) else None
    return None if value is None else str(value).encode()


def cmd_produce(args: argparse.Namespace) -> int:
    from processor.backends.kafka import KafkaBroker
    from processor.demo.run import generate
    from processor.serde.codec import Codec
    from processor.serde.jsonform import artifact_from_json

    err = sys.stderr
    broker = KafkaBroker(need_bootstrap(args))
    producer = broker.producer(client_id="processor-produce")
    codec = Codec()
    sent = bad = 0
    last = time.monotonic()

    def items() -> Iterator[Artifact | bytes]:
        nonlocal bad
        if args.generate:
            yield from generate(args.generate)
            return
        for number, line in _lines(args.file):
            if not line.strip():
                continue
            try:
                if args.artifacts:
                    yield artifact_from_json(line)
                else:
                    json.loads(line)
                    yield Artifact.new(line.strip(), media_type=MediaType.JSON,
                                       meta={"line": number})
            except (InvalidArtifact, ValueError) as exc:
                bad += 1
                err.write(f"processor produce: line {number} skipped: {exc}\n")

    for item in items():
        if isinstance(item, bytes):
            producer.produce(args.topic, item)
        else:
            producer.produce(args.topic, codec.encode(item), _key_of(item, args.key_field))
        sent += 1
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            err.write(f"processor produce: {sent:,} sent\n")
    remaining = producer.flush(60)
    failures = producer.take_delivery_errors()
    producer.close()
    if remaining or failures:
        reason = failures[0].reason if failures else f"{remaining} unacknowledged"
        raise ProcessorError(f"{len(failures) + remaining} of {sent} records not delivered: "
                             f"{reason}")
    err.write(f"processor produce: {sent:,} artifacts written to {args.topic}"
              f"{f', {bad} lines skipped' if bad else ''}\n")
    return 0 if not bad else 1


def cmd_tail(args: argparse.Namespace) -> int:
    from processor.backends.kafka import KafkaBroker
    from processor.serde.codec import Codec
    from processor.serde.jsonform import artifact_to_json

    out = sys.stdout
    broker = KafkaBroker(need_bootstrap(args))
    if args.topic not in broker.admin().list_topics():
        raise ProcessorError(f"topic {args.topic!r} does not exist")
    consumer = broker.consumer(
        f"processor-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    codec = Codec()
    consumer.subscribe([args.topic])
    printed = 0
    last = time.monotonic()
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            batch = consumer.consume(500, 0.2)
            now = time.monotonic()
            if batch:
                last = now
            elif args.timeout is not None and now - last >= args.timeout:
                break
            for msg in batch:
                try:
                    out.write(artifact_to_json(codec.decode(msg.value() or b"")) + "\n")
                except DecodeError as exc:
                    sys.stderr.write(f"processor tail: {msg.topic()}[{msg.partition()}]@"
                                     f"{msg.offset()} is not an artifact: {exc}\n")
                printed += 1
                if args.count is not None and printed >= args.count:
                    stop = True
                    break
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
