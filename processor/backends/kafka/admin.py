"""The Kafka admin client: topic management, group inspection and ACLs.

Creating a topic waits until every partition has a leader, and deleting one until it is
gone from the metadata, so that what a caller does next sees the change. A partition
count or replication factor of None is sent as -1: the broker then applies its
`num.partitions` and `default.replication.factor`. Questions a
fresh cluster answers with "not yet" (see `SETTLING`) are retried for a while.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# The config, ACL and resource types, by their defining modules: confluent_kafka.admin
# does not declare its re-exports of them for type checkers.
from confluent_kafka.admin._acl import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
)
from confluent_kafka.admin._config import ConfigResource, ConfigSource
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from confluent_kafka.cimpl import NewTopic

from processor.backends.abstract import (
    Admin,
    PartitionDescription,
    TopicDescription,
    TopicPartition,
)
from processor.backends.kafka.errors import SETTLING, error_of, raise_kafka
from processor.backends.kafka.settings import RDKAFKA_LOGGER
from processor.core.errors import BackendError, UnknownTopic

_T = TypeVar("_T")
logger = logging.getLogger(__name__)


class AclSpec(Protocol):
    """An ALLOW binding in the words of Kafka's enums (`processor.ops.acls.Acl` is one):
    `kind` a `ResourceType` name (TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER), `pattern` a
    `ResourcePatternType` name (LITERAL, PREFIXED), `operation` an `AclOperation` name."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def principal(self) -> str: ...
    @property
    def pattern(self) -> str: ...
    @property
    def host(self) -> str: ...


AclKey = tuple[str, str, str, str, str, str]
"""(kind, name, pattern, principal, host, operation) of an ALLOW binding."""


def acl_key(spec: AclSpec) -> AclKey:
    return (spec.kind, spec.name, spec.pattern, spec.principal, spec.host, spec.operation)


def _binding(spec: AclSpec) -> AclBinding:
    # confluent-kafka calls Kafka's CLUSTER resource type BROKER (the same code, 4).
    kind = ResourceType.BROKER if spec.kind == "CLUSTER" else ResourceType[spec.kind]
    return AclBinding(kind, spec.name, ResourcePatternType[spec.pattern], spec.principal,
                      spec.host, AclOperation[spec.operation], AclPermissionType.ALLOW)


def _key(binding: AclBinding) -> AclKey:
    kind = _word(binding.restype)
    return ("CLUSTER" if kind == "BROKER" else kind, str(binding.name),
            _word(binding.resource_pattern_type), str(binding.principal), str(binding.host),
            _word(binding.operation))


def _word(value: object) -> str:
    """The name of an enum member (confluent-kafka types the fields loosely)."""
    return value.name if isinstance(value, enum.Enum) else str(value)


class KafkaAdmin(Admin):
    """Topic management and group inspection through the admin API."""

    def __init__(self, client: AdminClient, timeout: float = 30.0,
                 client_config: Mapping[str, object] | None = None) -> None:
        self._a = client
        self._timeout = timeout
        self._client_config = dict(client_config or {})

    def _reader(self, group: str) -> ck.Consumer:
        """A consumer that never joins its group: it only answers offset questions.

        Offsets are read through a consumer rather than the admin API: confluent-kafka's
        `list_consumer_group_offsets` crashes the process while a fresh cluster is still
        loading its group coordinator, and `list_offsets` fails with NOT_LEADER for a
        moment after a topic is created; the consumer calls retry both internally.
        """
        config: dict[str, object] = {
            k: v for k, v in self._client_config.items()
            if k in ("bootstrap.servers", "client.id") or k.startswith(("security.", "sasl.",
                                                                        "ssl."))
        }
        # read_uncommitted: committed() must not wait for offsets pending in an open
        # transaction (librdkafka asks for stable offsets under read_committed).
        config.update({"group.id": group, "enable.auto.commit": False,
                       "isolation.level": "read_uncommitted",
                       "logger": RDKAFKA_LOGGER})
        return ck.Consumer(config)

    def _partitions(self, topic: str) -> list[int]:
        found = self._metadata_topic(topic)
        if found is None:
            raise UnknownTopic(f"unknown topic {topic!r}")
        return sorted(found.partitions)

    def _metadata_topic(self, name: str) -> Any:
        try:
            metadata = self._a.list_topics(name, timeout=self._timeout)
        except KafkaException as exc:
            raise_kafka(exc, f"metadata of {name!r}")
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            return None
        return topic

    def create_topic(self, name: str, partitions: int | None = 1,
                     replication: int | None = 1,
                     config: Mapping[str, str] | None = None) -> None:
        new = NewTopic(name, num_partitions=-1 if partitions is None else partitions,
                       replication_factor=-1 if replication is None else replication,
                       config={str(k): str(v) for k, v in (config or {}).items()})
        futures = self._a.create_topics([new], operation_timeout=self._timeout,
                                        request_timeout=self._timeout)
        try:
            futures[name].result(timeout=self._timeout + 5)
        except KafkaException as exc:
            error = error_of(exc)
            if error is None or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise_kafka(exc, f"create topic {name!r}")
            return
        self._wait_usable(name, partitions)

    def _wait_usable(self, name: str, partitions: int | None) -> None:
        """Wait until metadata shows every partition of `name` (`partitions` of them, or
        any number when the broker chose it) with a leader."""
        deadline = time.monotonic() + self._timeout
        while True:
            topic = self._metadata_topic(name)
            if topic is not None and topic.partitions and (
                    partitions is None or len(topic.partitions) == partitions) and all(
                    p.error is None and p.leader >= 0 for p in topic.partitions.values()):
                return
            if time.monotonic() > deadline:
                raise BackendError(f"topic {name!r} created but not usable after "
                                   f"{self._timeout:g}s")
            time.sleep(0.05)

    def delete_topic(self, name: str) -> None:
        futures = self._a.delete_topics([name], operation_timeout=self._timeout,
                                        request_timeout=self._timeout)
        try:
            futures[name].result(timeout=self._timeout + 5)
        except KafkaException as exc:
            raise_kafka(exc, f"delete topic {name!r}")
        deadline = time.monotonic() + self._timeout
        while name in self.list_topics() and time.monotonic() < deadline:
            time.sleep(0.05)

    def list_topics(self) -> dict[str, int]:
        try:
            metadata = self._a.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise_kafka(exc, "list topics")
        return {name: len(topic.partitions) for name, topic in metadata.topics.items()
                if not name.startswith("__") and topic.error is None}

    def describe_topic(self, name: str) -> TopicDescription:
        topic = self._metadata_topic(name)
        if topic is None:
            raise UnknownTopic(f"unknown topic {name!r}")
        resource = ConfigResource(ResourceType.TOPIC, name)

        def configs() -> dict[str, Any]:
            found: dict[str, Any] = self._a.describe_configs(
                [resource], request_timeout=self._timeout)[resource].result(
                timeout=self._timeout + 5)
            return found

        entries = self._settled(configs, f"settings of topic {name!r}")
        own = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        return TopicDescription(
            name,
            tuple(PartitionDescription(p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
                  for p in sorted(topic.partitions.values(), key=lambda p: p.id)),
            {key: str(entry.value) for key, entry in sorted(entries.items())
             if entry.source == own and entry.value is not None},
        )

    def group_offsets(self, group: str, topics: Sequence[str] | None = None
                      ) -> dict[TopicPartition, int]:
        names = list(topics) if topics is not None else sorted(self.list_topics())
        wanted = [ck.TopicPartition(t, p) for t in names for p in self._partitions(t)]
        if not wanted:
            return {}
        reader = self._reader(group)
        try:
            result = self._settled(lambda: reader.committed(wanted, timeout=self._timeout),
                                   f"offsets of group {group!r}")
        finally:
            reader.close()
        return {TopicPartition(c.topic, c.partition): c.offset
                for c in result if c.error is None and c.offset >= 0}

    def high_watermarks(self, topic: str) -> dict[TopicPartition, int]:
        partitions = self._partitions(topic)
        reader = self._reader("processor-watermarks")
        answer: dict[TopicPartition, int] = {}
        try:
            for p in partitions:
                tp = ck.TopicPartition(topic, p)

                def ask(tp: ck.TopicPartition = tp) -> tuple[int, int]:
                    low, high = reader.get_watermark_offsets(tp, timeout=self._timeout)
                    return low, high

                answer[TopicPartition(topic, p)] = self._settled(
                    ask, f"high watermark of {topic}[{p}]")[1]
        finally:
            reader.close()
        return answer

    def _settled(self, call: Callable[[], _T], what: str) -> _T:
        """`call()`, retried while the cluster answers that it is still settling."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return call()
            except KafkaException as exc:
                error = error_of(exc)
                passing = error is not None and (error.retriable() or error.code() in SETTLING)
                if not passing or time.monotonic() > deadline:
                    raise_kafka(exc, what)
                time.sleep(0.1)

    # -- ACLs --

    def describe_acls(self, principal: str | None = None) -> set[AclKey]:
        """The ALLOW bindings of `principal` (every principal's when None)."""
        anything: Any = None  # a filter's None matches any value (typed `str` only)
        wanted = AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY,
                                  principal or anything, anything, AclOperation.ANY,
                                  AclPermissionType.ALLOW)
        try:
            found: list[AclBinding] = self._a.describe_acls(
                wanted, request_timeout=self._timeout).result(timeout=self._timeout + 5)
        except KafkaException as exc:
            raise_kafka(exc, "describe ACLs")
        return {_key(binding) for binding in found}

    def create_acls(self, specs: Iterable[AclSpec]) -> None:
        """Create the ALLOW bindings `specs`; one that exists already is left as it is
        (Kafka's CreateAcls is idempotent)."""
        bindings = [_binding(spec) for spec in specs]
        if not bindings:
            return
        futures = self._a.create_acls(bindings, request_timeout=self._timeout)
        for binding, future in futures.items():
            try:
                future.result(timeout=self._timeout + 5)
            except KafkaException as exc:
                raise_kafka(exc, f"create ACL {_describe(binding)}")

    def delete_acls(self, specs: Iterable[AclSpec]) -> None:
        """Delete the ALLOW bindings `specs` (exactly those: no pattern matching)."""
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal,
                                    b.host, b.operation, b.permission_type)
                   for b in map(_binding, specs)]
        if not filters:
            return
        futures = self._a.delete_acls(filters, request_timeout=self._timeout)
        for binding, future in futures.items():
            try:
                future.result(timeout=self._timeout + 5)
            except KafkaException as exc:
                raise_kafka(exc, f"delete ACL {_describe(binding)}")


def _describe(binding: AclBinding) -> str:
    kind, name, pattern, principal, _, operation = _key(binding)
    return f"{operation} on {kind} {name!r} ({pattern}) for {principal}"
