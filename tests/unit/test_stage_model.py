"""A model of the stage on the in-memory broker: generated histories, checked after every
step against what the README promises (no lost or duplicated data).

A history (Hypothesis stateful testing) mixes inputs whose content decides what the
handler does with them (see `tests/unit/model_support.py`: pass through, transform, fan
out, route, drop, invalid, retry once, retry for ever, raise, raise CancelledError, hang
past `handler_timeout`, an output too large), delivery failures injected with the memory
broker's `FaultInjector`, stage turns (`run_once`, never threads with sleeps), commit
intervals passing on a manual clock, calls held at a gate until the model opens it, a
second member joining and leaving the group, crashes (a stage abandoned without
`close()`, its session expired by the broker), graceful stops and restarts in the same
group. It runs for every handler kind (sync, async, threads, batch), guarantee and
output order. The in-memory broker implements the eager rebalance protocol only (with
the `range` and `roundrobin` assignors, both drawn); it has no cooperative-sticky one.

After every step:

* **no commit passes an unfinished record**: every input below the group's committed
  offset is dead-lettered, dropped by a handler, or has every output of one handling
  durable on the output topics (exactly-once: in committed transactions);
* **committed offsets never go backwards**. Nothing in these histories may move them
  back: only an operator's offset reset would, and the model makes none;
* **every consumed record is accounted for** by each live stage:
  `consumed == passed + dropped + dead_lettered + waiting for a retry + in flight`,
  except for the records a rewind (a seek of the consumer) or a rebalance sets aside to
  be read again: the gap may grow at such an event, never shrink, and nowhere else.

A fatal error out of `run_once` (`StageFailed`, `DeliveryFailed`, or the CancelledError
a handler raised through a loop that does not catch it) is allowed; the model then
closes the stage (an abort) and the invariants must still hold.

At the end: the stages that are still running must finish what they consumed once every
handler can return (no hang); then a clean restart with an always-succeeding handler
drains the input, after which every input is done at least once (at-least-once), or
exactly once with outputs in input order per key (exactly-once, read_committed).

Profiles: the default keeps the file within a few minutes on two cores;
`HYPOTHESIS_PROFILE=long` (or `PROCESSOR_MODEL_STEPS=N`, default 100,000 for the long
profile) runs that many steps in total over all the parameter sets (a history runs half
of `STEPS_PER_HISTORY` steps on average, which the number of histories allows for).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from processor.backends.abstract import Message, TopicPartition
from processor.backends.memory import FaultInjector, MemoryBroker
from processor.core.errors import DeliveryFailed
from processor.core.options import RetryPolicy, StageOptions
from processor.runtime.stage import Stage
from processor.runtime.stage_events import StageFailed
from tests.unit import model_support as m
from tests.unit.stage_support import ManualClock, RecordingMetrics

GROUP = "g"
LIVENESS_SECONDS = 60.0
"""Real seconds the end of a history waits at most for every call to finish and for the
clean drain: far more than they take, reached only by a stuck stage."""
KEYS = [b"k0", b"k1", b"k2", b"k3", b"k4"]

# --- profiles -------------------------------------------------------------------------

PARAMETER_SETS = [
    ("sync", "at-least-once", "partition"),
    ("sync", "exactly-once", "partition"),
    ("async", "at-least-once", "key"),
    ("async", "at-least-once", "partition"),
    ("async", "exactly-once", "partition"),
    ("threads", "at-least-once", "key"),
    ("threads", "at-least-once", "partition"),
    ("threads", "exactly-once", "partition"),
    ("batch", "at-least-once", "key"),
    ("batch", "at-least-once", "partition"),
    ("batch", "exactly-once", "partition"),
]
"""Handler kind x guarantee x order, where the options allow: a synchronous handler has
no order setting (its loop keeps partition order), and exactly-once always keeps
partition order."""

STEPS_PER_HISTORY = 40


def _profile() -> settings:
    common: dict[str, Any] = dict(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
        stateful_step_count=STEPS_PER_HISTORY,
        print_blob=True,
    )
    steps = os.environ.get("PROCESSOR_MODEL_STEPS")
    if os.environ.get("HYPOTHESIS_PROFILE") == "long" or steps:
        total = int(steps or 100_000)
        examples = math.ceil(2 * total / (len(PARAMETER_SETS) * STEPS_PER_HISTORY))
        return settings(max_examples=examples, **common)
    return settings(max_examples=30, **common)


PROFILE = _profile()

# --- the model ------------------------------------------------------------------------

ALLOWED_FATAL: tuple[type[BaseException], ...] = (
    StageFailed, DeliveryFailed, asyncio.CancelledError)
"""What may stop a stage in these histories: the error policy, a failed output, or a
handler's CancelledError escaping a loop that does not absorb it."""


@dataclass
class Member:
    stage: Stage
    transactional_id: str
    metrics: RecordingMetrics
    failed: BaseException | None = None
    gap: int = 0
    """Consumed records set aside for a re-read (see the module documentation)."""
    seeks: int = 0
    """Seeks of the stage's consumer so far: its rewinds."""
    events_seen: int = 0
    """Rewinds and rebalances at the last check (the gap may change only across one)."""


class StageModel(RuleBasedStateMachine):
    """One group of stages of handler `kind` on one in-memory broker."""

    kind = "sync"
    guarantee = "at-least-once"
    order = "partition"

    def __init__(self) -> None:
        super().__init__()
        self.broker = MemoryBroker()
        admin = self.broker.admin()
        admin.create_topic(m.INPUT, partitions=m.INPUT_PARTITIONS)
        for topic in (m.OUT, m.AUDIT):
            admin.create_topic(topic, partitions=2,
                               config={"max.message.bytes": str(m.OUT_MAX_BYTES)})
        admin.create_topic(m.DLQ, partitions=2)
        self.faults = FaultInjector(self.broker)
        self.world = m.World()
        self.clock = ManualClock()
        self.members: list[Member] = []
        self.ops: dict[int, str] = {}
        self.next_seq = 0
        self.last_committed: dict[TopicPartition, int] = {}
        self.tids = 0
        self.dead_tids: list[str] = []
        self.error_policy = "dead-letter"
        self.hangs = False
        self.strategy = "range"
        self.op_choices: list[str] = []
        self.producer = self.broker.producer(client_id="feeder")
        self.history: list[str] = []

    # --- building stages ----------------------------------------------------------

    def options(self, transactional_id: str) -> StageOptions:
        return StageOptions(
            name="s1", input_topic=m.INPUT, output_topic=m.OUT, group=GROUP,
            dlq_topic=m.DLQ, outputs={"audit": m.AUDIT}, guarantee=self.guarantee,  # type: ignore[arg-type]
            batch_size=5, poll_timeout=0.0, commit_interval=1.0,
            retry=RetryPolicy(max_attempts=m.MAX_ATTEMPTS, initial_backoff=0.0,
                              max_backoff=0.0, jitter=0.0),
            error_policy=self.error_policy,  # type: ignore[arg-type]
            handler_timeout=0.05 if self.hangs else None,
            shutdown_timeout=5.0,
            handler_mode="threads" if self.kind == "threads" else "auto",
            max_concurrency=4, order=self.order,  # type: ignore[arg-type]
            handler_batch_size=4, handler_batch_wait=0.0, drain_timeout=0.05,
            transactional_id=transactional_id,
        )

    def start_member(self) -> None:
        if self.dead_tids:
            tid = self.dead_tids.pop(0)  # a restart takes over its predecessor's id
        else:
            self.tids += 1
            tid = f"s1-{self.tids}"
        metrics = RecordingMetrics()
        stage = Stage(self.options(tid), self.broker, m.handler_for(self.kind, self.world),
                      clock=self.clock, metrics=metrics,
                      consumer_settings={"partition.assignment.strategy": self.strategy})
        member = Member(stage, tid, metrics)
        self._instrument(member)
        stage.start()
        self.members.append(member)

    @staticmethod
    def _instrument(member: Member) -> None:
        """Count the stage's rewinds (seen as seeks of its consumer) so that the stats
        invariant knows when records may have been set aside to be read again; its
        revocations and losses are counted by its metrics."""
        consumer = member.stage.consumer
        seek: Callable[[TopicPartition, int], None] = consumer.seek

        def counted(partition: TopicPartition, offset: int) -> None:
            member.seeks += 1
            seek(partition, offset)

        consumer.__dict__["seek"] = counted

    def turn(self, member: Member) -> None:
        """One `run_once` of `member`'s stage, then wait for its calls to settle; a fatal
        error makes it an abort."""
        if member.failed is not None:
            return
        try:
            member.stage.run_once()
        except ALLOWED_FATAL as exc:
            self.abort(member, exc)
            return
        m.settle(member.stage, self.world)

    def abort(self, member: Member, exc: BaseException) -> None:
        member.failed = exc
        self.history.append(f"fatal: {type(exc).__name__}: {exc}")
        self._close(member)

    def _close(self, member: Member) -> None:
        try:
            member.stage.close()
        except ALLOWED_FATAL as exc:
            if member.failed is None:
                member.failed = exc
            self.history.append(f"close raised {type(exc).__name__}: {exc}")
        self.members.remove(member)
        if self.guarantee == "exactly-once":
            self.dead_tids.append(member.transactional_id)

    def crash(self, member: Member) -> None:
        """The process dies: no close, no commit; the broker expires its member and
        aborts its open transaction."""
        self.members.remove(member)
        m.expire_member(member.stage, self.broker)
        m.release_threads(member.stage)
        if self.guarantee == "exactly-once":
            m.fence(self.broker, member.transactional_id)
            self.dead_tids.append(member.transactional_id)

    # --- rules ------------------------------------------------------------------------

    @initialize(error_policy=st.sampled_from(["dead-letter", "fail"]),
                hangs=st.sampled_from([False, False, False, True]),
                strategy=st.sampled_from(["range", "roundrobin"]))
    def setup(self, error_policy: str, hangs: bool, strategy: str) -> None:
        self.error_policy = error_policy
        self.hangs = hangs
        self.strategy = strategy
        self.op_choices = m.ops_for(self.kind, hangs)
        self.start_member()

    @rule(data=st.data())
    def produce(self, data: st.DataObject) -> None:
        items = data.draw(st.lists(
            st.tuples(st.sampled_from(range(len(KEYS))), st.sampled_from(self.op_choices)),
            min_size=1, max_size=6), label="inputs (key, op)")
        for key, op in items:
            seq = self.next_seq
            self.next_seq += 1
            self.ops[seq] = op
            self.producer.produce(m.INPUT, m.make_input(seq, op), KEYS[key])
        self.producer.flush()

    @precondition(lambda self: bool(self.members))
    @rule(which=st.integers(0, 1), turns=st.integers(1, 3))
    def step(self, which: int, turns: int) -> None:
        member = self.members[which % len(self.members)]
        for _ in range(turns):
            if member not in self.members:
                break
            self.turn(member)

    @rule()
    def commit_interval_passes(self) -> None:
        self.clock.advance(1.0)

    @rule(count=st.integers(1, 2), topic=st.sampled_from([m.OUT, m.AUDIT, m.DLQ, None]),
          retriable=st.booleans())
    def fail_deliveries(self, count: int, topic: str | None, retriable: bool) -> None:
        self.faults.fail_deliveries(count, topic, reason="injected", retriable=retriable)

    @rule()
    def open_gate(self) -> None:
        self.world.open_gate()
        for member in list(self.members):
            m.settle(member.stage, self.world)

    @precondition(lambda self: len(self.members) < 2)
    @rule()
    def join(self) -> None:
        self.start_member()

    @precondition(lambda self: bool(self.members))
    @rule(which=st.integers(0, 1))
    def stop(self, which: int) -> None:
        self._close(self.members[which % len(self.members)])

    @precondition(lambda self: bool(self.members))
    @rule(which=st.integers(0, 1))
    def crash_member(self, which: int) -> None:
        self.crash(self.members[which % len(self.members)])

    @precondition(lambda self: bool(self.members))
    @rule(which=st.integers(0, 1), graceful=st.booleans())
    def restart(self, which: int, graceful: bool) -> None:
        member = self.members[which % len(self.members)]
        if graceful:
            self._close(member)
        else:
            self.crash(member)
        self.start_member()

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def no_commit_passes_an_unfinished_record(self) -> None:
        committed = m.committed_offsets(self.broker, GROUP)
        if not any(committed.values()):
            return
        now = m.seen(self.broker)
        inputs = m.inputs_by_offset(self.broker, self.ops)
        for tp, offset in committed.items():
            for item in inputs.get(tp, [])[:offset]:
                assert m.accounted(item, now, self.world), (
                    f"committed offset {offset} of {tp} passes {item}, which is neither "
                    f"dead-lettered, dropped nor fully output (outputs "
                    f"{dict(now.outputs.get(item.seq, {}))})")

    @invariant()
    def committed_offsets_never_go_back(self) -> None:
        committed = m.committed_offsets(self.broker, GROUP)
        for tp, offset in committed.items():
            before = self.last_committed.get(tp, 0)
            assert offset >= before, f"committed offset of {tp} went back: {before} -> {offset}"
            self.last_committed[tp] = offset

    @invariant()
    def every_consumed_record_is_accounted_for(self) -> None:
        for member in self.members:
            if member.failed is not None:
                continue
            stats = member.stage.stats
            gap = (stats.consumed - stats.passed - stats.dropped - stats.dead_lettered
                   - m.unfinished(member.stage))
            events = member.seeks + sum(member.metrics.rebalances.values())
            if events != member.events_seen:
                assert gap >= member.gap, (
                    f"a rewind or revocation took records out of the count: gap {member.gap}"
                    f" -> {gap} ({stats})")
                member.gap = gap
                member.events_seen = events
            assert gap == member.gap, (
                f"consumed {stats.consumed} != passed {stats.passed} + dropped "
                f"{stats.dropped} + dead-lettered {stats.dead_lettered} + unfinished "
                f"{m.unfinished(member.stage)} + set aside for a re-read {member.gap}")

    # --- the end ----------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._finish()
        finally:
            self.world.release_all()
            for member in list(self.members):
                m.release_threads(member.stage)

    def _finish(self) -> None:
        world = self.world
        # 1. Every handler can return now: what the running stages consumed must finish.
        world.release_hangs.set()
        world.open_gate()
        with world.lock:
            world.gate.set()
        # Bounded in real time, not in turns: a handler's call reports from the executor's
        # own thread (and waits out real backoffs there), which a loaded machine may run
        # long after the turns of the loop. The bound is reached only by a stuck stage.
        give_up = time.monotonic() + LIVENESS_SECONDS
        while time.monotonic() < give_up:
            for member in list(self.members):
                self.turn(member)
            self.clock.advance(1.0)
            if all(m.unfinished(x.stage) == 0 for x in self.members):
                break
            time.sleep(0.001)
        for member in self.members:
            assert m.unfinished(member.stage) == 0, (
                f"stage hung: {m.unfinished(member.stage)} record(s) consumed and never "
                f"finished although every handler call can return "
                f"({member.stage.uncommitted()})")
        self.no_commit_passes_an_unfinished_record()
        # 2. Graceful stops.
        for member in list(self.members):
            self._close(member)
        self.no_commit_passes_an_unfinished_record()
        # 3. A clean restart drains the input.
        self.faults.clear()
        for tid in self.dead_tids:
            m.fence(self.broker, tid)
        self.dead_tids = []
        world.clean_mode = True
        self.start_member()
        drainer = self.members[0]
        ends = m.end_offsets(self.broker)
        give_up = time.monotonic() + LIVENESS_SECONDS
        while time.monotonic() < give_up:
            self.turn(drainer)
            assert drainer.failed is None, f"the clean drain failed: {drainer.failed}"
            self.clock.advance(1.0)
            committed = m.committed_offsets(self.broker, GROUP)
            if all(committed.get(tp, 0) >= end for tp, end in ends.items()):
                break
            time.sleep(0.001)
        state = m.describe(drainer.stage) + "\n" + m.thread_dump()
        self._close(drainer)
        assert drainer.failed is None, f"the clean drain failed: {drainer.failed}"
        committed = m.committed_offsets(self.broker, GROUP)
        assert all(committed.get(tp, 0) >= end for tp, end in ends.items()), (
            f"the clean drain did not finish: committed {committed}, ends {ends}; "
            f"{state}; history {self.history}")
        # 4. Every input done: at least once, or exactly once in order per key.
        self.no_commit_passes_an_unfinished_record()
        now = m.seen(self.broker)
        inputs = m.inputs_by_offset(self.broker, self.ops)
        if self.guarantee == "exactly-once":
            problems = [p for rows in inputs.values() for item in rows
                        for p in m.exactly_once_problems(item, now, world)]
            rank = {item.seq: item.offset for rows in inputs.values() for item in rows}
            problems += m.per_key_order(read_committed(self.broker, m.OUT), rank.__getitem__)
            assert not problems, "exactly-once broken:\n" + "\n".join(problems)


def read_committed(broker: MemoryBroker, topic: str) -> list[Message]:
    consumer = broker.consumer(f"reader-{topic}-{time.monotonic_ns()}", read_committed=True)
    consumer.subscribe([topic])
    out: list[Message] = []
    while True:
        batch = consumer.consume(10_000, 0.0)
        if not batch:
            break
        out.extend(batch)
    consumer.close()
    return out


def model_of(kind: str, guarantee: str, order: str) -> type[StageModel]:
    return type(f"StageModel_{kind}_{guarantee}_{order}".replace("-", "_"), (StageModel,),
                {"kind": kind, "guarantee": guarantee, "order": order})


@pytest.mark.parametrize(("kind", "guarantee", "order"), PARAMETER_SETS)
def test_stage_model(kind: str, guarantee: str, order: str) -> None:
    run_state_machine_as_test(model_of(kind, guarantee, order), settings=PROFILE)
