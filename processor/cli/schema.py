"""`processor schema register | check | show`: the artifact schema in a schema registry.

`check` answers "may I deploy this schema?" before a rolling upgrade: it reads the
subject's registered versions from the registry and tests the schema against them with
Apache Avro's own compatibility checker (`avro.compatibility`), under a compatibility mode
(BACKWARD by default; FORWARD, FULL, their transitive forms, or NONE). It prints what
breaks, field by field, and exits with status 1 when anything does, so a CI pipeline can
gate on it. The check runs here rather than in the registry so that any mode can be
tested whatever the subject is configured with, and so that the report says why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from processor.cli.common import Subcommands, command_parser
from processor.core.errors import ProcessorError

MODES = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
         "FULL_TRANSITIVE", "NONE")
URL_ENV = "PROCESSOR_SCHEMA_REGISTRY_URL"
USER_ENV = "PROCESSOR_SCHEMA_REGISTRY_USER"
PASSWORD_ENV = "PROCESSOR_SCHEMA_REGISTRY_PASSWORD"

_EXPLAIN = {
    "type_mismatch": "a type the reader cannot read the writer's as",
    "reader_field_missing_default_value": "a field the writer lacks has no default in the "
                                          "reader",
    "name_mismatch": "a named type was renamed",
    "fixed_size_mismatch": "a fixed type changed size",
    "missing_enum_symbols": "the reader lacks enum symbols the writer has",
    "missing_union_branch": "the reader's union lacks a branch the writer's has",
}


def add_parsers(sub: Subcommands) -> None:
    schema = command_parser(
        sub, "schema", help="register, check or show the artifact schema in a schema registry",
        description="Work with the artifact schema in a Confluent-compatible schema "
        "registry. The subject is given with --subject, or derived from --topic with a "
        "naming strategy (topic: TOPIC-value, record: the record name, topic-record: "
        "TOPIC-RECORD), as the stages derive it.\n\n"
        f"The registry URL comes from --registry-url or ${URL_ENV}; basic-auth "
        f"credentials from ${USER_ENV} and ${PASSWORD_ENV} (or the file "
        f"${PASSWORD_ENV}_FILE names). A Confluent-compatible URL "
        "of Apicurio Registry ends in /apis/ccompat/v7; `processor registry` starts one "
        "locally and prints its URL.",
        epilog="examples:\n"
        "  processor schema register --registry-url http://127.0.0.1:8080/apis/ccompat/v7 \\\n"
        "      --topic orders\n"
        "  processor schema check --topic orders --schema-file schemas/artifact.avsc --mode FULL\n"
        "  processor schema show --topic orders --version latest",
    )
    actions = schema.add_subparsers(dest="action", metavar="ACTION", required=True)
    register = command_parser(
        actions, "register", help="register the schema under a subject and print its id",
        description="Register the schema (default: the packaged artifact schema) under the "
        "subject and print the id the registry gives it. The registry refuses a schema "
        "that breaks the subject's compatibility level.",
        epilog="examples:\n"
        "  processor schema register --registry-url http://127.0.0.1:8080/apis/ccompat/v7 \\\n"
        "      --topic orders\n"
        "  processor schema register --subject orders-value --schema-file schemas/artifact.avsc")
    check = command_parser(
        actions, "check", help="test the schema's compatibility with a subject's versions",
        description="Test whether the schema is compatible with the versions registered "
        "under the subject, under a compatibility mode: BACKWARD (the new schema reads data "
        "of the latest version), FORWARD (the latest version reads the new schema's data), "
        "FULL (both); the _TRANSITIVE forms test every version, not only the latest. "
        "Prints what breaks and exits with status 1 if anything does, 0 if compatible.",
        epilog="examples:\n"
        "  processor schema check --topic orders --schema-file schemas/artifact.avsc\n"
        "  processor schema check --topic orders --mode FULL_TRANSITIVE")
    show = command_parser(
        actions, "show", help="print a registered schema",
        description="Print a schema registered under the subject (--version, default the "
        "latest), or the schema of a registry id (--id), with its subject, version and id.",
        epilog="examples:\n"
        "  processor schema show --topic orders\n"
        "  processor schema show --subject orders-value --version 1\n"
        "  processor schema show --id 42")
    for parser in (register, check, show):
        parser.add_argument("--registry-url", metavar="URL", default=os.environ.get(URL_ENV),
                            help=f"the schema registry (default: ${URL_ENV})")
        parser.add_argument("--subject", help="the subject (default: from --topic)")
        parser.add_argument("--topic", help="derive the subject from this topic")
        parser.add_argument("--strategy", choices=("topic", "record", "topic-record"),
                            default="topic", help="subject naming strategy for --topic "
                            "(default: topic)")
    for parser in (register, check):
        parser.add_argument("--schema-file", metavar="FILE",
                            help="the schema (.avsc; default: the packaged artifact schema)")
    check.add_argument("--mode", choices=MODES, default="BACKWARD", type=str.upper,
                       help="compatibility mode (default: BACKWARD)")
    show.add_argument("--version", default="latest", help="version number, or latest")
    show.add_argument("--id", type=int, help="show the schema with this registry id")
    register.set_defaults(func=cmd_register)
    check.set_defaults(func=cmd_check)
    show.set_defaults(func=cmd_show)


# --- helpers ---------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from pydantic import SecretStr

    from processor.ops.secrets import secret_from_env
    from processor.serde.registry import RegistryConfig, registry_client

    if not args.registry_url:
        raise ProcessorError(f"--registry-url is required (or set {URL_ENV})")
    try:
        password = secret_from_env(os.environ, PASSWORD_ENV)
    except ValueError as exc:
        raise ProcessorError(str(exc)) from None
    config = RegistryConfig(url=args.registry_url, user=os.environ.get(USER_ENV) or None,
                            password=SecretStr(password) if password else None)
    return registry_client(config)


def _schema(args: argparse.Namespace) -> dict[str, Any]:
    from processor.serde.codec import load_schema, read_schema_file

    path = getattr(args, "schema_file", None)
    return read_schema_file(path) if path else load_schema()


def _subject(args: argparse.Namespace, schema: dict[str, Any] | None) -> str:
    from processor.serde.codec import load_schema
    from processor.serde.registry import record_name, subject_name

    if args.subject:
        return str(args.subject)
    if not args.topic and args.strategy != "record":
        raise ProcessorError("give --subject, or --topic to derive it from")
    return subject_name(args.strategy, args.topic or "", record_name(schema or load_schema()))


def _registry_call(what: str, call: Any, *call_args: Any) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryError

    from processor.serde.registry import describe_error

    try:
        return call(*call_args)
    except SchemaRegistryError as exc:
        raise ProcessorError(f"{what}: {describe_error(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise ProcessorError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # the HTTP client's connection errors
        raise ProcessorError(f"{what}: {type(exc).__name__}: {exc}") from exc


# --- commands --------------------------------------------------------------------------


def cmd_register(args: argparse.Namespace) -> int:
    from confluent_kafka.schema_registry import Schema

    client = _client(args)
    schema = _schema(args)
    subject = _subject(args, schema)
    schema_id = _registry_call(f"registering under {subject!r}", client.register_schema,
                               subject, Schema(json.dumps(schema), "AVRO"))
    print(f"registered under subject {subject} with id {schema_id}")
    return 0


def compatibility_problems(new: dict[str, Any], old: dict[str, Any], mode: str) -> list[str]:
    """What breaks between the new schema and one registered version, under `mode`."""
    import avro.schema
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    new_schema, old_schema = (avro.schema.parse(json.dumps(s)) for s in (new, old))
    directions = []
    if mode.startswith(("BACKWARD", "FULL")):
        directions.append(("the new schema cannot read data written with it", new_schema,
                           old_schema))
    if mode.startswith(("FORWARD", "FULL")):
        directions.append(("it cannot read data written with the new schema", old_schema,
                           new_schema))
    problems: list[str] = []
    for failure, reader, writer in directions:
        checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
        result = checker.get_compatibility(reader, writer)
        if result.compatibility is SchemaCompatibilityType.compatible:
            continue
        kinds = ", ".join(dict.fromkeys(
            _EXPLAIN.get(k.value, k.value) for k in result.incompatibilities))
        details = "; ".join(sorted(result.messages))
        where = ", ".join(sorted(loc for loc in result.locations if loc != "/"))
        problems.append(f"{failure}: {kinds} ({details}{'; at ' + where if where else ''})")
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    from confluent_kafka.schema_registry import SchemaRegistryError

    from processor.serde.codec import schema_fingerprint

    client = _client(args)
    schema = _schema(args)
    subject = _subject(args, schema)
    mode: str = args.mode
    out = sys.stdout
    try:
        versions: list[int] = client.get_versions(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise ProcessorError(f"subject {subject!r}: {exc.error_message}") from exc
        versions = []
    source = args.schema_file or "the packaged artifact schema"
    out.write(f"subject {subject}: {source} (fingerprint {schema_fingerprint(schema)}) "
              f"under {mode}\n")
    if not versions or mode == "NONE":
        out.write("  nothing to check against: compatible\n" if not versions else
                  "  mode NONE: compatible\n")
        return 0
    against = sorted(versions, reverse=True)
    if not mode.endswith("_TRANSITIVE"):
        against = against[:1]
    broken = 0
    for version in against:
        registered = _registry_call(f"subject {subject!r} version {version}",
                                    client.get_version, subject, version)
        old = json.loads(registered.schema.schema_str)
        problems = compatibility_problems(schema, old, mode)
        label = f"version {version} (id {registered.schema_id})"
        if not problems:
            out.write(f"  {label}: compatible\n")
            continue
        broken += 1
        out.write(f"  {label}: NOT compatible\n")
        for problem in problems:
            out.write(f"    - {problem}\n")
    if broken:
        out.write(f"NOT compatible with {broken} of {len(against)} version(s) under {mode}\n")
        return 1
    out.write(f"compatible with {len(against)} version(s) under {mode}\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.id is not None:
        found = _registry_call(f"schema id {args.id}", client.get_schema, args.id)
        print(f"id {args.id}")
        text = found.schema_str
    else:
        subject = _subject(args, None)
        version: int | str = args.version if args.version == "latest" else int(args.version)
        registered = _registry_call(f"subject {subject!r} version {version}",
                                    client.get_version, subject, version)
        print(f"subject {subject} version {registered.version} id {registered.schema_id}")
        text = registered.schema.schema_str
    print(json.dumps(json.loads(text), indent=2))
    return 0
