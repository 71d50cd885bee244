"""`processor registry`: a local schema registry for development, no Docker needed."""

from __future__ import annotations

import argparse

from processor.cli.common import Subcommands, command_parser


def add_parsers(sub: Subcommands) -> None:
    registry = command_parser(
        sub, "registry", help="start a local schema registry (Confluent API, no Docker needed)",
        description="Start a local schema registry (Apicurio Registry, in memory) on a free "
        "127.0.0.1 port and run it until Ctrl-C or SIGTERM. The first line on stdout is its "
        "Confluent-compatible URL, the /apis/ccompat/v7 path included, printed once it "
        "answers: give it to `processor run --schema-registry-url` and `processor schema "
        "--registry-url`. Everything else goes to stderr. Its schemas live in memory and are gone "
        "when it stops.\n\n"
        "Needs Java 21+ (found in $PROCESSOR_REGISTRY_JAVA, $JAVA_HOME, PATH or "
        "/usr/lib/jvm). The application (about 160 MB) is resolved from Maven Central once "
        "(with Maven) and cached in $PROCESSOR_REGISTRY_HOME (default "
        "~/.cache/processor/apicurio-registry-VERSION).",
        epilog="examples:\n"
        "  processor registry &       # prints http://127.0.0.1:PORT/apis/ccompat/v7\n"
        "  processor schema register --registry-url http://127.0.0.1:PORT/apis/ccompat/v7 \\\n"
        "      --topic orders",
    )
    registry.add_argument("--heap", default="384m", metavar="SIZE",
                          help="the registry's Java heap (default: %(default)s)")
    registry.set_defaults(func=cmd_registry)


def cmd_registry(args: argparse.Namespace) -> int:
    from processor.devtools.registry import main_registry

    return main_registry(args.heap)
