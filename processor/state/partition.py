"""One input partition's state: its store, the writes not yet committed, and the steps
of the commit protocol as the store sees them.

A record's writes are kept (`record`) with its input offset, in record order. A commit
then goes:

1. `prepare(limit)`: the writes of records before `limit` (the offset the commit will
   write), not handed over yet, coalesced to the last value per key, each with the
   offset of the record that wrote it: what the changelog receives, inside the
   transaction (exactly-once) or before the flush (at-least-once). Expired entries of
   the store are swept into tombstones here too, now and then.
2. `commit()`: once the Kafka commit succeeded, the prepared writes go into the store,
   in one batch.
3. `abort()`: the transaction was aborted (or the partition is lost): every write not
   committed is forgotten, and the records are read again.

Reads see the writes not yet committed over the store, and never an expired entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from processor.state.store import Store
from processor.state.values import is_live

_MISSING = object()

SWEEP_BATCH = 10_000
"""Most expired entries one commit turns into tombstones."""


class ChangelogEntry(NamedTuple):
    key: bytes
    value: bytes | None
    """None: a tombstone (the key was deleted, or expired)."""
    source: int
    """The input offset of the record that wrote it."""


class PartitionState:
    """The store of one input partition and its uncommitted writes."""

    __slots__ = ("_log", "_overlay", "_produced", "clock_ms", "expiring", "last_sweep",
                 "store", "sweep_every_ms", "ttl_ms")

    def __init__(self, store: Store, *, ttl_ms: int = 0, expiring: bool = False,
                 clock_ms: Callable[[], int], sweep_every_ms: int = 10_000) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        """Entries expire this long after their last write (0: never)."""
        self.expiring = expiring or ttl_ms > 0
        """Whether entries may expire (a TTL, or dedup marks): commits sweep them."""
        self.clock_ms = clock_ms
        self.sweep_every_ms = sweep_every_ms
        self.last_sweep = clock_ms()
        self._log: list[tuple[int, dict[bytes, bytes | None]]] = []
        self._overlay: dict[bytes, bytes | None] = {}
        self._produced = 0

    # --- reads and writes ------------------------------------------------------------

    def get(self, key: bytes, now_ms: int) -> bytes | None:
        """The live value of `key`: the last write not committed, or the store's."""
        raw = self._overlay.get(key, _MISSING)
        if raw is _MISSING:
            raw = self.store.get(key)
        if raw is None or not isinstance(raw, bytes):
            return None
        return raw if is_live(raw, now_ms) else None

    def record(self, offset: int, writes: dict[bytes, bytes | None]) -> None:
        """The writes of the record at input `offset` (its handler returned)."""
        self._log.append((offset, writes))
        self._overlay.update(writes)

    @property
    def pending(self) -> int:
        """Records whose writes are not committed yet."""
        return len(self._log)

    # --- the commit protocol ---------------------------------------------------------

    def prepare(self, limit: int | None) -> list[ChangelogEntry]:
        """Hand over the writes of records before `limit` (None: all) not handed over
        yet: the changelog records of this commit."""
        log = self._log
        start = cut = self._produced
        while cut < len(log) and (limit is None or log[cut][0] < limit):
            cut += 1
        if self.expiring and cut > 0 and self.clock_ms() - self.last_sweep >= \
                self.sweep_every_ms:
            swept = self._sweep(log[cut - 1][0])
            if swept is not None:
                log.insert(cut, swept)
                cut += 1
        if cut == start:
            return []
        latest: dict[bytes, ChangelogEntry] = {}
        for offset, writes in log[start:cut]:
            for key, value in writes.items():
                latest[key] = ChangelogEntry(key, value, offset)
        self._produced = cut
        return list(latest.values())

    def commit(self) -> None:
        """The Kafka commit covering the prepared writes succeeded: store them."""
        cut = self._produced
        if not cut:
            return
        batch: dict[bytes, bytes | None] = {}
        for _offset, writes in self._log[:cut]:
            batch.update(writes)
        self.store.write(batch)
        del self._log[:cut]
        self._produced = 0
        self._overlay = {}
        for _offset, writes in self._log:
            self._overlay.update(writes)

    def abort(self) -> None:
        """Forget every write not committed (its records are read again)."""
        self._log.clear()
        self._overlay.clear()
        self._produced = 0

    def _sweep(self, source: int) -> tuple[int, dict[bytes, bytes | None]] | None:
        """Tombstones for the store's expired entries (not rewritten since), as if
        written by the record at `source`."""
        now = self.clock_ms()
        self.last_sweep = now
        overlay = self._overlay
        gone: dict[bytes, bytes | None] = {}
        for key, raw in self.store.items():
            if key not in overlay and not is_live(raw, now):
                gone[key] = None
                if len(gone) >= SWEEP_BATCH:
                    break
        return (source, gone) if gone else None

    # --- recovery --------------------------------------------------------------------

    def restore(self, entries: Iterable[tuple[bytes, bytes | None]],
                checkpoint: int | None) -> None:
        """Changelog records read back (already filtered by their source offset)."""
        now = self.clock_ms()
        batch = {key: value if value is None or is_live(value, now) else None
                 for key, value in entries}
        self.store.write(batch, checkpoint)

    def close(self) -> None:
        self.abort()
        self.store.close()
