"""The example pipelines of other shapes (examples/pipelines/graph.yaml, ring.yaml,
sink.yaml): each passes `check`, and the test driver runs it as the file says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.core.artifact import Artifact, MediaType
from processor.pipeline import check_pipeline, load_pipeline
from processor.testing import PipelineDriver

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "examples" / "pipelines"


def event(**fields: object) -> Artifact:
    return Artifact.new(json.dumps(fields), media_type=MediaType.JSON)


@pytest.mark.parametrize("name", ["graph", "ring", "sink"])
def test_each_shape_passes_check(name: str) -> None:
    report = check_pipeline(load_pipeline(SHAPES / f"{name}.yaml"))
    assert report.ok, report.lines()


def test_graph_fans_out_by_named_output_and_in_by_two_input_topics() -> None:
    orders = [event(kind="order", quantity=q, unit_cents=250) for q in (1, 2, 3)]
    payments = [event(kind="payment", amount=10), event(kind="payment", amount=20)]
    with PipelineDriver(SHAPES / "graph.yaml") as driver:
        driver.feed("graph.events", [*orders, *payments, event(kind="refund"), b"junk"])
        driver.run_until_idle()
        assert {a.id for a in driver.artifacts("graph.orders")} == {a.id for a in orders}
        assert {a.id for a in driver.artifacts("graph.payments")} == {
            a.id for a in payments}
        merged = {a.id: a for a in driver.artifacts("graph.merged")}
        assert set(merged) == {a.id for a in (*orders, *payments)}
        assert sorted(int(str(merged[a.id].get("total_cents"))) for a in orders) == [
            250, 500, 750]
        assert all(merged[a.id].get("settled") is True for a in payments)
        assert all(a.get("merged") is True for a in merged.values())
        assert sorted((r.stage, r.reason) for r in driver.read("graph.dlq")) == [
            ("route", "decode"), ("route", "invalid")]


def test_ring_goes_round_until_done_or_max_hops() -> None:
    starts = {n: event(n=n) for n in range(1, 9)}
    with PipelineDriver(SHAPES / "ring.yaml") as driver:
        driver.feed("ring.start", list(starts.values()))
        driver.run_until_idle()
        done = {a.id: a for a in driver.artifacts("ring.done")}
        # n - 1 rounds through relay; max_hops 5 lets 5 through, the 6th is dead-lettered
        assert set(done) == {starts[n].id for n in range(1, 7)}
        assert {n: done[starts[n].id].get("rounds") for n in range(2, 7)} == {
            n: n - 1 for n in range(2, 7)}
        dead = driver.read("ring.dlq")
        assert sorted((r.stage, r.reason, r.header("processor.hops"), r.artifact.id)
                      for r in dead) == sorted(
            ("relay", "hops", "6", starts[n].id) for n in (7, 8))


def test_sink_stages_without_an_output_and_with_plain_payloads() -> None:
    good = [event(name=f" e{i} ", seq=i) for i in range(3)]
    with PipelineDriver(SHAPES / "sink.yaml") as driver:
        driver.feed("sink.events", [*good, Artifact.new("not json")])
        driver.run_until_idle()
        assert sorted(r.value for r in driver.read("sink.export")) == [
            json.dumps({"name": f"e{i}", "seq": i}, separators=(",", ":")).encode()
            for i in range(3)]
        archive = driver.stats("archive")
        assert (archive.consumed, archive.dropped, archive.produced) == (3, 3, 0)
        assert [(r.stage, r.reason) for r in driver.read("sink.dlq")] == [
            ("normalize", "invalid")]
