"""A ring (the seed's feedback loop): the stage closing it counts each record's passes in
the header `processor.hops` and dead-letters a record past `max_hops` (reason `hops`),
on the synchronous and the concurrent record path, under both guarantees; the counts
of records that did not loop are untouched."""

from __future__ import annotations

import pytest

from processor.backends.memory import MemoryBroker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.runtime.ring import HOPS_HEADER, hops_of
from processor.runtime.stage import Stage
from tests.unit.stage_support import CODEC, options, read_all


def forward(artifact: Artifact) -> Outcome:
    return artifact.with_meta("passes", int(artifact.get("passes", 0)) + 1)


async def forward_async(artifact: Artifact) -> Outcome:
    return forward(artifact)


def _broker() -> MemoryBroker:
    broker = MemoryBroker()
    admin = broker.admin()
    for topic in ("a", "b", "dlq"):
        admin.create_topic(topic, partitions=2)
    return broker


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_goes_round_max_hops_times_then_is_dead_lettered(
        kind: str, guarantee: str) -> None:
    broker = _broker()
    producer = broker.producer()
    for i in range(3):
        producer.produce("a", CODEC.encode(Artifact.new(f"r{i}", meta={"seq": i})),
                         b"k%d" % i)
    producer.flush()
    first = Stage(options(name="first", group="first", input_topic="a", output_topic="b",
                          guarantee=guarantee), broker, forward)
    closing = Stage(options(name="closing", group="closing", input_topic="b",
                            output_topic="a", guarantee=guarantee, max_hops=3),
                    broker, forward if kind == "sync" else forward_async)
    stages = (first, closing)
    for stage in stages:
        stage.start()
    for _ in range(3_000):
        for stage in stages:
            stage.run_once()
            stage.commit()
        if closing.stats.dead_lettered == 3 and (
                closing.concurrent is None or not closing.concurrent.busy):
            break
    for stage in stages:
        stage.close()
    dead = read_all(broker, "dlq", read_committed=True)
    assert len(dead) == 3
    assert {header_dict(m.headers())[H_REASON] for m in dead} == {"hops"}
    assert {hops_of(m.headers()) for m in dead} == {4}  # the fourth arrival
    # Three passes through the closing stage each, so 3 x 3 records written back to a;
    # every record passed the first stage 4 times (the input, then 3 returns).
    back = read_all(broker, "a", read_committed=True)
    assert len(back) == 3 + 9
    assert sorted(hops_of(m.headers()) for m in back) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert first.stats.passed == 12 and closing.stats.passed == 9
    assert closing.stats.dead_letter_reasons == {"hops": 3}
    passes = sorted(int(CODEC.decode(m.value() or b"").get("passes", 0)) for m in dead)
    assert passes == [7, 7, 7]  # 4 passes through first, 3 through closing


def test_a_stage_that_closes_no_ring_leaves_the_header_alone() -> None:
    broker = _broker()
    producer = broker.producer()
    producer.produce("a", CODEC.encode(Artifact.new("x")), b"k",
                     [(HOPS_HEADER, b"7")])
    producer.flush()
    stage = Stage(options(input_topic="a", output_topic="b"), broker, forward)
    stage.run(max_records=1, idle_timeout=2.0)
    [out] = read_all(broker, "b")
    assert hops_of(out.headers()) == 7


RING = """\
defaults:
  bootstrap_servers: 127.0.0.1:9092
  dlq_topic: ring.dlq
topics:
  ring.in: {input: true}
  ring.back: {}
  ring.dlq: {}
stages:
  first: {handlers: ["tests.unit.test_ring:forward"], input_topic: ring.in,
          output_topic: ring.back}
  closing: {handlers: ["tests.unit.test_ring:forward"], input_topic: ring.back,
            output_topic: ring.in, max_hops: 2}
"""


def test_a_ring_in_a_pipeline_file_is_declared_and_bounded() -> None:
    from processor.pipeline import check_pipeline, parse_pipeline
    from processor.testing import PipelineDriver

    pipeline = parse_pipeline(RING, "ring.yaml")
    report = check_pipeline(pipeline)
    assert report.ok, report.lines()
    assert pipeline.stages["closing"].options.max_hops == 2
    undeclared = check_pipeline(parse_pipeline(RING.replace(", max_hops: 2", ""),
                                               "ring.yaml"))
    assert any("cycle" in line for line in undeclared.lines()), undeclared.lines()
    driver = PipelineDriver(pipeline)
    try:
        driver.feed("ring.in", [Artifact.new("x")])
        driver.run_until_idle()
        [dead] = driver.read("ring.dlq")
        assert dead.header(H_REASON) == "hops"
        assert len(driver.read("ring.in")) == 1 + 2  # the input, then two passes
    finally:
        driver.close()
