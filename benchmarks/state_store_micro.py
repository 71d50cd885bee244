"""The persistent state store, measured for a stage's workload: SQLite (stdlib) against
rocksdict (RocksDB, from PyPI).

The workload is what a counting stage does to the store of one partition: the handler
reads a key (most reads hit the checkpoint's write-through cache of the stage, but a key
not seen since the last commit is read from the store) and the commit writes each key
changed since the last commit once, in one batch with the checkpoint; recovery writes a
changelog's records in batches. Run:

    .venv/bin/python benchmarks/state_store_micro.py [--records N] [--keys K]

Prints one line per store and phase: operations per second (higher is better). rocksdict
is measured only when it is installed (`pip install rocksdict`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

COMMIT_EVERY = 2000
"""Records between two commits (a stage's default batch size)."""


class SqliteBench:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path / "state.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) "
                        "WITHOUT ROWID")

    def get(self, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def write(self, items: dict[bytes, bytes | None]) -> None:
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                       [(k, v) for k, v in items.items() if v is not None])
        db.executemany("DELETE FROM kv WHERE k = ?",
                       [(k,) for k, v in items.items() if v is None])
        db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                   (b"\x00checkpoint", b"42"))
        db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class RocksBench:
    name = "rocksdict"

    def __init__(self, path: Path) -> None:
        import rocksdict  # type: ignore[import-not-found,unused-ignore]

        self._mod = rocksdict
        self.db = rocksdict.Rdict(str(path / "state.rocks"))

    def get(self, key: bytes) -> bytes | None:
        value = self.db.get(key)
        return None if value is None else bytes(value)

    def write(self, items: dict[bytes, bytes | None]) -> None:
        batch = self._mod.WriteBatch(raw_mode=False)
        for k, v in items.items():
            if v is None:
                batch.delete(k)
            else:
                batch.put(k, v)
        batch.put(b"\x00checkpoint", b"42")
        self.db.write(batch)

    def close(self) -> None:
        self.db.close()


def count_workload(store: SqliteBench | RocksBench, records: int, keys: int,
                   seed: int = 1) -> float:
    """Records per second: read-modify-write a counter per record, one batch per
    `COMMIT_EVERY` records (each key changed written once)."""
    rng = random.Random(seed)
    names = [f"customer-{i}".encode() for i in range(keys)]
    pending: dict[bytes, bytes | None] = {}
    t0 = time.perf_counter()
    for n in range(records):
        key = names[rng.randrange(keys)]
        raw = pending.get(key)
        if raw is None:
            raw = store.get(key)
        count = 0 if raw is None else json.loads(raw)
        pending[key] = json.dumps(count + 1).encode()
        if n % COMMIT_EVERY == COMMIT_EVERY - 1:
            store.write(pending)
            pending = {}
    store.write(pending)
    return records / (time.perf_counter() - t0)


def restore_workload(store: SqliteBench | RocksBench, records: int) -> float:
    """Changelog records per second applied by a recovery (batches of 5,000)."""
    t0 = time.perf_counter()
    for start in range(0, records, 5000):
        store.write({f"key-{i}".encode(): b"%d" % i
                     for i in range(start, min(records, start + 5000))})
    return records / (time.perf_counter() - t0)


def read_workload(store: SqliteBench | RocksBench, records: int, seed: int = 2) -> float:
    """Point reads per second of keys written by `restore_workload`."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for _ in range(records):
        store.get(f"key-{rng.randrange(records)}".encode())
    return records / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=20_000)
    args = parser.parse_args()
    makers: list[type[SqliteBench] | type[RocksBench]] = [SqliteBench]
    try:
        import rocksdict  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        makers.append(RocksBench)
    except ImportError:
        print("rocksdict not installed: measuring sqlite only")
    for make in makers:
        for phase in ("count", "restore", "read"):
            folder = Path(tempfile.mkdtemp(prefix="state-bench-"))
            try:
                store = make(folder)
                if phase == "count":
                    rate = count_workload(store, args.records, args.keys)
                elif phase == "restore":
                    rate = restore_workload(store, args.records)
                else:
                    restore_workload(store, args.records)
                    rate = read_workload(store, args.records)
                store.close()
                print(f"{make.name:10} {phase:8} {rate:12,.0f} /s")
            finally:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
