"""State stores: one per assigned input partition.

A `Store` keeps bytes by bytes key, and its own checkpoint (`checkpoint`, written in
the same atomic batch as the entries it covers). Two kinds:

* `MemoryStore`: a dict. For the in-memory broker and tests, and for a stage without a
  `state_dir`: every assignment rebuilds it from the changelog.
* `RocksStore`: RocksDB through rocksdict, in a folder of `state_dir`; it survives a
  restart, so a recovery reads only the changelog written since its checkpoint. A store
  that cannot be opened (corrupt, or written by something else) raises `StoreCorrupt`;
  the stage then wipes it and rebuilds it from the changelog. rocksdict was measured
  against SQLite for this workload (benchmarks/state_store_micro.py, docs/state.md).
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

CHECKPOINT_KEY = b"\x00changelog"
"""The store's own entry: the changelog offset a recovery reads from."""


class StoreCorrupt(Exception):
    """A persistent store could not be opened or read."""


class Store(ABC):
    """Bytes by key, and a checkpoint written atomically with the entries."""

    persistent: bool = False

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def write(self, items: Mapping[bytes, bytes | None], checkpoint: int | None = None
              ) -> None:
        """Apply `items` (None: delete), and with `checkpoint` set it, in one batch."""

    @abstractmethod
    def checkpoint(self) -> int | None:
        """The changelog offset (next to read) the entries are complete up to, if known."""

    @abstractmethod
    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry (not the checkpoint)."""

    @abstractmethod
    def __len__(self) -> int:
        """How many entries (an estimate for RocksDB)."""

    @abstractmethod
    def wipe(self) -> None:
        """Remove every entry and the checkpoint."""

    def close(self) -> None:  # noqa: B027 - nothing to release for some stores
        """Release the store (its data stays, if persistent)."""


class MemoryStore(Store):
    """A store in a dict; gone with the process."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._checkpoint: int | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def write(self, items: Mapping[bytes, bytes | None], checkpoint: int | None = None
              ) -> None:
        data = self._data
        for key, value in items.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        if checkpoint is not None:
            self._checkpoint = checkpoint

    def checkpoint(self) -> int | None:
        return self._checkpoint

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))

    def __len__(self) -> int:
        return len(self._data)

    def wipe(self) -> None:
        self._data.clear()
        self._checkpoint = None


class RocksStore(Store):
    """A RocksDB store in folder `path` (created if missing)."""

    persistent = True

    def __init__(self, path: Path) -> None:
        import rocksdict

        self.path = path
        self._mod: Any = rocksdict
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db: Any = self._open()

    def _open(self) -> Any:
        options = self._mod.Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            return self._mod.Rdict(str(self.path), options)
        except Exception as exc:  # rocksdict raises plain Exceptions for a bad folder
            raise StoreCorrupt(f"state store {self.path}: {exc}") from exc

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def write(self, items: Mapping[bytes, bytes | None], checkpoint: int | None = None
              ) -> None:
        batch = self._mod.WriteBatch(raw_mode=True)
        for key, value in items.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if checkpoint is not None:
            batch.put(CHECKPOINT_KEY, str(checkpoint).encode())
        self._db.write(batch)

    def checkpoint(self) -> int | None:
        raw = self._db.get(CHECKPOINT_KEY)
        if raw is None:
            return None
        try:
            return int(bytes(raw))
        except ValueError as exc:
            raise StoreCorrupt(f"state store {self.path}: bad checkpoint {raw!r}") from exc

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if not key.startswith(b"\x00"):
                yield bytes(key), bytes(value)

    def __len__(self) -> int:
        value = self._db.property_int_value("rocksdb.estimate-num-keys")
        return max(0, int(value or 0) - (1 if self._db.get(CHECKPOINT_KEY) else 0))

    def wipe(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @classmethod
    def open_or_rebuild(cls, path: Path) -> tuple[RocksStore, str | None]:
        """The store at `path`; one that cannot be opened is removed and made anew (the
        reason is returned: its entries come back from the changelog)."""
        try:
            store = cls(path)
            store.checkpoint()
            return store, None
        except StoreCorrupt as exc:
            shutil.rmtree(path, ignore_errors=True)
            return cls(path), str(exc)
