"""A model of a stateful (counting) stage on the in-memory broker: generated histories of
inputs (duplicates of earlier artifacts among them, as an at-least-once producer writes),
stage turns, commits, failed outputs (an exactly-once abort), crashes without close (also
right after the changelog was flushed, before the offsets were committed), graceful
stops, restarts and a second member joining (rebalances), with an invariant checked after
every step.

**The invariant.** What a clean restart would recover equals what the committed offsets
say was handled: for every key, the count rebuilt from the changelog by the recovery rule
(records whose source offset is below the group's committed offset of their partition;
exactly-once: committed transactions only) equals the number of its inputs below those
offsets (with dedup on: of distinct artifacts) under exactly-once, or with dedup on under
at-least-once; at least that number otherwise. At the end the members stop, a clean
restart drains the input, and every key's count is checked the same way against all of
its inputs.

The default profile runs in well under a minute on two cores; `HYPOTHESIS_PROFILE=long`
runs more and longer histories.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass

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
from processor.core.artifact import Artifact
from processor.core.errors import DeliveryFailed
from processor.core.options import GUARANTEES
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.stage import Stage
from processor.runtime.stage_events import StageFailed
from processor.runtime.stateful import changelog_topic
from processor.state.values import decode_value, parse_state_key, source_offset
from tests.unit import model_support as m
from tests.unit.stage_support import CODEC, committed, make_broker, options
from tests.unit.state_support import count, counts

FATAL = (DeliveryFailed, StageFailed)
KEYS = [f"k{i}".encode() for i in range(6)]
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def read_all(broker: MemoryBroker, topic: str, read_committed: bool = False
             ) -> list[Message]:
    """Every record of `topic` (committed ones with `read_committed`), without waiting
    for a timeout once each partition is read to its end."""
    consumer = broker.consumer(f"reader-{id(object())}", read_committed=read_committed)
    consumer.subscribe([topic])
    out: list[Message] = []
    for _ in range(50):
        out.extend(consumer.consume(10_000, 0.0))
        parts = consumer.assignment()
        if parts and all((consumer.position(tp) or 0) >= consumer.watermarks(tp)[1]
                         for tp in parts):
            break
    consumer.close()
    return out


@dataclass
class Member:
    stage: Stage
    tid: str


class StateModel(RuleBasedStateMachine):
    guarantee = "at-least-once"
    dedup = False

    def __init__(self) -> None:
        super().__init__()
        self.broker: MemoryBroker = make_broker(partitions=3)
        self.faults = FaultInjector(self.broker)
        self.sent: list[tuple[bytes, bytes]] = []  # (key, encoded artifact)
        self.members: list[Member] = []
        self.tids = 0
        self.dead_tids: list[str] = []

    @property
    def eos(self) -> bool:
        return self.guarantee == "exactly-once"

    def start_member(self) -> None:
        if self.dead_tids:
            tid = self.dead_tids.pop(0)
        else:
            self.tids += 1
            tid = f"t{self.tids}"
        opts = options(guarantee=self.guarantee, transactional_id=tid, commit_interval=3600.0,
                       dedup_window=3600.0 if self.dedup else None)
        stage = build_stage(StageSetup(opts, create_topics=True), self.broker, handler=count)
        stage.start()
        self.members.append(Member(stage, tid))

    @initialize()
    def first_member(self) -> None:
        self.start_member()

    # --- rules ------------------------------------------------------------------------

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=12),
          duplicate=st.booleans())
    def produce(self, keys: list[bytes], duplicate: bool) -> None:
        producer = self.broker.producer()
        batch = [(key, CODEC.encode(Artifact.new(f"{key!r}"))) for key in keys]
        if duplicate and self.sent:
            batch.append(self.sent[len(self.sent) // 2])  # the same artifact again
        for key, value in batch:
            producer.produce("in", value, key)
        producer.flush()
        self.sent.extend(batch)

    @precondition(lambda self: self.members)
    @rule(which=st.integers(0, 1), turns=st.integers(1, 3))
    def turn(self, which: int, turns: int) -> None:
        member = self.members[which % len(self.members)]
        for _ in range(turns):
            try:
                member.stage.run_once()
            except FATAL:
                self.failed(member)
                return

    @precondition(lambda self: self.members)
    @rule(which=st.integers(0, 1))
    def commit(self, which: int) -> None:
        member = self.members[which % len(self.members)]
        try:
            member.stage.commit()
        except FATAL:
            self.failed(member)

    def failed(self, member: Member) -> None:
        """A fatal error: the stage aborts on close (at least once, a failed output)."""
        self.members.remove(member)
        with contextlib.suppress(*FATAL):
            member.stage.close()
        self.dead_tids.append(member.tid)

    @precondition(lambda self: self.members)
    @rule(which=st.integers(0, 1))
    def fail_an_output(self, which: int) -> None:
        """An output of the next turn fails: exactly-once aborts the transaction at the
        commit (and the state's writes with it) and reads again; at-least-once stops."""
        self.faults.fail_deliveries(1, "out", retriable=True)
        member = self.members[which % len(self.members)]
        try:
            member.stage.run_once()
            member.stage.commit()
        except FATAL:
            self.failed(member)
        finally:
            self.faults.clear()  # unused when the turn produced nothing

    @precondition(lambda self: len(self.members) < 2)
    @rule()
    def join(self) -> None:
        self.start_member()

    @precondition(lambda self: self.members)
    @rule(which=st.integers(0, 1), after_flush=st.booleans())
    def crash(self, which: int, after_flush: bool) -> None:
        """The process dies without close; at least once, possibly right after the
        changelog was flushed and before the offsets were committed."""
        member = self.members.pop(which % len(self.members))
        stage = member.stage
        if after_flush and not self.eos and stage.state is not None:
            stage.state.prepare(stage.ledger.committable(stage.assigned))
            stage.producer.flush()
        m.expire_member(stage, self.broker)
        m.release_threads(stage)
        if self.eos:
            m.fence(self.broker, member.tid)
        self.dead_tids.append(member.tid)

    @precondition(lambda self: self.members)
    @rule(which=st.integers(0, 1), restart=st.booleans())
    def stop(self, which: int, restart: bool) -> None:
        member = self.members.pop(which % len(self.members))
        with contextlib.suppress(*FATAL):
            member.stage.close()
        self.dead_tids.append(member.tid)
        if restart:
            self.start_member()

    # --- the invariant ----------------------------------------------------------------

    def expected(self, below: dict[TopicPartition, int] | None) -> Counter[bytes]:
        """Inputs per key (distinct artifacts with dedup) below `below` (None: all)."""
        result: Counter[bytes] = Counter()
        seen: set[tuple[int, bytes]] = set()
        for msg in read_all(self.broker, "in"):
            tp = TopicPartition(msg.topic(), msg.partition())
            if below is not None and msg.offset() >= below.get(tp, 0):
                continue
            value = msg.value() or b""
            if self.dedup:
                if (msg.partition(), value) in seen:
                    continue
                seen.add((msg.partition(), value))
            key = msg.key()
            assert key is not None
            result[key] += 1
        return result

    def recoverable(self, offsets: dict[TopicPartition, int]) -> Counter[bytes]:
        """The counts a recovery would rebuild from the changelog now."""
        state: dict[bytes, int | None] = {}
        topic = changelog_topic("g", "in")
        for msg in read_all(self.broker, topic, read_committed=self.eos):
            source = source_offset(msg.headers())
            assert source is not None
            if source >= offsets.get(TopicPartition("in", msg.partition()), 0):
                continue
            parsed = parse_state_key(msg.key() or b"")
            if parsed is None or parsed[1] != "count":
                continue
            value = msg.value()
            assert parsed[0] is not None
            state[parsed[0]] = None if value is None else int(decode_value(value))
        return Counter({k: v for k, v in state.items() if v})

    def check(self, got: Counter[bytes], want: Counter[bytes]) -> None:
        if self.eos or self.dedup:
            assert got == want
        else:
            for key, n in want.items():
                assert got[key] >= n, (key, got[key], n)

    @invariant()
    def committed_state_matches_committed_offsets(self) -> None:
        offsets = committed(self.broker)
        self.check(self.recoverable(offsets), self.expected(offsets))

    def teardown(self) -> None:
        self.faults.clear()
        for member in self.members:
            with contextlib.suppress(*FATAL):
                member.stage.close()
        self.members = []
        self.start_member()
        stage = self.members[0].stage
        idle = 0
        for turn in range(400):
            idle = 0 if stage.run_once() else idle + 1
            if turn % 3 == 2:
                stage.commit()
            if idle >= 6 and not stage.ledger:
                break
        self.check(Counter(counts(stage)), self.expected(None))
        stage.close()


@pytest.mark.parametrize(("guarantee", "dedup"), [
    (GUARANTEES[0], False), (GUARANTEES[0], True), (GUARANTEES[1], False),
])
def test_state_model(guarantee: str, dedup: bool) -> None:
    model = type(f"StateModel_{guarantee}_{dedup}", (StateModel,),
                 {"guarantee": guarantee, "dedup": dedup})
    run_state_machine_as_test(model, settings=settings(
        max_examples=80 if LONG else 25, stateful_step_count=60 if LONG else 30,
        deadline=None, derandomize=not LONG,
        suppress_health_check=[HealthCheck.too_slow]))
