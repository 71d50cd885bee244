"""`processor pipeline check` and `graph`: every finding at its place, the edges that
follow from the topics, cycles and rings, Mermaid, and the commands."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.core.artifact import Artifact
from processor.pipeline import check_pipeline, flow, load_pipeline, mermaid, parse_pipeline
from processor.pipeline.check import Report
from processor.pipeline.model import schema_text

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "pipelines" / "demo.yaml"

HEAD = """\
defaults:
  bootstrap_servers: 127.0.0.1:9092
"""


async def slow(artifact: Artifact) -> Artifact:
    """An async handler, which runs alone and not in a chain."""
    return artifact


def check(text: str, *, handlers: bool = True) -> Report:
    return check_pipeline(parse_pipeline(HEAD + textwrap.dedent(text), "p.yaml"),
                          handlers=handlers)


def found(text: str, *, handlers: bool = True) -> list[str]:
    return check(text, handlers=handlers).lines()


# --- the demo ---------------------------------------------------------------------------


def test_the_demo_pipeline_passes_the_check() -> None:
    report = check_pipeline(load_pipeline(DEMO))
    assert report.ok, report.lines()
    assert report.summary() == "demo.yaml: 3 stages, 5 topics, 9 edges; no problems"
    graph = report.flow
    assert graph.topics == ("orders.raw", "orders.validated", "orders.transformed",
                            "orders.enriched", "orders.dlq")
    assert graph.inputs == ("orders.raw",)
    assert graph.dead_letter_topics == {"orders.dlq"}
    assert [e.stage for e in graph.writers("orders.dlq")] == ["validate", "transform", "enrich"]
    assert graph.readers("orders.validated") == ["transform"]
    assert graph.cycles == ()


# --- the findings, one by one -----------------------------------------------------------


def test_a_topic_no_stage_writes_must_be_a_declared_pipeline_input() -> None:
    assert found("""\
    topics:
      in: {}
      out: {}
    stages:
      a: {handlers: [validate], input_topic: in, output_topic: out}
      b: {handlers: [validate], input_topic: nowhere}
    """) == [
        "p.yaml:7: stages.a.input_topic: stage a reads in, which no stage writes and which "
        "is not a pipeline input: set input: true on topics.in if the outside writes it",
        "p.yaml:8: stages.b.input_topic: stage b reads nowhere, which no stage writes and "
        "topics does not declare: declare it in topics with input: true if the outside "
        "writes it",
    ]
    assert found("""\
    topics:
      in: {input: true}
      out: {}
    stages:
      a: {handlers: [validate], input_topic: in, output_topic: out}
      b: {handlers: [validate], input_topic: out}
    """) == []


def test_every_topic_a_stage_writes_must_be_declared_dead_letters_too() -> None:
    assert found("""\
      dlq_topic: shared.dlq
    topics:
      in: {input: true}
    stages:
      a:
        handlers: [validate]
        input_topic: in
        output_topic: out
        outputs: {audit: audit}
      b: {handlers: [validate], input_topic: in, group: b, dlq_topic: b.dlq}
    """) == [
        "p.yaml:3: defaults.dlq_topic: stage a writes its dead letters to shared.dlq, which "
        "topics does not declare: add it to topics",
        "p.yaml:10: stages.a.output_topic: stage a writes its output to out, which topics "
        "does not declare: add it to topics",
        "p.yaml:11: stages.a.outputs.audit: stage a writes its output 'audit' to audit, "
        "which topics does not declare: add it to topics",
        "p.yaml:12: stages.b.dlq_topic: stage b writes its dead letters to b.dlq, which "
        "topics does not declare: add it to topics",
    ]


RING = """\
topics:
  in: {input: true}
  a: {}
  b: {}
  done: {}
stages:
  first: {handlers: [validate], input_topic: in, output_topic: a}
  second: {handlers: [transform], input_topic: a, output_topic: b}
  third:
    handlers: [enrich]
    input_topic: b
    output_topic: done
    outputs: {again: a}
"""


def test_a_cycle_must_be_declared_a_ring_by_the_stage_that_closes_it() -> None:
    report = check(RING)
    assert report.lines() == [
        "p.yaml:11: stages.third: closes the cycle second -> third -> second (writing a), "
        "which no stage of it declares: if records are meant to go round, set ring: true "
        "(or max_hops: N) on stage third"]
    assert [(str(c), c.closing, c.declared) for c in report.flow.cycles] == [
        ("second -> third -> second", "third", False)]
    for declaration in ("ring: true", "max_hops: 3"):
        declared = check(RING + f"    {declaration}\n")
        assert declared.ok, declared.lines()
        assert [(str(c), c.declared) for c in declared.flow.cycles] == [
            ("second -> third -> second", True)]
    # Declared on another stage of the cycle, it counts too: every cycle goes through it.
    assert check(RING.replace("output_topic: b}", "output_topic: b, ring: true}")).ok


def test_a_handler_must_resolve_as_the_stage_resolves_it() -> None:
    lines = found("""\
    topics:
      in: {input: true}
    stages:
      a:
        handlers: [validate, no_such_module_here:fn, processor.demo:nothing, sign]
        input_topic: in
      b:
        handlers: [validate, tests.unit.test_pipeline_check:slow]
        input_topic: in
      c:
        handlers: [no_such_name]
        input_topic: in
    """)
    assert lines[0] == ("p.yaml:7: stages.a.handlers[1]: stage a: handler "
                        "'no_such_module_here:fn': cannot import 'no_such_module_here': No "
                        "module named 'no_such_module_here'")
    assert lines[1] == ("p.yaml:7: stages.a.handlers[2]: stage a: handler "
                        "'processor.demo:nothing': module 'processor.demo' has no 'nothing'")
    assert lines[2].startswith("p.yaml:7: stages.a.handlers[3]: stage a: handler 'sign' needs "
                               "a signing key: set sign_key")
    assert lines[3].startswith("p.yaml:10: stages.b.handlers: stage b: ")
    assert "an async or batch handler runs alone" in lines[3]
    assert lines[4].startswith("p.yaml:13: stages.c.handlers[0]: stage c: no handler named "
                               "'no_such_name': use a known name (")
    assert len(lines) == 5
    # The same file, its handlers not resolved (--no-handlers): nothing else is wrong.
    assert found("""\
    topics:
      in: {input: true}
    stages:
      a: {handlers: [no_such_module_here:fn], input_topic: in}
    """, handlers=False) == []


SIGNED = """\
topics:
  in: {input: true}
  mid: {}
  dlq: {}
stages:
  writer:
    handlers: [validate]
    input_topic: in
    output_topic: mid
    dlq_topic: dlq
  reader:
    handlers: [verify]
    input_topic: mid
    trusted_keys: {k1: AAAA}
    require_signature: true
"""


def test_a_stage_requiring_signatures_must_be_fed_by_writers_that_sign() -> None:
    assert found(SIGNED) == [
        "p.yaml:17: stages.reader.require_signature: stage reader requires signatures, but "
        "mid is written without a signature by stage writer: set sign_key there, or every "
        "record they write is dead-lettered (reason signature)"]
    signing = SIGNED.replace("    dlq_topic: dlq\n", "    dlq_topic: dlq\n    sign_key: "
                                                     "keys/writer.key\n")
    assert found(signing) == []
    # Dead letters are never signed; approvals count as requiring signatures too.
    from_dlq = signing.replace("input_topic: mid\n    trusted", "input_topic: dlq\n    "
                               "trusted").replace("require_signature: true",
                                                  "require_approvals: 2")
    assert found(from_dlq) == [
        "p.yaml:18: stages.reader.require_approvals: stage reader requires signatures, but "
        "dlq is written without a signature by stage writer (dead letters): set sign_key "
        "there (dead letters are never signed), or every record they write is "
        "dead-lettered (reason signature)"]
    # A pipeline input is signed only if the file says its outside writers sign.
    from_outside = SIGNED.replace("input_topic: mid\n    trusted", "input_topic: in\n    "
                                  "trusted").replace("{k1: AAAA}\n", "{k1: AAAA}\n    "
                                                     "group: reader\n")
    assert found(from_outside) == [
        "p.yaml:18: stages.reader.require_signature: stage reader requires signatures, but "
        "in is a pipeline input not declared signed: set signed: true on topics.in if its "
        "outside writers sign"]
    assert found(from_outside.replace("in: {input: true}", "in: {input: true, signed: "
                                      "true}")) == []
    untrusting = SIGNED.replace("    trusted_keys: {k1: AAAA}\n", "").replace(
        "handlers: [verify]", "handlers: [validate]")
    assert found(untrusting)[0] == (
        "p.yaml:16: stages.reader.require_signature: stage reader requires signatures but "
        "trusts no key: set trust_store or trusted_keys")


SEALED = """\
topics:
  in: {input: true}
  mid: {}
stages:
  writer: {handlers: [validate], input_topic: in, output_topic: mid}
  reader:
    handlers: [transform]
    input_topic: mid
    open_key: keys/reader.key
"""


def test_a_stage_opening_sealed_payloads_must_be_fed_by_one_that_seals() -> None:
    assert found(SEALED) == [
        "p.yaml:11: stages.reader.open_key: stage reader opens sealed payloads, but nothing "
        "that feeds it seals: no writer of mid sets seal_recipients"]
    sealing = SEALED.replace("output_topic: mid}", "output_topic: mid, seal_recipients: "
                             "[keys/reader.pub]}")
    assert found(sealing) == []
    # From a pipeline input: fed sealed only if the file says so.
    by_handler = SEALED.replace("handlers: [transform]", "handlers: [open, transform]")
    by_handler = by_handler.replace("input_topic: mid\n", "input_topic: in\n")
    assert found(by_handler) == [
        "p.yaml:11: stages.reader.open_key: stage reader opens sealed payloads, but nothing "
        "that feeds it seals: no writer of in sets seal_recipients, and topics.in is not "
        "declared sealed: true"]
    assert found(by_handler.replace("{input: true}", "{input: true, sealed: true}")) == []


def test_two_stages_in_one_consumer_group_are_a_finding() -> None:
    assert found("""\
    topics:
      in: {input: true}
    stages:
      a: {handlers: [validate], input_topic: in}
      b: {handlers: [validate], input_topic: in, group: a}
    """) == [
        "p.yaml:7: stages.b.group: stage b shares consumer group a with stage a: they would "
        "share one set of partitions and commits; give each stage its own group"]


def test_every_problem_is_listed_in_file_order_with_settings_problems_first_kept() -> None:
    report = check("""\
    topics:
      in: {input: true}
    stages:
      a:
        handlers: [validate]
        input_topic: in
        output_topic: out
        batch_size: 0
      b: {handlers: [nope_module:x], input_topic: in}
    """)
    assert [line.split(": ", 2)[1] for line in report.lines()] == [
        "stages.a.batch_size", "stages.b.handlers[0]", "note"]
    assert report.lines()[-1] == ("p.yaml: note: what feeds what is not checked while "
                                  "stage(s) a are invalid")
    assert report.summary() == "p.yaml: 2 problem(s) (1 stages, 1 topics, 1 edges valid)"


# --- the graph --------------------------------------------------------------------------


def test_the_demo_graph_is_the_one_the_docs_show() -> None:
    text = mermaid(flow(load_pipeline(DEMO)))
    assert text.startswith("flowchart LR\n  %% demo: 3 stages, 5 topics, 9 edges\n")
    assert '  t_orders_raw[("orders.raw")]\n' in text
    assert '  s_validate["validate"]\n' in text
    assert "  t_orders_raw --> s_validate\n  s_validate --> t_orders_validated\n" in text
    assert '  s_enrich -.->|"dead letters"| t_orders_dlq\n' in text
    assert "  class t_orders_dlq dlq\n" in text and "  class t_orders_raw input\n" in text
    docs = (ROOT / "docs" / "pipelines.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", docs, re.S)
    assert text in blocks, "docs/pipelines.md shows an old graph of the demo"


def test_the_graph_shows_rings_routes_and_undeclared_cycles() -> None:
    declared = mermaid(check(RING + "    max_hops: 3\n").flow)
    assert '  s_third ==>|"again: ring, max 3 hops"| t_a\n' in declared
    assert '  s_third -->|"again"| t_a\n' not in declared
    assert "  class s_third ring\n" in declared
    assert "linkStyle" not in declared
    undeclared = mermaid(check(RING).flow)
    assert '  s_third ==>|"again: cycle (undeclared)"| t_a\n' in undeclared
    lines = undeclared.splitlines()
    edge = [line for line in lines if "-->" in line or "==>" in line or "-.->" in line]
    index = next(i for i, line in enumerate(edge) if "==>" in line)
    assert f"  linkStyle {index} stroke:#d00000,stroke-width:3px" in lines
    assert "class s_third ring" not in undeclared
    assert '  s_first["first<br/>validate"]' in undeclared


# --- the commands -----------------------------------------------------------------------


def test_check_exits_0_with_a_summary_and_1_with_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["pipeline", "check", str(DEMO)]) == 0
    assert capsys.readouterr().out == "demo.yaml: 3 stages, 5 topics, 9 edges; no problems\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + textwrap.dedent("""\
    topics:
      out: {}
    stages:
      a: {handlers: [validate], input_topic: in, output_topic: out, retry: {jitter: 2}}
      b: {handlers: [validate], input_topic: out, output_topic: elsewhere}
    """))
    assert main(["pipeline", "check", str(bad)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "bad.yaml:6: stages.a.retry.jitter: must be between 0 and 1, got 2",
        "bad.yaml:7: stages.b.output_topic: stage b writes its output to elsewhere, which "
        "topics does not declare: add it to topics",
        "bad.yaml: note: what feeds what is not checked while stage(s) a are invalid",
        "bad.yaml: 2 problem(s) (1 stages, 2 topics, 2 edges valid)",
    ]
    assert main(["pipeline", "check", str(tmp_path / "none.yaml")]) == 1
    assert "cannot read pipeline file" in capsys.readouterr().err


def test_graph_and_schema_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "graph", str(DEMO)]) == 0
    out = capsys.readouterr()
    assert out.out == mermaid(flow(load_pipeline(DEMO))) and out.err == ""
    target = tmp_path / "demo.mmd"
    assert main(["pipeline", "graph", "--format", "mermaid", str(DEMO), "--output",
                 str(target)]) == 0
    assert target.read_text() == out.out
    assert main(["pipeline", "schema"]) == 0
    assert capsys.readouterr().out == schema_text()


# --- the examples of docs/pipelines.md ----------------------------------------------------


def _docs_block(first_line: str) -> str:
    docs = (ROOT / "docs" / "pipelines.md").read_text()
    found = re.search(rf"```(?:yaml|console)?\n({re.escape(first_line)}\n.*?)```", docs, re.S)
    assert found is not None, f"docs/pipelines.md lost its block {first_line!r}"
    return found.group(1)


def test_the_full_example_of_the_docs_passes_the_check() -> None:
    pipeline = parse_pipeline(_docs_block("# orders.yaml"), "orders.yaml")
    report = check_pipeline(pipeline)
    assert report.ok, report.lines()
    audit = pipeline.stages["audit"]
    assert (audit.options.guarantee, audit.options.commit_interval, audit.options.group,
            audit.options.dlq_topic) == ("exactly-once", 0.5, "audit", "orders.dlq")
    assert (audit.options.retry.max_attempts, audit.options.retry.initial_backoff,
            audit.options.retry.max_backoff) == (5, 0.2, 10.0)
    assert audit.scale.model_dump() == {"replicas": 1, "min": 1, "max": 3,
                                        "lag_target": 10000}
    assert audit.resources is not None and dict(audit.resources.limits) == {"memory": "256Mi"}
    assert pipeline.stages["enrich"].secrets["pseudonym_key"].key == "hmac"
    assert report.flow.writers("orders.large")[0].route == "large"


def test_the_broken_example_of_the_docs_prints_what_the_docs_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(_docs_block("# broken.yaml"))
    block = _docs_block("$ processor pipeline check broken.yaml").split("\n$ echo $?")[0]
    shown = block.splitlines()[1:]
    assert main(["pipeline", "check", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == shown


def test_graph_to_a_folder_that_does_not_exist_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "graph", str(DEMO), "--output",
                 str(tmp_path / "missing" / "demo.mmd")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("processor pipeline: error: cannot write ")
