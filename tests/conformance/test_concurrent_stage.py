"""Concurrent handlers in a stage, on both backends: async calls with per-key order under
at-least-once, threaded and batch handlers under exactly-once, and a rebalance while
calls are in flight under exactly-once, with nothing lost or duplicated.

Each stage runs in a thread of its own and is stopped by the test; every wait has a
deadline. Records are few (hundreds): the long order test is in
`tests/unit/test_concurrent_order.py`, on the in-memory broker.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from processor.backends.abstract import Broker, Message
from processor.core.artifact import Artifact
from processor.core.handlers import AnyHandler, BatchOutcome, Outcome
from processor.core.options import QUICK_RETRY, StageOptions
from processor.runtime.stage import Stage
from processor.serde.codec import Codec
from tests.conformance.helpers import consume_for, consume_until, quiet_period, wait_for

NewTopic = Callable[[int], str]
Name = Callable[[str], str]
CODEC = Codec()
DEADLINE = 60.0


def load(broker: Broker, topic: str, n: int, keys: int) -> None:
    producer = broker.producer()
    for i in range(n):
        producer.produce(topic, CODEC.encode(Artifact.new(b"x", meta={"seq": i})),
                         b"k%d" % (i % keys))
    assert producer.flush(30) == 0
    producer.close()


def stage_options(source: str, sink: str, group: str, **overrides: object) -> StageOptions:
    base: dict[str, object] = dict(
        name=group, input_topic=source, output_topic=sink, group=group, batch_size=200,
        poll_timeout=0.05, commit_interval=0.2, retry=QUICK_RETRY, drain_timeout=5.0)
    base.update(overrides)
    return StageOptions(**base)  # type: ignore[arg-type]


@contextmanager
def running(broker: Broker, options: StageOptions, handler: AnyHandler) -> Iterator[Stage]:
    """The stage, running in a thread until the block ends (then stopped and joined)."""
    stage = Stage(options, broker, handler)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stage.run()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=options.name, daemon=True)
    thread.start()
    try:
        yield stage
    finally:
        stage.stop()
        thread.join(30)
        assert not thread.is_alive(), "the stage did not stop"
        assert not errors, errors


def read_output(broker: Broker, sink: str, n: int, group: str,
                backend: str) -> list[Message]:
    """Everything committed on `sink`: `n` records, and a quiet moment for extra ones."""
    reader = broker.consumer(group, read_committed=True)
    reader.subscribe([sink])
    got = consume_until(reader, n, timeout=DEADLINE)
    got += consume_for(reader, quiet_period(backend))
    reader.close()
    return got


def seqs_by_key(messages: list[Message]) -> dict[bytes | None, list[int]]:
    out: dict[bytes | None, list[int]] = defaultdict(list)
    for m in messages:
        out[m.key()].append(CODEC.decode(m.value() or b"").get("seq", -1))
    return out


def check_once_in_order(messages: list[Message], n: int) -> None:
    per_key = seqs_by_key(messages)
    assert sorted(s for got in per_key.values() for s in got) == list(range(n))
    for key, got in per_key.items():
        assert got == sorted(got), f"key {key!r} out of order: {got}"


def all_committed(broker: Broker, group: str, topic: str, n: int) -> Callable[[], bool]:
    admin = broker.admin()
    return lambda: sum(admin.group_offsets(group, [topic]).values()) >= n


def test_async_handler_keeps_per_key_order(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    n = 400
    source, sink = new_topic(3), new_topic(2)
    load(broker, source, n, keys=20)
    rng = random.Random(7)
    delays = [rng.random() * 0.01 for _ in range(n)]

    async def enrich(a: Artifact) -> Outcome:
        await asyncio.sleep(delays[a.get("seq", 0)])
        return a.with_payload(b"enriched")

    group = unique_name("group")
    with running(broker, stage_options(source, sink, group, max_concurrency=64), enrich):
        wait_for(all_committed(broker, group, source, n), timeout=DEADLINE,
                 what="every input offset committed")
    check_once_in_order(read_output(broker, sink, n, unique_name("reader"), backend_name), n)


def test_threaded_and_batch_handlers_under_exactly_once(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    n = 300
    source, sink_threads, sink_batch = new_topic(2), new_topic(2), new_topic(2)
    load(broker, source, n, keys=10)

    def blocking(a: Artifact) -> Outcome:
        time.sleep(0.002)
        return a.with_payload(b"threaded")

    def batch(items: list[Artifact]) -> list[BatchOutcome]:
        return [a.with_payload(b"batched") for a in items]

    threads_group, batch_group = unique_name("threads"), unique_name("batch")
    with running(broker, stage_options(source, sink_threads, threads_group,
                                       guarantee="exactly-once", handler_mode="threads",
                                       max_concurrency=16), blocking), \
         running(broker, stage_options(source, sink_batch, batch_group,
                                       guarantee="exactly-once", handler_batch_size=64,
                                       handler_batch_wait=0.02), batch):
        wait_for(all_committed(broker, threads_group, source, n), timeout=DEADLINE,
                 what="threaded stage committed everything")
        wait_for(all_committed(broker, batch_group, source, n), timeout=DEADLINE,
                 what="batch stage committed everything")
    for sink in (sink_threads, sink_batch):
        check_once_in_order(read_output(broker, sink, n, unique_name("reader"),
                                        backend_name), n)


def test_rebalance_during_in_flight_work_under_exactly_once(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    """A second member joins while the first has calls in flight. Some calls are held
    until the first member lost partitions: those of revoked partitions outlive the drain
    bound, are cancelled, and the new owner handles their records again; the output still
    holds every record exactly once, in order per key."""
    n = 600
    source, sink = new_topic(4), new_topic(2)
    load(broker, source, n, keys=40)
    rng = random.Random(11)
    delays = [rng.random() * 0.01 for _ in range(n)]
    held = {seq for seq in range(n) if seq % 150 == 149}
    release = threading.Event()
    holding = threading.Event()
    calls: dict[int, int] = defaultdict(int)
    lock = threading.Lock()

    async def slow(a: Artifact) -> Outcome:
        seq = a.get("seq", 0)
        with lock:  # both members' event loops count here
            calls[seq] += 1
        if seq in held:
            holding.set()
            # Until the test releases it (a revocation's drain cancels it before): a held
            # call never ends by itself, however long the rebalance takes.
            while not release.is_set():
                await asyncio.sleep(0.02)
        await asyncio.sleep(delays[seq])
        return a.with_payload(b"out")

    group = unique_name("group")

    def member(name: str) -> StageOptions:
        return stage_options(source, sink, group, name=name, guarantee="exactly-once",
                             max_concurrency=200, drain_timeout=0.3,
                             transactional_id=unique_name("txn"))

    with running(broker, member("first"), slow) as first:
        concurrent = first.concurrent
        assert concurrent is not None
        # A held call in flight in the first member (the only one yet): the join of the
        # second revokes every partition (eager), and the drain gives that call up.
        wait_for(lambda: first.stats.passed >= 60 and holding.is_set(), timeout=DEADLINE,
                 what="the first member under way with a held call in flight")
        with running(broker, member("second"), slow) as second:
            try:
                wait_for(lambda: concurrent.cancelled_calls > 0, timeout=DEADLINE,
                         what="calls of revoked partitions cancelled")
            finally:
                release.set()
            wait_for(all_committed(broker, group, source, n), timeout=DEADLINE,
                     what="every input offset committed")
            assert second.stats.consumed > 0, "the second member got no partition"
    check_once_in_order(read_output(broker, sink, n, unique_name("reader"), backend_name), n)
    assert any(count > 1 for count in calls.values()), "no record was handled again"
