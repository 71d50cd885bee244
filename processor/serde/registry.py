"""A Confluent-compatible schema registry: its client, subject names and wire format.

With a registry, a record's value is in the Confluent wire format: the magic byte 0, the
writer schema's registry id (4 bytes, big-endian), then the Avro body. Registry-aware
consumers (Kafka Connect, ksqlDB, Flink, confluent-kafka's `AvroDeserializer`) read it
without knowing anything of artifacts, and this project reads what their serializers
write.

* `RegistryConfig` is what a stage needs to reach a registry: the URL, the subject naming
  strategy, whether to register its schema, and the credentials (the password is a
  `SecretStr`; `repr` and `describe` never show it).
* `registry_client` builds confluent-kafka's `SchemaRegistryClient` from it (a `mock://`
  URL gives the client's in-memory registry, for tests).
* `subject_name` applies a naming strategy: `topic` (`<topic>-value`, the default),
  `record` (the record's full name) or `topic-record` (`<topic>-<full name>`), through
  confluent-kafka's own strategy functions.
* `RegistrySchemas` is a stage's view of the registry: the id its own schema has (registered
  or looked up once per output subject, at start) and the writer schema of any id it meets (asked
  for once, then cached). An id the registry does not have is a `SchemaError` (the record
  is dead-lettered with reason `schema`); a registry that cannot be reached is a
  `RegistryUnavailable`, which stops the stage rather than dead-letter good records.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from confluent_kafka.schema_registry import (
    RegisteredSchema,
    Schema,
    SchemaRegistryClient,
    SchemaRegistryError,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import SecretStr

from processor.core.errors import ProcessorError, SchemaError

logger = logging.getLogger(__name__)

MAGIC_BYTE: Final = 0
"""The first byte of a value in the Confluent wire format."""
FRAME_SIZE: Final = 5
"""The magic byte and the 4-byte schema id before the Avro body."""
_ID = struct.Struct(">bI")

SubjectStrategy = Literal["topic", "record", "topic-record"]
SUBJECT_STRATEGIES: Final[tuple[SubjectStrategy, ...]] = ("topic", "record", "topic-record")
Registration = Literal["auto", "existing"]
REGISTRATIONS: Final[tuple[Registration, ...]] = ("auto", "existing")

_STRATEGIES: Final = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic-record": topic_record_subject_name_strategy,
}


class RegistryUnavailable(ProcessorError):
    """The schema registry could not be reached or answered with a server error."""


def frame(schema_id: int) -> bytes:
    """The 5-byte Confluent wire format prefix for `schema_id`."""
    return _ID.pack(MAGIC_BYTE, schema_id)


def framed_id(data: bytes | bytearray | memoryview) -> int | None:
    """The schema id of a value in the Confluent wire format, or None if it is not one."""
    if len(data) < FRAME_SIZE or data[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(data[1:FRAME_SIZE], "big")


def subject_name(strategy: str, topic: str, record_name: str) -> str:
    """The subject of a topic's values under a naming strategy."""
    try:
        name_of = _STRATEGIES[strategy]
    except KeyError:
        raise SchemaError(f"unknown subject naming strategy {strategy!r}; use one of "
                          f"{', '.join(SUBJECT_STRATEGIES)}") from None
    subject = name_of(SerializationContext(topic, MessageField.VALUE), record_name)
    if not subject:
        raise SchemaError(f"no subject for topic {topic!r} under strategy {strategy!r}")
    return str(subject)


def record_name(schema: Mapping[str, Any]) -> str:
    """The full name of a record schema (`namespace.name`)."""
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach a schema registry and name subjects in it."""

    url: str
    subject_strategy: SubjectStrategy = "topic"
    registration: Registration = "auto"
    """`auto`: register the schema at start (the registry checks its compatibility);
    `existing`: it must be registered already."""
    user: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = 10.0

    def client_config(self) -> dict[str, Any]:
        """The configuration of confluent-kafka's `SchemaRegistryClient` (with secrets)."""
        config: dict[str, Any] = {"url": self.url, "timeout": self.timeout}
        if self.user is not None:
            secret = self.password.get_secret_value() if self.password is not None else ""
            config["basic.auth.user.info"] = f"{self.user}:{secret}"
        if self.ca_file:
            config["ssl.ca.location"] = self.ca_file
        return config


def registry_client(config: RegistryConfig) -> SchemaRegistryClient:
    """confluent-kafka's client for the registry of `config`."""
    try:
        return SchemaRegistryClient.new_client(config.client_config())
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"schema registry {config.url}: {exc}") from exc


def describe_error(exc: Exception) -> str:
    """A registry failure in one line."""
    if isinstance(exc, SchemaRegistryError):
        return f"{exc.error_message} (HTTP {exc.http_status_code}, code {exc.error_code})"
    return f"{type(exc).__name__}: {exc}"


def _is_missing(exc: Exception) -> bool:
    return isinstance(exc, SchemaRegistryError) and exc.http_status_code == 404


def _unavailable(url: str, what: str, exc: Exception) -> ProcessorError:
    if isinstance(exc, SchemaRegistryError) and 400 <= exc.http_status_code < 500:
        return SchemaError(f"schema registry {url}: {what}: {describe_error(exc)}")
    return RegistryUnavailable(f"schema registry {url}: {what}: {describe_error(exc)}")


class RegistrySchemas:
    """A stage's view of a registry: its own schema's id, and writer schemas by id."""

    def __init__(self, client: SchemaRegistryClient, config: RegistryConfig) -> None:
        self.client = client
        self.config = config

    def own_id(self, schema: Mapping[str, Any], topics: Iterable[str]) -> int:
        """The registry id of `schema` under the subject of the first of `topics`, after
        registering it (when `registration` is `auto`) or looking it up under the subject
        of every one of them.

        A registry id names one schema whatever the subject, so records framed with it
        read the same on every topic; registering under each topic's subject puts the
        schema under the compatibility rules of each."""
        text = json.dumps(schema)
        name = record_name(schema)
        ids: dict[str, int] = {}
        for topic in dict.fromkeys(topics):
            subject = subject_name(self.config.subject_strategy, topic, name)
            if subject not in ids:
                ids[subject] = self._id_in(subject, text)
        if not ids:
            raise SchemaError("no topic to register the artifact schema for")
        return next(iter(ids.values()))

    def _id_in(self, subject: str, text: str) -> int:
        schema = Schema(text, "AVRO")
        try:
            if self.config.registration == "auto":
                schema_id = int(self.client.register_schema(subject, schema))
            else:
                registered: RegisteredSchema = self.client.lookup_schema(subject, schema)
                schema_id = int(registered.schema_id)  # type: ignore[arg-type]
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise SchemaError(
                    f"schema registry {self.config.url}: the artifact schema is not "
                    f"compatible with subject {subject!r}: {describe_error(exc)}; see "
                    "`processor schema check`") from exc
            if _is_missing(exc):
                raise SchemaError(
                    f"schema registry {self.config.url}: the artifact schema is not "
                    f"registered under subject {subject!r}; register it with `processor "
                    "schema register`, or set schema_registration to auto") from exc
            raise _unavailable(self.config.url, f"subject {subject!r}", exc) from exc
        except Exception as exc:  # connection errors come from the HTTP client
            raise _unavailable(self.config.url, f"subject {subject!r}", exc) from exc
        logger.info("schema registry %s: artifact schema has id %d under subject %s",
                    self.config.url, schema_id, subject)
        return schema_id

    def schema_text(self, schema_id: int) -> str:
        """The writer schema registered as `schema_id`, as JSON text."""
        try:
            found = self.client.get_schema(schema_id)
        except Exception as exc:
            if _is_missing(exc):
                raise SchemaError(f"schema id {schema_id} is not in the schema registry "
                                  f"{self.config.url}") from exc
            raise _unavailable(self.config.url, f"schema id {schema_id}", exc) from exc
        if (found.schema_type or "AVRO") != "AVRO" or not found.schema_str:
            raise SchemaError(f"schema id {schema_id} is a {found.schema_type} schema, not "
                              "an Avro artifact schema")
        if found.references:
            raise SchemaError(f"schema id {schema_id} has schema references, which an "
                              "artifact schema does not use")
        return str(found.schema_str)
