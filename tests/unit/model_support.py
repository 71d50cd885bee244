"""The world of the stage model (`tests/unit/test_stage_model.py`): scripted handlers of
every kind, the oracle that reads what the broker holds, and the few places that look
inside a stage or the in-memory broker.

Each input artifact carries its `seq` (a number unique in the run) and an `op`, which
decides what the handler does with it. The handler kinds (sync, async, threads, batch)
share one script (`World.decide`); only waiting differs (a gate that the model opens, a
hang that only `handler_timeout` ends).

What a stage did is judged from the broker alone (`Oracle`): the outputs on `out` and
`audit` (for exactly-once, only records of committed transactions), the dead letters,
and the group's committed offsets.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from processor.backends.abstract import Message, TopicPartition
from processor.backends.memory import CONTROL, MemoryBroker
from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact, RetryableError
from processor.core.handlers import AnyHandler, BatchOutcome, Outcome, Routed
from processor.runtime.stage import Stage
from processor.serde.codec import Codec

CODEC: Final = Codec()

INPUT: Final = "in"
OUT: Final = "out"
AUDIT: Final = "audit"
DLQ: Final = "dlq"
INPUT_PARTITIONS: Final = 3
OUT_MAX_BYTES: Final = 2048
"""`max.message.bytes` of the output topics: the `large` op's output is refused."""
LARGE: Final = b"x" * 4096

MAX_ATTEMPTS: Final = 3

KINDS: Final = ("sync", "async", "threads", "batch")

# What the handler does with an input, by its `op`:
SAME = "same"              # returns the artifact itself (passed through as its bytes)
NEW = "new"                # returns a new artifact
FAN = "fan"                # two outputs: the artifact and a copy
ROUTE = "route"            # the artifact, routed to the `audit` output
DROP = "drop"              # None: dropped
INVALID = "invalid"        # raises InvalidArtifact: dead-lettered
RETRY_ONCE = "retry-once"  # RetryableError on its first attempt ever, then as `same`
RETRY_EVER = "retry-ever"  # RetryableError on every attempt: dead-lettered
BOOM = "boom"              # a plain exception: the error policy decides
CANCEL = "cancel"          # raises asyncio.CancelledError (a BaseException)
HANG = "hang"              # never returns (until the run ends): handler_timeout
LARGE_OP = "large"         # an output larger than the topic accepts
SLOW = "slow"              # as `same`, once the model opens the gate (concurrent kinds)

Variant = tuple[str, str]
"""An output as the oracle sees it: (topic, payload variant)."""

ORIG: Final = "orig"

EXPECTED: Final[dict[str, frozenset[Variant] | None]] = {
    SAME: frozenset({(OUT, ORIG)}),
    NEW: frozenset({(OUT, "new")}),
    FAN: frozenset({(OUT, ORIG), (OUT, "copy")}),
    ROUTE: frozenset({(AUDIT, ORIG)}),
    RETRY_ONCE: frozenset({(OUT, ORIG)}),
    SLOW: frozenset({(OUT, ORIG)}),
    HANG: frozenset({(OUT, ORIG)}),  # once the run ends and the hang is released
    # No output possible: dead-lettered (or, for `drop`, dropped by the handler).
    DROP: None, INVALID: None, RETRY_EVER: None, BOOM: None, CANCEL: None, LARGE_OP: None,
}
"""The outputs one successful handling of an input produces, by op."""

CLEAN: Final = frozenset({(OUT, ORIG)})
"""The outputs of the always-succeeding handler of the final drain."""


def ops_for(kind: str, hangs: bool) -> list[str]:
    """The ops a model of handler `kind` generates."""
    ops = [SAME, NEW, FAN, ROUTE, DROP, INVALID, RETRY_ONCE, RETRY_EVER, BOOM, CANCEL,
           LARGE_OP]
    if kind in ("async", "threads"):
        ops.append(SLOW)
    if hangs and kind in ("sync", "async"):  # handler_timeout applies to these only
        ops.append(HANG)
    return ops


def make_input(seq: int, op: str) -> bytes:
    return CODEC.encode(Artifact.new(f"payload {seq}", meta={"seq": seq, "op": op}))


@functools.lru_cache(maxsize=65_536)
def variant_of(value: bytes) -> tuple[int, str]:
    """(seq, payload variant) of an output record."""
    artifact = CODEC.decode(value)
    payload = artifact.payload
    if payload == b"copy":
        variant = "copy"
    elif payload == b"new":
        variant = "new"
    elif payload == LARGE:
        variant = "large"
    else:
        variant = ORIG
    return artifact.get("seq", -1), variant


# --- the handlers ----------------------------------------------------------------------


class World:
    """The handlers' shared script and what it observed.

    `attempts` counts the attempts at each input (by `seq`) over the whole run, so that
    `retry-once` succeeds on its second attempt whichever stage makes it. `returned_none`
    and `clean` are the inputs some call dropped, and those the always-succeeding handler
    handled. `calls` tracks the calls in progress by the identity of their artifact, so
    that the model can wait until every call that can finish has (`settle`).
    """

    def __init__(self, policy_attempts: int = MAX_ATTEMPTS) -> None:
        self.policy_attempts = policy_attempts
        self.lock = threading.Lock()
        self.attempts: Counter[int] = Counter()
        self.returned_none: set[int] = set()
        self.clean: set[int] = set()
        self.gate = threading.Event()
        self.release_hangs = threading.Event()
        self.clean_mode = False
        # The calls by the identity of their artifact (each record in flight has its own
        # artifact object, which the entries keep): attempts so far, the artifacts whose
        # last attempt is over, and those waiting at the gate or in a hang. The artifact
        # is kept with its id, so that an id reused by a later object never matches.
        self.call_attempts: dict[int, tuple[Artifact, int]] = {}
        self.final: dict[int, Artifact] = {}
        self.parked: dict[int, Artifact] = {}

    # bookkeeping of calls (for `settle`)

    def _begin(self, artifact: Artifact) -> int:
        with self.lock:
            known = self.call_attempts.get(id(artifact))
            n = known[1] + 1 if known is not None and known[0] is artifact else 1
            self.call_attempts[id(artifact)] = (artifact, n)
            self.final.pop(id(artifact), None)
            return n

    def _end(self, artifact: Artifact, retryable: bool, attempt: int) -> None:
        with self.lock:
            if not retryable or attempt >= self.policy_attempts:
                self.final[id(artifact)] = artifact

    def _park(self, artifact: Artifact) -> None:
        self.parked[id(artifact)] = artifact

    def _unpark(self, artifact: Artifact) -> None:
        with self.lock:
            self.parked.pop(id(artifact), None)

    def finished_or_parked(self, artifact: Artifact) -> bool:
        """Whether the call of `artifact` is over, or waits for the model (the lock
        held by the caller)."""
        return (self.final.get(id(artifact)) is artifact
                or self.parked.get(id(artifact)) is artifact)

    def open_gate(self) -> None:
        """Let the `slow` calls waiting now finish; later ones wait for the next opening."""
        with self.lock:
            gate, self.gate = self.gate, threading.Event()
        gate.set()

    def release_all(self) -> None:
        self.release_hangs.set()
        with self.lock:
            self.gate.set()
            self.clean_mode = True

    # the script

    def decide(self, artifact: Artifact) -> Outcome:
        """The outcome for `artifact` (or the exception it raises), without waiting."""
        seq = artifact.get("seq", -1)
        op = artifact.get("op", SAME)
        with self.lock:
            self.attempts[seq] += 1
            attempt = self.attempts[seq]
            clean = self.clean_mode
        if clean:
            with self.lock:
                self.clean.add(seq)
            return artifact
        if op in (SAME, SLOW, HANG):
            return artifact
        if op == NEW:
            return artifact.with_payload(b"new")
        if op == FAN:
            return [artifact, artifact.with_payload(b"copy")]
        if op == ROUTE:
            return Routed("audit", artifact)
        if op == DROP:
            with self.lock:
                self.returned_none.add(seq)
            return None
        if op == INVALID:
            raise InvalidArtifact(f"seq {seq} is invalid by design")
        if op == RETRY_ONCE:
            if attempt == 1:
                raise RetryableError(f"seq {seq}: try again")
            return artifact
        if op == RETRY_EVER:
            raise RetryableError(f"seq {seq}: never works")
        if op == BOOM:
            raise RuntimeError(f"seq {seq}: boom")
        if op == CANCEL:
            raise asyncio.CancelledError(f"seq {seq}: cancelled inside the handler")
        if op == LARGE_OP:
            return artifact.with_payload(LARGE)
        raise AssertionError(f"unknown op {op!r}")

    def _wait_kind(self, artifact: Artifact) -> str | None:
        op = artifact.get("op", SAME)
        with self.lock:
            if self.clean_mode:
                return None
        return op if op in (SLOW, HANG) else None

    def _block(self, artifact: Artifact, what: str) -> None:
        """A blocking wait, for the threads (gate) and sync (hang) kinds."""
        with self.lock:
            gate = self.gate
            self._park(artifact)
        try:
            if what == SLOW:
                gate.wait(60.0)
            else:
                self.release_hangs.wait(60.0)
        finally:
            self._unpark(artifact)

    def one(self, artifact: Artifact) -> Outcome:
        """One attempt of a blocking per-record handler (sync or threads)."""
        attempt = self._begin(artifact)
        retryable = False
        try:
            what = self._wait_kind(artifact)
            if what is not None:
                self._block(artifact, what)
            return self.decide(artifact)
        except RetryableError:
            retryable = True
            raise
        finally:
            self._end(artifact, retryable, attempt)

    async def one_async(self, artifact: Artifact) -> Outcome:
        attempt = self._begin(artifact)
        retryable = False
        try:
            what = self._wait_kind(artifact)
            if what is not None:
                with self.lock:
                    gate = self.gate
                    self._park(artifact)
                try:
                    while not (gate if what == SLOW else self.release_hangs).is_set():
                        await asyncio.sleep(0.001)
                finally:
                    self._unpark(artifact)
            return self.decide(artifact)
        except RetryableError:
            retryable = True
            raise
        except asyncio.CancelledError:
            # Cancelled from outside (handler_timeout, a drain): retried as a timeout.
            if artifact.get("op", SAME) != CANCEL:
                retryable = True
            raise
        finally:
            self._end(artifact, retryable, attempt)

    def batch(self, artifacts: list[Artifact]) -> list[BatchOutcome]:
        results: list[BatchOutcome] = []
        for artifact in artifacts:
            attempt = self._begin(artifact)
            try:
                results.append(self.decide(artifact))
                self._end(artifact, False, attempt)
            except Exception as exc:
                results.append(exc)
                self._end(artifact, isinstance(exc, RetryableError), attempt)
            except BaseException:
                # A BaseException (CancelledError) escapes the whole call, as it would;
                # the calls of the batch are over.
                for other in artifacts:
                    self._end(other, False, self.policy_attempts)
                raise
        return results


def handler_for(kind: str, world: World) -> AnyHandler:
    """A handler of `kind` running `world`'s script."""
    if kind == "async":
        async def handle_async(artifact: Artifact) -> Outcome:
            return await world.one_async(artifact)
        return handle_async
    if kind == "batch":
        def handle_batch(artifacts: list[Artifact]) -> list[BatchOutcome]:
            return world.batch(artifacts)
        return handle_batch

    def handle(artifact: Artifact) -> Outcome:
        return world.one(artifact)
    return handle


# --- looking inside a stage (the only such place) ----------------------------------------


def unfinished(stage: Stage) -> int:
    """Records the stage consumed and counted that are neither passed, dropped nor
    dead-lettered yet: waiting for a retry (the loop's own path counts the first held
    record of a partition; those behind it are counted when they are handled), or in a
    concurrent handler's calls (or done and waiting for an earlier record to leave)."""
    held = len(stage.retries)
    concurrent = stage.concurrent
    if concurrent is None:
        return held
    entries = [e for part in concurrent.inflight.partitions.values() for e in part]
    return held + sum(1 for e in entries if not e.released and not e.cancelled)


def settle(stage: Stage, world: World, timeout: float = 5.0) -> None:
    """Wait until every call a concurrent stage handed over and that can finish (not
    waiting at the gate or in a hang) has finished and reported, so that the model's
    next step sees a state that does not depend on thread timing."""
    concurrent = stage.concurrent
    if concurrent is None:
        return
    end = time.monotonic() + timeout
    waited = False
    while time.monotonic() < end:
        forming = {id(e) for e in concurrent.forming}
        running = [e for part in concurrent.inflight.partitions.values() for e in part
                   if not e.done and not e.cancelled and e.artifact is not None
                   and id(e) not in forming]
        with world.lock:
            busy = [e for e in running if e.artifact is not None
                    and not world.finished_or_parked(e.artifact)]
        if not busy:
            break
        waited = True
        time.sleep(0.0005)
    if waited:
        time.sleep(0.002)  # the executor hands a finished call over right after it


def expire_member(stage: Stage, broker: MemoryBroker) -> None:
    """The broker notices that a crashed stage's process is gone (its session expired):
    its member leaves the group without running any callback, and (exactly-once) its
    open transaction is aborted, as the broker does once its timeout passes."""
    cluster = broker._cluster
    consumer = stage.consumer
    member_id = consumer._member.member_id  # type: ignore[attr-defined]
    with cluster.lock:
        group = cluster.groups.get(stage.options.group)
        if group is not None:
            group.leave(member_id, cluster.topics)
        cluster.cond.notify_all()
    consumer._closed = True  # type: ignore[attr-defined]


def fence(broker: MemoryBroker, transactional_id: str) -> None:
    """Abort whatever transaction `transactional_id` left open (a new instance starts)."""
    producer = broker.producer(transactional_id=transactional_id, client_id="fence")
    producer.init_transactions()
    producer.close()


def release_threads(stage: Stage) -> None:
    """A crashed stage's process is gone: stop its helper threads (no broker effect)."""
    stage.probe.close()
    if stage.concurrent is not None:
        stage.concurrent.close()


# --- the oracle --------------------------------------------------------------------------


def durable_records(broker: MemoryBroker, topic: str) -> list[Message]:
    """The records of `topic` a reader can rely on: written and not part of an aborted
    or still open transaction (a non-transactional record is durable once written; the
    in-memory broker acknowledges at once). Read from the broker's state, under its lock,
    so that a transaction blocking the last stable offset does not hide the committed
    records of another."""
    cluster = broker._cluster
    with cluster.lock:
        open_offsets: dict[TopicPartition, set[int]] = {}
        for txn in cluster.open_txns.values():
            for part, offsets in txn.written.items():
                open_offsets.setdefault(part.tp, set()).update(offsets)
        out: list[Message] = []
        for part in cluster.topics.get(topic, []):
            hidden = set(part.hidden_committed)
            pending = open_offsets.get(part.tp, set())
            for offset, msg in enumerate(part.log):
                if msg is CONTROL or offset in hidden or offset in pending:
                    continue
                out.append(msg)
        return out


@dataclass
class Seen:
    """What the broker holds now, by input `seq`."""

    outputs: dict[int, Counter[Variant]] = field(default_factory=dict)
    dead: Counter[int] = field(default_factory=Counter)


def seen(broker: MemoryBroker) -> Seen:
    result = Seen()
    for topic in (OUT, AUDIT):
        for msg in durable_records(broker, topic):
            seq, variant = variant_of(msg.value() or b"")
            result.outputs.setdefault(seq, Counter())[(topic, variant)] += 1
    for msg in durable_records(broker, DLQ):
        seq, _ = variant_of(msg.value() or b"")
        result.dead[seq] += 1
    return result


def committed_offsets(broker: MemoryBroker, group: str) -> dict[TopicPartition, int]:
    return broker.admin().group_offsets(group, [INPUT])


def end_offsets(broker: MemoryBroker) -> dict[TopicPartition, int]:
    cluster = broker._cluster
    with cluster.lock:
        return {part.tp: len(part.log) for part in cluster.topics[INPUT]}


@dataclass(frozen=True)
class Input:
    seq: int
    op: str
    key: bytes
    tp: TopicPartition
    offset: int


def inputs_by_offset(broker: MemoryBroker, ops: dict[int, str]
                     ) -> dict[TopicPartition, list[Input]]:
    out: dict[TopicPartition, list[Input]] = {}
    cluster = broker._cluster
    with cluster.lock:
        for part in cluster.topics[INPUT]:
            rows = out.setdefault(part.tp, [])
            for offset, msg in enumerate(part.log):
                seq, _ = variant_of(msg.value() or b"")
                rows.append(Input(seq, ops[seq], msg.key() or b"", part.tp, offset))
    return out


def accounted(item: Input, now: Seen, world: World) -> bool:
    """Whether input `item` is done as far as the broker shows: dead-lettered, dropped by
    a handler, or every output of one handling of it durable."""
    if now.dead[item.seq]:
        return True
    with world.lock:
        dropped = item.seq in world.returned_none
        cleaned = item.seq in world.clean
    if dropped:
        return True
    present = now.outputs.get(item.seq, Counter())
    expected = EXPECTED[item.op]
    if expected is not None and all(present[v] for v in expected):
        return True
    return cleaned and all(present[v] for v in CLEAN)


def exactly_once_problems(item: Input, now: Seen, world: World) -> list[str]:
    """What is wrong with `item` under exactly-once once everything is drained: its
    outputs must be those of exactly one handling (or one dead letter, or a drop)."""
    present = now.outputs.get(item.seq, Counter())
    dead = now.dead[item.seq]
    with world.lock:
        dropped = item.seq in world.returned_none
    options: list[Counter[Variant]] = []
    expected = EXPECTED[item.op]
    if expected is not None:
        options.append(Counter(dict.fromkeys(expected, 1)))
    options.append(Counter(dict.fromkeys(CLEAN, 1)))
    if dead == 1 and not +present:
        return []
    if dead == 0 and not +present and dropped:
        return []
    if dead == 0 and any(+present == option for option in options):
        return []
    return [f"{item}: outputs {dict(present)}, dead letters {dead}, dropped {dropped}"]


def per_key_order(messages: Iterable[Message], order_of: Callable[[int], int]
                  ) -> list[str]:
    """Outputs of each key must appear in the order of their inputs."""
    last: dict[bytes | None, int] = {}
    problems = []
    for msg in messages:
        seq, _ = variant_of(msg.value() or b"")
        rank = order_of(seq)
        key = msg.key()
        if rank < last.get(key, -1):
            problems.append(f"key {key!r}: seq {seq} after a later input")
        last[key] = max(rank, last.get(key, -1))
    return problems


def describe(stage: Stage) -> str:
    """The state of a stage's loop, for a failure message."""
    parts = [stage.uncommitted(), f"assigned {sorted(stage.assigned)}",
             f"paused {stage.consumer.paused()}", f"held for retry {len(stage.retries)}",
             f"stats {stage.stats}", f"re-read one at a time {stage.oversize.singly}"]
    concurrent = stage.concurrent
    if concurrent is not None:
        parts.append(f"in flight {concurrent.inflight.count} (unfinished "
                     f"{unfinished(stage)}), calls {concurrent.calls}, forming "
                     f"{len(concurrent.forming)}, paused by the calls {sorted(concurrent.paused)}")
        entries = [e for part in concurrent.inflight.partitions.values() for e in part]
        parts.append("entries " + ", ".join(
            f"{e.tp.partition}@{e.msg.offset()}(seq "
            f"{-1 if e.artifact is None else e.artifact.get('seq', -1)}, done {e.done}, "
            f"released {e.released}, cancelled {e.cancelled}, attempts {e.attempts}, "
            f"outcome {type(e.outcome).__name__})" for e in entries[:8]))
        parts.append(f"completed queue {concurrent.completed.qsize()}")
    return "; ".join(parts)


def thread_dump() -> str:
    """Where the handler threads are, for a failure message about a stuck stage."""
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "?")
        if "handler" not in name:
            continue
        stack = traceback.format_stack(frame)[-3:]
        lines.append(f"{name}:\n{''.join(stack)}")
    return "\n".join(lines)
