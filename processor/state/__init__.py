"""Keyed state: stores per input partition, their uncommitted writes, and what the
changelog carries (docs/state.md).

This layer sits below the runtime, beside the backends, and knows neither: the runtime
(`processor.runtime.stateful`) owns the stores' place in the commit protocol, produces
their changelog records with the stage's producer and reads them back on recovery.

* `values`: how keys, values and expiry times are encoded;
* `store`: `Store`, and its in-memory and persistent (RocksDB, through rocksdict) kinds;
* `partition`: `PartitionState`, one partition's store with the writes not yet
  committed, what a commit produces and applies, and what a recovery restores;
* `scope`: `RecordState`, the `KeyState` a handler sees, and the dedup step.
"""

from processor.state.partition import ChangelogEntry, PartitionState
from processor.state.scope import RecordState, dedup_seen
from processor.state.store import MemoryStore, RocksStore, Store, StoreCorrupt

__all__ = ["ChangelogEntry", "MemoryStore", "PartitionState", "RecordState", "RocksStore",
           "Store", "StoreCorrupt", "dedup_seen"]
