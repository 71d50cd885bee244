"""A stateful stage's stores: the handler's `KeyState`, the changelog, recovery, dedup.

Made by `Stage` when its handler chain holds a `@stateful` handler
(`processor.core.state`) or `dedup_window` is set; every other stage has none and its
record path is unchanged (docs/state.md).

* **Scope.** One store per assigned input partition (`processor.state`): in memory, or
  RocksDB in `state_dir/<group>/<topic>-<partition>`. The record path hands each record
  to `track` (the batch is wrapped once, per batch); the handler sees the `KeyState` of
  the record's key in its partition. A record's writes reach the partition's store only
  when its whole handler chain returned.
* **Commit participant** (`processor.runtime.commit.CommitParticipant`). `prepare`
  produces, with the stage's own producer, one changelog record per key changed by the
  records being committed (the last value, or a tombstone), to the partition of the
  changelog topic `<group>-<topic>-state-changelog` with the input partition's number,
  with the header `processor.state.source` = `topic:partition:offset` of the record
  that wrote it. Exactly-once, that is inside the transaction with the outputs and the
  offsets; at-least-once, before the flush the offset commit waits for. `committed`
  writes the changes into the stores (after the Kafka commit); `aborted` forgets them.
* **Recovery.** On assignment, before any record of the partition is handled, its
  store catches up from the changelog partition: from its checkpoint (a persistent
  store) or from the start, to the end, skipping every record whose source offset is at
  or past the input partition's committed offset (written by work never committed). A
  persistent store that cannot be opened, or whose checkpoint the changelog does not
  have, is wiped and rebuilt. Progress goes to the log and the metrics.
* **Dedup** (`dedup_window`): before the handler, an artifact whose id was seen in the
  partition within the window is dropped; the marks are entries of the same store.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import overload

from processor.backends.abstract import Broker, Consumer, Message, Producer, TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import BrokerUnavailable, ConfigError, ProcessorError
from processor.core.handlers import Handler, Outcome
from processor.core.options import StageOptions
from processor.core.state import bind_state, uses_state
from processor.ops.metrics import Metrics, StateMetrics
from processor.state import MemoryStore, PartitionState, RecordState, RocksStore, Store
from processor.state.scope import dedup_seen
from processor.state.values import SOURCE_HEADER, source_header, source_offset

__all__ = ["StageState", "changelog_topic", "changelog_topics", "ensure_changelogs",
           "is_stateful"]

logger = logging.getLogger(__name__)

CHANGELOG_SUFFIX = "state-changelog"
RESTORE_BATCH = 5000
"""Changelog records read and written to the store in one go during a recovery."""
RESTORE_IDLE = 2.0
"""Seconds without a record after which a recovery short of the changelog's end stops:
what it could not read is a transaction marker or an aborted record (read_committed)."""
PROGRESS_EVERY = 5.0
"""Seconds between two progress lines of a long recovery."""
JOIN_TIMEOUT = 60.0
"""Seconds the recovery reader may take to be assigned the changelog partitions."""


def changelog_topic(group: str, topic: str) -> str:
    """The changelog of the stores of input `topic`'s partitions, for `group`."""
    return f"{group}-{topic}-{CHANGELOG_SUFFIX}"


def changelog_topics(options: StageOptions) -> list[str]:
    return [changelog_topic(options.group, t) for t in options.input_topics]


def is_stateful(handler: object, options: StageOptions) -> bool:
    """Whether a stage with `handler` and `options` keeps state."""
    return options.dedup_window is not None or uses_state(handler)


def check_stateful(options: StageOptions, concurrent: bool) -> None:
    """Refuse what a stateful stage cannot do yet, with the reason."""
    if concurrent:
        raise ConfigError(
            f"stage {options.name}: state (a @stateful handler or dedup_window) needs a "
            "synchronous per-record handler; async, threaded and batch handlers cannot "
            "keep state yet (docs/state.md)")
    if options.handler_timeout is not None:
        raise ConfigError(
            f"stage {options.name}: handler_timeout cannot be used with state (a "
            "handler abandoned at its deadline could still write to it); leave it unset")


def ensure_changelogs(broker: Broker, options: StageOptions, *, create: bool,
                      replication: int | None = None) -> list[str]:
    """Check the stage's changelog topics: one per input topic, compacted, with the
    input's partition count; with `create`, create the missing ones. Returns those
    created; raises `ConfigError` for one missing (without `create`) or partitioned
    unlike its input."""
    admin = broker.admin()
    created: list[str] = []
    try:
        existing = admin.list_topics()
        for topic in options.input_topics:
            name = changelog_topic(options.group, topic)
            partitions = existing.get(topic)
            if name not in existing:
                if not create:
                    raise ConfigError(
                        f"the state changelog topic {name} does not exist on {broker.name}; "
                        "create it (compacted, partitioned like the input: cleanup.policy="
                        f"compact, {partitions or 'as many'} partitions), or let the stage "
                        "create it (--create-topics)")
                if partitions is None:
                    raise ConfigError(f"input topic {topic} does not exist on {broker.name}")
                admin.create_topic(name, partitions=partitions, replication=replication,
                                   config={"cleanup.policy": "compact"})
                logger.info("created state changelog topic %s (%d partitions) on %s",
                            name, partitions, broker.name)
                created.append(name)
            elif partitions is not None and existing[name] != partitions:
                raise ConfigError(
                    f"the state changelog topic {name} has {existing[name]} partitions, its "
                    f"input {topic} {partitions}: a store's changelog partition is its input "
                    "partition; recreate the changelog with as many partitions")
    finally:
        admin.close()
    return created


class _NullStateMetrics:
    def state_entries(self, topic: str, partition: int, entries: int) -> None:
        pass

    def state_recovery(self, topic: str, partition: int, remaining: int, read: int) -> None:
        pass

    def state_recovered(self, seconds: float) -> None:
        pass


class TrackedBatch(Sequence[Message]):
    """A batch whose iteration tells the stage's state which record is being handled."""

    __slots__ = ("_messages", "_state")

    def __init__(self, messages: Sequence[Message], state: StageState) -> None:
        self._messages = messages
        self._state = state

    def __iter__(self) -> Iterator[Message]:
        state = self._state
        bind_state(state.view)
        for msg in self._messages:
            state.current = msg
            yield msg

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        return self._messages[index]


class StageState:
    """The stores of one stateful stage, and its part in the commit protocol."""

    def __init__(self, options: StageOptions, broker: Broker, producer: Producer,
                 metrics: Metrics, *, eos: bool, wall: Callable[[], float] = time.time,
                 store_factory: Callable[[TopicPartition], Store] | None = None) -> None:
        self.options = options
        self.broker = broker
        self.producer = producer
        self.eos = eos
        self.wall = wall
        self.metrics: StateMetrics = (metrics if isinstance(metrics, StateMetrics)
                                      else _NullStateMetrics())
        self.store_factory = store_factory or self._default_store
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.view = RecordState()
        self.current: Message | None = None
        self.dedup_ms = (0 if options.dedup_window is None
                         else int(options.dedup_window * 1000))
        self.ttl_ms = 0 if options.state_ttl is None else int(options.state_ttl * 1000)
        self.deduplicated = 0
        """Artifacts dropped by the dedup step."""
        self.recovered = 0
        """Changelog records applied by recoveries."""
        self._reader: Consumer | None = None

    def _default_store(self, tp: TopicPartition) -> Store:
        if self.options.state_dir is None:
            return MemoryStore()
        path = (Path(self.options.state_dir) / _safe(self.options.group)
                / f"{_safe(tp.topic)}-{tp.partition}")
        store, why = RocksStore.open_or_rebuild(path)
        if why is not None:
            logger.warning("stage %s: %s; rebuilding it from the changelog",
                           self.options.name, why)
        return store

    def _now_ms(self) -> int:
        return int(self.wall() * 1000)

    # --- the record path -------------------------------------------------------------

    def track(self, messages: Sequence[Message]) -> Sequence[Message]:
        return TrackedBatch(messages, self)

    def wrap(self, handler: Handler) -> Handler:
        """`handler` with the record's state bound, its writes kept once it returned,
        and the dedup step before it."""
        view = self.view
        partitions = self.partitions
        dedup_ms = self.dedup_ms
        now_ms = self._now_ms

        def stateful_record(artifact: Artifact) -> Outcome:
            msg = self.current
            if msg is None:
                raise RuntimeError("a stateful handler called outside the stage's batch")
            part = partitions.get(TopicPartition(msg.topic(), msg.partition()))
            if part is None:
                raise ProcessorError(f"stage {self.options.name}: no state store for "
                                     f"{msg.topic()}[{msg.partition()}] (not assigned)")
            view.begin(part, msg.key(), now_ms())
            if dedup_ms and dedup_seen(view, artifact.id, dedup_ms):
                self.deduplicated += 1
                return None
            result = handler(artifact)
            writes = view.writes
            if writes:
                part.record(msg.offset(), writes)
                view.writes = {}
            return result

        stateful_record.__name__ = getattr(handler, "__name__", "stateful")
        return stateful_record

    # --- the commit protocol (CommitParticipant) -------------------------------------

    def prepare(self, offsets: Mapping[TopicPartition, int]) -> None:
        produce = self.producer.produce
        group = self.options.group
        for tp, part in self.partitions.items():
            limit = offsets.get(tp)
            if limit is None or (not part.pending and not part.expiring):
                continue
            topic = changelog_topic(group, tp.topic)
            for entry in part.prepare(limit):
                produce(topic, entry.value, entry.key,
                        [(SOURCE_HEADER, source_header(tp.topic, tp.partition, entry.source))],
                        tp.partition)

    def committed(self) -> None:
        for tp, part in self.partitions.items():
            if part.pending:
                part.commit()
                self.metrics.state_entries(tp.topic, tp.partition, len(part.store))

    def aborted(self) -> None:
        for part in self.partitions.values():
            part.abort()

    # --- rebalances ------------------------------------------------------------------

    def assign(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        """Open and recover the stores of newly assigned partitions (before any of
        their records is handled)."""
        for tp in partitions:
            if tp in self.partitions:
                continue
            start = self._input_start(consumer, tp)
            part = PartitionState(self.store_factory(tp), ttl_ms=self.ttl_ms,
                                  expiring=bool(self.dedup_ms), clock_ms=self._now_ms)
            try:
                self._recover(tp, part, start)
            except BaseException:
                part.close()
                raise
            self.partitions[tp] = part
            self.metrics.state_entries(tp.topic, tp.partition, len(part.store))

    def forget(self, partitions: Sequence[TopicPartition], checkpoint: bool) -> None:
        """Close the stores of partitions revoked or lost. `checkpoint`: everything
        committed is in the store, so a persistent store's checkpoint moves to the
        changelog's end (a later recovery reads only what others write after it)."""
        for tp in partitions:
            part = self.partitions.pop(tp, None)
            if part is None:
                continue
            try:
                if checkpoint and part.store.persistent and self._reader is not None:
                    part.abort()
                    ctp = TopicPartition(changelog_topic(self.options.group, tp.topic),
                                         tp.partition)
                    _low, high = self._reader.watermarks(ctp, timeout=5.0)
                    part.store.write({}, high)
            except ProcessorError as exc:
                logger.warning("stage %s: state store of %s closed without a checkpoint "
                               "(the next recovery reads more of the changelog): %s",
                               self.options.name, tp, exc)
            finally:
                part.close()

    def close(self) -> None:
        """Close every store left open and the recovery reader."""
        self.forget(list(self.partitions), checkpoint=False)
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close(5.0)
            except ProcessorError as exc:
                logger.warning("stage %s: closing the state recovery reader: %s",
                               self.options.name, exc)

    # --- recovery --------------------------------------------------------------------

    def _input_start(self, consumer: Consumer, tp: TopicPartition) -> int:
        """Where reading `tp` starts: its committed offset (or the reset position).
        State written by records from there on was never committed."""
        try:
            position = consumer.position(tp)
        except ProcessorError:
            position = None
        if position is not None and position >= 0:
            return position
        committed = consumer.committed([tp]).get(tp)
        if committed is not None:
            return committed
        return consumer.watermarks(tp)[0]

    def _restore_reader(self) -> Consumer:
        """A consumer of the changelog topics in a group of its own, every partition
        paused but the one being recovered."""
        if self._reader is not None:
            return self._reader
        options = self.options
        reader = self.broker.consumer(
            f"{options.group}.state-restore.{uuid.uuid4().hex[:12]}", read_committed=self.eos,
            client_id=f"{options.name}-state-restore")
        try:
            reader.subscribe(changelog_topics(options))
            end = time.monotonic() + JOIN_TIMEOUT
            while not reader.assignment():
                if time.monotonic() > end:
                    raise BrokerUnavailable(
                        f"stage {options.name}: the state recovery reader got no "
                        f"changelog partition in {JOIN_TIMEOUT:.0f}s")
                reader.consume(RESTORE_BATCH, 0.1)
            reader.pause(reader.assignment())
        except BaseException:
            reader.close(5.0)
            raise
        self._reader = reader
        return reader

    def _recover(self, tp: TopicPartition, part: PartitionState, start: int) -> None:
        name = self.options.name
        reader = self._restore_reader()
        ctp = TopicPartition(changelog_topic(self.options.group, tp.topic), tp.partition)
        if ctp not in reader.assignment():
            raise ProcessorError(f"stage {name}: changelog partition {ctp} is unknown to the "
                                 "recovery reader")
        low, high = reader.watermarks(ctp)
        begin = low
        checkpoint = part.store.checkpoint()
        if checkpoint is not None:
            if low <= checkpoint <= high:
                begin = checkpoint
            else:
                logger.warning("stage %s: state store of %s is at changelog offset %d, the "
                               "changelog holds %d..%d; rebuilding it", name, tp, checkpoint,
                               low, high)
                part.store.wipe()
        t0 = time.monotonic()
        self.metrics.state_recovery(tp.topic, tp.partition, max(0, high - begin), 0)
        if begin >= high:
            logger.info("stage %s: state of %s is up to date (changelog %s at %d)", name, tp,
                        ctp, high)
            return
        logger.info("stage %s: recovering the state of %s from %s, offsets %d..%d (skipping "
                    "updates of input offsets from %d on)", name, tp, ctp, begin, high, start)
        reader.seek(ctp, begin)
        reader.resume([ctp])
        read = applied = reported = 0
        batch: dict[bytes, bytes | None] = {}
        last_progress = idle_since = t0
        next_offset = begin
        try:
            while True:
                messages = reader.consume(RESTORE_BATCH, 0.1)
                now = time.monotonic()
                got = 0
                for msg in messages:
                    if msg.partition() != ctp.partition or msg.topic() != ctp.topic:
                        continue  # fetched before the pause
                    got += 1
                    key = msg.key()
                    source = source_offset(msg.headers())
                    if key is not None and (source is None or source < start):
                        batch[key] = msg.value()
                        applied += 1
                    next_offset = msg.offset() + 1
                read += got
                if len(batch) >= RESTORE_BATCH:
                    part.restore(batch.items(), next_offset)
                    batch = {}
                position = reader.position(ctp)
                if (position is not None and position >= high) or next_offset >= high:
                    break
                if got:
                    idle_since = now
                elif now - idle_since >= RESTORE_IDLE:
                    logger.info("stage %s: changelog %s has nothing more to read at %d "
                                "(its end, %d, is a transaction marker or aborted records)",
                                name, ctp, next_offset, high)
                    break
                if now - last_progress >= PROGRESS_EVERY:
                    last_progress = now
                    logger.info("stage %s: recovering %s: %d of %d changelog records read",
                                name, tp, next_offset - begin, high - begin)
                    self.metrics.state_recovery(tp.topic, tp.partition,
                                                max(0, high - next_offset), read - reported)
                    reported = read
        finally:
            reader.pause([ctp])
        part.restore(batch.items(), high)
        seconds = time.monotonic() - t0
        self.recovered += applied
        self.metrics.state_recovery(tp.topic, tp.partition, 0, read - reported)
        self.metrics.state_recovered(seconds)
        logger.info("stage %s: state of %s recovered: %d changelog records read, %d applied "
                    "(%d skipped: never committed), %.2fs", name, tp, read, applied,
                    read - applied, seconds)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
