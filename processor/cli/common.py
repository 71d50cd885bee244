"""What the command modules share: argument types, the Kafka client settings of every
command that talks to Kafka (`add_client_settings`, `client_config`, `kafka_broker`), the
type of the sub-command table."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from processor.backends.kafka import KafkaBroker
    from processor.ops.settings import ClientConfig

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `ArgumentParser.add_subparsers` returns: each command module adds its parsers to it."""

BOOTSTRAP_ENV = "PROCESSOR_BOOTSTRAP_SERVERS"
CONFIG_ENV = "PROCESSOR_CONFIG"
MISSING_BOOTSTRAP = (f"--bootstrap-servers is required (or set {BOOTSTRAP_ENV}); "
                     "`processor broker` starts a local Kafka")


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


def add_client_settings(parser: argparse.ArgumentParser, *,
                        config_flag: bool = True) -> None:
    """The Kafka client settings of a command, read as `processor run` reads them:
    `--bootstrap-servers`, a settings file (`--command-config FILE`, also `--config FILE`
    unless `config_flag` is False because the command's `--config` means something
    else), and `--set KEY=VALUE` librdkafka settings; then the environment
    (`PROCESSOR_BOOTSTRAP_SERVERS`, `PROCESSOR_KAFKA__<KEY>`, `PROCESSOR_CONFIG`)."""
    group = parser.add_argument_group(
        "Kafka client settings",
        "as for `processor run`: a flag wins over the environment, which wins over the "
        "file")
    group.add_argument(
        "--bootstrap-servers", metavar="HOST:PORT[,...]", default=None,
        help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV}, or bootstrap_servers in "
        "the settings file); `processor broker` starts a local Kafka and prints them",
    )
    group.add_argument(
        *(("--config", "--command-config") if config_flag else ("--command-config",)),
        dest="command_config", metavar="FILE", type=Path, default=None,
        help="YAML settings file with bootstrap_servers and kafka: (librdkafka settings), "
        "such as a stage's file or the USER.kafka.yaml of `processor broker --secure` "
        f"(default: ${CONFIG_ENV}, if set)",
    )
    group.add_argument(
        "--set", dest="kafka", action="append", default=None, metavar="KEY=VALUE",
        help="a librdkafka setting, e.g. security.protocol=SASL_SSL; repeatable "
        "[env PROCESSOR_KAFKA__<KEY> with dots as underscores]",
    )


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The bootstrap servers and librdkafka settings of the flags of
    `add_client_settings`, the environment and the settings file; a `ConfigError`
    naming each setting that is wrong or missing, and where it came from."""
    from processor.core.errors import ConfigError
    from processor.ops.settings import load_client_config

    try:
        return load_client_config(args.command_config, os.environ, {
            "bootstrap_servers": args.bootstrap_servers, "kafka": args.kafka})
    except ConfigError as exc:  # the missing servers in the words of the commands
        lines = [MISSING_BOOTSTRAP if line.startswith("bootstrap_servers: required") else line
                 for line in str(exc).splitlines()]
        raise ConfigError("\n".join(lines)) from None


def kafka_broker(args: argparse.Namespace) -> KafkaBroker:
    """A `KafkaBroker` on `client_config(args)`."""
    from processor.backends.kafka import KafkaBroker

    config = client_config(args)
    return KafkaBroker(config.bootstrap_servers, config.kafka, origins=config.kafka_origins)
