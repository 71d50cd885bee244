"""The `processor` command: the parser, the dispatch to a command and its error handling.

Each command group lives in its own module, which adds its parsers to the sub-command
table (`add_parsers`) and names the function that runs it (`func`):

* `processor.cli.demo`: `demo`, the three-stage demo on the in-memory broker;
* `processor.cli.run`: `run`, one stage as a service, and `config check`;
* `processor.cli.produce`: `produce` and `tail`, artifacts into and out of a topic;
* `processor.cli.topics`: `topics create`, `list`, `describe` and `delete`;
* `processor.cli.broker`: `broker`, a local Apache Kafka for development;
* `processor.cli.registry`: `registry`, a local schema registry for development;
* `processor.cli.lag`: `lag`, a consumer group's lag;
* `processor.cli.schema`: `schema register | check | show`, the schema registry;
* `processor.cli.keys`: `keys generate | show`, the keys that sign and seal artifacts;
* `processor.cli.acls`: `acls show | apply`, the Kafka ACLs a stage needs.

A command's `ProcessorError` is one line on stderr (`processor COMMAND: error: ...`) and
exit status 1; Ctrl-C is status 130; a closed output pipe (`| head`) ends quietly.
Benchmarks are not a command: they need the source tree and run with `make bench`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from processor.cli import (
    acls,
    broker,
    demo,
    dlq,
    keys,
    lag,
    pipeline,
    produce,
    registry,
    run,
    schema,
    topics,
)
from processor.cli.common import HelpFormatter
from processor.core.errors import ProcessorError

EPILOG = """\
examples:
  processor demo --count 5000
  processor broker                      # a local Apache Kafka for development
  processor registry                    # a local schema registry (prints its URL)
  processor topics create --bootstrap-servers 127.0.0.1:9092 in out in.dlq --partitions 3
  processor run --bootstrap-servers 127.0.0.1:9092 --input-topic in --output-topic out \\
      --group g --handler validate --dlq-topic in.dlq
  processor produce --bootstrap-servers 127.0.0.1:9092 --topic in orders.jsonl
  processor tail --bootstrap-servers 127.0.0.1:9092 --topic out --from-beginning --count 10
  processor lag --bootstrap-servers 127.0.0.1:9092 --group g

`processor COMMAND --help` explains a command and its flags.
"""

COMMAND_GROUPS = (demo, run, produce, topics, broker, registry, lag, dlq, schema, keys, acls,
                  pipeline)
"""The modules whose `add_parsers` build the sub-commands, in the order `--help` lists them."""

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command, its flags and its help."""
    from processor import __version__

    parser = argparse.ArgumentParser(
        prog="processor",
        description="Kafka-backed stream processor: chains of Avro artifact buffer stages "
        "between Kafka topics, with an in-memory broker for the demo and tests.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `processor` entry point; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    # The command's own function; the rest of the namespace is the command's flags.
    func: Command = vars(args).pop("func")
    if args.command != "run":  # `run` configures logging from its settings
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return func(args)
    except ProcessorError as exc:
        sys.stderr.write(f"processor {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
