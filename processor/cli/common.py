"""What the command modules share: argument types, the bootstrap-servers flag, the type of
the sub-command table."""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import TypeAlias

from processor.core.errors import ProcessorError

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `ArgumentParser.add_subparsers` returns: each command module adds its parsers to it."""

BOOTSTRAP_ENV = "PROCESSOR_BOOTSTRAP_SERVERS"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions paragraph by paragraph (blank lines between paragraphs stay) and
    prints indented lines, such as examples, as they are written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for block in text.strip("\n").split("\n\n"):
            lines = block.splitlines()
            if any(line.startswith(" ") for line in lines[1:]) or block.startswith(" "):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent,
                                         subsequent_indent=indent, break_on_hyphens=False))
        return "\n\n".join(out)


def command_parser(
    sub: Subcommands, name: str, *, help: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """A sub-command parser with a wrapped description and examples kept as written."""
    return sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter,
    )


def add_bootstrap(parser: argparse.ArgumentParser) -> None:
    """The `--bootstrap-servers` flag, defaulting to `$PROCESSOR_BOOTSTRAP_SERVERS`."""
    parser.add_argument(
        "--bootstrap-servers", metavar="HOST:PORT[,...]", default=os.environ.get(BOOTSTRAP_ENV),
        help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV}); `processor broker` "
        "starts a local Kafka and prints them",
    )


def need_bootstrap(args: argparse.Namespace) -> str:
    """The bootstrap servers, or a `ProcessorError` that says how to give them."""
    servers: str | None = args.bootstrap_servers
    if not servers:
        raise ProcessorError(
            f"--bootstrap-servers is required (or set {BOOTSTRAP_ENV}); "
            "`processor broker` starts a local Kafka"
        )
    return servers
