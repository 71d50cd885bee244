"""The world of `tests/integration/test_invariant_kafka.py`: scripted handlers of every
kind, inputs fed with their offsets known, and the oracle that judges a stage from what a
real Kafka holds.

Each input artifact carries its `seq` (unique in a history) and an `op`, which decides
what the handler does with it (`Script.decide`). Outputs keep their input's metadata, so
every output and every dead letter names the input it came from.

The oracle reads the group's committed offsets and the output, audit and dead-letter
topics with clients of its own (manually assigned, never members of the stage's group):
at-least-once up to the high watermarks (read uncommitted: a stage commits only after its
outputs are acknowledged), exactly-once up to the last stable offsets (read committed).

The module also holds the handlers `processor run` loads in the command-line test
(`fourth_fails_async`, `fourth_fails_threads`): a handler module must be importable by
the process that runs it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import confluent_kafka as ck
from confluent_kafka import IsolationLevel, KafkaError
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.cimpl import NewTopic

from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact, RetryableError
from processor.core.handlers import AnyHandler, BatchOutcome, Outcome, Routed
from processor.serde.codec import Codec

CODEC: Final = Codec()

KEYS: Final = [b"k0", b"k1", b"k2", b"k3", b"k4", b"k5"]

# What the handler does with an input, by its `op`:
SAME: Final = "same"          # the artifact itself (passed through as its bytes)
NEW: Final = "new"            # a new artifact
FAN: Final = "fan"            # two outputs: the artifact and a copy
ROUTE: Final = "route"        # the artifact, routed to the named output `audit`
DROP: Final = "drop"          # None: dropped
INVALID: Final = "invalid"    # InvalidArtifact: dead-lettered
RETRY: Final = "retry"        # RetryableError on its first attempt ever, then as `same`
BOOM: Final = "boom"          # a plain exception: the error policy decides
SLOW: Final = "slow"          # as `same`, after a short wait (calls stay in flight)

ORIG: Final = "orig"
OUT: Final = "out"
AUDIT: Final = "audit"

Variant = tuple[str, str]
"""An output as the oracle sees it: (topic role, payload variant)."""

EXPECTED: Final[dict[str, frozenset[Variant] | None]] = {
    SAME: frozenset({(OUT, ORIG)}),
    SLOW: frozenset({(OUT, ORIG)}),
    RETRY: frozenset({(OUT, ORIG)}),
    NEW: frozenset({(OUT, "new")}),
    FAN: frozenset({(OUT, ORIG), (OUT, "copy")}),
    ROUTE: frozenset({(AUDIT, ORIG)}),
    DROP: None, INVALID: None, BOOM: None,
}
"""The outputs of one successful handling of an input, by op (None: no output; the
input is dropped or dead-lettered)."""

CLEAN: Final = frozenset({(OUT, ORIG)})
"""The outputs of the always-succeeding handler of the final drain."""

SLOW_SECONDS: Final = 0.05

KINDS: Final = ("sync", "async", "threads", "batch")


def ops_for(kind: str) -> list[str]:
    """The ops a history of handler `kind` draws from."""
    ops = [SAME, NEW, FAN, ROUTE, DROP, INVALID, RETRY, BOOM]
    if kind != "sync":  # a wait in the loop's own thread only slows the loop
        ops.append(SLOW)
    return ops


def make_input(seq: int, op: str) -> bytes:
    return CODEC.encode(Artifact.new(f"payload {seq}", meta={"seq": seq, "op": op}))


@functools.lru_cache(maxsize=65_536)
def variant_of(value: bytes) -> tuple[int, str]:
    """(seq, payload variant) of an output or dead letter; seq -1 for a record that is
    no artifact of a history (a probe)."""
    try:
        artifact = CODEC.decode(value)
    except Exception:  # anything that is not one of ours
        return -1, "foreign"
    seq = artifact.get("seq", -1)
    payload = artifact.payload
    variant = {b"copy": "copy", b"new": "new"}.get(payload, ORIG)
    return (seq if isinstance(seq, int) else -1), variant


# --- the handlers ------------------------------------------------------------------------


class Script:
    """The handlers' shared script and what it observed: the attempts at each input (over
    the whole history, so that `retry` succeeds on its second attempt whichever stage
    makes it), the inputs some call dropped, and those the always-succeeding handler of
    the final drain handled (`clean_mode`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[int] = Counter()
        self.returned_none: set[int] = set()
        self.clean: set[int] = set()
        self.clean_mode = False

    def decide(self, artifact: Artifact) -> Outcome:
        seq = artifact.get("seq", -1)
        op = artifact.get("op", SAME)
        assert isinstance(seq, int)
        with self.lock:
            self.attempts[seq] += 1
            attempt = self.attempts[seq]
            if self.clean_mode:
                self.clean.add(seq)
                return artifact
        if op in (SAME, SLOW):
            return artifact
        if op == NEW:
            return artifact.with_payload(b"new")
        if op == FAN:
            return [artifact, artifact.with_payload(b"copy")]
        if op == ROUTE:
            return Routed(AUDIT, artifact)
        if op == DROP:
            with self.lock:
                self.returned_none.add(seq)
            return None
        if op == INVALID:
            raise InvalidArtifact(f"seq {seq} is invalid by design")
        if op == RETRY:
            if attempt == 1:
                raise RetryableError(f"seq {seq}: try again")
            return artifact
        if op == BOOM:
            raise RuntimeError(f"seq {seq}: boom")
        raise AssertionError(f"unknown op {op!r}")

    def _slow(self, artifact: Artifact) -> bool:
        with self.lock:
            return not self.clean_mode and artifact.get("op", SAME) == SLOW

    def handler(self, kind: str) -> AnyHandler:
        """A handler of `kind` (sync, async, threads, batch) running this script; a
        `threads` stage runs the sync one with `handler_mode: threads`."""
        if kind == "async":
            async def handle_async(artifact: Artifact) -> Outcome:
                if self._slow(artifact):
                    await asyncio.sleep(SLOW_SECONDS)
                return self.decide(artifact)
            return handle_async
        if kind == "batch":
            def handle_batch(artifacts: list[Artifact]) -> list[BatchOutcome]:
                if any(self._slow(a) for a in artifacts):
                    time.sleep(SLOW_SECONDS)
                results: list[BatchOutcome] = []
                for artifact in artifacts:
                    try:
                        results.append(self.decide(artifact))
                    except Exception as exc:  # an outcome of its own
                        results.append(exc)
                return results
            return handle_batch

        def handle(artifact: Artifact) -> Outcome:
            if self._slow(artifact):
                time.sleep(SLOW_SECONDS)
            return self.decide(artifact)
        return handle


# --- topics and inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """The topics and the group of one history (names unique in the cluster)."""

    input: str
    out: str
    audit: str
    dlq: str
    group: str
    partitions: int

    @classmethod
    def unique(cls, prefix: str, partitions: int = 3) -> Topics:
        tag = uuid.uuid4().hex[:10]
        return cls(f"{prefix}-in-{tag}", f"{prefix}-out-{tag}", f"{prefix}-audit-{tag}",
                   f"{prefix}-dlq-{tag}", f"{prefix}-group-{tag}", partitions)

    @property
    def outputs(self) -> tuple[str, str, str]:
        return self.out, self.audit, self.dlq

    def role(self, topic: str) -> str:
        return {self.out: OUT, self.audit: AUDIT, self.dlq: "dlq"}[topic]

    def create(self, bootstrap: str, settings: Mapping[str, str]) -> None:
        admin = AdminClient({"bootstrap.servers": bootstrap, **settings})
        wanted = [NewTopic(self.input, self.partitions, 1)]
        wanted += [NewTopic(t, 2, 1) for t in self.outputs]
        for future in admin.create_topics(wanted, request_timeout=30).values():
            future.result(30)
        deadline = time.monotonic() + 30
        names = {t.topic for t in wanted}
        while True:  # the leaders known, so that the first produce does not wait
            metadata = admin.list_topics(timeout=10)
            ready = {name for name in names if name in metadata.topics
                     and metadata.topics[name].error is None
                     and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())}
            if ready == names:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"topics not ready after 30s: {sorted(names - ready)}")
            time.sleep(0.05)


@dataclass(frozen=True)
class Input:
    seq: int
    op: str
    key: bytes
    partition: int
    offset: int


class Feeder:
    """Writes the inputs of a history and remembers where each one landed."""

    def __init__(self, bootstrap: str, settings: Mapping[str, str], topic: str) -> None:
        self.topic = topic
        self._producer = ck.Producer({"bootstrap.servers": bootstrap, **settings,
                                      "enable.idempotence": True, "linger.ms": 0,
                                      "partitioner": "murmur2_random"})
        self.inputs: dict[int, Input] = {}
        self.next_seq = 0
        self._errors: list[str] = []

    def produce(self, items: Iterable[tuple[bytes, str]], partition: int | None = None
                ) -> list[int]:
        """Write (key, op) inputs in order; returns their seqs once all are acknowledged."""
        seqs: list[int] = []
        for key, op in items:
            seq = self.next_seq
            self.next_seq += 1
            seqs.append(seq)

            def delivered(error: KafkaError | None, msg: ck.Message, seq: int = seq,
                          op: str = op, key: bytes = key) -> None:
                if error is not None:
                    self._errors.append(error.str())
                    return
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                self.inputs[seq] = Input(seq, op, key, partition, offset)

            if partition is None:
                self._producer.produce(self.topic, make_input(seq, op), key,
                                       on_delivery=delivered)
            else:
                self._producer.produce(self.topic, make_input(seq, op), key,
                                       partition=partition, on_delivery=delivered)
        left = self._producer.flush(30)
        assert left == 0 and not self._errors, f"feeding failed: {left} left, {self._errors}"
        return seqs

    def close(self) -> None:
        self._producer.flush(10)
        self._producer.close()

    def by_partition(self) -> dict[int, list[Input]]:
        """The inputs of each partition, in offset order (the feeder is the topic's only
        writer: offsets run from 0 without gaps)."""
        out: dict[int, list[Input]] = {}
        for item in sorted(self.inputs.values(), key=lambda i: (i.partition, i.offset)):
            rows = out.setdefault(item.partition, [])
            assert item.offset == len(rows), f"input offsets with a gap: {item}"
            rows.append(item)
        return out

    def ends(self) -> dict[int, int]:
        return {p: len(rows) for p, rows in self.by_partition().items()}


# --- the oracle --------------------------------------------------------------------------


@dataclass
class View:
    """What the output topics hold now, by input `seq`."""

    outputs: dict[int, Counter[Variant]] = field(default_factory=dict)
    dead: Counter[int] = field(default_factory=Counter)
    ordered: dict[str, list[tuple[bytes | None, int, int]]] = field(default_factory=dict)
    """Topic role -> (key, seq, partition) of each output, in the order read."""
    complete: bool = True
    """False when an open transaction keeps committed records of another one out of
    sight (exactly-once: a last stable offset below the high watermark)."""


class Oracle:
    """Reads a history's committed offsets and outputs (see the module documentation)."""

    def __init__(self, bootstrap: str, settings: Mapping[str, str], topics: Topics,
                 read_committed: bool) -> None:
        base: dict[str, str | int | float | bool] = {"bootstrap.servers": bootstrap,
                                                     **settings}
        self.topics = topics
        self.read_committed = read_committed
        self._admin = AdminClient(base)
        # Never subscribes, so never joins the group: it only fetches its offsets.
        self._offsets = ck.Consumer({**base, "group.id": topics.group,
                                     "enable.auto.commit": False,
                                     "isolation.level": "read_uncommitted"})
        self._reader = ck.Consumer({**base, "group.id": f"{topics.group}-oracle",
                                    "enable.auto.commit": False,
                                    "isolation.level": ("read_committed" if read_committed
                                                        else "read_uncommitted")})
        self._parts = [ck.TopicPartition(t, p) for t in topics.outputs for p in range(2)]
        self._reader.assign([ck.TopicPartition(tp.topic, tp.partition, ck.OFFSET_BEGINNING)
                             for tp in self._parts])
        self._view = View()

    def close(self) -> None:
        self._offsets.close()
        self._reader.close()

    def committed(self) -> dict[int, int]:
        """Partition of the input -> the group's committed offset (absent: none)."""
        wanted = [ck.TopicPartition(self.topics.input, p) for p in range(self.topics.partitions)]
        deadline = time.monotonic() + 30
        while True:
            try:
                result = self._offsets.committed(wanted, timeout=10)
                return {c.partition: c.offset for c in result
                        if c.error is None and c.offset >= 0}
            except ck.KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _ends(self, level: IsolationLevel) -> dict[tuple[str, int], int]:
        latest: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        asked = dict.fromkeys(self._parts, latest)
        deadline = time.monotonic() + 30
        while True:
            found = self._admin.list_offsets(asked, isolation_level=level, request_timeout=10)
            try:
                return {(tp.topic, tp.partition): future.result(10).offset
                        for tp, future in found.items()}
            except ck.KafkaException as exc:
                # A new topic's leader may not answer yet (NOT_LEADER_FOR_PARTITION).
                error = exc.args[0] if exc.args else None
                if not (isinstance(error, KafkaError) and error.retriable()) or (
                        time.monotonic() > deadline):
                    raise
                time.sleep(0.1)

    def view(self, timeout: float = 20.0) -> View:
        """Read on up to the current ends; the view holds everything read so far."""
        highs = self._ends(IsolationLevel.READ_UNCOMMITTED)
        targets = self._ends(IsolationLevel.READ_COMMITTED) if self.read_committed else highs
        deadline = time.monotonic() + timeout
        while True:
            positions = {(p.topic, p.partition): p.offset
                         for p in self._reader.position(self._parts)}
            behind = {tp: (positions[tp], end) for tp, end in targets.items()
                      if end > 0 and positions[tp] < end}
            if not behind:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the oracle could not read up to the end of "
                                     f"{behind} (position, end) within {timeout:.0f}s")
            for msg in self._reader.consume(1000, 0.05):
                if msg.error() is not None:
                    continue
                topic = msg.topic()
                assert topic is not None
                seq, variant = variant_of(msg.value() or b"")
                if seq < 0:
                    continue  # a probe record of a test, no history's
                role = self.topics.role(topic)
                if role == "dlq":
                    self._view.dead[seq] += 1
                else:
                    self._view.outputs.setdefault(seq, Counter())[(role, variant)] += 1
                    self._view.ordered.setdefault(role, []).append(
                        (msg.key(), seq, msg.partition() or 0))
        self._view.complete = all(targets[tp] >= highs[tp] for tp in highs)
        return self._view


def accounted(item: Input, view: View, script: Script) -> bool:
    """Whether input `item` is done as far as the topics show: dead-lettered, dropped by a
    handler, or every output of one handling of it there."""
    if view.dead[item.seq]:
        return True
    with script.lock:
        dropped = item.seq in script.returned_none
        cleaned = item.seq in script.clean
    if dropped:
        return True
    present = view.outputs.get(item.seq, Counter())
    expected = EXPECTED[item.op]
    if expected is not None and all(present[v] for v in expected):
        return True
    return cleaned and all(present[v] for v in CLEAN)


def unaccounted_below(committed: Mapping[int, int], inputs: Mapping[int, Sequence[Input]],
                      view: View, script: Script) -> list[str]:
    """The inputs a committed offset passes that are not done (see `accounted`)."""
    problems = []
    for partition, offset in sorted(committed.items()):
        for item in inputs.get(partition, [])[:offset]:
            if not accounted(item, view, script):
                problems.append(
                    f"committed offset {offset} of partition {partition} passes {item}, "
                    f"which is neither dead-lettered, dropped nor fully output (outputs "
                    f"{dict(view.outputs.get(item.seq, {}))})")
    return problems


def exactly_once_problems(item: Input, view: View, script: Script) -> list[str]:
    """Once everything is drained under exactly-once, the outputs of `item` must be those
    of exactly one handling (or one dead letter, or a drop)."""
    present = +view.outputs.get(item.seq, Counter())
    dead = view.dead[item.seq]
    with script.lock:
        dropped = item.seq in script.returned_none
    options: list[Counter[Variant]] = [Counter(dict.fromkeys(CLEAN, 1))]
    expected = EXPECTED[item.op]
    if expected is not None:
        options.append(Counter(dict.fromkeys(expected, 1)))
    if dead == 1 and not present:
        return []
    if dead == 0 and not present and dropped:
        return []
    if dead == 0 and any(present == option for option in options):
        return []
    return [f"{item}: outputs {dict(present)}, dead letters {dead}, dropped {dropped}"]


def per_key_order(view: View, rank: Callable[[int], int]) -> list[str]:
    """The outputs of each key, on each topic, must come in the order of their inputs."""
    problems = []
    for role, rows in view.ordered.items():
        last: dict[bytes | None, int] = {}
        for key, seq, _partition in rows:
            r = rank(seq)
            if r < last.get(key, -1):
                problems.append(f"{role}: key {key!r}: seq {seq} after a later input")
            last[key] = max(r, last.get(key, -1))
    return problems


# --- handlers of the command-line test (loaded by `processor run`) -------------------------

FAILING_SEQ: Final = 4
"""`fourth_fails_*` raise on the input with this seq; those after it finish after it."""

_failed = threading.Event()
_started_after = threading.Semaphore(0)
_LATE = 3  # inputs after the failing one that must be in their calls when it raises
_WAIT = 10.0


async def fourth_fails_async(artifact: Artifact) -> Artifact:
    """Async: input 4 raises once inputs 5-7 are in their calls; those finish after it."""
    seq = artifact.get("seq", -1)
    assert isinstance(seq, int)
    if seq == FAILING_SEQ:
        deadline = time.monotonic() + _WAIT
        started = 0
        while started < _LATE and time.monotonic() < deadline:
            if _started_after.acquire(blocking=False):
                started += 1
            else:
                await asyncio.sleep(0.005)
        _failed.set()
        raise RuntimeError(f"seq {seq} fails by design")
    if seq > FAILING_SEQ:
        _started_after.release()
        deadline = time.monotonic() + _WAIT
        while not _failed.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # finishes well after the failure
    return artifact.with_payload(b"new")


def fourth_fails_threads(artifact: Artifact) -> Artifact:
    """Blocking (run with `--handler-mode threads`): as `fourth_fails_async`."""
    seq = artifact.get("seq", -1)
    assert isinstance(seq, int)
    if seq == FAILING_SEQ:
        deadline = time.monotonic() + _WAIT
        for _ in range(_LATE):
            _started_after.acquire(timeout=max(0.0, deadline - time.monotonic()))
        _failed.set()
        raise RuntimeError(f"seq {seq} fails by design")
    if seq > FAILING_SEQ:
        _started_after.release()
        _failed.wait(_WAIT)
        time.sleep(0.2)  # finishes well after the failure
    return artifact.with_payload(b"new")
