"""The stage loop on the in-memory broker: flow, order, dead letters, retries, commits."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from processor.backends.abstract import TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact, RetryableError
from processor.core.handlers import Outcome, Routed
from processor.core.options import RetryPolicy
from processor.runtime.dead_letters import (
    H_ATTEMPTS,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_STAGE,
    H_TOPIC,
    header_dict,
)
from processor.runtime.stage import Stage, StageFailed
from tests.strategies import tampered_checksum
from tests.unit.stage_support import (
    CODEC,
    artifacts,
    feed,
    identity,
    make_broker,
    options,
    read_all,
    route_by_seq,
)


def run(stage: Stage, records: int) -> None:
    stage.run(max_records=records, idle_timeout=0.5)


def test_every_artifact_flows_through_in_order_per_key() -> None:
    broker = make_broker()
    arts = artifacts(500)
    feed(broker, [CODEC.encode(a) for a in arts])

    def tag(a: Artifact) -> Outcome:
        return a.with_meta("seen", True)

    stage = Stage(options(), broker, tag)
    run(stage, 500)
    out = read_all(broker, "out")
    assert len(out) == 500
    decoded = [CODEC.decode(m.value() or b"") for m in out]
    assert {d.id for d in decoded} == {a.id for a in arts}
    assert all(d.get("seen") is True for d in decoded)
    # Per key, sequence numbers keep the order they were produced in.
    by_key: dict[bytes | None, list[int]] = {}
    for m, d in zip(out, decoded, strict=True):
        by_key.setdefault(m.key(), []).append(d.get("seq", -1))
    for seqs in by_key.values():
        assert seqs == sorted(seqs)
    assert stage.stats.consumed == stage.stats.passed == 500


def test_unchanged_artifacts_pass_through_as_their_original_bytes() -> None:
    broker = make_broker()
    values = [CODEC.encode(a) for a in artifacts(20)]
    feed(broker, values)
    run(Stage(options(), broker, identity), 20)
    assert sorted(m.value() or b"" for m in read_all(broker, "out")) == sorted(values)


def test_offsets_are_committed_after_outputs_so_a_new_member_resumes() -> None:
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in artifacts(120)])
    run(Stage(options(), broker, identity), 120)
    committed = broker.admin().group_offsets("g", ["in"])
    assert sum(committed.values()) == 120
    # A second run of the same group finds nothing left to do.
    again = Stage(options(), broker, identity)
    again.run(idle_timeout=0.2)
    assert again.stats.consumed == 0


def test_bad_input_is_dead_lettered_with_headers_and_nothing_is_lost() -> None:
    broker = make_broker(partitions=1)
    good = [CODEC.encode(a) for a in artifacts(30)]
    artifact = Artifact.new("tampered")
    tampered = tampered_checksum(CODEC.encode(artifact), artifact)
    invalid = CODEC.encode(Artifact.new("reject me"))
    values = [*good[:10], b"\x00\x01not avro", *good[10:20], bytes(tampered), invalid, b"",
              *good[20:]]
    feed(broker, values, keys=[b"k"] * len(values))

    def strict(a: Artifact) -> Outcome:
        if a.payload == b"reject me":
            raise InvalidArtifact("payload says reject me")
        return a

    stage = Stage(options(), broker, strict)
    run(stage, len(values))
    out, dlq = read_all(broker, "out"), read_all(broker, "dlq")
    assert len(out) == 30
    assert len(dlq) == 4
    reasons = [header_dict(m.headers())[H_REASON] for m in dlq]
    assert reasons == ["decode", "checksum", "invalid", "decode"]
    first = header_dict(dlq[0].headers())
    assert first[H_STAGE] == "s1"
    assert first[H_TOPIC] == "in"
    assert first[H_PARTITION] == "0"
    assert first[H_OFFSET] == "10"
    assert dlq[0].value() == b"\x00\x01not avro"
    stats = stage.stats
    assert stats.consumed == len(values)
    assert stats.passed + stats.dropped + stats.dead_lettered == stats.consumed


def test_dropped_and_fanned_out_and_routed_outputs() -> None:
    broker = make_broker(extra=("audit",))
    route = route_by_seq
    feed(broker, [CODEC.encode(a) for a in artifacts(30)])
    stage = Stage(options(outputs={"audit": "audit"}), broker, route)
    run(stage, 30)
    assert len(read_all(broker, "out")) == 20
    assert len(read_all(broker, "audit")) == 10
    assert stage.stats.dropped == 10
    assert stage.stats.produced == 30


def test_routing_to_an_unknown_output_stops_the_stage() -> None:
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in artifacts(3)])
    stage = Stage(options(), broker, lambda a: Routed("nowhere", a))
    with pytest.raises(StageFailed, match="nowhere"):
        run(stage, 3)


def test_retryable_errors_are_retried_in_order_then_succeed() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(10)], keys=[b"k"] * 10)
    failures: dict[int, int] = {3: 2, 7: 1}

    def flaky(a: Artifact) -> Outcome:
        seq = a.get("seq", 0)
        if failures.get(seq, 0) > 0:
            failures[seq] -= 1
            raise RetryableError(f"service down for {seq}")
        return a

    stage = Stage(options(), broker, flaky)
    stage.run(idle_timeout=1.0)
    seqs = [CODEC.decode(m.value() or b"").get("seq", -1) for m in read_all(broker, "out")]
    assert seqs == list(range(10))
    assert stage.stats.retried == 3
    assert stage.stats.consumed == 10
    assert stage.stats.dead_lettered == 0


def test_retries_exhausted_go_to_the_dead_letter_topic() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(5)], keys=[b"k"] * 5)

    def always_down(a: Artifact) -> Outcome:
        if a.get("seq", 0) == 2:
            raise RetryableError("still down")
        return a

    retry = RetryPolicy(max_attempts=3, initial_backoff=0.005, max_backoff=0.01, jitter=0)
    stage = Stage(options(retry=retry), broker, always_down)
    stage.run(idle_timeout=1.0)
    dlq = read_all(broker, "dlq")
    assert len(dlq) == 1
    headers = header_dict(dlq[0].headers())
    assert headers[H_REASON] == "retries-exhausted"
    assert headers[H_ATTEMPTS] == "3"
    seqs = [CODEC.decode(m.value() or b"").get("seq", -1) for m in read_all(broker, "out")]
    assert seqs == [0, 1, 3, 4]
    assert stage.stats.consumed == 5
    assert stage.stats.passed + stage.stats.dead_lettered == 5


def test_handler_crash_is_dead_lettered_by_default_and_stops_under_fail_policy() -> None:
    def boom(a: Artifact) -> Outcome:
        if a.get("seq", 0) == 4:
            raise ZeroDivisionError("bad math")
        return a

    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(8)], keys=[b"k"] * 8)
    stage = Stage(options(), broker, boom)
    run(stage, 8)
    dlq = read_all(broker, "dlq")
    assert [header_dict(m.headers())[H_REASON] for m in dlq] == ["handler-error"]
    assert "ZeroDivisionError" in header_dict(dlq[0].headers())["dlq.error.class"]

    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(8)], keys=[b"k"] * 8)
    failing = Stage(options(error_policy="fail", batch_size=2), broker, boom)
    with pytest.raises(StageFailed, match="bad math"):
        run(failing, 8)
    # Everything before the failing record is committed; the failing one is not.
    assert broker.admin().group_offsets("g", ["in"])[TopicPartition("in", 0)] == 4


def test_bad_input_without_a_dead_letter_topic_stops_without_committing_it() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(Artifact.new("ok")), b"junk"], keys=[b"k", b"k"])
    stage = Stage(options(dlq_topic=None), broker, identity)
    with pytest.raises(StageFailed, match="no dead-letter topic"):
        run(stage, 2)
    assert broker.admin().group_offsets("g", ["in"])[TopicPartition("in", 0)] == 1


def test_exactly_once_outputs_are_visible_only_after_the_transaction_commits() -> None:
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in artifacts(40)])
    stage = Stage(options(guarantee="exactly-once", commit_interval=3600), broker, identity)
    stage.start()
    while stage.stats.consumed < 40:
        stage.run_once()
    assert read_all(broker, "out", read_committed=True) == []
    assert len(read_all(broker, "out", read_committed=False)) == 40
    stage.commit()
    assert len(read_all(broker, "out", read_committed=True)) == 40
    assert sum(broker.admin().group_offsets("g", ["in"]).values()) == 40


def test_stop_from_another_thread_drains_and_commits() -> None:
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in artifacts(200)])
    stage = Stage(options(commit_interval=3600), broker, identity)
    thread = threading.Thread(target=stage.run)
    thread.start()
    deadline_hit = not _wait(lambda: stage.stats.consumed >= 200, 10)
    stage.stop()
    thread.join(10)
    assert not deadline_hit
    assert not thread.is_alive()
    assert sum(broker.admin().group_offsets("g", ["in"]).values()) == 200


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    event = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        event.wait(0.01)
    return condition()
