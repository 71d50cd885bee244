"""The `processor` command: demo, run, produce, tail, broker, lag, config check, bench."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from processor.core.errors import ProcessorError

logger = logging.getLogger("processor.cli.main")

EPILOG = """\
examples:
  processor demo --count 5000
  processor broker                      # a local Apache Kafka for development
  processor run --bootstrap-servers 127.0.0.1:9092 --input-topic in --output-topic out \\
      --group g --handler processor.demo:validate --dlq-topic in.dlq
  processor produce --bootstrap-servers 127.0.0.1:9092 --topic in orders.jsonl
  processor tail --bootstrap-servers 127.0.0.1:9092 --topic out --from-beginning --count 10
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description="Kafka-backed stream processor: chains of Avro artifact buffer stages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="run the validate -> transform -> enrich demo on the in-memory broker",
        description="Run three chained stages (validate -> transform -> enrich) on the "
        "in-memory broker, feed them orders (some deliberately bad) and print a summary.",
    )
    demo.add_argument("--count", type=_positive_int, default=10_000,
                      help="how many generated orders to feed (default: %(default)s)")
    demo.add_argument("--input", type=Path, metavar="FILE.jsonl",
                      help="feed one order per JSON line of this file instead")
    demo.add_argument("--show", type=int, default=3,
                      help="how many output artifacts to print as JSON (default: %(default)s)")

    run = sub.add_parser(
        "run", help="run one stage as a service on Kafka",
        description="Run one buffer stage: consume artifacts from the input topic, run the "
        "handlers, produce results to the output topic. Settings come from flags, "
        "PROCESSOR_* environment variables and a YAML file (--config), in that order of "
        "precedence.",
    )
    from processor.ops.settings import add_run_arguments

    add_run_arguments(run)

    produce = sub.add_parser(
        "produce", help="produce artifacts from JSON lines to a topic",
        description="Produce one artifact per JSON line. By default each line is the "
        "payload (media type application/json); with --artifacts each line is an artifact "
        "in the JSON form that `processor tail` prints.",
    )
    _add_bootstrap(produce)
    produce.add_argument("--topic", required=True, help="topic to write to")
    produce.add_argument("file", nargs="?", default="-", metavar="FILE.jsonl",
                         help="input file, or - for standard input (default)")
    produce.add_argument("--artifacts", action="store_true",
                         help="each line is a whole artifact in JSON form")
    produce.add_argument("--key-field", metavar="NAME",
                         help="use this field of each JSON line (or artifact meta key) as "
                         "the record key; records with one key stay in order")
    produce.add_argument("--generate", type=_positive_int, metavar="N",
                         help="produce N generated demo orders instead of reading input")

    tail = sub.add_parser("tail", help="print artifacts of a topic as JSON lines",
                          description="Read a topic and print each artifact as a JSON line. "
                          "Nothing is committed.")
    _add_bootstrap(tail)
    tail.add_argument("--topic", required=True)
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest record (default: only new records)")
    tail.add_argument("--count", type=_positive_int, help="stop after N artifacts")
    tail.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="stop when no record arrived for this long")

    broker = sub.add_parser("broker", help="start a local Apache Kafka (no Docker needed)",
                            description="Resolve the Apache Kafka jars from Maven (once, "
                            "cached), start a KRaft broker on free 127.0.0.1 ports, print the "
                            "bootstrap servers and run until Ctrl-C.")
    broker.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="1 broker, or a 3-node cluster (default: %(default)s)")

    lag = sub.add_parser("lag", help="print a consumer group's lag per partition")
    _add_bootstrap(lag)
    lag.add_argument("--group", required=True)
    lag.add_argument("--topic", action="append", dest="topics", metavar="TOPIC",
                     help="only these topics (repeatable)")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate a stage YAML file without starting")
    check.add_argument("file", type=Path)

    bench = sub.add_parser("bench", help="run the side-by-side benchmark (see benchmarks/)")
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments passed to the benchmark")
    return parser


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   default=os.environ.get("PROCESSOR_BOOTSTRAP_SERVERS"),
                   help="Kafka bootstrap servers (default: $PROCESSOR_BOOTSTRAP_SERVERS)")


def _need_bootstrap(args: argparse.Namespace) -> str:
    servers: str | None = args.bootstrap_servers
    if not servers:
        raise ProcessorError(
            "--bootstrap-servers is required (or set PROCESSOR_BOOTSTRAP_SERVERS); "
            "`processor broker` starts a local Kafka"
        )
    return servers


# --- commands --------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from processor.demo.run import main_demo

    if args.input is not None and not args.input.is_file():
        raise ProcessorError(f"--input {args.input}: no such file")
    return main_demo(args.count, args.input, show=args.show)


def cmd_run(args: argparse.Namespace) -> int:
    from processor.runtime.runner import run_from_args

    return run_from_args(args)


def _lines(path: str) -> Iterator[tuple[int, str]]:
    if path == "-":
        yield from enumerate(sys.stdin, 1)
        return
    p = Path(path)
    if not p.is_file():
        raise ProcessorError(f"{path}: no such file")
    with p.open(encoding="utf-8") as fh:
        yield from enumerate(fh, 1)


def cmd_produce(args: argparse.Namespace, err: IO[str] = sys.stderr) -> int:
    from processor.backends.kafka import KafkaBroker
    from processor.core.artifact import Artifact, MediaType
    from processor.core.errors import InvalidArtifact
    from processor.demo.run import generate
    from processor.serde.codec import Codec
    from processor.serde.jsonform import artifact_from_json

    broker = KafkaBroker(_need_bootstrap(args))
    producer = broker.producer(client_id="processor-produce")
    codec = Codec()
    sent = bad = 0
    last = time.monotonic()

    def key_of(artifact: Artifact) -> bytes | None:
        if not args.key_field:
            return None
        value = artifact.meta.get(args.key_field)
        if value is None and artifact.media_type == MediaType.JSON:
            import json

            try:
                obj = json.loads(artifact.payload)
                value = obj.get(args.key_field) if isinstance(obj, dict) else None
            except ValueError:
                value = None
        return None if value is None else str(value).encode()

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
                    import json

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
            producer.produce(args.topic, codec.encode(item), key_of(item))
        sent += 1
        now = time.monotonic()
        if now - last >= 1.0:
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


def cmd_tail(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    from processor.backends.kafka import KafkaBroker
    from processor.core.errors import DecodeError
    from processor.serde.codec import Codec
    from processor.serde.jsonform import artifact_to_json

    broker = KafkaBroker(_need_bootstrap(args))
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


def cmd_broker(args: argparse.Namespace) -> int:
    from processor.devtools.local_kafka import main_broker

    return main_broker(args.nodes)


def cmd_lag(args: argparse.Namespace) -> int:
    from processor.ops.lag import main_lag

    return main_lag(_need_bootstrap(args), args.group, args.topics)


def cmd_config(args: argparse.Namespace) -> int:
    from processor.ops.settings import check_file

    cfg = check_file(args.file)
    print(f"{args.file}: valid")
    print(cfg.describe())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
    if not script.is_file():
        raise ProcessorError(f"the benchmark lives in the source tree ({script}): not found")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


COMMANDS = {
    "demo": cmd_demo, "run": cmd_run, "produce": cmd_produce, "tail": cmd_tail,
    "broker": cmd_broker, "lag": cmd_lag, "config": cmd_config, "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the benchmark, options included.
        args = argparse.Namespace(command="bench", args=argv[1:])
    else:
        args = parser.parse_args(argv)
    if args.command != "run":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ProcessorError as exc:
        sys.stderr.write(f"processor {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
