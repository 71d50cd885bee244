"""Stored records and partition logs of the in-memory broker.

A partition is an append-only list of `MemoryMessage`; offsets start at 0 and are list
indexes. A transaction's commit or abort appends a marker (`CONTROL`) that takes an
offset no consumer ever receives, so offsets have gaps after transactions, as on a real
broker. Each log keeps the sorted offsets each isolation level skips, so that reading
past them costs a bisection, not a scan.
"""

from __future__ import annotations

from typing import Final

from processor.backends.abstract import Headers, Message, TopicPartition

TIMESTAMP_CREATE_TIME: Final = 1
"""The timestamp type of records stamped by the producer (Kafka's CreateTime)."""


class MemoryMessage:
    """One stored record; immutable, shared by every consumer that reads it."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_timestamp", "_topic", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] | None,
        timestamp: tuple[int, int],
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._headers = headers
        self._timestamp = timestamp

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return None if self._headers is None else list(self._headers)

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def error(self) -> None:
        """Always None: stored records are never errors (confluent-kafka compatibility)."""
        return None

    def __len__(self) -> int:
        return 0 if self._value is None else len(self._value)

    def __repr__(self) -> str:
        return (
            f"MemoryMessage({self._topic}[{self._partition}]@{self._offset}, "
            f"key={self._key!r}, {len(self)} bytes)"
        )


CONTROL: Final = MemoryMessage("", -1, -1, None, None, None, (0, 0))
"""The stand-in stored at the offset of a transaction marker."""


class PartitionLog:
    """A partition's records; `CONTROL` entries are transaction markers, never delivered."""

    __slots__ = ("controls", "hidden_committed", "log", "open", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.log: list[Message] = []
        # Sorted offsets a read_uncommitted consumer skips (control records) ...
        self.controls: list[int] = []
        # ... and those a read_committed consumer skips (control and aborted records).
        self.hidden_committed: list[int] = []
        # Open transaction id -> its first offset in this partition.
        self.open: dict[int, int] = {}

    def stable_end(self) -> int:
        """The last stable offset: where read_committed consumers stop."""
        if self.open:
            return min(self.open.values())
        return len(self.log)

    def end_transaction(self, txn_id: int, offsets: list[int], commit: bool) -> None:
        """Close transaction `txn_id`, which wrote `offsets` here: append its marker,
        and hide its records from read_committed consumers if it aborted."""
        self.open.pop(txn_id, None)
        marker = len(self.log)
        self.log.append(CONTROL)
        self.controls.append(marker)
        if commit:
            self.hidden_committed.append(marker)
        else:
            self.hidden_committed = sorted([*self.hidden_committed, *offsets, marker])
