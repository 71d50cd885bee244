"""`processor topics`: create, list, describe and delete Kafka topics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from processor.backends.abstract import Admin, TopicDescription
from processor.cli.common import (
    Subcommands,
    add_client_settings,
    command_parser,
    kafka_broker,
    positive_int,
)
from processor.core.errors import ProcessorError, UnknownTopic


def key_value(text: str) -> tuple[str, str]:
    """An argparse type: `KEY=VALUE`, the key not empty."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_parsers(sub: Subcommands) -> None:
    topics = command_parser(
        sub, "topics", help="create, list, describe and delete topics",
        description="Manage Kafka topics: create them with their partitions, replication "
        "factor and settings, list them, describe their partitions and settings, delete "
        "them.\n\n"
        "A stage needs its topics to exist: `processor run` does not create them unless "
        "told to (--create-topics), and the local broker of `processor broker` does not "
        "create a topic on first use either, so that a mistyped name fails at once instead "
        "of becoming a new, silent topic.",
        epilog="examples:\n"
        "  processor topics create orders.raw orders.validated --partitions 6\n"
        "  processor topics create orders.dlq --config retention.ms=604800000\n"
        "  processor topics list\n"
        "  processor topics describe orders.raw\n"
        "  processor topics delete orders.raw",
    )
    actions = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = command_parser(
        actions, "create", help="create topics (existing ones are left as they are)",
        description="Create each named topic with the given partitions, replication factor "
        "and settings, and wait until every partition has a leader. A topic that exists "
        "already is left as it is, whatever its partitions and settings.\n\n"
        "Without --partitions or --replication the cluster's defaults apply (the broker "
        "settings num.partitions and default.replication.factor; on `processor broker`: 1 "
        "partition, and one replica per node).",
        epilog="examples:\n"
        "  processor topics create in out in.dlq --partitions 3\n"
        "  processor topics create events --replication 3 --config min.insync.replicas=2 \\\n"
        "      --config retention.ms=86400000",
    )
    add_client_settings(create, config_flag=False)
    create.add_argument("names", nargs="+", metavar="TOPIC", help="the topics to create")
    create.add_argument("--partitions", type=positive_int, default=None, metavar="N",
                        help="partitions per topic: the most consumers of one group that "
                        "get work (default: the cluster's num.partitions)")
    create.add_argument("--replication", type=positive_int, default=None, metavar="N",
                        help="copies of each partition, at most the number of brokers "
                        "(default: the cluster's default.replication.factor)")
    create.add_argument("--config", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a topic setting, such as retention.ms=86400000 or "
                        "cleanup.policy=compact; repeatable")
    create.set_defaults(func=cmd_create)

    listing = command_parser(
        actions, "list", help="list topics and their partition counts",
        description="Print every topic with its partition count, one per line, sorted by "
        "name. Kafka's internal topics (__consumer_offsets, ...) are left out.",
        epilog="examples:\n  processor topics list",
    )
    add_client_settings(listing)
    listing.set_defaults(func=cmd_list)

    describe = command_parser(
        actions, "describe", help="partitions, leaders, replicas and settings of topics",
        description="Print, for each named topic, its partition count, replication factor "
        "and the settings made on the topic itself (the broker's defaults are not "
        "repeated), then one line per partition: its leader, its replicas and the replicas "
        "in sync with the leader, by broker id. A leader of -1 means the partition has "
        "none (its replicas are down).",
        epilog="examples:\n  processor topics describe in out in.dlq",
    )
    add_client_settings(describe)
    describe.add_argument("names", nargs="+", metavar="TOPIC", help="the topics to describe")
    describe.set_defaults(func=cmd_describe)

    delete = command_parser(
        actions, "delete", help="delete topics and their records",
        description="Delete each named topic with all its records, and wait until it is "
        "gone. There is no undo. A topic that does not exist is reported, and the exit "
        "status is then 1.",
        epilog="examples:\n  processor topics delete in out in.dlq",
    )
    add_client_settings(delete)
    delete.add_argument("names", nargs="+", metavar="TOPIC", help="the topics to delete")
    delete.set_defaults(func=cmd_delete)


@contextmanager
def _admin(args: argparse.Namespace) -> Iterator[Admin]:
    admin = kafka_broker(args).admin()
    try:
        yield admin
    finally:
        admin.close()


def _shape(described: TopicDescription) -> str:
    return (f"{len(described.partitions)} partition(s), replication factor "
            f"{described.replication}")


def cmd_create(args: argparse.Namespace) -> int:
    out = sys.stdout
    with _admin(args) as admin:
        existing = admin.list_topics()
        for name in args.names:
            if name in existing:
                out.write(f"{name}: exists, {_shape(admin.describe_topic(name))}\n")
                continue
            admin.create_topic(name, partitions=args.partitions, replication=args.replication,
                               config=dict(args.config))
            out.write(f"{name}: created, {_shape(admin.describe_topic(name))}\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    out = sys.stdout
    with _admin(args) as admin:
        topics = admin.list_topics()
    width = max((len(name) for name in topics), default=0)
    for name in sorted(topics):
        out.write(f"{name.ljust(width)}  {topics[name]}\n")
    return 0


def describe_lines(described: TopicDescription) -> list[str]:
    """What `topics describe` prints for one topic."""
    settings = ", ".join(f"{k}={v}" for k, v in sorted(described.config.items()))
    rows = [("partition", "leader", "replicas", "in-sync")] + [
        (str(p.partition), str(p.leader), ",".join(map(str, p.replicas)),
         ",".join(map(str, p.in_sync)))
        for p in described.partitions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        f"{described.name}: {_shape(described)}",
        f"  settings: {settings or 'none of its own (the broker defaults)'}",
        *("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
          for row in rows),
    ]


def cmd_describe(args: argparse.Namespace) -> int:
    out = sys.stdout
    with _admin(args) as admin:
        found = [admin.describe_topic(name) for name in args.names]
    for described in found:
        out.write("\n".join(describe_lines(described)) + "\n")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    out = sys.stdout
    missing: list[str] = []
    with _admin(args) as admin:
        for name in args.names:
            try:
                admin.delete_topic(name)
            except UnknownTopic:
                missing.append(name)
                continue
            out.write(f"{name}: deleted\n")
    if missing:
        raise ProcessorError(f"unknown topic(s): {', '.join(missing)}")
    return 0
