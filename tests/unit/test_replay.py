"""`processor dlq replay` and `inspect` logic on the in-memory broker (the Kafka test is
tests/integration/test_dlq_replay.py), and the report `inspect` prints; `--since` parsing."""

from __future__ import annotations

import pytest

from processor.backends.memory import MemoryBroker
from processor.cli.dlq import format_inspection
from processor.runtime.replay import (
    ReplayError,
    inspect,
    parse_since,
    replay,
)
from processor.runtime.stage import Stage
from tests.strategies import tampered_checksum
from tests.unit.stage_support import CODEC, artifacts, identity, options, read_all


def test_since_takes_a_time_or_a_duration() -> None:
    assert parse_since("2026-11-27T08:00:00") == 1795766400000
    assert parse_since("2026-11-27T09:00:00+01:00") == 1795766400000
    assert parse_since("90s", now=lambda: 1000.0) == 910_000
    assert parse_since("2h", now=lambda: 10_000.0) == 2_800_000
    with pytest.raises(ReplayError, match="neither a time"):
        parse_since("yesterday")


def dead_lettered_broker() -> MemoryBroker:
    """A stage dead-lettered 5 undecodable records, 3 with a bad checksum, a tombstone."""
    broker = MemoryBroker()
    admin = broker.admin()
    for topic in ("in", "out", "dlq"):
        admin.create_topic(topic, partitions=2)
    producer = broker.producer()
    good = [(CODEC.encode(a), a) for a in artifacts(3)]
    for i in range(5):
        producer.produce("in", b"junk %d" % i, b"j%d" % i, [("trace", b"t%d" % i)])
    for i, (data, artifact) in enumerate(good):
        producer.produce("in", tampered_checksum(data, artifact), b"c%d" % i)
    producer.produce("in", None, b"tomb")
    producer.flush()
    Stage(options(), broker, identity).run(idle_timeout=0.2)
    assert len(read_all(broker, "dlq")) == 9
    return broker


def test_replay_copies_once_with_history_and_filters() -> None:
    broker = dead_lettered_broker()
    first = replay(broker, "dlq", "in", reason="checksum", idle_timeout=0.2)
    assert (first.read, first.copied, first.skipped) == (9, 3, 6)
    again = replay(broker, "dlq", "in", reason="checksum", idle_timeout=0.2)
    assert (again.read, again.copied) == (0, 0)
    everything = replay(broker, "dlq", "in", idle_timeout=0.2)  # another group
    assert everything.copied == 9
    assert everything.by_reason == {"decode": 6, "checksum": 3}

    back = [m for m in read_all(broker, "in") if any(
        k == "replay.reason" for k, _ in m.headers() or [])]
    assert len(back) == 12
    junk = next(m for m in back if m.key() == b"j2")
    headers = dict(junk.headers() or [])
    assert junk.value() == b"junk 2"
    assert headers["trace"] == b"t2"
    assert headers["replay.reason"] == b"decode"
    assert headers["replay.original.topic"] == b"in"
    assert headers["replay.from"] == b"dlq"
    assert not any(k.startswith("dlq.") for k in headers)
    tomb = next(m for m in back if m.key() == b"tomb")
    assert tomb.value() is None


def test_history_survives_a_second_dead_letter() -> None:
    broker = dead_lettered_broker()
    replay(broker, "dlq", "in", reason="decode", idle_timeout=0.2)
    Stage(options(), broker, identity).run(idle_timeout=0.2)  # fails again
    second = [m for m in read_all(broker, "dlq") if any(
        k == "replay.reason" for k, _ in m.headers() or [])]
    assert len(second) == 6
    headers = [k for k, _ in second[0].headers() or []]
    assert "replay.reason" in headers and "dlq.reason" in headers


def test_replay_refuses_unknown_topics_and_a_loop() -> None:
    broker = dead_lettered_broker()
    with pytest.raises(ReplayError, match="unknown topic 'nope'"):
        replay(broker, "dlq", "nope")
    with pytest.raises(ReplayError, match="different topics"):
        replay(broker, "dlq", "dlq")


def test_inspect_summarises_by_reason() -> None:
    broker = dead_lettered_broker()
    found = inspect(broker, "dlq", idle_timeout=0.2)
    assert found.total == 9
    assert [(s.reason, s.count) for s in found.reasons] == [("decode", 6), ("checksum", 3)]
    decode = found.reasons[0]
    assert decode.stages == {"s1": 6} and decode.topics == {"in": 6}
    assert decode.samples == ["DecodeError: truncated artifact: input ended early (6 bytes)",
                              "EmptyInput: empty input"]  # the tombstone
    text = format_inspection(found)
    assert text.splitlines()[0] == "dlq: 9 dead letters"
    assert text.splitlines()[1].split() == ["reason", "count", "first", "(UTC)", "last", "(UTC)"]
    assert text.splitlines()[2].split()[:2] == ["decode", "6"]
    assert "checksum: stages s1 (3); from in (3)" in text
