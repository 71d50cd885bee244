"""`PipelineDriver`: a whole pipeline file in one process on the in-memory broker, the
stages turned round-robin on the test's thread, with a clock the test moves."""

from __future__ import annotations

import inspect
import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from processor.core.artifact import Artifact, State
from processor.core.errors import ConfigError, RetryableError
from processor.demo.run import generate
from processor.pipeline import check_pipeline, load_pipeline
from processor.testing import DriverError, PipelineDriver

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "pipelines" / "demo.yaml"
ORDERS = 300


def seq(artifact: Artifact) -> int:
    return int(str(artifact.get("seq")))


def _by_key(i: int, _: object) -> str:
    return str(i % 64)


def test_the_demo_pipeline_accounts_for_every_record_at_every_stage() -> None:
    assert check_pipeline(load_pipeline(DEMO)).ok
    orders = list(generate(ORDERS))
    with PipelineDriver(DEMO) as driver:
        assert driver.feed("orders.raw", orders, key=_by_key) == ORDERS
        assert driver.run_until_idle() > ORDERS
        dead = driver.read("orders.dlq")
        dead_by_stage = Counter(r.stage for r in dead)
        chain = [("validate", "orders.raw", "orders.validated"),
                 ("transform", "orders.validated", "orders.transformed"),
                 ("enrich", "orders.transformed", "orders.enriched")]
        for stage, source, target in chain:
            inputs, outputs = len(driver.read(source)), len(driver.read(target))
            stats = driver.stats(stage)
            assert stats.consumed == inputs, stage
            # Every input is an output, a dead letter, or dropped by the handler (a filter).
            assert outputs + dead_by_stage[stage] + stats.dropped == inputs, stage
            assert (stats.produced, stats.dead_lettered) == (outputs, dead_by_stage[stage])
        bad = ORDERS // 50
        assert dead_by_stage == {"validate": bad}  # every 50th order is bad, one way or another
        assert Counter(r.reason for r in dead) == {"decode": 2, "checksum": 2, "invalid": 2}
        assert driver.stats("transform").dropped == 4  # orders of amount 0 are filtered out
        enriched = driver.artifacts("orders.enriched")
        assert len(enriched) == ORDERS - bad - 4
        assert {a.state for a in enriched} == {State.ENRICHED}
        assert {a.get("tier") for a in enriched} <= {"small", "medium", "large"}
        assert sorted(map(seq, enriched)) == sorted(
            seq(a) for a in orders
            if isinstance(a, Artifact) and '"amount": 0,' not in a.payload.decode()
            and a.get("seq") is not None)
        raw = [r for r in dead if r.reason == "decode"]
        assert raw[0].value == b"\x00garbage that is not avro"  # dead letters keep the bytes
        assert raw[0].error and raw[0].header("dlq.original.topic") == "orders.raw"


def _trace(orders: list[Artifact | bytes]) -> list[tuple[int, int, object]]:
    with PipelineDriver(DEMO) as driver:
        driver.feed("orders.raw", orders, key=_by_key)
        driver.run_until_idle()
        return [(r.partition, r.offset, r.artifact.get("seq"))
                for r in driver.read("orders.enriched")]


def test_a_run_is_repeatable() -> None:
    orders = list(generate(120))
    assert _trace(orders) == _trace(orders)


TWO_STAGES = """\
defaults:
  bootstrap_servers: 127.0.0.1:9092
  guarantee: {guarantee}
  commit_interval: 5
  retry: {{max_attempts: 3, initial_backoff: 2, max_backoff: 2, jitter: 0}}
topics:
  in: {{input: true, partitions: 2}}
  mid: {{partitions: 2}}
  out: {{}}
  dlq: {{}}
stages:
  first: {{handlers: [validate], input_topic: in, output_topic: mid, dlq_topic: dlq}}
  second: {{handlers: [validate], input_topic: mid, output_topic: out, dlq_topic: dlq}}
"""


def orders(n: int) -> list[Artifact]:
    return [Artifact.new(f'{{"order": "o{i}", "customer": "c", "amount": 1, '
                         f'"currency": "eur"}}', meta={"seq": i}) for i in range(n)]


def test_the_clock_decides_when_an_exactly_once_stage_commits() -> None:
    with PipelineDriver.from_text(TWO_STAGES.format(guarantee="exactly-once")) as driver:
        driver.feed("in", orders(10))
        assert driver.run_until_idle(commit=False) == 10
        # Handled, but the transaction is open: nothing is visible downstream yet.
        assert driver.read("mid") == [] and driver.stats("first").produced == 10
        driver.advance(4.9)
        assert driver.run_until_idle(commit=False) == 0
        assert driver.read("mid") == []
        driver.advance(0.1)  # the commit interval has passed: `first` commits,
        assert driver.run_until_idle(commit=False) == 10  # and `second` reads
        assert len(driver.read("mid")) == 10 and driver.read("out") == []
        driver.advance(5)  # `second`'s own interval, from when it last had nothing to do
        driver.run_until_idle(commit=False)
        assert sorted(map(seq, driver.artifacts("out"))) == list(range(10))
        # By default, an idle pipeline commits what is finished at once.
        driver.feed("in", orders(3))
        assert driver.run_until_idle() == 6
        assert len(driver.read("out")) == 13


def test_a_retry_waits_for_the_clock_and_a_handler_can_be_replaced() -> None:
    calls: Counter[object] = Counter()

    def flaky(artifact: Artifact) -> Artifact:
        calls[artifact.get("seq")] += 1
        if calls[artifact.get("seq")] == 1:
            raise RetryableError("the service is down")
        return artifact.with_meta("tries", calls[artifact.get("seq")])

    text = TWO_STAGES.format(guarantee="at-least-once")
    with PipelineDriver.from_text(text, handlers={"second": flaky}) as driver:
        driver.feed("in", orders(4))  # two records on each partition of `mid`
        driver.run_until_idle()
        # The first record of each partition waits for its retry, the second behind it.
        assert driver.read("out") == [] and driver.stats("second").retried == 2
        driver.advance(1.9)
        driver.run_until_idle()
        assert driver.read("out") == []  # the backoff is 2 seconds
        driver.advance(0.1)
        driver.run_until_idle()
        assert len(driver.read("out")) == 2 and driver.stats("second").retried == 4
        driver.advance(2)
        driver.run_until_idle()
        assert [a.get("tries") for a in driver.artifacts("out")] == [2, 2, 2, 2]
        assert driver.read("dlq") == []


RING = """\
defaults: {bootstrap_servers: 127.0.0.1:9092}
topics:
  in: {input: true}
  loop: {}
stages:
  spin: {handlers: [validate], input_topic: in, output_topic: loop}
  back: {handlers: [validate], input_topic: loop, output_topic: in, ring: true}
"""


def test_run_until_idle_is_bounded() -> None:
    with PipelineDriver.from_text(RING) as driver:
        driver.feed("in", orders(1))
        with pytest.raises(DriverError, match="did not settle in 50 rounds"):
            driver.run_until_idle(max_rounds=50)
        assert driver.stats("spin").consumed >= 20 and driver.stats("back").consumed >= 20


def test_misuse_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p\.yaml:1: stages\.a\.batch_size: must be at least"):
        PipelineDriver.from_text("stages: {a: {handlers: [validate], input_topic: in, "
                                 "batch_size: 0, bootstrap_servers: x}}", source="p.yaml")
    with pytest.raises(DriverError, match=r"unknown stage.*nope"):
        PipelineDriver(DEMO, handlers={"nope": lambda a: a})
    driver = PipelineDriver(DEMO)
    with pytest.raises(DriverError, match=r"unknown topic 'orders\.nope'"):
        driver.read("orders.nope")
    with pytest.raises(DriverError, match=r"unknown topic 'orders\.nope'"):
        driver.feed("orders.nope", [b"x"])
    driver.close()
    with pytest.raises(DriverError, match="closed"):
        driver.run_until_idle()


# --- the example of docs/pipelines.md ------------------------------------------------------


def test_enriched_orders_carry_their_tier() -> None:
    # docs/pipelines.md, "The test driver": keep the two the same.
    from processor.core.artifact import Artifact
    from processor.testing import PipelineDriver

    with PipelineDriver("examples/pipelines/demo.yaml") as driver:
        driver.feed("orders.raw", [
            Artifact.new('{"order": "o1", "customer": "c1", "amount": 12.5, '
                         '"currency": "eur"}'),
            Artifact.new('{"order": "o2", "customer": "c2", "amount": 2500, '
                         '"currency": "usd"}'),
            b"not an artifact",
        ])
        driver.run_until_idle()
        enriched = driver.artifacts("orders.enriched")
        assert [a.get("tier") for a in enriched] == ["small", "large"]
        [dead] = driver.read("orders.dlq")
        assert (dead.stage, dead.reason) == ("validate", "decode")


def test_the_docs_show_the_example_above(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = (ROOT / "docs" / "pipelines.md").read_text()
    shown = re.search(r"```python\n(def test_enriched_orders_carry_their_tier.*?)```", docs,
                      re.S)
    assert shown is not None, "docs/pipelines.md lost its driver example"
    source = textwrap.dedent(inspect.getsource(test_enriched_orders_carry_their_tier))
    body = [line for line in source.splitlines() if not line.strip().startswith("#")]
    example = shown.group(1).splitlines()
    assert [line for line in example if line.strip()] == [
        line for line in body if line.strip()]
    monkeypatch.chdir(ROOT)  # the example names the file from the repository's root
    namespace: dict[str, object] = {}
    exec(compile(shown.group(1), "docs/pipelines.md", "exec"), namespace)
    test = namespace["test_enriched_orders_carry_their_tier"]
    assert callable(test)
    test()
