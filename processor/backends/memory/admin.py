"""The in-memory admin client: topic management and group inspection.

Producing to a missing topic raises `UnknownTopic`, as on a broker with
`auto.create.topics.enable=false`, so topics are made here. Creating or deleting a topic
makes the groups subscribed to it rebalance (pattern subscriptions follow new topics).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from processor.backends.abstract import (
    Admin,
    PartitionDescription,
    TopicDescription,
    TopicPartition,
)
from processor.backends.memory.cluster import Cluster
from processor.backends.memory.log import PartitionLog
from processor.core.errors import BackendError, UnknownTopic

logger = logging.getLogger(__name__)

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class MemoryAdmin(Admin):
    """Topic management of a `MemoryBroker`."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def create_topic(
        self,
        name: str,
        partitions: int | None = 1,
        replication: int | None = 1,
        config: Mapping[str, str] | None = None,
    ) -> None:
        # The cluster's defaults: one partition, one replica (there is one node).
        partitions = 1 if partitions is None else partitions
        replication = 1 if replication is None else replication
        if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
            raise BackendError(f"invalid topic name {name!r}: use 1-249 of [A-Za-z0-9._-]")
        if partitions < 1:
            raise BackendError(f"topic {name!r}: partitions must be at least 1, got {partitions}")
        if replication < 1:
            raise BackendError(f"topic {name!r}: replication must be at least 1")
        cluster = self._cluster
        with cluster.lock:
            if name in cluster.topics:
                return
            cluster.topics[name] = [
                PartitionLog(TopicPartition(name, p)) for p in range(partitions)
            ]
            cluster.topic_settings[name] = (replication, {str(k): str(v) for k, v in
                                                          (config or {}).items()})
            if config and "max.message.bytes" in config:
                cluster.max_bytes[name] = int(config["max.message.bytes"])
            logger.info("created topic %s with %d partitions", name, partitions)
            cluster.topics_changed(name)

    def delete_topic(self, name: str) -> None:
        cluster = self._cluster
        with cluster.lock:
            if cluster.topics.pop(name, None) is None:
                raise UnknownTopic(f"unknown topic {name!r}")
            cluster.topic_settings.pop(name, None)
            cluster.max_bytes.pop(name, None)
            for group in cluster.groups.values():
                for tp in [tp for tp in group.committed if tp.topic == name]:
                    del group.committed[tp]
            logger.info("deleted topic %s", name)
            cluster.topics_changed(name)

    def list_topics(self) -> dict[str, int]:
        with self._cluster.lock:
            return {name: len(parts) for name, parts in self._cluster.topics.items()}

    def describe_topic(self, name: str) -> TopicDescription:
        """Node 0 leads every partition; replicas are numbered 0..replication-1, all in
        sync (the in-memory broker loses no node)."""
        with self._cluster.lock:
            parts = self._cluster.topics.get(name)
            if parts is None:
                raise UnknownTopic(f"unknown topic {name!r}")
            replication, config = self._cluster.topic_settings.get(name, (1, {}))
            replicas = tuple(range(replication))
            return TopicDescription(
                name,
                tuple(PartitionDescription(p, 0, replicas, replicas) for p in range(len(parts))),
                MappingProxyType(dict(config)),
            )

    def group_offsets(
        self, group: str, topics: Sequence[str] | None = None
    ) -> dict[TopicPartition, int]:
        with self._cluster.lock:
            state = self._cluster.groups.get(group)
            if state is None:
                return {}
            wanted = None if topics is None else set(topics)
            return {
                tp: offset
                for tp, offset in sorted(state.committed.items())
                if wanted is None or tp.topic in wanted
            }

    def high_watermarks(self, topic: str) -> dict[TopicPartition, int]:
        with self._cluster.lock:
            parts = self._cluster.topics.get(topic)
            if parts is None:
                raise UnknownTopic(f"unknown topic {topic!r}")
            return {part.tp: len(part.log) for part in parts}
