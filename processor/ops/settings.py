"""Stage configuration: a YAML file, the environment and CLI flags, read by pydantic-settings.

One declaration per setting
---------------------------
A setting is one field: the stage's own on `processor.core.options.StageOptions` (and its
`RetryPolicy`), the operational ones on `StageConfig` below. Each `Field` carries the type,
the default, the bounds or choices and the help text. `StageSettings`, the pydantic-settings
model `load_config` validates, is generated from those fields, and so are the YAML key, the
environment variable, the flag of `processor run`, the `describe()` row and the error
message. Adding a setting is adding a field.

Sources and precedence
----------------------
Every setting can come from four places; a higher one wins, field by field:

1. CLI flags (`processor run --batch-size 500`); a flag that is not given is `None`
   and does not count;
2. environment variables `PROCESSOR_<FIELD>` (`PROCESSOR_BATCH_SIZE=500`);
3. the YAML file (`--config stage.yaml`, or the path in `PROCESSOR_CONFIG`);
4. the defaults of the fields.

Names derive from the field: `batch_size` / `PROCESSOR_BATCH_SIZE` / `--batch-size`. A
nested field is `retry: {max_attempts: 3}` / `PROCESSOR_RETRY_MAX_ATTEMPTS` /
`--retry-max-attempts`. Mappings merge key by key across the sources; a list is replaced
whole by a higher source. In particular:

* `handlers` (required): a YAML list, `PROCESSOR_HANDLERS` comma-separated, `--handler`
  repeated. Each is `module:function` or a registered name.
* `kafka`: librdkafka settings, passed through untouched under the one YAML key `kafka:`.
  From the environment, `PROCESSOR_KAFKA__<KEY>` where `<KEY>` is the librdkafka key
  upper-cased with dots written as underscores (`PROCESSOR_KAFKA__SASL_PASSWORD` sets
  `sasl.password`); from flags, `--set key=value` (repeatable).
* `outputs`: a YAML mapping of output name -> topic, `PROCESSOR_OUTPUTS` as
  `name=topic,name=topic`, or `--output name=topic` (repeatable).
* An optional value given as text (environment, flags) is unset by `none`, `null`, `off`,
  `-` or nothing: `metrics_port` `off` (YAML `null`) disables the HTTP server; 0 (the
  default) picks a free port.

`input_topic`, `group`, `handlers` and `bootstrap_servers` are required (`processor run`
serves a real Kafka cluster: the in-memory broker lives inside one process, for tests and
the demo); `name` defaults to the group.

The `PROCESSOR_` prefix
-----------------------
Only these variables are read: `PROCESSOR_CONFIG`, `PROCESSOR_<FIELD>`,
`PROCESSOR_RETRY_<KEY>` and `PROCESSOR_KAFKA__<KEY>`. Two kinds of other `PROCESSOR_*`
names are never read as settings nor reported: those Windows sets on its own to describe
the CPU (`PLATFORM_ENV`: `PROCESSOR_ARCHITECTURE`, `PROCESSOR_IDENTIFIER`, ...), and
`PROCESSOR_KAFKA_HOME`, where `processor.devtools.local_kafka` and the Makefile find the
local broker (`TOOLING_ENV`). The double underscore tells a librdkafka setting apart:
`PROCESSOR_KAFKA__` opens one, so `PROCESSOR_KAFKA_HOME` (one underscore) is never taken
for a `kafka.home`. Any other unknown `PROCESSOR_*` variable is ignored with a warning
(for `PROCESSOR_KAFKA_<X>`, one that points at the double underscore).

Errors and secrets
------------------
`load_config` raises one `ConfigError` listing every problem, each naming the key, what
is allowed and its source (`from file stage.yaml`, `from environment PROCESSOR_GROUP`,
`from flag --batch-size`). Secret values never print: a declared secret is a `SecretStr`,
and in the `kafka` pass-through any key that looks secret (`is_secret_key`) is written
`***` by `describe()` and scrubbed from logs (`secret_values`). Only a file that cannot
be read or parsed stops the reading at once.

A secret setting is never needed on the command line (where other local users read it in
`/proc`): besides `PROCESSOR_<FIELD>` and `--<field>`, it comes from the file named by
`PROCESSOR_<FIELD>_FILE` or `--<field>-file` (`PROCESSOR_PSEUDONYM_KEY_FILE`,
`--pseudonym-key-file`), its trailing line break removed. A file form has the precedence
of its source (a flag's file beats the environment); giving both forms in one source is
an error. `PROCESSOR_ALLOW_READABLE_KEYS` is read by `processor.security.keys`, not here.

Client settings
---------------
The commands that talk to Kafka besides `run` (`produce`, `tail`, `topics`, `lag`,
`dlq`) take the same two settings from the same sources: `bootstrap_servers` and
`kafka`, from a YAML file (`--command-config`, `--config` where that is free, or
`PROCESSOR_CONFIG`), `PROCESSOR_BOOTSTRAP_SERVERS` and `PROCESSOR_KAFKA__*`, and the
flags `--bootstrap-servers` and `--set KEY=VALUE`. `load_client_config` reads them into a
`ClientConfig`; the file may be a whole stage's (its other keys are left alone) or only
these two keys, as `processor broker --secure` writes them.

Where the parts live: the three sources in `processor.ops.setting_sources`, reading a
field's declaration and wording its errors in `processor.ops.setting_fields`, the secret
helpers in `processor.ops.secrets`; this module puts them together.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, cast, get_args

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    create_model,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processor.core.errors import ConfigError
from processor.core.options import (
    Count,
    Name,
    ReadOnly,
    RetryPolicy,
    StageOptions,
    topic_clash,
)
from processor.ops.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from processor.ops.secrets import (
    FILE_SUFFIX,
    PREFER_FILE,
    REDACTED,
    is_secret_key,
    read_secret_file,
    redact,
    secret_values,
)
from processor.ops.setting_fields import Context, extra, fields_of, kind, optional, problem
from processor.ops.setting_fields import choices as choices_of
from processor.ops.setting_sources import (
    CONFIG_ENV,
    ENV_PREFIX,
    KAFKA_ENV_PREFIX,
    PLATFORM_ENV,
    TOOLING_ENV,
    Schema,
    Source,
    env_source,
    file_source,
    flag_source,
    kafka_key_from_env,
)
from processor.ops.tracing import OtlpProtocol, TracingMode
from processor.security.keys import ALLOW_READABLE_KEYS_ENV
from processor.security.policy import SecurityConfig
from processor.serde.formats import InputFormat, OutputFormat
from processor.serde.registry import Registration, SubjectStrategy

__all__ = [
    "CONFIG_ENV", "CONTAINER_METRICS_PORT", "DEFAULT_METRICS_HOST", "DEFAULT_METRICS_PORT",
    "ENV_PREFIX", "ENV_VARS", "FIELDS", "KAFKA_ENV_PREFIX", "KNOWN_KEYS", "LOG_FORMATS",
    "LOG_LEVELS", "PLATFORM_ENV",
    "REDACTED", "SETTINGS", "TOOLING_ENV", "ClientConfig", "StageConfig", "StageSettings",
    "add_run_arguments", "check_file", "env_name", "flag_name", "is_known_env_var",
    "is_secret_key", "kafka_key_from_env", "load_client_config", "load_config", "redact",
    "secret_values",
]

logger = logging.getLogger(__name__)

DEFAULT_METRICS_PORT: Final = 0
"""Any free port: several stages on one host never collide; each logs the port it got."""
CONTAINER_METRICS_PORT: Final = 9100
"""The fixed port the container image, the compose stack and the Kubernetes manifests set
(`PROCESSOR_METRICS_PORT`), where probes and Prometheus look."""
DEFAULT_METRICS_HOST: Final = "127.0.0.1"

# --- the configuration value -------------------------------------------------------------


def _kafka_value(value: object) -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    raise PydanticCustomError("kafka_value", "librdkafka values are strings, numbers or "
                              "booleans, got {kind}", {"kind": type(value).__name__})


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


KafkaValue = Annotated[str | int | float | bool, PlainValidator(_kafka_value)]


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class StageConfig:
    """Everything `processor run` needs; built by `load_config`. The fields after `options`
    are the operational settings (`json_schema_extra` names the flag's group, metavar, or
    a flag name other than the field's)."""

    options: StageOptions
    bootstrap_servers: Annotated[Name, Field(
        description="Kafka bootstrap servers host:port[,...]",
        json_schema_extra={"group": "kafka", "metavar": "SERVERS"})]
    handlers: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        min_length=1, description="handler to run, module:function or a registered name; "
                                  "a chain runs in order",
        json_schema_extra={"flag": "handler", "metavar": "REF"})]
    kafka: Annotated[Mapping[str, KafkaValue], ReadOnly, Field(
        description="a librdkafka setting passed to every Kafka client, e.g. "
                    "compression.type=lz4",
        json_schema_extra={"group": "kafka", "flag": "set", "metavar": "KEY=VALUE"})] = (
        dataclasses.field(default_factory=lambda: MappingProxyType({}), repr=False))
    metrics_port: Annotated[Count | None, Field(
        ge=0, le=65535, description="port of /metrics, /healthz, /readyz (0, the default, "
                                    "picks a free port, so that stages on one host never "
                                    "collide, and logs it; the container image sets 9100; "
                                    "off disables)",
        json_schema_extra={"group": "operations", "metavar": "PORT", "none": "off"})] = (
        DEFAULT_METRICS_PORT)
    metrics_host: Annotated[Name, Field(
        description="address the metrics server binds",
        json_schema_extra={"group": "operations", "metavar": "HOST"})] = DEFAULT_METRICS_HOST
    log_format: Annotated[LogFormat, Field(
        description="log format: text for a terminal, json for one object a line",
        json_schema_extra={"group": "operations"})] = "text"
    log_level: Annotated[LogLevel, BeforeValidator(_upper), Field(
        description="log level", json_schema_extra={"group": "operations"})] = "INFO"
    processes: Annotated[Count, Field(
        ge=1, description="worker processes, each a member of the consumer group",
        json_schema_extra={"group": "operations", "metavar": "N"})] = 1
    replica_id: Annotated[Name | None, Field(
        description="exactly-once: this replica's stable identity in its transactional ids, "
                    "in place of the host name, so that a restarted replica fences what it "
                    "left open; ordinal takes N from a StatefulSet pod's host name NAME-N",
        json_schema_extra={"group": "operations", "metavar": "ID", "none": "the host name"})] = (
        None)
    create_topics: Annotated[bool, Field(
        description="create the input, output and dead-letter topics that do not exist; "
                    "off by default, so that a mistyped topic name stops the stage with an "
                    "error instead of creating a new, silent topic",
        json_schema_extra={"group": "topics"})] = False
    topic_partitions: Annotated[Count | None, Field(
        ge=1, description="partitions of a topic --create-topics creates (default: the "
                          "cluster's num.partitions)",
        json_schema_extra={"group": "topics", "metavar": "N", "none": "cluster default"})] = None
    topic_replication: Annotated[Count | None, Field(
        ge=1, description="replication factor of a topic --create-topics creates (default: "
                          "the cluster's default.replication.factor)",
        json_schema_extra={"group": "topics", "metavar": "N", "none": "cluster default"})] = None
    # Data contracts (docs/data-contracts.md): the schema and the registry.
    schema_file: Annotated[Name | None, Field(
        description="Avro schema (.avsc) the stage reads into and writes with (default: the "
                    "packaged artifact schema)",
        json_schema_extra={"group": "schemas", "metavar": "FILE"})] = None
    writer_schemas: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        description="another writer schema file (.avsc) to read records of, known by its "
                    "fingerprint",
        json_schema_extra={"group": "schemas", "flag": "writer-schema", "metavar": "FILE"})] = ()
    schema_registry_url: Annotated[Name | None, Field(
        description="Confluent-compatible schema registry URL; set, records use the "
                    "Confluent wire format",
        json_schema_extra={"group": "schemas", "metavar": "URL"})] = None
    schema_subject_strategy: Annotated[SubjectStrategy, Field(
        description="registry subject naming: topic (TOPIC-value), record (the record "
                    "name) or topic-record (TOPIC-RECORD)",
        json_schema_extra={"group": "schemas"})] = "topic"
    schema_registration: Annotated[Registration, Field(
        description="auto: register the stage's schema at start; existing: it must be "
                    "registered already", json_schema_extra={"group": "schemas"})] = "auto"
    schema_registry_user: Annotated[Name | None, Field(
        description="schema registry basic-auth user",
        json_schema_extra={"group": "schemas", "metavar": "USER"})] = None
    schema_registry_password: Annotated[SecretStr | None, Field(
        description="schema registry basic-auth password (a secret: never printed)",
        json_schema_extra={"group": "schemas", "metavar": "PASSWORD"})] = None
    input_format: Annotated[InputFormat, Field(
        description="what the input holds: artifact, or plain json, avro (through the "
                    "registry) or bytes, each wrapped into a new artifact",
        json_schema_extra={"group": "schemas"})] = "artifact"
    output_format: Annotated[OutputFormat, Field(
        description="what the outputs get: artifact, or payload (the artifact's payload "
                    "alone)", json_schema_extra={"group": "schemas"})] = "artifact"
    schema_registry_ca_file: Annotated[Name | None, Field(
        description="CA certificates (PEM) to verify the schema registry's TLS certificate",
        json_schema_extra={"group": "schemas", "metavar": "FILE"})] = None
    memory_limit: Annotated[Count | None, Field(
        ge=32, description="resident memory (MiB) above which a worker stops cleanly and "
                           "is restarted (off: no limit)",
        json_schema_extra={"group": "operations", "metavar": "MIB", "none": "off"})] = None
    # Artifact security (docs/security.md): keys, trust store and policies.
    sign_key: Annotated[Name | None, Field(
        description="Ed25519 private key file (KEY_ID.key) the stage signs its outputs "
                    "with; its key id becomes their issuer",
        json_schema_extra={"group": "security", "metavar": "FILE"})] = None
    trust_store: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        description="directory of trusted Ed25519 public keys (KEY_ID.pub files), such as "
                    "a mounted Kubernetes secret",
        json_schema_extra={"group": "security", "metavar": "DIR"})] = ()
    trusted_keys: Annotated[Mapping[str, Name], ReadOnly, Field(
        description="a trusted Ed25519 public key given inline: key id -> the base64 "
                    "processor keys show prints",
        json_schema_extra={"group": "security", "flag": "trusted-key",
                           "metavar": "KEY_ID=BASE64"})] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))
    retired_keys: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        description="key id that no longer verifies anything (retired or revoked)",
        json_schema_extra={"group": "security", "flag": "retired-key",
                           "metavar": "KEY_ID"})] = ()
    require_signature: Annotated[bool, Field(
        description="dead-letter (reason signature) every input that is not signed by a "
                    "trusted key or whose signature does not verify",
        json_schema_extra={"group": "security"})] = False
    require_approvals: Annotated[Count, Field(
        ge=0, description="dead-letter (reason signature) every input with fewer valid "
                          "approvals by distinct trusted approvers",
        json_schema_extra={"group": "security", "metavar": "N"})] = 0
    require_approvals_from: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        description="key id whose approvals count for require_approvals (default: any "
                    "trusted key)",
        json_schema_extra={"group": "security", "flag": "approver", "metavar": "KEY_ID"})] = ()
    seal_recipients: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        description="X25519 public key file (KEY_ID.pub) the stage seals its outputs' "
                    "payloads for",
        json_schema_extra={"group": "security", "flag": "seal-for", "metavar": "FILE"})] = ()
    open_key: Annotated[Name | None, Field(
        description="X25519 private key file (KEY_ID.key) the stage opens sealed inputs with",
        json_schema_extra={"group": "security", "metavar": "FILE"})] = None
    pseudonym_key: Annotated[SecretStr | None, Field(
        description="HMAC key (16 bytes or more) of the pseudonym hash of the subject in "
                    "metadata (a secret: never printed)",
        json_schema_extra={"group": "security", "metavar": "KEY"})] = None
    pseudonym_subject: Annotated[Name, Field(
        description="metadata key of the subject identifier that pseudonym_key replaces by "
                    "pseudonym_hash on outputs",
        json_schema_extra={"group": "security", "metavar": "KEY"})] = "subject"
    merkle: Annotated[bool, Field(
        description="outputs carry the Merkle root of their payload's 4 KiB chunks",
        json_schema_extra={"group": "security"})] = False
    # Tracing (docs/operations.md, "Tracing"): OpenTelemetry spans, exported over OTLP.
    tracing: Annotated[TracingMode, Field(
        description="off (the default: OpenTelemetry is not even loaded), or otlp: a span "
                    "per record, its context carried on in the headers of the outputs, "
                    "exported over OTLP",
        json_schema_extra={"group": "operations"})] = "off"
    otlp_endpoint: Annotated[Name | None, Field(
        description="where spans are sent, e.g. http://127.0.0.1:4317 (gRPC) or "
                    "http://127.0.0.1:4318 (HTTP); default: OTEL_EXPORTER_OTLP_ENDPOINT, "
                    "else localhost on the protocol's port",
        json_schema_extra={"group": "operations", "metavar": "URL",
                           "none": "the exporter's default"})] = None
    otlp_protocol: Annotated[OtlpProtocol, Field(
        description="OTLP transport: grpc or http/protobuf",
        json_schema_extra={"group": "operations"})] = "grpc"
    trace_sample_ratio: Annotated[float, Field(
        ge=0.0, le=1.0, description="share of new traces sampled; a record that comes "
                                    "with a context follows its sampling decision "
                                    "(parent-based)",
        json_schema_extra={"group": "operations", "metavar": "RATIO"})] = 1.0
    sources: Annotated[Mapping[str, str], ReadOnly] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    """Setting -> where its value came from ("default", "file stage.yaml", ...)."""

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def security(self) -> SecurityConfig:
        """The security settings, as `build_stage` reads them."""
        return SecurityConfig(**{f.name: getattr(self, f.name)
                                 for f in dataclasses.fields(SecurityConfig)})

    def value(self, key: str) -> object:
        """The value of setting `key` (a stage option or an operational setting)."""
        return getattr(self.options if key in _STAGE_FIELDS else self, key)

    def describe(self) -> str:
        """A human summary, secrets redacted, with where each value came from."""
        lines = [f"stage {self.name}"]
        for key, info in SETTINGS.items():
            if key != "kafka":
                lines.append(f"  {key}: {_show(key, info, self.value(key))}{self._from(key)}")
        if self.kafka:
            lines.append("  kafka:")
            for key, value in sorted(redact(self.kafka).items()):
                lines.append(f"    {key}: {value}{self._from('kafka.' + key)}")
        return "\n".join(lines)

    def _from(self, key: str) -> str:
        found = ", ".join(dict.fromkeys(
            where for name, where in sorted(self.sources.items())
            if name == key or name.startswith(key + ".")))
        return f"  ({found})" if found else ""


def _text(value: object) -> str:
    """A default or value as it is written in YAML and the environment."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _show(key: str, info: FieldInfo, value: object) -> str:
    if value is None:
        return str(extra(info).get("none", "-"))
    if isinstance(value, SecretStr) or is_secret_key(key):
        return REDACTED
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in sorted(redact(value).items())) or "-"
    if dataclasses.is_dataclass(value):
        return " ".join(f"{f.name}={getattr(value, f.name):g}" for f in dataclasses.fields(value))
    return _text(value)


# --- the settings model, generated from the fields ---------------------------------------


_STAGE_FIELDS: Final = fields_of(StageOptions)
_RETRY_FIELDS: Final = fields_of(RetryPolicy)
_TOPICS: Final = ("input_topic", "output_topic", "dlq_topic")
_OPS_FIELDS: Final = {k: v for k, v in fields_of(StageConfig).items()
                      if k not in ("options", "sources")}


def _setting(key: str, info: FieldInfo) -> tuple[Any, FieldInfo]:
    """A field of the settings model: the option's own, optional where `load_config`
    fills the value in (`name` from the group) or a sink needs none (`output_topic`)."""
    if key == "name":
        inner = cast(Any, Annotated)[(info.annotation, *info.metadata)]
        return inner | None, FieldInfo(default=None, description=info.description)
    if key == "output_topic":
        return info.annotation, FieldInfo.merge_field_infos(info, default=None)
    return info.annotation, info


_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar(
    "_SOURCES", default=())


class _SettingsBase(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return _SOURCES.get()  # flags, environment, file: highest first


StageSettings: Final = create_model(
    "StageSettings", __base__=_SettingsBase,
    **cast(dict[str, Any], {key: _setting(key, info)
                            for key, info in {**_STAGE_FIELDS, **_OPS_FIELDS}.items()}))
"""The pydantic-settings model of one stage: every setting, flat as in the YAML file."""

SETTINGS: Final[Mapping[str, FieldInfo]] = MappingProxyType(dict(StageSettings.model_fields))
"""Top-level settings (YAML keys) in declaration order."""
FIELDS: Final[Mapping[str, FieldInfo]] = MappingProxyType({
    flat: info
    for key, top in SETTINGS.items()
    for flat, info in ([(key, top)] if key != "retry" else
                       [(f"retry.{k}", v) for k, v in _RETRY_FIELDS.items()])
})
"""Every setting with a flag and a variable of its own: `retry` as `retry.<key>`."""
KNOWN_KEYS: Final = tuple(sorted(SETTINGS))
"""Every top-level key a YAML file may have."""


def env_name(key: str) -> str:
    """`retry.max_attempts` -> `PROCESSOR_RETRY_MAX_ATTEMPTS`."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def flag_name(key: str) -> str:
    """`batch_size` -> `--batch-size`; `handlers` -> `--handler` (its declared flag)."""
    return "--" + str(extra(FIELDS[key]).get("flag", key)).replace("_", "-").replace(".", "-")


ENV_VARS: Final[Mapping[str, str]] = MappingProxyType({
    **{env_name(key): key for key in FIELDS if key != "kafka"}, CONFIG_ENV: "config"})
"""Environment variable -> the setting it sets (plus `PROCESSOR_KAFKA__*` for `kafka`)."""
SCHEMA: Final = Schema(StageSettings, FIELDS, ENV_VARS, {k: flag_name(k) for k in FIELDS},
                       KNOWN_KEYS)


SECRET_KEYS: Final = tuple(key for key, info in FIELDS.items()
                          if SecretStr in (info.annotation, *get_args(info.annotation)))
"""The declared secret settings, each with a file form (`PROCESSOR_<FIELD>_FILE`)."""
SECRET_FILE_ENV: Final[Mapping[str, str]] = MappingProxyType({
    env_name(key) + FILE_SUFFIX: key for key in SECRET_KEYS})
"""`PROCESSOR_PSEUDONYM_KEY_FILE` -> `pseudonym_key`."""


def file_flag_name(key: str) -> str:
    """`pseudonym_key` -> `--pseudonym-key-file`, the flag naming a secret's file."""
    return flag_name(key) + "-file"


def is_known_env_var(name: str) -> bool:
    """Whether `processor run` reads the environment variable `name`."""
    return name in ENV_VARS or name in SECRET_FILE_ENV or name == ALLOW_READABLE_KEYS_ENV or (
        name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(KAFKA_ENV_PREFIX))


def _put_secret_files(source: Source, given: Mapping[str, object], *, env: bool) -> None:
    """Read into `source` (the flags' or the environment's) each secret whose file form
    `given` has: `--<key>-file` in the flags, `PROCESSOR_<KEY>_FILE` in the environment."""
    for key in SECRET_KEYS:
        name = env_name(key) + FILE_SUFFIX if env else key + "_file"
        path = given.get(name)
        if path is None or path == "":
            continue
        origin = f"environment {name}" if env else f"flag {file_flag_name(key)}"
        if key in source.where:
            plain = env_name(key) if env else flag_name(key)
            source.problems.append(f"{key}: set {plain} or {origin.split()[1]}, not both")
            continue
        try:
            value = read_secret_file(Path(str(path)))
        except OSError as exc:
            source.problems.append(f"{key}: cannot read {path}: {exc.strerror or exc} "
                                   f"(from {origin})")
        except ValueError as exc:
            source.problems.append(f"{key}: {exc} (from {origin})")
        else:
            source.put(key, value, origin)


# --- loading -----------------------------------------------------------------------------


def load_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> StageConfig:
    """Build a `StageConfig` from the YAML file at `path` (or `PROCESSOR_CONFIG`), the
    environment `env` and the CLI `flags` (argparse values; None = not given).

    Raises `ConfigError` listing every problem found.
    """
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    plain_env = {name: value for name, value in env.items()
                 if name not in SECRET_FILE_ENV and name != ALLOW_READABLE_KEYS_ENV}
    sources = [flag_source(SCHEMA, flags), env_source(SCHEMA, plain_env)]
    _put_secret_files(sources[0], flags, env=False)
    _put_secret_files(sources[1], env, env=True)
    if path is not None:
        sources.append(file_source(SCHEMA, Path(path)))
    values, where = _validate(StageSettings, sources, check_topics=True)
    for key in SETTINGS:
        if key not in where and not any(k.startswith(key + ".") for k in where):
            where[key] = "default"
    if values["name"] is None:
        values["name"], where["name"] = values["group"], "the group"
    try:
        config = StageConfig(
            options=StageOptions(**{k: values[k] for k in _STAGE_FIELDS}),
            sources=where, **{k: values[k] for k in _OPS_FIELDS})
    except ValidationError as exc:
        raise ConfigError("\n".join(_messages(exc, where, sources))) from None
    logger.debug("configuration loaded: %s", config.describe())
    return config


def _validate(model: type[BaseSettings], sources: Sequence[Source], *,
              check_topics: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of `model` from `sources` (highest first) and where each came from;
    `ConfigError` listing every problem. `check_topics`: also the rule across the topic
    fields, when they are valid one by one."""
    problems = [p for source in reversed(sources) for p in source.problems]
    where: dict[str, str] = {}
    for source in reversed(sources):
        where.update(source.where)
    token = _SOURCES.set(tuple(sources))
    try:
        values = dict(model())
    except ValidationError as exc:
        lines = problems + _messages(exc, where, sources)
        if check_topics and not any(e["loc"][0] in _TOPICS for e in exc.errors()
                                    if e["loc"]) and (
                clash := topic_clash(*(_raw((k,), sources, None) for k in _TOPICS))):
            lines.append(clash)  # the rule across fields, had the fields been valid
        raise ConfigError("\n".join(lines)) from None
    finally:
        _SOURCES.reset(token)
    if problems:
        raise ConfigError("\n".join(problems))
    return values, where


# --- the settings of the other commands' Kafka clients ------------------------------------

CLIENT_KEYS: Final = ("bootstrap_servers", "kafka")
"""The settings of `load_client_config`."""
_CLIENT_ENV: Final = frozenset({env_name("bootstrap_servers"), CONFIG_ENV})

ClientSettings: Final = create_model(
    "ClientSettings", __base__=_SettingsBase,
    **cast(dict[str, Any], {key: (SETTINGS[key].annotation, SETTINGS[key])
                            for key in CLIENT_KEYS}))
"""The pydantic-settings model of `ClientConfig`: the two settings, as a stage has them."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientConfig:
    """The Kafka cluster and librdkafka settings of a command (`load_client_config`)."""

    bootstrap_servers: str
    kafka: Mapping[str, str | int | float | bool]
    sources: Mapping[str, str]
    """Setting -> where its value came from: `bootstrap_servers` and `kafka.<key>`."""

    @property
    def kafka_origins(self) -> dict[str, str]:
        """librdkafka key -> where its value came from."""
        return {key.removeprefix("kafka."): where for key, where in self.sources.items()
                if key.startswith("kafka.")}


def load_client_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> ClientConfig:
    """The `bootstrap_servers` and `kafka` settings of a command from the YAML file at
    `path` (or `PROCESSOR_CONFIG`), the environment and the `flags` (`bootstrap_servers`,
    `kafka`: argparse values, None = not given), with the precedence and the error
    messages of `load_config`. The file's other known keys (a stage's) are left alone;
    an unknown key is an error, as for `processor run`.

    Raises `ConfigError` listing every problem.
    """
    client_env = {name: value for name, value in env.items()
                  if name in _CLIENT_ENV or name.startswith("PROCESSOR_KAFKA_")}
    if path is None and client_env.get(CONFIG_ENV):
        path = Path(client_env[CONFIG_ENV])
    sources = [flag_source(SCHEMA, {k: v for k, v in flags.items() if k in CLIENT_KEYS}),
               env_source(SCHEMA, client_env)]
    if path is not None:
        file = file_source(SCHEMA, Path(path))
        for key in list(file.values):
            if key not in CLIENT_KEYS:
                if key not in SETTINGS:
                    file.problems.append(f"unknown key {key!r} in {Path(path).name}; known "
                                         f"keys: {', '.join(KNOWN_KEYS)}")
                del file.values[key]
        file.where = {k: v for k, v in file.where.items()
                      if k.partition(".")[0] in CLIENT_KEYS}
        sources.append(file)
    values, where = _validate(ClientSettings, sources)
    return ClientConfig(values["bootstrap_servers"], MappingProxyType(dict(values["kafka"])),
                        MappingProxyType(where))


def check_file(path: Path, env: Mapping[str, str] | None = None) -> StageConfig:
    """Validate a YAML file (optionally with an environment) for `processor config check`."""
    return load_config(path, env or {}, {})


# --- error messages ----------------------------------------------------------------------


def _messages(exc: ValidationError, where: Mapping[str, str],
              sources: Sequence[Source]) -> list[str]:
    """One line per problem, in the words of the settings and naming the source."""
    return list(dict.fromkeys(_message(e, where, sources) for e in exc.errors()))


def _raw(loc: tuple[int | str, ...], sources: Sequence[Source], default: object) -> object:
    """The value as the user wrote it, from the highest source that has it."""
    for source in sources:
        node: object = source.values
        for part in loc:
            if not isinstance(node, dict | list) or part not in (
                    node if isinstance(node, dict) else range(len(node))):
                break
            node = node[part]  # type: ignore[index]
        else:
            return node
    return default


def _message(err: ErrorDetails, where: Mapping[str, str], sources: Sequence[Source]) -> str:
    loc = err["loc"]
    key = ".".join(str(p) for p in loc[:2] if isinstance(p, str))
    top = key.partition(".")[0]
    hint = f"set {key} in the YAML file, {env_name(key)} or {flag_name(key)}" \
        if key in FIELDS else ""
    return problem(err, Context(
        key=key, info=FIELDS.get(key) or SETTINGS.get(top),
        origin=where.get(key) or where.get(top, ""), raw=_raw(loc, sources, err["input"]),
        known=tuple(_RETRY_FIELDS) if len(loc) > 1 else KNOWN_KEYS, hint=hint))


# --- CLI flags ---------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `processor run` to `parser`, one per setting. Every default is
    None, so a flag that is not given leaves the environment, the file or the default in
    charge."""
    parser.add_argument(
        "--config", metavar="FILE", type=Path, default=None,
        help=f"YAML configuration file (default: ${CONFIG_ENV}, if set)",
    )
    groups = {name: parser.add_argument_group(name)
              for name in ("stage", "kafka", "topics", "schemas", "security",
                                       "operations")}
    for key, info in FIELDS.items():
        declared, shape = extra(info), kind(info)
        group = groups[declared.get("group", "stage")]
        env = f"{KAFKA_ENV_PREFIX}<KEY> with dots as underscores" if key == "kafka" \
            else env_name(key)
        default = "" if info.default in (None, ...) or info.is_required() or \
            info.default_factory else f"; default {_text(info.default)}"
        metavar = {"int": "N", "float": "NUMBER"}.get(shape, key.upper())
        options: dict[str, Any] = {
            "dest": key, "default": None, "metavar": declared.get("metavar", metavar),
            "help": f"{info.description} [env {env}{default}]",
        }
        if shape in ("list", "mapping"):
            options.update(action="append", help=f"{info.description}; repeatable "
                                                 f"[env {env}]")
        elif shape == "choice":
            choices = choices_of(info)
            upper = all(c == c.upper() for c in choices)
            options.update(choices=choices, type=str.upper if upper else str)
            del options["metavar"]
        elif shape == "bool":
            options["action"] = argparse.BooleanOptionalAction
            del options["metavar"]
        elif shape in ("int", "float") and not optional(info):
            options["type"] = int if shape == "int" else float
        if key in SECRET_KEYS:
            file_env = env_name(key) + FILE_SUFFIX
            options["help"] = (f"{info.description}; prefer {file_flag_name(key)} or the "
                               f"environment ({env} or {file_env}): {PREFER_FILE} [env {env}]")
        elif key == "kafka":
            options["help"] += (f"; give a secret value (sasl.password) as "
                                f"{KAFKA_ENV_PREFIX}<KEY> instead: {PREFER_FILE}")
        group.add_argument(flag_name(key), **options)
        if key in SECRET_KEYS:
            group.add_argument(
                file_flag_name(key), dest=f"{key}_file", default=None, metavar="FILE",
                help=f"file holding {key} (its trailing line break removed), as a mounted "
                     f"secret: prefer it to {flag_name(key)}: {PREFER_FILE} "
                     f"[env {env_name(key) + FILE_SUFFIX}]")
