"""`processor broker`: a local Apache Kafka for development, no Docker needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from processor.cli.common import Subcommands, command_parser
from processor.core.errors import ConfigError


def add_parsers(sub: Subcommands) -> None:
    broker = command_parser(
        sub, "broker", help="start a local Apache Kafka (KRaft, no Docker needed)",
        description="Start a local Apache Kafka (KRaft mode) on free 127.0.0.1 ports and run "
        "it until Ctrl-C or SIGTERM. The first line on stdout is its bootstrap servers, "
        "printed once it takes topics and producers; everything else goes to stderr. It "
        "creates no topic on first use: `processor topics create` does.\n\n"
        "Needs Java 17+. The Apache Kafka jars are resolved from Maven Central once (with "
        "Maven) and cached in $PROCESSOR_KAFKA_HOME (default ~/.cache/processor/kafka-"
        "VERSION). Data lives in a temporary directory removed on exit.",
        epilog="examples:\n  processor broker &                   # prints 127.0.0.1:PORT\n"
        "  processor broker --nodes 3           # a 3-node cluster, replicated internal topics\n"
        "  processor broker --secure tls --user orders\n"
        "                                       # SASL_SSL only; client settings in tls/\n\n"
        "With --secure DIR the only client listener is SASL_SSL: a CA and broker "
        "certificate (DIR/ca.pem, DIR/broker-keystore.pem; made at the first start and "
        "kept in DIR for the next, renewed only when missing or about to expire), "
        "SCRAM-SHA-512 users `admin` (a super user) and each --user with a random "
        "password (kept in DIR/scram-users.yaml, mode 0600, and never on a command line), "
        "and the StandardAuthorizer: a user other than admin may do nothing until ACLs "
        "allow it. For each user, DIR/USER.properties (librdkafka/kcat settings) and "
        "DIR/USER.kafka.yaml (for `processor run --config` and every other command's "
        "--command-config) hold its client settings, password included (mode 0600). "
        "`processor acls show|apply` gives a stage the ACLs it needs (docs/security.md).",
    )
    broker.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="1 broker, or a 3-node cluster (default: %(default)s)")
    broker.add_argument("--secure", type=Path, metavar="DIR", default=None,
                        help="serve SASL_SSL (TLS + SCRAM-SHA-512) with ACLs only, writing "
                        "the certificates and each user's client settings into DIR")
    broker.add_argument("--user", action="append", default=[], metavar="NAME",
                        help="with --secure: a SCRAM user to create besides admin "
                        "(repeatable)")
    broker.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from processor.devtools.local_kafka import main_broker

    if args.user and args.secure is None:
        raise ConfigError("--user needs --secure DIR (a plaintext broker has no users)")
    return main_broker(args.nodes, secure=args.secure, users=args.user)
