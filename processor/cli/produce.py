"""`processor produce` and `processor tail`: artifacts into and out of a Kafka topic, as
JSON lines (the JSON form of `processor.serde.jsonform`), and plain records in the formats
a stage ingests and egresses (`processor.serde.formats`): plain JSON, plain Avro through a
schema registry, raw bytes, payloads.

Artifacts are written with their schema's identity, as a stage writes them: the
`artifact-schema` header, or the Confluent wire format with `--registry-url`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from processor.cli.common import (
    Subcommands,
    add_client_settings,
    command_parser,
    kafka_broker,
    positive_float,
    positive_int,
)
from processor.core.artifact import Artifact, MediaType
from processor.core.errors import DecodeError, InvalidArtifact, ProcessorError, SchemaError

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
        "then 1.\n\n"
        "--format writes plain records instead, for a stage that ingests them "
        "(input_format): json, avro (through --registry-url, with --schema-file) or bytes. "
        "With --registry-url, artifacts are written in the Confluent wire format.",
        epilog="examples:\n"
        "  processor produce --topic orders.raw orders.jsonl\n"
        "  processor tail --topic a --from-beginning --count 10 | "
        "processor produce --topic b --artifacts\n"
        "  processor produce --topic orders.raw --generate 100000 --key-field customer\n"
        "  processor produce --topic plain.orders --format avro --schema-file order.avsc "
        "--registry-url http://127.0.0.1:8081",
    )
    add_client_settings(produce)
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
    produce.add_argument("--format", choices=("artifact", "json", "avro", "bytes"),
                         default="artifact",
                         help="artifact (default): artifacts as above; json: each line as a "
                         "plain JSON value; avro: each line, a JSON object, as a plain Avro "
                         "record of --schema-file through the registry; bytes: each line as "
                         "it is")
    produce.add_argument("--schema-file", metavar="FILE",
                         help="--format avro: the Avro schema (.avsc) of the records")
    _add_registry(produce)
    produce.add_argument("--trace", action="store_true",
                         help="start a trace per record: a `send` span whose context "
                         "(traceparent) goes in the record's headers, exported over OTLP "
                         "as PROCESSOR_OTLP_ENDPOINT and PROCESSOR_OTLP_PROTOCOL say; on "
                         "by itself when PROCESSOR_TRACING=otlp")
    produce.set_defaults(func=cmd_produce)

    tail = command_parser(
        sub, "tail", help="print the artifacts of a topic as JSON lines",
        description="Read a topic and print each artifact as one JSON line (bytes as "
        "base64, textual payloads as text). Every line is strict JSON: a metadata double "
        "that is not a finite number is written {\"$double\": \"NaN\"} (or \"Infinity\", "
        "\"-Infinity\"), which `produce --artifacts` reads back; in a plain record it is "
        "the string \"NaN\", \"Infinity\" or \"-Infinity\". A record that is not an artifact "
        "is reported on stderr. Nothing is committed: tail never moves a consumer group.\n\n"
        "Runs until Ctrl-C or SIGTERM, or until --count or --timeout stops it.",
        epilog="examples:\n"
        "  processor tail --topic orders.enriched --from-beginning --count 10\n"
        "  processor tail --topic orders.dlq --from-beginning --timeout 5\n"
        "  processor tail --topic plain.orders --format avro --registry-url "
        "http://127.0.0.1:8081",
    )
    add_client_settings(tail)
    tail.add_argument("--topic", required=True, help="the topic to read")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest retained record (default: only new records)")
    tail.add_argument("--count", type=positive_int, metavar="N",
                      help="stop after N records")
    tail.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                      help="stop when no record arrived for this long")
    tail.add_argument("--format", choices=("artifact", "payload", "json", "avro", "bytes"),
                      default="artifact",
                      help="artifact (default): each artifact in JSON form; payload: each "
                      "artifact's payload; json or bytes: each plain value as text; avro: "
                      "each plain Avro record (through the registry) as JSON")
    _add_registry(tail)
    tail.set_defaults(func=cmd_tail)


def _add_registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry-url", metavar="URL",
                        default=os.environ.get("PROCESSOR_SCHEMA_REGISTRY_URL"),
                        help="schema registry: artifacts in the Confluent wire format, and "
                        "--format avro (default: $PROCESSOR_SCHEMA_REGISTRY_URL)")


def _registry(args: argparse.Namespace) -> Any:
    """The registry's `RegistrySchemas`, or None without --registry-url."""
    from processor.serde.registry import RegistryConfig, RegistrySchemas, registry_client

    if not args.registry_url:
        if args.format == "avro":
            raise ProcessorError("--format avro needs --registry-url (or "
                                 "PROCESSOR_SCHEMA_REGISTRY_URL)")
        return None
    config = RegistryConfig(url=args.registry_url)
    return RegistrySchemas(registry_client(config), config)


def _plain_writer(args: argparse.Namespace, registry: Any) -> Callable[[str], bytes]:
    """What turns one input line into a plain value, for --format json, avro or bytes."""
    if args.format == "bytes":
        return lambda line: line.rstrip("\r\n").encode("utf-8")
    if args.format == "json":
        def plain_json(line: str) -> bytes:
            json.loads(line)  # ValueError: reported and skipped
            return line.strip().encode("utf-8")
        return plain_json
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from processor.serde.codec import read_schema_file

    if not args.schema_file:
        raise ProcessorError("--format avro needs --schema-file (the records' Avro schema)")
    serializer = AvroSerializer(registry.client, json.dumps(read_schema_file(args.schema_file)))
    context = SerializationContext(args.topic, MessageField.VALUE)

    def plain_avro(line: str) -> bytes:
        record = json.loads(line)
        try:
            return bytes(serializer(record, context) or b"")
        except Exception as exc:  # the serializer's errors name the field
            raise ValueError(f"not a record of {args.schema_file}: {exc}") from exc
    return plain_avro


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
    from processor.demo.run import generate
    from processor.ops.tracing import TracingSettings, make_tracer
    from processor.serde.jsonform import artifact_from_json
    from processor.serde.wire import WireCodec

    err = sys.stderr
    broker = kafka_broker(args)
    registry = _registry(args)
    plain = None if args.format == "artifact" else _plain_writer(args, registry)
    producer = broker.producer(client_id="processor-produce")
    codec = WireCodec(registry=registry, topics=[args.topic]) if plain is None else None
    sent = bad = 0
    last = time.monotonic()
    tracer = make_tracer(TracingSettings.from_env(enable=args.trace), "processor-produce")
    publisher = tracer.publisher()  # None unless tracing

    def items() -> Iterator[Artifact | bytes]:
        nonlocal bad
        if args.generate:
            yield from generate(args.generate)
            return
        for number, line in _lines(args.file):
            if not line.strip():
                continue
            try:
                if plain is not None:
                    yield plain(line)
                elif args.artifacts:
                    yield artifact_from_json(line)
                else:
                    json.loads(line)
                    yield Artifact.new(line.strip(), media_type=MediaType.JSON,
                                       meta={"line": number})
            except (InvalidArtifact, ValueError) as exc:
                bad += 1
                err.write(f"processor produce: line {number} skipped: {exc}\n")

    for item in items():
        if isinstance(item, bytes) or codec is None:
            producer.produce(args.topic, item, None,  # type: ignore[arg-type]
                             publisher.send(args.topic, None) if publisher else None)
        else:
            headers = codec.headers(None)
            if publisher is not None:
                headers = publisher.send(args.topic, headers, message_id=item.id)
            producer.produce(args.topic, codec.encode(item), _key_of(item, args.key_field),
                             headers)
        sent += 1
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            err.write(f"processor produce: {sent:,} sent\n")
    remaining = producer.flush(60)
    tracer.flush(10.0)
    failures = producer.take_delivery_errors()
    producer.close()
    if remaining or failures:
        reason = failures[0].reason if failures else f"{remaining} unacknowledged"
        raise ProcessorError(f"{len(failures) + remaining} of {sent} records not delivered: "
                             f"{reason}")
    what = "artifacts" if plain is None else f"{args.format} records"
    err.write(f"processor produce: {sent:,} {what} written to {args.topic}"
              f"{f', {bad} lines skipped' if bad else ''}\n")
    return 0 if not bad else 1


def cmd_tail(args: argparse.Namespace) -> int:
    from processor.serde.jsonform import artifact_to_json
    from processor.serde.wire import WireCodec

    out = sys.stdout
    broker = kafka_broker(args)
    if args.topic not in broker.admin().list_topics():
        raise ProcessorError(f"topic {args.topic!r} does not exist")
    consumer = broker.consumer(
        f"processor-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    registry = _registry(args)
    codec = WireCodec(registry=registry)
    show = _tail_format(args, registry, codec, artifact_to_json)
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
                    out.write(show(msg.value() or b"", msg.headers()) + "\n")
                except (DecodeError, SchemaError, ValueError) as exc:
                    sys.stderr.write(f"processor tail: {msg.topic()}[{msg.partition()}]@"
                                     f"{msg.offset()} is not {_WHAT[args.format]}: {exc}\n")
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


_WHAT = {"artifact": "an artifact", "payload": "an artifact", "json": "JSON",
         "bytes": "text", "avro": "a plain Avro record"}


def _tail_format(args: argparse.Namespace, registry: Any, codec: Any,
                 to_json: Callable[[Artifact], str]) -> Callable[[bytes, Any], str]:
    """What turns one record (value, headers) into the line `tail` prints, for --format."""
    import base64

    def text_or_base64(data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data).decode("ascii")

    if args.format == "artifact":
        return lambda value, headers: to_json(codec.decode(value, headers))
    if args.format == "payload":
        return lambda value, headers: text_or_base64(codec.decode(value, headers).payload)
    from processor.serde.jsonform import strict_json

    if args.format == "json":
        def plain_json(value: bytes, headers: Any) -> str:
            return strict_json(json.loads(value), ensure_ascii=False)
        return plain_json
    if args.format == "bytes":
        return lambda value, headers: text_or_base64(value)
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserializer = AvroDeserializer(registry.client)
    context = SerializationContext(args.topic, MessageField.VALUE)

    def plain_avro(value: bytes, headers: Any) -> str:
        try:
            record = deserializer(value, context)
        except Exception as exc:  # the deserializer's errors say what is wrong
            raise ValueError(str(exc)) from exc
        return strict_json(record, ensure_ascii=False, default=lambda b: base64.b64encode(
            b).decode("ascii") if isinstance(b, bytes) else str(b))
    return plain_avro
