"""`processor topics`: create and list Kafka topics (a stage needs its topics to exist)."""

from __future__ import annotations

import argparse
import sys

from processor.cli.common import (
    Subcommands,
    add_bootstrap,
    command_parser,
    need_bootstrap,
    positive_int,
)


def add_parsers(sub: Subcommands) -> None:
    topics = command_parser(
        sub, "topics", help="create and list topics (topics create, topics list)",
        description="Create and list Kafka topics. `processor run` does not create its "
        "topics (a mistyped name would otherwise become a new, silent topic), and the "
        "local broker of `processor broker` does not create them on first use either.",
        epilog="examples:\n"
        "  processor topics create orders.raw orders.validated --partitions 6\n"
        "  processor topics list",
    )
    actions = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = command_parser(
        actions, "create", help="create topics (existing ones are left as they are)",
        description="Create each named topic with the given partitions and replication "
        "factor, and wait until every partition has a leader. A topic that exists already "
        "is left as it is, whatever its partition count.",
        epilog="examples:\n  processor topics create in out in.dlq --partitions 3",
    )
    add_bootstrap(create)
    create.add_argument("names", nargs="+", metavar="TOPIC", help="the topics to create")
    create.add_argument("--partitions", type=positive_int, default=1, metavar="N",
                        help="partitions per topic: the most replicas a stage can use "
                        "(default: %(default)s)")
    create.add_argument("--replication", type=positive_int, default=1, metavar="N",
                        help="copies of each partition, at most the number of brokers "
                        "(default: %(default)s)")
    create.set_defaults(func=cmd_create)

    listing = command_parser(
        actions, "list", help="list topics and their partition counts",
        description="Print every topic (internal ones included) with its partition count, "
        "one per line, sorted by name.",
        epilog="examples:\n  processor topics list",
    )
    add_bootstrap(listing)
    listing.set_defaults(func=cmd_list)


def cmd_create(args: argparse.Namespace) -> int:
    out = sys.stdout
    from processor.backends.kafka import KafkaBroker

    admin = KafkaBroker(need_bootstrap(args)).admin()
    try:
        existing = admin.list_topics()
        for name in args.names:
            if name in existing:
                out.write(f"{name}: exists, {existing[name]} partition(s)\n")
                continue
            admin.create_topic(name, partitions=args.partitions, replication=args.replication)
            out.write(f"{name}: created, {args.partitions} partition(s)\n")
    finally:
        admin.close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    out = sys.stdout
    from processor.backends.kafka import KafkaBroker

    admin = KafkaBroker(need_bootstrap(args)).admin()
    try:
        topics = admin.list_topics()
    finally:
        admin.close()
    width = max((len(name) for name in topics), default=0)
    for name in sorted(topics):
        out.write(f"{name.ljust(width)}  {topics[name]}\n")
    return 0
