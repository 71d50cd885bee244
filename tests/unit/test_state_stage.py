"""A counting stateful stage on the in-memory broker, under both guarantees: counts right
after restarts and crashes, nothing counted twice after an exactly-once abort, recovery
from the changelog into a fresh stage with an empty store, a partition moved to a second
member by a rebalance, dedup, the persistent store, and the combinations refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from processor.backends.memory import FaultInjector, MemoryBroker
from processor.core.artifact import Artifact
from processor.core.errors import ConfigError
from processor.core.options import GUARANTEES
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.stage import Stage
from processor.runtime.stateful import changelog_topic
from tests.unit import model_support as m
from tests.unit.stage_support import CODEC, make_broker, options, read_all
from tests.unit.state_support import count, counts

KEYS = [f"k{i}".encode() for i in range(16)]


def feed_keys(broker: MemoryBroker, n: int, start: int = 0) -> list[bytes]:
    """`n` artifacts, keys round-robin over KEYS; returns their keys."""
    producer = broker.producer()
    keys = [KEYS[(start + i) % len(KEYS)] for i in range(n)]
    for i, key in enumerate(keys):
        producer.produce("in", CODEC.encode(Artifact.new(f"p{start + i}")), key)
    producer.flush()
    return keys


def stage_for(broker: MemoryBroker, guarantee: str, tid: str = "t1", **extra: object) -> Stage:
    opts = options(guarantee=guarantee, transactional_id=tid, **extra)
    return build_stage(StageSetup(opts, create_topics=True), broker, handler=count)


def drain(stage: Stage, turns: int = 40, start: bool = True) -> None:
    """Turn `stage` (committing every few turns) until it is idle and committed."""
    if start:
        stage.start()
    idle = 0
    for turn in range(turns * 10):
        idle = 0 if stage.run_once() else idle + 1
        if turn % 4 == 3:
            stage.commit()
        if turn >= turns and idle >= 8 and not stage.ledger:
            break


def final_counts(broker: MemoryBroker, guarantee: str) -> dict[bytes, int]:
    """The counts a fresh member recovers from the changelog alone, after draining."""
    stage = stage_for(broker, guarantee, tid="final")
    drain(stage)
    result = counts(stage)
    stage.close()
    return result


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_counts_survive_graceful_restarts(guarantee: str) -> None:
    broker = make_broker()
    sent: Counter[bytes] = Counter()
    for round_ in range(3):
        sent.update(feed_keys(broker, 60, start=round_ * 60))
        stage = stage_for(broker, guarantee)
        drain(stage)
        assert stage.state is not None
        if round_:
            assert stage.state.recovered > 0  # a fresh, empty store caught up
        assert counts(stage) == dict(sent)
        stage.close()
    assert final_counts(broker, guarantee) == dict(sent)
    # The outputs carry the running count: the last per key is its total.
    last: dict[bytes, int] = {}
    for msg in read_all(broker, "out", read_committed=guarantee == "exactly-once"):
        key = msg.key()
        assert key is not None
        last[key] = int(str(CODEC.decode(msg.value() or b"").get("count")))
    assert last == dict(sent)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_counts_after_a_crash_without_close(guarantee: str) -> None:
    broker = make_broker()
    sent = Counter(feed_keys(broker, 100))
    first = stage_for(broker, guarantee)
    first.start()
    for _ in range(3):
        first.run_once()
    first.commit()
    sent.update(feed_keys(broker, 50, start=100))
    for _ in range(3):  # handled, changelog written at-least-once, never committed
        first.run_once()
    if guarantee == "at-least-once":
        assert first.state is not None
        first.state.prepare(first.ledger.committable(first.assigned))
        first.producer.flush()
    m.expire_member(first, broker)
    m.release_threads(first)
    if guarantee == "exactly-once":
        m.fence(broker, "t1")
    # State updates of records never committed are skipped: exact even at least once.
    assert final_counts(broker, guarantee) == dict(sent)


def test_nothing_counted_twice_after_an_exactly_once_abort() -> None:
    broker = make_broker()
    sent = Counter(feed_keys(broker, 90))
    stage = stage_for(broker, "exactly-once")
    stage.start()
    stage.run_once()
    stage.commit()
    FaultInjector(broker).fail_deliveries(1, "out", retriable=True)
    stage.run_once()
    stage.commit()  # the transaction fails: aborted, its records read again
    assert stage.stats.commits == 1
    drain(stage, start=False)
    assert counts(stage) == dict(sent)
    changelog = read_all(broker, changelog_topic("g", "in"), read_committed=True)
    assert changelog  # the committed updates
    stage.close()
    assert final_counts(broker, "exactly-once") == dict(sent)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_partition_moved_by_a_rebalance_is_recovered_by_its_new_owner(
        guarantee: str) -> None:
    broker = make_broker(partitions=4)
    sent = Counter(feed_keys(broker, 120))
    first = stage_for(broker, guarantee, tid="t1")
    drain(first, 10)
    assert len(first.assigned) == 4
    second = stage_for(broker, guarantee, tid="t2")
    second.start()
    for _ in range(10):  # the group rebalances: the first gives partitions up
        first.run_once()
        second.run_once()
    assert first.assigned and second.assigned
    assert second.state is not None and second.state.recovered > 0
    sent.update(feed_keys(broker, 120, start=120))
    for turn in range(40):
        first.run_once()
        second.run_once()
        if turn % 4 == 3:
            first.commit()
            second.commit()
    both = counts(first)
    assert not set(both) & set(counts(second))  # a key lives in one store
    both.update(counts(second))
    assert both == dict(sent)
    first.close()
    second.close()
    assert final_counts(broker, guarantee) == dict(sent)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_dedup_drops_artifacts_seen_within_the_window(guarantee: str) -> None:
    broker = make_broker()
    producer = broker.producer()
    originals = [Artifact.new(f"p{i}") for i in range(20)]
    for copy in range(3):  # an at-least-once producer wrote each one three times
        for i, artifact in enumerate(originals):
            producer.produce("in", CODEC.encode(artifact), KEYS[i % len(KEYS)])
        if copy == 0:
            producer.flush()
    producer.flush()
    opts = options(guarantee=guarantee, transactional_id="t1", dedup_window=3600.0)
    stage = build_stage(StageSetup(opts, create_topics=True), broker, handler=count)
    drain(stage)
    assert stage.state is not None and stage.state.deduplicated == 40
    assert sum(counts(stage).values()) == 20
    assert stage.stats.dropped == 40
    stage.close()
    outputs = read_all(broker, "out", read_committed=guarantee == "exactly-once")
    assert sorted(CODEC.decode(m.value() or b"").id for m in outputs) == sorted(
        a.id for a in originals)


def test_a_persistent_store_reads_only_the_changelog_written_since(tmp_path: Path) -> None:
    broker = make_broker(partitions=1)
    sent = Counter(feed_keys(broker, 50))
    stage = stage_for(broker, "exactly-once", state_dir=str(tmp_path))
    drain(stage)
    stage.close()
    again = stage_for(broker, "exactly-once", state_dir=str(tmp_path))
    drain(again)
    assert again.state is not None and again.state.recovered == 0  # checkpoint at the end
    assert counts(again) == dict(sent)
    again.close()
    # A store deleted from disk is rebuilt from the changelog.
    for folder in tmp_path.rglob("in-0"):
        for file in folder.iterdir():
            file.write_bytes(b"not a store")
    rebuilt = stage_for(broker, "exactly-once", state_dir=str(tmp_path))
    drain(rebuilt)
    assert rebuilt.state is not None and rebuilt.state.recovered > 0
    assert counts(rebuilt) == dict(sent)
    rebuilt.close()


def test_combinations_refused_at_build_time() -> None:
    broker = make_broker()

    async def later(artifact: Artifact) -> Artifact:
        return artifact

    with pytest.raises(ConfigError, match="synchronous per-record handler"):
        build_stage(StageSetup(options(dedup_window=10.0), create_topics=True), broker,
                    handler=later)
    with pytest.raises(ConfigError, match="handler_timeout"):
        build_stage(StageSetup(options(handler_timeout=1.0), create_topics=True), broker,
                    handler=count)
    with pytest.raises(ConfigError, match="state changelog topic g-in-state-changelog does not "
                                          "exist"):
        build_stage(StageSetup(options()), make_broker(), handler=count)
