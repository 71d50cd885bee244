"""Conversions between the abstract backend types and confluent-kafka's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import confluent_kafka as ck

from processor.backends.abstract import TopicPartition

OFFSET_INVALID: Final = -1001
"""librdkafka's "no offset" (RD_KAFKA_OFFSET_INVALID)."""


def to_kafka(tp: TopicPartition, offset: int = OFFSET_INVALID) -> ck.TopicPartition:
    """confluent-kafka's TopicPartition for `tp`, with `offset` (none by default)."""
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def from_kafka(tps: Sequence[ck.TopicPartition]) -> list[TopicPartition]:
    """The abstract partitions of confluent-kafka's (their offsets dropped)."""
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]
