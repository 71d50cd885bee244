"""`processor demo`: the validate -> transform -> enrich chain on the in-memory broker."""

from __future__ import annotations

import argparse
from pathlib import Path

from processor.cli.common import Subcommands, command_parser, positive_int
from processor.core.errors import ProcessorError


def add_parsers(sub: Subcommands) -> None:
    demo = command_parser(
        sub, "demo", help="run the validate -> transform -> enrich demo on the in-memory broker",
        description="Run three chained stages (validate -> transform -> enrich) on the "
        "in-memory broker, in this process: no Kafka needed. Feed them orders (every 50th "
        "deliberately bad), then print what each stage read, wrote, dropped and "
        "dead-lettered, and the first output artifacts as JSON.\n\n"
        "Topics: orders.raw -> orders.validated -> orders.transformed -> orders.enriched, "
        "dead letters to orders.dlq. The exit status is 1 if any record is unaccounted for.",
        epilog="examples:\n  processor demo\n  processor demo --count 100000 --show 0\n"
        "  processor demo --input orders.jsonl",
    )
    demo.add_argument("--count", type=positive_int, default=10_000, metavar="N",
                      help="how many generated orders to feed (default: %(default)s)")
    demo.add_argument("--input", type=Path, metavar="FILE.jsonl",
                      help="feed one order per JSON line of this file instead; a line that "
                      "is not JSON is fed as raw bytes (and dead-lettered)")
    demo.add_argument("--show", type=int, default=3, metavar="N",
                      help="how many output artifacts to print as JSON (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from processor.demo.run import main_demo

    if args.input is not None and not args.input.is_file():
        raise ProcessorError(f"--input {args.input}: no such file")
    return main_demo(args.count, args.input, show=args.show)
