"""`processor acls show | apply`: the Kafka ACLs a stage needs, printed or applied."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from processor.cli.common import Subcommands, command_parser

if TYPE_CHECKING:
    from processor.backends.kafka import KafkaBroker
    from processor.ops.acls import Acl
    from processor.ops.settings import StageConfig

ANY_HANDLER = "any"
"""The handler a stage's settings get when none is given: the ACLs do not depend on it."""

_DESCRIPTION = (
    "the ACLs a stage needs on a Kafka cluster with an authorizer, for its settings read "
    "exactly as `processor run` reads them (a YAML file with --config or PROCESSOR_CONFIG, "
    "the PROCESSOR_* environment and the flags of `processor run`; --handler may be left "
    "out): READ on the input topic(s) and the consumer group; WRITE on the output topic, "
    "each named output (--output NAME=TOPIC) and the dead-letter topic; for exactly-once, "
    "WRITE on the stage's transactional ids (PREFIXED on transactional_id, by default "
    "NAME-GROUP: the workers append -REPLICA-SLOT); IDEMPOTENT_WRITE on the cluster only "
    "for a sink stage that may write no topic; CREATE on its topics with --create-topics. "
    "READ and WRITE imply DESCRIBE. The principal is --principal, by default User: and the "
    "stage's sasl.username.")


def add_parsers(sub: Subcommands) -> None:
    from processor.ops.settings import add_run_arguments

    acls = command_parser(
        sub, "acls", help="the Kafka ACLs a stage needs (acls show | apply)",
        description="Print (show) or create (apply) " + _DESCRIPTION,
        epilog="examples:\n"
        "  processor acls show --config stage.yaml --principal User:orders\n"
        "  processor acls show --config stage.yaml --format json\n"
        "  processor acls apply --config stage.yaml --principal User:orders \\\n"
        "      --command-config tls/admin.kafka.yaml",
    )
    actions = acls.add_subparsers(dest="acls_command", metavar="ACTION", required=True)
    show = command_parser(
        actions, "show", help="print the ACLs a stage needs",
        description="Print " + _DESCRIPTION + "\n\n"
        "--format kafka-acls (the default) prints one `kafka-acls.sh --add` command per "
        "ACL, its reason as a comment: a shell script for Kafka's own tool (give it "
        "--command-config with Java client settings on a secured cluster). --format json "
        "prints a list of bindings. Connects to nothing.",
        epilog="examples:\n"
        "  processor acls show --config stage.yaml --principal User:orders\n"
        "  processor acls show --bootstrap-servers kafka:9093 --input-topic orders.raw \\\n"
        "      --output-topic orders.valid --dlq-topic orders.dlq --group validate \\\n"
        "      --guarantee exactly-once --principal User:orders --format json",
    )
    add_run_arguments(show)
    _add_principal(show)
    show.add_argument("--format", choices=("kafka-acls", "json"), default="kafka-acls",
                      help="kafka-acls.sh command lines, or a JSON list of bindings "
                      "(default: %(default)s)")
    show.set_defaults(func=cmd_show)

    apply = command_parser(
        actions, "apply", help="create the ACLs a stage needs through the admin API",
        description="Create " + _DESCRIPTION + "\n\n"
        "They are created through Kafka's admin API, as a principal that may alter ACLs: "
        "the client settings of --command-config FILE (a YAML file with bootstrap_servers "
        "and kafka:, such as the admin.kafka.yaml of `processor broker --secure`), or else "
        "the stage's own. An ACL that exists already is left as it is, so applying twice "
        "is harmless. Prints each ACL, created or already there. Nothing is ever deleted.",
        epilog="examples:\n"
        "  processor acls apply --config stage.yaml --principal User:orders \\\n"
        "      --command-config tls/admin.kafka.yaml",
    )
    add_run_arguments(apply)
    _add_principal(apply)
    apply.add_argument(
        "--command-config", dest="admin_config", metavar="FILE", type=Path, default=None,
        help="YAML client settings (bootstrap_servers, kafka:) of a principal allowed to "
        "alter ACLs; its bootstrap_servers default to the stage's (default: the stage's "
        "own settings)")
    apply.set_defaults(func=cmd_apply)


def _add_principal(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--principal", metavar="User:NAME", default=None,
        help="the principal the stage runs as (a bare NAME means User:NAME; default: "
        "User: and the stage's sasl.username)")


def stage_settings(args: argparse.Namespace) -> StageConfig:
    """The stage's settings as `processor run` reads them; the handlers may be left out."""
    from processor.cli.run import settings_from_args
    from processor.core.errors import ConfigError

    try:
        return settings_from_args(args)
    except ConfigError as exc:
        problems = str(exc).splitlines()
        if args.handlers or not any(line.startswith("handlers:") for line in problems):
            raise
    # The ACLs do not depend on the handlers: a stage's flags without --handler will do.
    args.handlers = [ANY_HANDLER]
    return settings_from_args(args)


def _bindings(args: argparse.Namespace) -> tuple[StageConfig, list[Acl]]:
    from processor.ops.acls import principal_of, stage_acls

    cfg = stage_settings(args)
    return cfg, stage_acls(cfg, principal_of(args.principal, cfg.kafka))


def cmd_show(args: argparse.Namespace) -> int:
    from processor.ops.acls import format_json, format_kafka_acls

    cfg, bindings = _bindings(args)
    if args.format == "json":
        sys.stdout.write(format_json(bindings))
    else:
        sys.stdout.write(format_kafka_acls(bindings, cfg.bootstrap_servers))
    return 0


def admin_broker(args: argparse.Namespace, cfg: StageConfig) -> KafkaBroker:
    """A broker with the admin's client settings: `--command-config FILE` (its bootstrap
    servers, or else the stage's), or else the stage's own."""
    import yaml

    from processor.backends.kafka import KafkaBroker
    from processor.ops.settings import load_client_config

    path: Path | None = args.admin_config
    if path is None:
        return KafkaBroker(cfg.bootstrap_servers, cfg.kafka, origins={
            key.removeprefix("kafka."): where for key, where in cfg.sources.items()
            if key.startswith("kafka.")})
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        document = None  # load_client_config says what is wrong with the file
    has_servers = isinstance(document, dict) and bool(document.get("bootstrap_servers"))
    config = load_client_config(path, {}, {
        "bootstrap_servers": None if has_servers else cfg.bootstrap_servers})
    return KafkaBroker(config.bootstrap_servers, config.kafka, origins=config.kafka_origins)


def cmd_apply(args: argparse.Namespace) -> int:
    from processor.backends.kafka.admin import AclKey, acl_key

    cfg, bindings = _bindings(args)
    broker = admin_broker(args, cfg)
    admin = broker.admin()
    existing: set[AclKey] = set()
    for principal in {acl.principal for acl in bindings}:
        existing |= admin.describe_acls(principal)
    admin.create_acls(bindings)
    created = 0
    for acl in bindings:
        new = acl_key(acl) not in existing
        created += new
        sys.stdout.write(f"{'created' if new else 'exists '}  {acl}\n")
    sys.stdout.write(f"{created} created, {len(bindings) - created} already there, on "
                     f"{broker.bootstrap_servers}\n")
    return 0
