"""State stores (memory and RocksDB), a partition's uncommitted writes and their commit
protocol, expiry (TTL and dedup marks) and the size of a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.core.errors import ConfigError, InvalidArtifact
from processor.core.state import stateful
from processor.state import MemoryStore, PartitionState, RecordState, RocksStore, Store
from processor.state.scope import dedup_seen
from processor.state.values import (
    decode_value,
    encode_value,
    expires,
    parse_state_key,
    source_header,
    source_offset,
    state_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=["memory", "rocks"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return RocksStore(tmp_path / "store")


def test_values_round_trip() -> None:
    for value in (None, True, 3, 2.5, "text", [1, "a"], {"a": {"b": [1]}}, b"\x00\xff"):
        raw = encode_value(value, 42)
        assert decode_value(raw) == value
        assert expires(raw) == 42
    with pytest.raises(InvalidArtifact):
        encode_value({1, 2})
    with pytest.raises(InvalidArtifact):
        encode_value(float("nan"))


def test_keys_and_source_header() -> None:
    assert parse_state_key(state_key(b"cust:1", "count")) == (b"cust:1", "count")
    assert parse_state_key(state_key(b"", "n")) == (b"", "n")
    assert parse_state_key(state_key(None, "n")) == (None, "n")
    # Keys of different records never collide, whatever their bytes.
    assert state_key(b"ab", "c") != state_key(b"a", "bc")
    assert source_offset([("processor.state.source", source_header("in", 2, 41))]) == 41
    assert source_offset([("other", b"x")]) is None


def test_store_write_checkpoint_items_size(store: Store) -> None:
    store.write({b"a": b"1", b"b": b"2"}, checkpoint=7)
    assert store.get(b"a") == b"1"
    assert store.checkpoint() == 7
    assert sorted(store.items()) == [(b"a", b"1"), (b"b", b"2")]
    assert len(store) == 2
    store.write({b"a": None})
    assert store.get(b"a") is None
    assert len(store) == 1
    assert store.checkpoint() == 7
    store.wipe()
    assert list(store.items()) == [] and store.checkpoint() is None
    store.close()


def test_rocks_store_survives_a_reopen_and_a_corrupt_one_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    store = RocksStore(path)
    store.write({b"k": b"v"}, checkpoint=3)
    store.close()
    again, why = RocksStore.open_or_rebuild(path)
    assert why is None and again.get(b"k") == b"v" and again.checkpoint() == 3
    again.close()
    for name in path.iterdir():  # scribble over every file of the store
        if name.is_file():
            name.write_bytes(b"garbage")
    rebuilt, why = RocksStore.open_or_rebuild(path)
    assert why is not None
    assert list(rebuilt.items()) == [] and rebuilt.checkpoint() is None
    rebuilt.close()


def test_partition_prepare_commit_abort(store: Store) -> None:
    clock = Clock()
    part = PartitionState(store, clock_ms=clock)
    part.record(10, {b"a": b"\0" * 8 + b"j1"})
    part.record(11, {b"a": b"\0" * 8 + b"j2", b"b": b"\0" * 8 + b"j3"})
    part.record(12, {b"b": None})
    # Reads see the writes not committed.
    assert part.get(b"a", clock.now) == b"\0" * 8 + b"j2"
    # Only records before the limit are handed over, coalesced by key.
    entries = part.prepare(12)
    assert sorted((e.key, e.value, e.source) for e in entries) == [
        (b"a", b"\0" * 8 + b"j2", 11), (b"b", b"\0" * 8 + b"j3", 11)]
    assert part.prepare(12) == []  # nothing twice
    assert store.get(b"a") is None  # not before the Kafka commit
    part.commit()
    assert store.get(b"a") == b"\0" * 8 + b"j2"
    assert part.get(b"b", clock.now) is None  # offset 12's delete is still pending
    assert store.get(b"b") == b"\0" * 8 + b"j3"
    part.abort()
    assert part.get(b"b", clock.now) == b"\0" * 8 + b"j3"
    assert part.pending == 0


def test_ttl_expires_entries_and_commits_sweep_them(store: Store) -> None:
    clock = Clock()
    part = PartitionState(store, ttl_ms=1000, clock_ms=clock, sweep_every_ms=0)
    view = RecordState()
    view.begin(part, b"k", clock.now)
    view.set("n", 1)
    part.record(0, view.writes)
    part.prepare(1)
    part.commit()
    view.begin(part, b"k", clock.now + 999)
    assert view.get("n") == 1
    view.begin(part, b"k", clock.now + 1000)
    assert view.get("n") is None  # expired: never read
    clock.now += 5000
    view.begin(part, b"other", clock.now)
    view.set("n", 2)
    part.record(1, view.writes)
    entries = part.prepare(2)
    tombstones = [e for e in entries if e.value is None]
    assert [e.key for e in tombstones] == [state_key(b"k", "n")]
    part.commit()
    assert len(store) == 1  # bounded: the expired entry is gone


def test_dedup_marks_expire_after_the_window() -> None:
    clock = Clock()
    part = PartitionState(MemoryStore(), expiring=True, clock_ms=clock)
    view = RecordState()
    view.begin(part, None, clock.now)
    assert not dedup_seen(view, "id-1", 1000)
    part.record(0, view.writes)
    view.begin(part, None, clock.now + 10)
    assert dedup_seen(view, "id-1", 1000)
    assert not dedup_seen(view, "id-2", 1000)
    view.begin(part, None, clock.now + 1000)
    assert not dedup_seen(view, "id-1", 1000)  # outside the window: new again


def test_stateful_refuses_async_and_one_argument_handlers() -> None:
    async def later(artifact: object, state: object) -> None:
        return None

    with pytest.raises(ConfigError, match="synchronous"):
        stateful(later)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="two arguments"):
        stateful(lambda a: a)  # type: ignore[arg-type,misc]
