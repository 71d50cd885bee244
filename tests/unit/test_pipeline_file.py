"""The pipeline file: its model, each stage's effective settings, every problem at its
place, and the JSON Schema (processor.pipeline.model, processor.pipeline.load)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from processor.core.errors import ConfigError
from processor.ops.settings import load_config
from processor.pipeline import Pipeline, load_pipeline, parse_pipeline, pipeline_json_schema
from processor.pipeline.model import schema_text

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "pipelines" / "demo.yaml"
SCHEMA = ROOT / "schemas" / "pipeline.schema.json"


def parse(text: str, base: str = "") -> Pipeline:
    """The pipeline of `base` followed by `text` (indented as in the test, dedented)."""
    return parse_pipeline(base + textwrap.dedent(text), "p.yaml")


def problems(text: str, base: str = "") -> list[str]:
    return [p.render("p.yaml") for p in parse(text, base).problems]


BASE = """\
defaults:
  bootstrap_servers: 127.0.0.1:9092
topics:
  in: {input: true}
  out: {}
"""


# --- the demo and the effective settings ----------------------------------------------------


def test_the_demo_file_reads_into_three_stages_with_the_compose_stacks_settings() -> None:
    p = load_pipeline(DEMO)
    assert p.ok, p.problems
    assert p.name == "demo"
    assert list(p.stages) == ["validate", "transform", "enrich"]
    chain = [(s.options.input_topic, s.options.output_topic, tuple(s.settings.handlers))
             for s in p.stages.values()]
    assert chain == [("orders.raw", "orders.validated", ("validate",)),
                     ("orders.validated", "orders.transformed", ("transform",)),
                     ("orders.transformed", "orders.enriched", ("enrich",))]
    for name, plan in p.stages.items():
        s = plan.settings
        assert (s.name, s.options.group, s.options.dlq_topic) == (name, name, "orders.dlq")
        assert (s.bootstrap_servers, s.options.guarantee, s.metrics_port) == (
            "kafka:9092", "at-least-once", 9100)
        assert dict(s.kafka) == {"statistics.interval.ms": 5000}
        assert plan.image == "processor:0.1.0"
        assert plan.scale.replicas == 1
    assert p.topics["orders.raw"].input and p.topics["orders.raw"].partitions == 6
    assert p.topics["orders.dlq"].partitions == 1


def test_a_stages_settings_are_defaults_overlaid_by_its_own() -> None:
    p = parse("""\
    x-retry: &retry {max_attempts: 7}
    defaults:
      bootstrap_servers: 127.0.0.1:9092
      batch_size: 500
      poll_timeout: 0.5
      handlers: [transform]
      retry: {initial_backoff: 0.5, max_attempts: 2}
      kafka: {compression.type: lz4, linger.ms: 50}
      env: {LANG: C.UTF-8, TZ: Europe/Amsterdam}
      scale: {max: 4, lag_target: 1000}
    topics:
      in: {input: true}
      out: {}
    stages:
      a:
        handlers: [validate]
        input_topic: in
        output_topic: out
        group: a-group
        batch_size: 10
        retry: {<<: *retry, jitter: 0.5}
        kafka: {linger.ms: 5}
        env: {TZ: UTC}
        scale: {replicas: 2}
    """)
    assert p.ok, p.problems
    plan = p.stages["a"]
    s = plan.settings
    assert s.options.batch_size == 10  # the stage's own
    assert s.options.poll_timeout == 0.5  # from defaults
    assert s.handlers == ("validate",)  # a list is replaced whole
    assert s.options.group == "a-group"
    assert (s.options.retry.max_attempts, s.options.retry.initial_backoff,
            s.options.retry.jitter) == (7, 0.5, 0.5)  # a mapping merges key by key
    assert dict(s.kafka) == {"compression.type": "lz4", "linger.ms": 5}
    assert dict(plan.env) == {"LANG": "C.UTF-8", "TZ": "UTC"}
    assert (plan.scale.replicas, plan.scale.max, plan.scale.lag_target) == (2, 4, 1000)
    assert s.sources["batch_size"] == "file p.yaml, stages.a.batch_size"
    assert s.sources["poll_timeout"] == "file p.yaml, defaults.poll_timeout"
    assert s.sources["max_in_flight"] == "default"
    assert p.setting_place("a", "poll_timeout") == ("defaults", "poll_timeout")
    assert p.setting_place("a", "batch_size") == ("stages", "a", "batch_size")


def test_the_effective_settings_are_what_processor_run_builds_from_the_same_values(
    tmp_path: Path,
) -> None:
    p = parse(base=BASE, text="""\
    stages:
      a:
        handlers: [validate]
        input_topic: in
        output_topic: out
        guarantee: exactly-once
        retry: {max_attempts: 3}
        metrics_port: null
        trusted_keys: {k1: AAAA}
        require_signature: true
    """)
    assert p.ok, p.problems
    stage_file = tmp_path / "stage.yaml"
    stage_file.write_text(yaml.safe_dump({
        "name": "a", "group": "a", "bootstrap_servers": "127.0.0.1:9092",
        "handlers": ["validate"], "input_topic": "in", "output_topic": "out",
        "guarantee": "exactly-once", "retry": {"max_attempts": 3}, "metrics_port": None,
        "trusted_keys": {"k1": "AAAA"}, "require_signature": True}))
    expected = load_config(stage_file, {}, {})
    got = p.stages["a"].settings
    assert got.options == expected.options
    for key in ("bootstrap_servers", "handlers", "kafka", "metrics_port", "trusted_keys",
                "require_signature", "log_level", "processes"):
        assert getattr(got, key) == getattr(expected, key), key
    assert got.security == expected.security


# --- problems, each at its place ------------------------------------------------------------


def test_a_bad_stage_setting_is_named_at_its_place_with_its_line() -> None:
    found = problems(base=BASE, text="""\
    stages:
      validate:
        handlers: [validate]
        input_topic: in
        output_topic: out
        batch_size: 0
        guarantee: maybe
        retry: {jitter: 3}
    """)
    assert found == [
        "p.yaml:11: stages.validate.batch_size: must be at least 1, got 0",
        "p.yaml:12: stages.validate.guarantee: 'maybe' is not allowed; allowed values: "
        "at-least-once, exactly-once",
        "p.yaml:13: stages.validate.retry.jitter: must be between 0 and 1, got 3",
    ]


def test_a_bad_default_is_named_once_in_defaults() -> None:
    found = problems("""\
    defaults:
      bootstrap_servers: 127.0.0.1:9092
      commit_interval: ten
    stages:
      a: {handlers: [validate], input_topic: in}
      b: {handlers: [validate], input_topic: in}
    """)
    assert found == ["p.yaml:3: defaults.commit_interval: expected a number, got 'ten'"]


def test_missing_settings_and_rules_across_fields_are_named_at_the_stage() -> None:
    found = problems("""\
    stages:
      a:
        handlers: [validate]
        output_topic: out
      b:
        input_topic: same
        output_topic: same
        handlers: [validate]
        bootstrap_servers: 127.0.0.1:9092
    """)
    assert found == [
        "p.yaml:2: stages.a.bootstrap_servers: required; set bootstrap_servers on the "
        "stage or in defaults",
        "p.yaml:2: stages.a.input_topic: required; set input_topic on the stage",
        "p.yaml:5: stages.b: input_topic must differ from output_topic and dlq_topic",
    ]


def test_unknown_keys_are_errors_at_their_place() -> None:
    found = problems("""\
    version: 1
    owner: data-team
    defaults:
      bootstrap_servers: 127.0.0.1:9092
      input_topic: in
      batchsize: 3
    topics:
      in: {input: true, partition: 3}
    stages:
      a:
        handlers: [validate]
        input_topic: in
        name: a
        scale: {replica: 2}
        commit_intervall: 1
    """)
    assert found == [
        "p.yaml:2: owner: unknown key 'owner'; known keys: version, name, description, "
        "defaults, topics, stages, deploy",
        "p.yaml:5: defaults.input_topic: input_topic belongs to one stage: set it on each "
        "stage, not in defaults",
        "p.yaml:6: defaults.batchsize: unknown key 'batchsize'; did you mean 'batch_size'? "
        "(a stage takes the stage settings of docs/operations.md and scale, ring, max_hops, "
        "image, resources, env, secrets)",
        "p.yaml:8: topics.in.partition: unknown key 'partition'; did you mean 'partitions'?"
        "; known keys: partitions, replication, config, input, signed, sealed, description",
        "p.yaml:13: stages.a.name: a stage's name is its key under stages; remove it",
        "p.yaml:14: stages.a.scale.replica: unknown key 'replica'; did you mean "
        "'replicas'?; known keys: replicas, min, max, lag_target",
        "p.yaml:15: stages.a.commit_intervall: unknown key 'commit_intervall'; did you mean "
        "'commit_interval'? (a stage takes the stage settings of docs/operations.md and "
        "scale, ring, max_hops, image, resources, env, secrets)",
    ]


def test_names_scale_secrets_and_duplicate_keys_are_checked() -> None:
    found = problems(base=BASE, text="""\
      Bad.Topic!: {}
    stages:
      Stage_1:
        handlers: [validate]
        input_topic: in
      b:
        handlers: [validate]
        input_topic: in
      b:
        handlers: [validate]
        input_topic: in
        scale: {replicas: 5, max: 3}
    """)
    assert found == [
        "p.yaml:6: topics.Bad.Topic!: 'Bad.Topic!' is not a valid topic name (1 to 249 of "
        "letters, digits, '.', '_', '-')",
        "p.yaml:8: stages.Stage_1: 'Stage_1' is not a valid stage name (lower-case letters, "
        "digits and '-', at most 63, starting and ending with a letter or digit)",
        "p.yaml:14: stages.b: given twice (lines 11 and 14): give it once",
        "p.yaml:17: stages.b.scale: replicas (5) must not exceed max (3)",
    ]
    found = problems(base=BASE, text="""\
    stages:
      b:
        handlers: [validate]
        input_topic: in
        secrets: {pseudonym_key: {secret: s}, kafka.sasl.password: {secret: t, key: pw},
                  sasl_pass: {secret: s}}
    """)
    assert found == ["p.yaml:11: stages.b.secrets.sasl_pass: names no stage setting (nor "
                     "kafka.<key>)"]


def test_not_yaml_and_not_a_pipeline_are_one_problem_each() -> None:
    assert problems("stages: [a\n") == [
        "p.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>'"]
    assert problems("") == ["p.yaml: a pipeline file is a mapping with defaults, topics "
                            "and stages; got an empty file"]
    assert problems("topics: {}\n") == ["p.yaml: stages: required: name at least one stage"]


def test_require_valid_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  a: {input_topic: in, batch_size: -1}\n")
    with pytest.raises(ConfigError) as error:
        load_pipeline(path).require_valid()
    text = str(error.value)
    assert text.startswith("bad.yaml: 3 problem(s):\n")
    assert "bad.yaml:2: stages.a.batch_size: must be at least 1, got -1" in text
    assert "stages.a.handlers: required" in text
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_pipeline(tmp_path / "missing.yaml")


# --- the JSON Schema ------------------------------------------------------------------------


def test_the_checked_in_schema_is_up_to_date() -> None:
    assert SCHEMA.read_text() == schema_text(), (
        "schemas/pipeline.schema.json is out of date: run "
        "`processor pipeline schema > schemas/pipeline.schema.json`")


def test_the_schema_gives_each_setting_its_declared_type_and_bounds() -> None:
    schema = pipeline_json_schema()
    stage = schema["$defs"]["StageSpec"]
    assert stage["required"] == ["input_topic"]
    assert stage["additionalProperties"] is False
    assert stage["properties"]["batch_size"]["minimum"] == 1
    assert stage["properties"]["guarantee"]["enum"] == ["at-least-once", "exactly-once"]
    assert stage["properties"]["handlers"]["minItems"] == 1
    assert "input_topic" not in schema["$defs"]["DefaultsSpec"]["properties"]
    assert "name" not in stage["properties"]
    assert "metavar" not in json.dumps(schema)


def test_the_demo_file_validates_against_the_schema_and_a_bad_one_does_not() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    demo = yaml.safe_load(DEMO.read_text())
    assert list(validator.iter_errors(demo)) == []
    demo["stages"]["validate"]["batch_size"] = 0
    demo["stages"]["enrich"]["bogus"] = 1
    assert len(list(validator.iter_errors(demo))) == 2
