"""`processor broker`: a local Apache Kafka for development, no Docker needed."""

from __future__ import annotations

import argparse

from processor.cli.common import Subcommands, command_parser


def add_parsers(sub: Subcommands) -> None:
    broker = command_parser(
        sub, "broker", help="start a local Apache Kafka (KRaft, no Docker needed)",
        description="Start a local Apache Kafka (KRaft mode) on free 127.0.0.1 ports and run "
        "it until Ctrl-C or SIGTERM. The first line on stdout is its bootstrap servers, "
        "printed once it takes topics and producers; everything else goes to stderr. It "
        "creates no topic on first use: `processor topics create` does.\n\n"
        "Needs Java 17+. The Apache Kafka jars are resolved from Maven Central once (with "
        "Maven) and cached in $PROCESSOR_KAFKA_HOME (default ~/.cache/processor/kafka-"
        "VERSION). Data lives in a temporary directory removed on exit.",
        epilog="examples:\n  processor broker &                   # prints 127.0.0.1:PORT\n"
        "  processor broker --nodes 3           # a 3-node cluster, replicated internal topics",
    )
    broker.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="1 broker, or a 3-node cluster (default: %(default)s)")
    broker.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from processor.devtools.local_kafka import main_broker

    return main_broker(args.nodes)
