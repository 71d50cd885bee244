"""The delivery invariant of the stage model (`tests/unit/test_stage_model.py`), on a real
Kafka, for sampled histories.

**The invariant.** No committed offset of the group passes an input whose outputs are not
all on the output topics (exactly-once: in committed transactions, read committed) or
that is neither dead-lettered nor dropped by its handler; committed offsets never go
back. It is checked after every step of a history, from what the broker holds
(`tests/integration/invariant_support.py`: `Oracle`). After the history, the stages stop
gracefully, a clean restart with an always-succeeding handler drains the input, and every
input is done at least once (at-least-once), or exactly once with its outputs in input
order per key (exactly-once).

Under exactly-once a read-committed reader stops at the last stable offset: another
member's open transaction can keep the committed outputs of a third one out of sight for
a moment. A check that finds an input not done while that is so is completed once the
history's stages have stopped (every transaction over), before the clean drain.

**Histories** (`test_sampled_histories_keep_the_invariant`): one per handler kind (sync,
async, threads, batch) and guarantee, drawn by a seeded sampler (`PROCESSOR_INVARIANT_SEED`
picks other histories, `PROCESSOR_INVARIANT_HISTORIES` runs more of them; a failure
prints the seed and the steps). Inputs with keys over a 3-partition topic, whose content
decides the handler's outcome (same, new, fan-out, routed to a second output, drop,
invalid, retryable once, slow, boom under the error policy `dead-letter` or `fail`);
partial and full runs of `run_once`, commit intervals passing on a manual clock, graceful
and crash restarts, a second member joining and leaving (range, roundrobin or
cooperative-sticky assignment). While one member acts, the others keep turning, each on
a thread of its own, as the processes of a real group keep polling (`History.together`);
the invariant is checked between steps, with every member between two turns.

**Required cases:**

* `test_cooperative_sticky_replica_joins_and_leaves`: a second replica joins mid-stream
  and later leaves, with `partition.assignment.strategy=cooperative-sticky`; the first
  keeps partitions throughout (the rebalances are incremental), and the invariant is
  checked at each step;
* `test_refused_delivery_stops_the_stage_and_commits_nothing_past_it`: on a broker with
  SASL_SSL, SCRAM users and ACLs, the stage's principal may write its output topic but
  not its routed second output (or its dead-letter topic): the record routed there stops
  the stage with one error naming the topic, and nothing past it is committed; with the
  ACL granted, a restart delivers everything;
* `test_processor_run_error_policy_fail_commits_nothing_past_the_failed_record`:
  `processor run --error-policy fail` as a process, whose async (or threaded) handler
  raises on input 4 of 8 of one partition while inputs 5-7 finish after it: exit code 1,
  one `processor run: error:` line, committed offset at most 4; at-least-once and
  exactly-once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from processor.backends.kafka import KafkaBroker
from processor.backends.kafka.bounded import CallTimedOut
from processor.backends.kafka.consumer import KafkaConsumer
from processor.core.errors import ProcessorError
from processor.core.options import RetryPolicy, StageOptions
from processor.devtools.kafka_security import (
    BrokerSecurity,
    create_acls,
    describe_acl,
    stage_acls,
)
from processor.devtools.local_kafka import LocalKafka, LocalKafkaError, ToolMissing
from processor.ops.metrics import NullMetrics
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.stage import Stage, StageFailed
from tests.integration import invariant_support as inv
from tests.kafka_fixtures import _no_broker
from tests.procs import ROOT, processor_cmd

pytestmark = pytest.mark.kafka

logger = logging.getLogger(__name__)

ALO = "at-least-once"
EOS = "exactly-once"

STEPS_PER_HISTORY = 12
SETTLE_TURNS = 300
"""Turns each member gets to catch up with the input (a safety net: it takes a few)."""
DRAIN_TURNS = 600
SETTLE_SECONDS = 30.0
"""A safety net on the time a catch-up may take (never waited out when all is well)."""

SEED = int(os.environ.get("PROCESSOR_INVARIANT_SEED", "20240611"))
HISTORIES = int(os.environ.get("PROCESSOR_INVARIANT_HISTORIES", "1"))

CONSUMER_SETTINGS: dict[str, object] = {
    # Rebalances in a fraction of a second: a member learns of one at its next heartbeat.
    "heartbeat.interval.ms": 100,
    "session.timeout.ms": 6000,
    "statistics.interval.ms": 0,
}


class ManualClock:
    """The stages' clock: commit intervals pass when the history says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Cluster:
    """Where a history runs: the bootstrap servers, the settings of the test's own
    clients (the oracle, the feeder) and those of the stages' clients."""

    bootstrap: str
    settings: Mapping[str, str] = field(default_factory=dict)
    stage_settings: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Member:
    stage: Stage
    tid: str
    failed: BaseException | None = None
    assigned_sizes: list[int] = field(default_factory=list)
    """The size of its assignment after each of its turns."""


@dataclass(frozen=True)
class Shape:
    """What a history's stages are: handler kind, guarantee and options."""

    kind: str
    guarantee: str
    error_policy: str = "dead-letter"
    strategy: str = "range"
    order: str = "key"
    batch_size: int = 7
    drain_timeout: float = 2.0


class History:
    """Stages of one group on one set of topics, driven step by step (`run_once`), with
    the invariant checked after every step (see the module documentation)."""

    def __init__(self, cluster: Cluster, topics: inv.Topics, shape: Shape,
                 allowed: tuple[type[BaseException], ...] = (StageFailed,)) -> None:
        self.cluster = cluster
        self.topics = topics
        self.shape = shape
        self.allowed = allowed
        """Fatal errors a stage of this history may stop with."""
        topics.create(cluster.bootstrap, cluster.settings)
        self.script = inv.Script()
        self.clock = ManualClock()
        self.feeder = inv.Feeder(cluster.bootstrap, cluster.settings, topics.input)
        self.oracle = inv.Oracle(cluster.bootstrap, cluster.settings, topics,
                                 read_committed=shape.guarantee == EOS)
        self.broker = KafkaBroker(cluster.bootstrap, dict(cluster.stage_settings))
        self.members: list[Member] = []
        self.crashed: list[Stage] = []
        self.tids = 0
        self.fatal: list[BaseException] = []
        self.last_committed: dict[int, int] = {}
        self.deferred: list[tuple[str, dict[int, int]]] = []
        self.steps: list[str] = []
        self.checks = 0

    # --- stages ---------------------------------------------------------------------

    def options(self, tid: str) -> StageOptions:
        s = self.shape
        return StageOptions(
            name="inv", input_topic=self.topics.input, output_topic=self.topics.out,
            group=self.topics.group, dlq_topic=self.topics.dlq,
            outputs={inv.AUDIT: self.topics.audit},
            guarantee=s.guarantee,  # type: ignore[arg-type]
            batch_size=s.batch_size, poll_timeout=0.02, commit_interval=1.0,
            retry=RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0,
                              jitter=0.0),
            error_policy=s.error_policy,  # type: ignore[arg-type]
            shutdown_timeout=15.0,
            handler_mode="threads" if s.kind == "threads" else "auto",
            max_concurrency=4, order=s.order,  # type: ignore[arg-type]
            handler_batch_size=4, handler_batch_wait=0.0, drain_timeout=s.drain_timeout,
            transactional_id=tid,
        )

    def start_member(self, tid: str | None = None) -> Member:
        if tid is None:
            self.tids += 1
            tid = f"{self.topics.group}-{self.tids}"
        stage = build_stage(
            StageSetup(self.options(tid)), self.broker,
            handler=self.script.handler(self.shape.kind), metrics=NullMetrics(),
            clock=self.clock,
            consumer_settings={**CONSUMER_SETTINGS,
                               "partition.assignment.strategy": self.shape.strategy},
            producer_settings={"statistics.interval.ms": 0})
        stage.start()
        member = Member(stage, tid)
        self.members.append(member)
        return member

    def turn(self, member: Member) -> None:
        """One `run_once` of `member` (on whichever thread drives it); an allowed fatal
        error marks it failed, and `reap` closes it (an abort)."""
        if member.failed is not None:
            return
        try:
            member.stage.run_once()
        except self.allowed as exc:
            member.failed = exc
            self.fatal.append(exc)
            self.steps.append(f"  fatal in {member.tid}: {type(exc).__name__}: {exc}")
            return
        member.assigned_sizes.append(len(member.stage.assigned))

    def together(self, jobs: Mapping[int, Callable[[Member], None]],
                 main: Callable[[], None] | None = None,
                 exclude: Member | None = None) -> None:
        """Every live member on a thread of its own: it runs its job (`jobs`, by the
        member's id), if any, then keeps turning until every job and `main` (run on this
        thread) are over. The members of a real group are processes that keep polling
        while one of them joins, stops or commits; driven from one thread, a member's
        blocking call (a close, the committed offsets fetched at an assignment) would wait
        for a rebalance that the others, not polled meanwhile, never complete."""
        members = [m for m in self.members if m is not exclude and m.failed is None]
        done = threading.Event()
        finished = {id(m): threading.Event() for m in members}
        errors: list[BaseException] = []

        def run(member: Member) -> None:
            try:
                job = jobs.get(id(member))
                if job is not None:
                    job(member)
                finished[id(member)].set()
                while not done.is_set() and member.failed is None:
                    self.turn(member)
            except BaseException as exc:  # raised on the test's thread
                errors.append(exc)
            finally:
                finished[id(member)].set()

        threads = [threading.Thread(target=run, args=(m,), name=f"member-{m.tid}",
                                    daemon=True) for m in members]
        for thread in threads:
            thread.start()
        try:
            if main is not None:
                main()
            for member in members:
                if id(member) in jobs:
                    finished[id(member)].wait(SETTLE_SECONDS * 2)
        finally:
            done.set()
            for thread in threads:
                thread.join(60)
        if errors:
            raise errors[0]
        stuck = [t.name for t in threads if t.is_alive()]
        assert not stuck, f"members still in a turn after 60s: {stuck}"
        self.reap()

    def reap(self) -> None:
        """Close (abort) the members a fatal error stopped."""
        for member in [m for m in self.members if m.failed is not None]:
            self._close(member)

    def turns(self, counts: Mapping[int, int]) -> None:
        """`counts[id(member)]` turns of each member named, the others turning along."""
        def job(member: Member) -> None:
            for _ in range(counts[id(member)]):
                self.turn(member)
        self.together(dict.fromkeys(counts, job))

    def turn_until(self, done: Callable[[], bool]) -> None:
        """Turn every member until `done()` (bounded)."""
        deadline = time.monotonic() + SETTLE_SECONDS

        def job(member: Member) -> None:
            for _ in range(SETTLE_TURNS):
                if done() or time.monotonic() > deadline:
                    return
                self.turn(member)
        self.together({id(m): job for m in self.members})

    def settle(self) -> None:
        """Turn every member until each has handled what it was given (bounded)."""
        deadline = time.monotonic() + SETTLE_SECONDS

        def job(member: Member) -> None:
            for _ in range(SETTLE_TURNS):
                self.turn(member)
                if self.caught_up(member) or time.monotonic() > deadline:
                    return
        self.together({id(m): job for m in self.members})

    def commit_interval_passes(self) -> None:
        self.clock.advance(1.0)
        self.turns(dict.fromkeys((id(m) for m in self.members), 1))

    def settle_until_committed(self, total: int) -> dict[int, int]:
        """Settle and let commit intervals pass until the group's committed offsets add
        up to `total` (bounded in real time): a member's first assignment, or a
        transaction's commit, on a loaded secured broker may take more than one
        settle."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            self.settle()
            self.commit_interval_passes()
            committed = self.oracle.committed()
            if sum(committed.values()) >= total or time.monotonic() > deadline:
                return committed

    def close(self, member: Member) -> None:
        """A graceful stop of `member`, the others turning meanwhile."""
        self.together({}, main=lambda: self._close(member), exclude=member)

    def _close(self, member: Member) -> None:
        """A graceful stop, or an abort after a fatal error. A graceful stop may meet a
        fatal error itself (a call drained at the stop fails under `error_policy: fail`),
        which `close()` raises once the clients are closed; after an abort it must raise
        nothing (the error was reported once already): `fatal` counts both."""
        self.members.remove(member)
        try:
            member.stage.close()
        except self.allowed as exc:
            self.fatal.append(exc)
            self.steps.append(f"  close of {member.tid} raised {type(exc).__name__}: {exc}")
            if member.failed is None:
                member.failed = exc

    def crash(self, member: Member) -> None:
        """The process of `member` dies, the others turning meanwhile: its member leaves
        the group without any callback (nothing committed), its producer is neither
        flushed nor closed (at-least-once, its queued outputs may still arrive;
        exactly-once, its open transaction is aborted when a successor starts with its
        transactional id)."""
        self.members.remove(member)
        stage = member.stage

        def die() -> None:
            consumer = stage.consumer
            assert isinstance(consumer, KafkaConsumer)
            consumer._user = (None, None, None)
            try:
                consumer.close(5.0)
            except CallTimedOut as exc:
                # librdkafka's close goes on in the background (a pending join holds its
                # leave back): the process is gone either way.
                logger.info("crashed member's consumer close: %s", exc)
            stage.probe.close()
            if stage.concurrent is not None:
                stage.concurrent.close()

        self.together({}, main=die)
        self.crashed.append(stage)

    def caught_up(self, member: Member) -> bool:
        stage = member.stage
        if member.failed is not None:
            return True
        if stage.retries or (stage.concurrent is not None and stage.concurrent.busy):
            return False
        if not stage.assigned:  # joining (no history has more members than partitions)
            return False
        ends = self.feeder.ends()
        for tp in list(stage.assigned):
            position = stage.consumer.position(tp)
            if (position or 0) < ends.get(tp.partition, 0):
                return False
        return True

    # --- the invariant ---------------------------------------------------------------

    def check(self, label: str) -> None:
        committed = self.oracle.committed()
        ends = self.feeder.ends()
        for partition, offset in committed.items():
            before = self.last_committed.get(partition, 0)
            assert offset >= before, (f"{label}: committed offset of partition {partition} "
                                      f"went back: {before} -> {offset}")
            assert offset <= ends.get(partition, 0), (
                f"{label}: committed offset {offset} of partition {partition} is past its "
                f"end {ends.get(partition, 0)}")
        self.last_committed.update(committed)
        view = self.oracle.view()
        problems = inv.unaccounted_below(committed, self.feeder.by_partition(), view,
                                         self.script)
        if problems and not view.complete:
            self.deferred.append((label, dict(committed)))
        else:
            assert not problems, f"{label}:\n" + "\n".join(problems)
        self.checks += 1

    def fail_message(self, error: BaseException) -> str:
        return (f"{type(error).__name__}: {error}\nshape {self.shape}, topics "
                f"{self.topics}\nsteps:\n" + "\n".join(self.steps[-80:]))

    # --- the end ---------------------------------------------------------------------

    def stop_all(self) -> None:
        """Every member handles what it has, commits and stops; then the checks left
        for later are made (every transaction is over by then)."""
        self.settle()
        self.commit_interval_passes()
        self.check("after the last commit interval")
        for member in list(self.members):
            self.close(member)
            self.check("after a graceful stop")
        for stage in self.crashed:
            # A crashed exactly-once producer was fenced by its successor: this only
            # releases its client.
            try:
                stage.producer.close(2.0)
            except ProcessorError as exc:
                logger.info("closing a crashed stage's producer: %s", exc)
        self.crashed.clear()
        view = self.oracle.view()
        assert view.complete, "a transaction is still open after every stage stopped"
        inputs = self.feeder.by_partition()
        for label, committed in self.deferred:
            problems = inv.unaccounted_below(committed, inputs, view, self.script)
            assert not problems, f"{label} (checked once the transactions ended):\n" + \
                "\n".join(problems)

    def drain(self, clean: bool = True) -> None:
        """A restart drains the input (with the always-succeeding handler when `clean`);
        then every input must be done, at least once or exactly once in key order."""
        self.script.clean_mode = clean
        self.steps.append(f"drain (clean {clean})")
        drainer = self.start_member()
        ends = self.feeder.ends()
        committed: dict[int, int] = {}
        deadline = time.monotonic() + 60
        for _ in range(DRAIN_TURNS):
            self.turn(drainer)
            assert drainer.failed is None, f"the drain failed: {drainer.failed}"
            self.clock.advance(1.0)
            committed = self.oracle.committed()
            if all(committed.get(p, 0) >= end for p, end in ends.items()):
                break
            assert time.monotonic() < deadline, "the drain took over 60s"
        self.close(drainer)
        committed = self.oracle.committed()
        assert all(committed.get(p, 0) >= end for p, end in ends.items()), (
            f"the drain did not finish: committed {committed}, ends {ends}")
        self.check("after the drain")
        view = self.oracle.view()
        assert view.complete
        inputs = self.feeder.by_partition()
        problems = inv.unaccounted_below(ends, inputs, view, self.script)
        assert not problems, "inputs not done after the drain:\n" + "\n".join(problems)
        if self.shape.guarantee == EOS:
            problems = [p for rows in inputs.values() for item in rows
                        for p in inv.exactly_once_problems(item, view, self.script)]
            rank = {item.seq: item.offset for rows in inputs.values() for item in rows}
            problems += inv.per_key_order(view, rank.__getitem__)
            assert not problems, "exactly-once broken:\n" + "\n".join(problems)

    def end(self) -> None:
        """Release every client, also after a failure."""
        self.script.clean_mode = True
        for member in list(self.members):
            try:
                self._close(member)
            except BaseException as exc:  # already failing
                logger.warning("closing a stage after a failure: %s", exc)
        for stage in self.crashed:
            with contextlib.suppress(ProcessorError):
                stage.producer.close(1.0)
        self.crashed.clear()
        self.oracle.close()
        self.feeder.close()


@pytest.fixture
def history_factory() -> Iterator[list[History]]:
    made: list[History] = []
    yield made
    for history in made:
        history.end()


def new_history(made: list[History], cluster: Cluster, prefix: str, shape: Shape,
                partitions: int = 3,
                allowed: tuple[type[BaseException], ...] = (StageFailed,)) -> History:
    history = History(cluster, inv.Topics.unique(prefix, partitions), shape, allowed)
    made.append(history)
    return history


# --- sampled histories ---------------------------------------------------------------------

PARAMETER_SETS = [(kind, guarantee) for kind in inv.KINDS for guarantee in (ALO, EOS)]
STRATEGIES = ["range", "roundrobin", "cooperative-sticky"]


def shape_of(index: int, n: int, rng: random.Random) -> Shape:
    """The stages of history `n` of parameter set `index`: both error policies and every
    assignor for both guarantees over the sets (and in turn over the histories of one
    set); the rest drawn."""
    kind, guarantee = PARAMETER_SETS[index]
    policy = "fail" if (index + n) % 4 in (1, 2) else "dead-letter"
    return Shape(kind, guarantee, error_policy=policy,
                 strategy=STRATEGIES[(index + n) % len(STRATEGIES)],
                 order=rng.choice(["key", "partition"]),
                 batch_size=rng.choice([3, 7, 50]),
                 drain_timeout=rng.choice([0.02, 2.0]))


def run_sampled(history: History, rng: random.Random) -> None:
    ops = inv.ops_for(history.shape.kind)
    if history.shape.error_policy == "fail":
        ops += [inv.SAME] * 4  # a boom stops the stage each time: fewer of them

    def produce(low: int, high: int) -> None:
        items = [(rng.choice(inv.KEYS), rng.choice(ops)) for _ in range(rng.randint(low, high))]
        seqs = history.feeder.produce(items)
        history.steps.append(f"produce {[(k.decode(), op) for k, op in items]} as seqs "
                             f"{seqs[0]}..{seqs[-1]}")

    history.start_member()
    history.steps.append("start member 1")
    produce(4, 10)
    history.check("after the first inputs")
    for step in range(STEPS_PER_HISTORY):
        members = history.members
        if not members:
            action = "start"
        else:
            action = rng.choices(
                ["produce", "turns", "settle", "commit", "restart", "crash", "join", "leave"],
                weights=[24, 22, 16, 16, 5, 4, 7 if len(members) < 2 else 0,
                         6 if len(members) > 1 else 0])[0]
        label = f"step {step}: {action}"
        if action == "start":
            history.start_member()
        elif action == "produce":
            produce(2, 8)
            label += f" (seqs up to {history.feeder.next_seq - 1})"
        elif action == "turns":
            member = rng.choice(members)
            n = rng.randint(1, 4)
            label += f" x{n} of {member.tid}"
            history.turns({id(member): n})
        elif action == "settle":
            history.settle()
        elif action == "commit":
            history.commit_interval_passes()
        elif action == "restart":
            member = rng.choice(members)
            label += f" of {member.tid}"
            history.close(member)
            history.start_member(member.tid)
        elif action == "crash":
            member = rng.choice(members)
            label += f" of {member.tid}, restarted"
            history.crash(member)
            history.start_member(member.tid)
        elif action == "join":
            member = history.start_member()
            label += f" of {member.tid}"
        elif action == "leave":
            member = rng.choice(members)
            label += f" of {member.tid}"
            history.close(member)
        history.steps.append(label)
        history.check(label)
    history.stop_all()
    history.drain()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "index", range(len(PARAMETER_SETS)),
    ids=[f"{kind}-{guarantee}" for kind, guarantee in PARAMETER_SETS])
def test_sampled_histories_keep_the_invariant(
        kafka_bootstrap: str, history_factory: list[History], index: int) -> None:
    cluster = Cluster(kafka_bootstrap)
    for n in range(HISTORIES):
        seed = SEED + 1000 * n + index
        rng = random.Random(seed)
        shape = shape_of(index, n, rng)
        history = new_history(history_factory, cluster, "inv", shape)
        try:
            run_sampled(history, rng)
        except Exception as error:
            raise AssertionError(f"seed {seed} (PROCESSOR_INVARIANT_SEED={SEED}, history "
                                 f"{n}): " + history.fail_message(error)) from error
        assert history.checks >= STEPS_PER_HISTORY


# --- (a) cooperative-sticky: a replica joins mid-stream, then leaves --------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("kind", "guarantee"), [("threads", ALO), ("async", EOS)])
def test_cooperative_sticky_replica_joins_and_leaves(
        kafka_bootstrap: str, history_factory: list[History], kind: str,
        guarantee: str) -> None:
    shape = Shape(kind, guarantee, strategy="cooperative-sticky", order="key", batch_size=5,
                  drain_timeout=2.0)
    history = new_history(history_factory, Cluster(kafka_bootstrap), "coop", shape,
                          partitions=4)
    rng = random.Random(SEED)
    ops = [op for op in inv.ops_for(kind) if op != inv.BOOM] + [inv.SLOW] * 3

    def feed(n: int) -> None:
        history.feeder.produce([(rng.choice(inv.KEYS), rng.choice(ops)) for _ in range(n)])

    try:
        first = history.start_member()
        feed(24)
        history.turn_until(lambda: len(first.stage.assigned) == 4
                           and first.stage.stats.consumed >= 8)
        assert len(first.stage.assigned) == 4, "the first member did not get every partition"
        history.check("first member mid-stream")
        history.commit_interval_passes()
        history.check("first member committed")

        # A second replica joins while calls are in flight and input keeps coming.
        feed(12)
        history.turns({id(first): 1})
        second = history.start_member()
        history.check("second member started")
        kept_from = len(first.assigned_sizes)
        deadline = time.monotonic() + SETTLE_SECONDS
        step = 0
        while not (second.stage.assigned and len(first.stage.assigned)
                   + len(second.stage.assigned) == 4) and time.monotonic() < deadline:
            history.turns({id(first): 3, id(second): 3})
            history.check(f"rebalance, step {step}")
            step += 1
        assert first.failed is None and second.failed is None, history.fatal
        assert second.stage.assigned, "the second member got no partition"
        assert len(first.stage.assigned) + len(second.stage.assigned) == 4
        assert min(first.assigned_sizes[kept_from:]) > 0, (
            "the first member gave up every partition: the rebalance was not incremental")
        history.check("both members assigned")
        feed(16)
        history.turns({id(first): 3, id(second): 3})
        history.check("both members working")
        history.commit_interval_passes()
        history.check("both members committed")

        # The second replica leaves with calls in flight; the first takes its partitions.
        feed(12)
        history.turns({id(second): 2})
        history.check("second member mid-stream")
        kept_from = len(first.assigned_sizes)
        history.close(second)
        history.check("second member left")
        deadline = time.monotonic() + SETTLE_SECONDS
        step = 0
        while len(first.stage.assigned) < 4 and time.monotonic() < deadline:
            history.turns({id(first): 3})
            history.check(f"after the leave, step {step}")
            step += 1
        assert len(first.stage.assigned) == 4, "the first member did not get every partition back"
        assert min(first.assigned_sizes[kept_from:]) > 0, (
            "the first member gave up every partition when the second left")
        history.settle()
        history.check("first member alone again")
        assert history.fatal == [], history.fatal
        history.stop_all()
        history.drain()
    except Exception as error:
        raise AssertionError(history.fail_message(error)) from error


# --- (b) a write refused by an ACL -------------------------------------------------------------

USER = "inv-stage"


@dataclass
class Secured:
    kafka: LocalKafka
    security: BrokerSecurity

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap_servers


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A broker with SASL_SSL, SCRAM users and ACLs (none other is shared for this)."""
    directory = tmp_path_factory.mktemp("invariant-secured")
    security = BrokerSecurity.create(directory / "tls", users={USER: ""})
    kafka = LocalKafka(nodes=1, workdir=directory / "kafka", security=security)
    try:
        kafka.start()
        kafka.warm_up()
    except ToolMissing as error:
        _no_broker(str(error))
    except LocalKafkaError as error:
        pytest.fail(f"the secured local Kafka did not start: {error}", pytrace=False)
    try:
        yield Secured(kafka, security)
    finally:
        kafka.stop()


def allow_write(topic: str) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, f"User:{USER}",
                      "*", AclOperation.WRITE, AclPermissionType.ALLOW)


def wait_writable(secured: Secured, topic: str) -> None:
    """Until the stage's principal may write `topic` (an ACL takes a moment to apply):
    a probe record, which no history reads as one of its own."""
    broker = KafkaBroker(secured.bootstrap, secured.security.client_settings(USER))
    deadline = time.monotonic() + 30
    while True:
        producer = broker.producer(client_id="acl-probe")
        try:
            producer.produce(topic, b"acl probe", b"probe")
            producer.flush(10)
            if not producer.take_delivery_errors():
                return
        except ProcessorError:
            pass
        finally:
            producer.close(5)
        assert time.monotonic() < deadline, f"WRITE on {topic} not effective after 30s"
        time.sleep(0.2)


def wait_visible(secured: Secured, topic: str) -> None:
    admin = KafkaBroker(secured.bootstrap, secured.security.client_settings(USER)).admin()
    deadline = time.monotonic() + 30
    while topic not in admin.list_topics():
        assert time.monotonic() < deadline, f"the ACLs on {topic} not effective after 30s"
        time.sleep(0.2)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("refused", "guarantee"), [
    ("audit", ALO), ("audit", EOS), ("dlq", ALO), ("dlq", EOS)])
def test_refused_delivery_stops_the_stage_and_commits_nothing_past_it(
        secured: Secured, history_factory: list[History], refused: str,
        guarantee: str) -> None:
    cluster = Cluster(secured.bootstrap, secured.security.client_settings(),
                      secured.security.client_settings(USER))
    shape = Shape("sync", guarantee, batch_size=50)
    history = new_history(history_factory, cluster, "acl", shape, partitions=2,
                          allowed=(ProcessorError,))
    topics = history.topics
    refused_topic = topics.audit if refused == "audit" else topics.dlq
    allowed_topics = [t for t in topics.outputs if t != refused_topic]
    create_acls(secured.bootstrap, secured.security.client_settings(), [
        *stage_acls(USER, topics.input, topics.group, allowed_topics,
                    transactional_id=topics.group if guarantee == EOS else None),
        describe_acl(USER, ResourceType.TOPIC, refused_topic)])
    wait_visible(secured, topics.input)
    try:
        # Inputs it may write: handled and committed.
        history.feeder.produce([(b"k0", op) for op in (inv.SAME, inv.NEW, inv.FAN) * 3])
        history.start_member()
        before = history.settle_until_committed(9)
        history.check("first inputs committed")
        assert sum(before.values()) == 9, before
        # One routed to the refused topic, more behind it in its partition.
        bad_op = inv.ROUTE if refused == "audit" else inv.INVALID
        (bad,) = history.feeder.produce([(b"k0", bad_op)])
        history.feeder.produce([(b"k0", inv.SAME)] * 4)
        bad_input = history.feeder.inputs[bad]
        history.steps.append(f"fed {bad_input} and 4 more")
        for _ in range(SETTLE_TURNS):
            history.settle()
            history.commit_interval_passes()
            history.check("after the refused write")
            if not history.members:
                break
        assert not history.members, "the stage did not stop on the refused write"
        # One error, naming the topic; close() raised nothing more.
        assert len(history.fatal) == 1, history.fatal
        message = str(history.fatal[0])
        assert refused_topic in message, message
        assert "authoriz" in message.lower(), message
        print(f"stopped with: {message}")
        committed = history.oracle.committed()
        assert committed.get(bad_input.partition, 0) <= bad_input.offset, (
            f"committed {committed} passes the refused record {bad_input}")
        history.check("after the stop")

        # With the ACL granted, a restart delivers everything.
        create_acls(secured.bootstrap, secured.security.client_settings(),
                    [allow_write(refused_topic)])
        wait_writable(secured, refused_topic)
        history.stop_all()
        history.drain(clean=False)
        view = history.oracle.view()
        if refused == "audit":
            assert view.outputs[bad].get((inv.AUDIT, inv.ORIG), 0) >= 1
        else:
            assert view.dead[bad] >= 1
    except AssertionError as error:
        raise AssertionError(history.fail_message(error)) from error


# --- (c) processor run --error-policy fail ------------------------------------------------------


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("processor run: error:")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "guarantee"), [
    ("async", ALO), ("threads", ALO), ("async", EOS)])
def test_processor_run_error_policy_fail_commits_nothing_past_the_failed_record(
        kafka_bootstrap: str, tmp_path: Path, kind: str, guarantee: str) -> None:
    topics = inv.Topics.unique("cli", partitions=2)
    topics.create(kafka_bootstrap, {})
    feeder = inv.Feeder(kafka_bootstrap, {}, topics.input)
    # Eight inputs of distinct keys on one partition (per-key order lets the later ones
    # finish first, were they faster).
    feeder.produce([(f"c{i}".encode(), inv.NEW) for i in range(8)], partition=0)
    handler = "fourth_fails_async" if kind == "async" else "fourth_fails_threads"
    args = ["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", topics.input,
            "--output-topic", topics.out, "--dlq-topic", topics.dlq,
            "--group", topics.group, "--handler", f"tests.integration.invariant_support:{handler}",
            "--error-policy", "fail", "--guarantee", guarantee, "--max-concurrency", "8",
            "--commit-interval", "0.2", "--poll-timeout", "0.05", "--metrics-port", "off"]
    if kind == "threads":
        args += ["--handler-mode", "threads"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    try:
        done = subprocess.run(processor_cmd(*args), capture_output=True, text=True,
                              timeout=90, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"processor run did not stop by itself within 90s: "
                             f"{exc.stderr!r}") from None
    output = done.stdout + done.stderr
    lines = error_lines(output)
    assert done.returncode == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert f"{topics.input}[0]@{inv.FAILING_SEQ}" in lines[0], lines[0]
    assert "fails by design" in lines[0], lines[0]
    assert "Traceback" not in output, output[-3000:]

    oracle = inv.Oracle(kafka_bootstrap, {}, topics, read_committed=guarantee == EOS)
    try:
        committed = oracle.committed()
        assert committed.get(0, 0) <= inv.FAILING_SEQ, committed
        view = oracle.view()
        inputs = feeder.by_partition()
        problems = inv.unaccounted_below(committed, inputs, view, inv.Script())
        assert not problems, "\n".join(problems)
        assert inv.FAILING_SEQ not in view.outputs
        if guarantee == EOS:
            # Outputs and offsets commit together: nothing of an uncommitted input shows.
            shown = sorted(view.outputs)
            assert all(feeder.inputs[s].offset < committed.get(0, 0) for s in shown), (
                f"outputs of {shown} visible, committed {committed}")
    finally:
        oracle.close()
        feeder.close()
