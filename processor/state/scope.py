"""What a handler sees of the state (`RecordState`, a `KeyState`), and the dedup step.

The stage reuses one `RecordState`: `begin` points it at the record's partition and
key; the handler's writes collect in `writes` and reach the partition only once the
whole handler chain returned (`PartitionState.record`), so a record whose handler
raised leaves no trace in the state.
"""

from __future__ import annotations

from typing import Any

from processor.core.state import KeyState
from processor.state.partition import PartitionState
from processor.state.values import decode_value, dedup_key, encode_value, state_key

_MISSING = object()


class RecordState(KeyState):
    """The `KeyState` of the record being handled."""

    __slots__ = ("_key", "now_ms", "partition", "writes")

    def __init__(self) -> None:
        self.partition: PartitionState | None = None
        self._key: bytes | None = None
        self.now_ms = 0
        self.writes: dict[bytes, bytes | None] = {}

    def begin(self, partition: PartitionState, key: bytes | None, now_ms: int) -> None:
        self.partition = partition
        self._key = key
        self.now_ms = now_ms
        if self.writes:
            self.writes = {}

    @property
    def key(self) -> bytes | None:
        return self._key

    def _partition(self) -> PartitionState:
        if self.partition is None:
            raise RuntimeError("no record is being handled")
        return self.partition

    def get(self, name: str, default: Any = None) -> Any:
        skey = state_key(self._key, name)
        raw = self.writes.get(skey, _MISSING)
        if raw is _MISSING:
            raw = self._partition().get(skey, self.now_ms)
        if raw is None or not isinstance(raw, bytes):
            return default
        return decode_value(raw)

    def set(self, name: str, value: Any) -> None:
        ttl = self._partition().ttl_ms
        self.writes[state_key(self._key, name)] = encode_value(
            value, self.now_ms + ttl if ttl else 0)

    def delete(self, name: str) -> None:
        self.writes[state_key(self._key, name)] = None


def dedup_seen(state: RecordState, artifact_id: str, window_ms: int) -> bool:
    """Whether `artifact_id` was seen within the window in this record's partition;
    if not, it is marked seen now (a write of the record, like a handler's)."""
    key = dedup_key(artifact_id)
    if key in state.writes or state._partition().get(key, state.now_ms) is not None:
        return True
    state.writes[key] = encode_value(state.now_ms, state.now_ms + window_ms)
    return False
