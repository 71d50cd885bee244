"""`processor dlq`: put dead-lettered records back (`replay`), summarise a dead-letter topic
(`inspect`). The work is `processor.runtime.replay`; this module parses and prints."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import UTC, datetime

from processor.cli.common import (
    Subcommands,
    add_client_settings,
    command_parser,
    kafka_broker,
    positive_float,
    positive_int,
)
from processor.runtime.replay import (
    Inspection,
    default_group,
    inspect,
    parse_since,
    replay,
)


def add_parsers(sub: Subcommands) -> None:
    dlq = command_parser(
        sub, "dlq", help="replay or inspect a dead-letter topic (dlq replay, dlq inspect)",
        description="Work with a dead-letter topic: put its records back into a topic once "
        "the cause is fixed (replay), or summarise it by reason (inspect).",
        epilog="examples:\n"
        "  processor dlq inspect --topic orders.dlq\n"
        "  processor dlq replay --from orders.dlq --to orders.raw --reason handler-error",
    )
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    rep = command_parser(
        actions, "replay", help="copy dead-lettered records back into a topic, exactly once",
        description="Copy the records of a dead-letter topic to a topic, as their original "
        "value and key, exactly once: a consumer group reads the dead-letter topic (read "
        "committed) and each batch is produced and its offsets committed in one Kafka "
        "transaction. Run it again and it copies only what was dead-lettered since; if it "
        "stops half-way, run it again to go on.\n\n"
        "The copies keep the record's original headers, and its dead-letter headers as "
        "replay.* headers (replay.reason, replay.error.message, replay.original.topic, "
        "...) with replay.from, replay.partition, replay.offset and replay.at: should the "
        "record fail again, its new dead letter keeps that history.\n\n"
        "Records passed over by --reason or --since are committed too: that group will "
        "not see them again. The default group names the topics and the reason, so a "
        "replay for another reason starts from the beginning; give --group to choose.",
        epilog="examples:\n"
        "  processor dlq replay --from orders.dlq --to orders.raw\n"
        "  processor dlq replay --from orders.dlq --to orders.raw --reason too-large "
        "--since 2h\n"
        "  processor dlq replay --from orders.dlq --to orders.raw --since "
        "2026-11-27T08:00:00",
    )
    add_client_settings(rep)
    rep.add_argument("--from", dest="source", required=True, metavar="DLQ",
                     help="the dead-letter topic to read")
    rep.add_argument("--to", dest="target", required=True, metavar="TOPIC",
                     help="the topic to put the records back into (usually the stage's "
                     "input topic)")
    rep.add_argument("--reason", metavar="R",
                     help="only records dead-lettered for this reason (decode, checksum, "
                     "invalid, retries-exhausted, handler-error, too-large)")
    rep.add_argument("--since", metavar="T",
                     help="only records dead-lettered at or after T: a UTC time "
                     "(2026-11-27T08:00:00) or a duration back from now (90s, 30m, 2h, 7d)")
    rep.add_argument("--group", metavar="G",
                     help="the replay's consumer group and transactional id (default: "
                     "processor-dlq-replay.DLQ.TOPIC[.REASON])")
    rep.add_argument("--batch-size", type=positive_int, default=500, metavar="N",
                     help="records per transaction (default: %(default)s)")
    rep.add_argument("--idle", type=positive_float, default=3.0, metavar="SECONDS",
                     help="stop when nothing new came for this long (default: %(default)s)")
    rep.add_argument("--trace", action="store_true",
                     help="start a trace per replayed record, linked to the trace the dead "
                     "letter's headers carry, exported over OTLP as PROCESSOR_OTLP_ENDPOINT "
                     "and PROCESSOR_OTLP_PROTOCOL say; on by itself when "
                     "PROCESSOR_TRACING=otlp")
    rep.set_defaults(func=cmd_replay)

    ins = command_parser(
        actions, "inspect", help="summarise a dead-letter topic by reason",
        description="Read a dead-letter topic to its end (read committed, without "
        "committing anything) and print, per reason, how many records, the first and last "
        "dead-letter times (UTC), the stages and source topics, and a few distinct error "
        "messages.",
        epilog="examples:\n  processor dlq inspect --topic orders.dlq --samples 5",
    )
    add_client_settings(ins)
    ins.add_argument("--topic", required=True, metavar="DLQ", help="the dead-letter topic")
    ins.add_argument("--samples", type=positive_int, default=3, metavar="N",
                     help="distinct error messages shown per reason (default: %(default)s)")
    ins.add_argument("--idle", type=positive_float, default=3.0, metavar="SECONDS",
                     help="stop when nothing new came for this long (default: %(default)s)")
    ins.set_defaults(func=cmd_inspect)


def cmd_replay(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    group = args.group or default_group(args.source, args.target, args.reason)
    broker = kafka_broker(args)
    from processor.ops.tracing import TracingSettings, make_tracer

    tracer = make_tracer(TracingSettings.from_env(enable=args.trace), "processor-dlq-replay")
    result = replay(broker, args.source, args.target, group=group, reason=args.reason,
                    since_ms=since, batch_size=args.batch_size, idle_timeout=args.idle,
                    tracer=tracer)
    reasons = ", ".join(f"{r}: {n}" for r, n in result.by_reason.most_common())
    sys.stdout.write(
        f"copied {result.copied} of {result.read} records from {args.source} to "
        f"{args.target} in {result.transactions} transactions (group {group})"
        + (f"; {reasons}" if reasons else "")
        + (f"; {result.skipped} passed over by --reason/--since" if result.skipped else "")
        + "\n")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    broker = kafka_broker(args)
    found = inspect(broker, args.topic, samples=args.samples, idle_timeout=args.idle)
    sys.stdout.write(format_inspection(found))
    return 0


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _top(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in counter.most_common(3))


def format_inspection(found: Inspection) -> str:
    """The report `processor dlq inspect` prints: a table by reason, then samples."""
    header = ("reason", "count", "first (UTC)", "last (UTC)")
    rows = [(s.reason, str(s.count), _when(s.first_ms), _when(s.last_ms))
            for s in found.reasons]
    table = [header, *rows, ("total", str(found.total), "", "")]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = [f"{found.topic}: {found.total} dead letters"]
    for row in table:
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]),
                                row[2].ljust(widths[2]), row[3]]).rstrip())
    for s in found.reasons:
        lines.append(f"{s.reason}: stages {_top(s.stages)}; from {_top(s.topics)}")
        lines.extend(f"  {sample}" for sample in s.samples)
    return "\n".join(lines) + "\n"
