"""`processor run` (one stage as a service on Kafka) and `processor config check`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from processor.cli.common import Subcommands, command_parser
from processor.core.errors import HandlerNotFound

if TYPE_CHECKING:
    from processor.ops.settings import StageConfig

RUN_EPILOG = """\
examples:
  processor run --bootstrap-servers 127.0.0.1:9092 --input-topic orders.raw \\
      --output-topic orders.validated --group validate --handler validate \\
      --dlq-topic orders.dlq
  processor run --bootstrap-servers 127.0.0.1:9092 --input-topic in --output-topic out \\
      --group shouters --handler my_handlers:shout --create-topics --topic-partitions 3
  processor run --config stage.yaml --processes 2
  PROCESSOR_BATCH_SIZE=500 processor run --config stage.yaml

A handler is `module:function` (the module is imported from the current directory or
PYTHONPATH) or a short name (validate, transform, enrich, and names that installed
packages declare as `processor.handlers` entry points); several run as a chain.

The topics must exist (`processor topics create`), unless --create-topics is given: the
stage then creates the missing ones, with --topic-partitions and --topic-replication or
the cluster's defaults. It is off by default so that a mistyped topic name is an error,
not a new, empty topic that the stage waits on forever.

/metrics, /healthz and /readyz are served on a free port (logged at start) unless
--metrics-port fixes one, as the container image does (9100).

SIGTERM or Ctrl-C drains, commits and stops.
"""


def add_parsers(sub: Subcommands) -> None:
    run = command_parser(
        sub, "run", help="run one stage as a service on Kafka",
        description="Run one buffer stage on Kafka: consume artifacts from the input topic, "
        "run the handlers, produce the results to the output topic, dead-letter what cannot "
        "be processed, and commit the input offsets once the outputs are acknowledged "
        "(at-least-once) or in one transaction with them (exactly-once). Serves /metrics, "
        "/healthz and /readyz.\n\n"
        "Settings come from flags, PROCESSOR_* environment variables and a YAML file "
        "(--config), in that order of precedence; `processor config check FILE` validates a "
        "file without starting.",
        epilog=RUN_EPILOG,
    )
    from processor.ops.settings import add_run_arguments

    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    config = command_parser(
        sub, "config", help="configuration tools (config check)",
        description="Configuration tools for `processor run`: `config check` validates a "
        "stage's settings, its YAML file, PROCESSOR_* variables and flags, without "
        "starting the stage.",
        epilog="examples:\n  processor config check deploy/stage.example.yaml",
    )
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = command_parser(
        actions, "check", help="validate a stage's settings without starting it",
        description="Validate a stage's settings as `processor run` reads them: the YAML "
        "file (FILE, --config or PROCESSOR_CONFIG), the PROCESSOR_* environment variables "
        "and the flags of `processor run`, in that order of precedence, and import each "
        "handler, and read the files the stage reads when it starts: the key files and "
        "trust store of the security settings and the schema files (schema_file, "
        "writer_schemas). Connects to nothing (not to a schema registry either). Prints "
        "the resolved settings, secrets redacted, "
        "each with where its value came from. Every problem is reported at once, each "
        "naming the key, what is allowed and where the value came from (file, "
        "environment variable or flag); the exit status is then 1.",
        epilog="examples:\n  processor config check deploy/stage.example.yaml\n"
        "  PROCESSOR_BATCH_SIZE=500 processor config check stage.yaml --handler my_mod:fn",
    )
    check.add_argument("file", type=Path, metavar="FILE.yaml", nargs="?", default=None,
                       help="the YAML file to check (or --config FILE)")
    add_run_arguments(check)
    check.set_defaults(func=cmd_config_check)


def cmd_run(args: argparse.Namespace) -> int:
    from processor.backends.kafka import KafkaBroker
    from processor.runtime.runner import catch_stop_signals, run_service

    _import_from_cwd()
    catch_stop_signals()  # a signal while the settings load stops cleanly too
    try:
        return run_service(settings_from_args(args), KafkaBroker)
    except HandlerNotFound as exc:
        missing = exc.__cause__
        if isinstance(missing, ModuleNotFoundError) and missing.name:
            raise HandlerNotFound(f"{exc} (searched, in order: {search_path()})") from None
        raise


def settings_from_args(args: argparse.Namespace, path: Path | None = None) -> StageConfig:
    """The stage's settings from the parsed `processor run` flags (a flag not given is
    None), the `PROCESSOR_*` environment and the YAML file at `path`, of `--config` or
    of `PROCESSOR_CONFIG`. Raises `ConfigError` listing every problem."""
    from processor.ops.settings import load_config

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    config_path = path or flags.pop("config", None)
    return load_config(Path(config_path) if config_path else None, os.environ, flags)


def _import_from_cwd() -> None:
    """Let `--handler module:function` find modules in the current directory, as
    `python -m`, uvicorn and gunicorn do (the `processor` script's own directory is on
    the path instead)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def search_path() -> str:
    """Where `import` looks for a handler's module, in order, the current directory
    marked (the module search path, `sys.path`: the current directory, PYTHONPATH, the
    standard library, the installed packages)."""
    cwd = os.getcwd()
    shown = []
    for entry in sys.path:
        path = entry or cwd
        if os.path.exists(path):  # not the path hooks of editable installs, say
            shown.append(f"{path} (the current directory)" if path == cwd else path)
    return ", ".join(dict.fromkeys(shown))


def cmd_config_check(args: argparse.Namespace) -> int:
    from processor.core.errors import ConfigError
    from processor.core.handlers import registry

    if args.file is not None and args.config is not None:
        raise ConfigError("give the file once: FILE or --config FILE")
    cfg = settings_from_args(args, args.file)
    _import_from_cwd()
    origin = cfg.sources.get("handlers", "default")
    problems = []
    for ref in cfg.handlers:
        try:
            registry.resolve(ref)
        except HandlerNotFound as exc:
            problems.append(f"handlers: {exc} (from {origin})")
    problems += _key_problems(cfg) + _schema_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    path = args.file or args.config or os.environ.get("PROCESSOR_CONFIG")
    print(f"{path or 'the environment and flags'}: valid")
    print(cfg.describe())
    return 0


_KEY_SETTINGS = ("sign_key", "open_key", "seal_recipients", "trust_store", "trusted_keys",
                 "retired_keys", "pseudonym_key")
"""The security settings that name keys, each read on its own first so that a problem
names its setting."""


def _origin(cfg: StageConfig, key: str) -> str:
    """Where the value of setting `key` (or of its entries, `key.NAME`) came from."""
    found = dict.fromkeys(where for name, where in sorted(cfg.sources.items())
                          if name == key or name.startswith(key + "."))
    return ", ".join(found) or "default"


def _key_problems(cfg: StageConfig) -> list[str]:
    """The problems `processor run` would stop at when it reads the keys
    (`Keyring.load`), one line each naming the setting."""
    from processor.core.errors import ConfigError
    from processor.security.policy import Keyring, SecurityConfig

    security = cfg.security
    if not security.active:
        return []
    problems = []
    for key in _KEY_SETTINGS:
        value = getattr(security, key)
        if not value:
            continue
        try:
            Keyring.load(SecurityConfig(**{key: value}))
        except ConfigError as exc:
            message = str(exc)
            shown = message if message.startswith(key) else f"{key}: {message}"
            problems.append(f"{shown} (from {_origin(cfg, key)})")
    if not problems:  # what they mean together: one key under two ids, a policy without keys
        try:
            Keyring.load(SecurityConfig(
                trust_store=security.trust_store, trusted_keys=security.trusted_keys,
                retired_keys=security.retired_keys,
                require_signature=security.require_signature,
                require_approvals=security.require_approvals))
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith("require_"):
                named = [k for k in ("trust_store", "trusted_keys", "retired_keys")
                         if getattr(security, k)]
                origins = ", ".join(dict.fromkeys(_origin(cfg, k) for k in named))
                message = f"{', '.join(named)}: {message} (from {origins})"
            problems.append(message)
    return problems


def _schema_problems(cfg: StageConfig) -> list[str]:
    """The problems `processor run` would stop at when it builds its codec from the schema
    files (as `runtime.contracts.stage_codec` does, without the registry), one line each
    naming the setting."""
    from processor.core.errors import SchemaError
    from processor.serde.codec import Codec, read_schema_file

    problems = []
    if cfg.schema_file:
        try:
            Codec(read_schema_file(cfg.schema_file))
        except SchemaError as exc:
            problems.append(f"schema_file: {exc} (from {_origin(cfg, 'schema_file')})")
    for path in cfg.writer_schemas:
        try:
            Codec().register(read_schema_file(path))
        except SchemaError as exc:
            problems.append(f"writer_schemas: {exc} (from {_origin(cfg, 'writer_schemas')})")
    return problems
