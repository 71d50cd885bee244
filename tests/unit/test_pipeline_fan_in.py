"""A stage with several input topics (fan-in) in a pipeline file: an edge from each
topic, each one checked, and the test driver feeding the stage from all of them."""

from __future__ import annotations

import textwrap

from processor.core.artifact import Artifact
from processor.pipeline import check_pipeline, parse_pipeline
from processor.testing import PipelineDriver

FILE = """\
defaults:
  bootstrap_servers: 127.0.0.1:9092
topics:
  web: {input: true}
  shop: {input: true}
  orders: {}
stages:
  merge: {handlers: ["tests.unit.stage_support:identity"], input_topic: "web, shop",
          output_topic: orders}
"""


def test_a_fan_in_stage_has_an_edge_from_each_input_and_each_is_checked() -> None:
    report = check_pipeline(parse_pipeline(FILE, "p.yaml"))
    assert report.ok, report.lines()
    assert sorted(e.topic for e in report.flow.edges if e.kind == "reads") == ["shop", "web"]
    broken = check_pipeline(parse_pipeline(FILE.replace("  shop: {input: true}\n", ""),
                                           "p.yaml"))
    assert [line for line in broken.lines() if "shop" in line] == [
        "p.yaml:7: stages.merge.input_topic: stage merge reads shop, which no stage writes "
        "and topics does not declare: declare it in topics with input: true if the outside "
        "writes it"]


def test_the_driver_feeds_a_fan_in_stage_from_every_input() -> None:
    driver = PipelineDriver(parse_pipeline(textwrap.dedent(FILE), "p.yaml"))
    try:
        driver.feed("web", [Artifact.new(b'{"order": 1}', meta={"src": "web"})])
        driver.feed("shop", [Artifact.new(b'{"order": 2}', meta={"src": "shop"})])
        driver.run_until_idle()
        assert sorted(str(a.get("src")) for a in driver.artifacts("orders")) == ["shop", "web"]
    finally:
        driver.close()
