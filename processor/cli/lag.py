"""`processor lag`: a consumer group's lag per partition, as a table."""

from __future__ import annotations

import argparse
import sys

from processor.cli.common import (
    Subcommands,
    add_client_settings,
    client_config,
    command_parser,
    positive_float,
)
from processor.ops.lag import DEFAULT_TIMEOUT, collect_lag, format_table


def add_parsers(sub: Subcommands) -> None:
    lag = command_parser(
        sub, "lag", help="print a consumer group's lag per partition",
        description="Print a consumer group's committed offset, end offset (high watermark) "
        "and lag for each partition, and the total. Every partition of the group's topics "
        "is shown (the topics it committed offsets in, those its members are assigned, "
        "and each --topic), also one without a committed offset yet (shown '-'): its lag "
        "is what the group will read there, its whole retained range with "
        "--offset-reset earliest. An unknown group or topic, or a broker that does not "
        "answer within --timeout, is one line on stderr and exit status 1.",
        epilog="examples:\n  processor lag --group validate\n"
        "  processor lag --group validate --topic orders.raw",
    )
    add_client_settings(lag)
    lag.add_argument("--group", required=True, help="the consumer group (a stage's --group)")
    lag.add_argument("--topic", action="append", dest="topics", metavar="TOPIC",
                     help="also show every partition of this topic (repeatable); the "
                     "group's own topics are always shown")
    lag.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest",
                     help="the group's auto.offset.reset: where it starts in a partition "
                     "without a committed offset, so what counts as lag there "
                     "(default: %(default)s, as a stage)")
    lag.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                     metavar="SECONDS",
                     help="how long each broker request may take (default: %(default)s)")
    lag.set_defaults(func=cmd_lag)


def cmd_lag(args: argparse.Namespace) -> int:
    config = client_config(args)
    rows = collect_lag(config.bootstrap_servers, args.group, args.topics, timeout=args.timeout,
                       settings=config.kafka, offset_reset=args.offset_reset,
                       origins=config.kafka_origins)
    sys.stdout.write(format_table(rows))
    return 0
