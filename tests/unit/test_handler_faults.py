"""Handlers that misbehave: one that returns the wrong type, one that hangs."""

from __future__ import annotations

import threading
import time

import pytest

from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.core.options import NO_RETRY, RetryPolicy
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.runtime.stage import Stage, StageFailed
from tests.unit.stage_support import CODEC, feed, make_broker, options, read_all, seqs


def marked(n: int, every: int, mark: str) -> list[Artifact]:
    return [Artifact.new(f"payload {i}", meta={"seq": i, **({mark: True} if i % every == 3
                                                           else {})}) for i in range(n)]


def test_a_handler_returning_the_wrong_type_dead_letters_the_record() -> None:
    broker = make_broker(partitions=1)
    arts = marked(40, 10, "wrong")
    feed(broker, [CODEC.encode(a) for a in arts])

    def wrong_type(a: Artifact) -> Outcome:
        return {"not": "an artifact"} if a.get("wrong") else a  # type: ignore[return-value]

    stage = Stage(options(), broker, wrong_type)
    stage.run(max_records=len(arts), idle_timeout=0.5)
    out, dlq = read_all(broker, "out"), read_all(broker, "dlq")
    assert sorted(seqs(dlq)) == [3, 13, 23, 33]
    assert [header_dict(m.headers())[H_REASON] for m in dlq] == ["handler-error"] * 4
    assert len(out) == 36
    assert stage.stats.failed == 4


def test_a_hung_handler_is_cut_off_by_its_deadline_and_health_shows_it() -> None:
    broker = make_broker(partitions=1)
    arts = marked(20, 100, "hang")  # seq 3 hangs
    feed(broker, [CODEC.encode(a) for a in arts])
    release = threading.Event()

    def hangs(a: Artifact) -> Outcome:
        if a.get("hang"):
            release.wait()
        return a

    stage = Stage(options(handler_timeout=0.2, retry=NO_RETRY), broker, hangs)
    began = time.monotonic()
    stage.run(max_records=len(arts), idle_timeout=0.5)
    assert time.monotonic() - began < 5.0
    out, dlq = read_all(broker, "out"), read_all(broker, "dlq")
    assert seqs(dlq) == [3]
    assert header_dict(dlq[0].headers())[H_REASON] == "retries-exhausted"
    assert sorted(seqs(out)) == [i for i in range(20) if i != 3]
    # The stuck call still holds its thread: unhealthy until it returns.
    assert not stage.health.is_healthy()
    assert "handler call(s) past their deadline" in stage.health.health_reason()
    release.set()
    deadline = time.monotonic() + 5.0
    while not stage.health.is_healthy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stage.health.is_healthy()


def test_a_handler_that_keeps_hanging_stops_the_stage() -> None:
    broker = make_broker(partitions=1)
    arts = [Artifact.new(f"p{i}", meta={"seq": i, "hang": True}) for i in range(10)]
    feed(broker, [CODEC.encode(a) for a in arts])
    release = threading.Event()

    def hangs(a: Artifact) -> Outcome:
        release.wait()
        return a

    retry = RetryPolicy(max_attempts=2, initial_backoff=0.0, jitter=0.0)
    stage = Stage(options(handler_timeout=0.1, retry=retry), broker, hangs)
    try:
        with pytest.raises(StageFailed, match=r"\d+ handler calls stuck past the 0\.1s deadline"):
            stage.run(max_records=len(arts) + 1, idle_timeout=5.0)
    finally:
        release.set()
