"""`processor pipeline check | graph | render | plan | schema`: a whole pipeline in one file.

`check` lists every problem of a pipeline file, each as `FILE:LINE: place: message`
(exit 1), or prints a one-line summary (exit 0). `graph` draws the pipeline as Mermaid
text. `render` writes the compose file or the Kubernetes manifests of the pipeline
(`processor.pipeline.render` builds them; the YAML is written here). `plan` prints what
bringing the file's topics up would change on a cluster. `schema` prints the file's JSON
Schema, the one `schemas/pipeline.schema.json` holds. See docs/pipelines.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from processor.cli.common import Subcommands, add_client_settings, command_parser, kafka_broker
from processor.core.errors import ProcessorError
from processor.pipeline.check import check_pipeline
from processor.pipeline.graph import flow, mermaid
from processor.pipeline.load import Pipeline, load_pipeline
from processor.pipeline.model import schema_text
from processor.pipeline.plan import plan_lines, plan_summary, plan_topics
from processor.pipeline.render import load_deploy, render_compose, render_k8s

FORMATS = ("mermaid",)
TARGETS: Final = ("compose", "k8s")

K8S_NOTES: Final = {
    "StatefulSet": (
        "A StatefulSet, not a Deployment: pod {name}-N keeps its name and ordinal N across "
        "restarts, and PROCESSOR_REPLICA_ID=ordinal puts N in its transactional ids, so "
        "that a restarted pod fences at once the transaction its predecessor left open. "
        "The replicas are equal members of the consumer group (podManagementPolicy: "
        "Parallel); the grace period exceeds the stage's shutdown_timeout."),
    "Service": (
        "Headless: the StatefulSet's governing service (serviceName); Prometheus' "
        "endpoint discovery finds every pod through it."),
    "ScaledObject": (
        "KEDA reads the group's lag from Kafka itself (committed offset vs end offset), so "
        "it scales even while no replica runs; lagThreshold is scale.lag_target, "
        "maxReplicaCount scale.max (more replicas than the input topic's partitions would "
        "stand idle)."),
}
"""A comment before each manifest of the kind (docs/operations.md, "Kubernetes")."""


def add_parsers(sub: Subcommands) -> None:
    pipeline = command_parser(
        sub, "pipeline", help="check or draw a pipeline file (stages, topics, dead letters)",
        description="A pipeline file describes a whole chain of stages in one YAML file: "
        "defaults every stage gets, the topics (dead-letter topics included) and the "
        "stages, each with the settings of processor run under the same names "
        "(docs/pipelines.md).",
        epilog="examples:\n"
        "  processor pipeline check examples/pipelines/demo.yaml\n"
        "  processor pipeline graph examples/pipelines/demo.yaml > demo.mmd\n"
        "  processor pipeline render compose examples/pipelines/demo.yaml > "
        "docker-compose.yml\n"
        "  processor pipeline plan pipeline.yaml --bootstrap-servers localhost:9092\n"
        "  processor pipeline schema > pipeline.schema.json")
    actions = pipeline.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = command_parser(
        actions, "check", help="list every problem of a pipeline file, each at its place",
        description="Read a pipeline file and list every problem, each as FILE:LINE: "
        "place: message: YAML errors, unknown keys, stage settings that do not validate "
        "(a stage's are defaults overlaid by its own), a topic a stage reads that no stage "
        "writes and that is not declared a pipeline input (input: true), a topic a stage "
        "writes that topics does not declare, a cycle no stage declares (ring: true or "
        "max_hops), a handler that does not import, a stage requiring signatures fed by a "
        "writer that does not sign, a stage opening sealed payloads that nothing feeding "
        "it seals, two stages in one consumer group.\n\n"
        "Exit status 1 with the list; 0 with a one-line summary (stages, topics, edges).",
        epilog="examples:\n"
        "  processor pipeline check examples/pipelines/demo.yaml\n"
        "  processor pipeline check --no-handlers pipeline.yaml   # handlers not importable "
        "here")
    check.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    check.add_argument("--handlers", action=argparse.BooleanOptionalAction, default=True,
                       help="resolve every stage's handlers as the stage would, importing "
                       "their modules (default: on; --no-handlers where they are not "
                       "installed)")
    check.set_defaults(func=cmd_check)
    graph = command_parser(
        actions, "graph", help="draw a pipeline file as a Mermaid flowchart",
        description="Print the pipeline as Mermaid text (flowchart LR): stages as boxes "
        "with their handlers, topics as cylinders, pipeline inputs in green, dead-letter "
        "topics and their edges dashed, a ring's closing edge thick and labelled, an "
        "undeclared cycle and an undeclared topic in red. Paste it into a Markdown "
        "```mermaid block, or render it with the Mermaid CLI. A file with problems is drawn "
        "as far as it is valid, with a note on stderr.",
        epilog="examples:\n"
        "  processor pipeline graph examples/pipelines/demo.yaml\n"
        "  processor pipeline graph pipeline.yaml --output docs/pipeline.mmd")
    graph.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    graph.add_argument("--format", choices=FORMATS, default="mermaid",
                       help="output format (default: mermaid)")
    graph.add_argument("--output", type=Path, metavar="FILE", default=None,
                       help="write to FILE instead of standard output")
    graph.set_defaults(func=cmd_graph)
    render = command_parser(
        actions, "render", help="write the compose file or the Kubernetes manifests of a "
        "pipeline file",
        description="Render a pipeline file for a deployment target. compose: one service "
        "per stage (its image, its settings as PROCESSOR_* variables, a healthcheck), with "
        "deploy.compose.kafka a one-node Kafka and a service creating the topics, and the "
        "services of deploy.compose.services; written to standard output. k8s: per stage "
        "a StatefulSet (scale.replicas, the settings as variables, secrets as "
        "secretKeyRef, resources), a headless Service, a PodDisruptionBudget and a KEDA "
        "ScaledObject (scale.min, max, lag_target); to standard output, or one file per "
        "stage, DIR/STAGE.yaml, with --out. deploy.<target>.settings go over every "
        "stage's settings there. A file with problems is not rendered (exit 1).",
        epilog="examples:\n"
        "  processor pipeline render compose examples/pipelines/demo.yaml > "
        "docker-compose.yml\n"
        "  processor pipeline render k8s examples/pipelines/demo.yaml --out deploy/k8s")
    render.add_argument("target", choices=TARGETS, metavar="TARGET",
                        help="compose or k8s")
    render.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    render.add_argument("--out", type=Path, metavar="DIR", default=None,
                        help="k8s: write DIR/STAGE.yaml for each stage (the directory is "
                        "created) instead of standard output")
    render.set_defaults(func=cmd_render)
    plan = command_parser(
        actions, "plan", help="show what bringing a pipeline's topics up would change",
        description="Compare every topic of a pipeline file with the cluster and print a "
        "diff: + a topic to create (its partitions, replication and settings), ~ a topic "
        "whose partitions would be raised or whose settings differ, = a topic as the file "
        "says, ! what would not be changed in place (fewer partitions in the file than on "
        "the cluster, another replication factor). Nothing is changed.",
        epilog="examples:\n"
        "  processor pipeline plan examples/pipelines/demo.yaml --bootstrap-servers "
        "localhost:9092\n"
        "  processor pipeline plan pipeline.yaml --command-config admin.kafka.yaml")
    plan.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    add_client_settings(plan, config_flag=False)
    plan.set_defaults(func=cmd_plan)
    schema = command_parser(
        actions, "schema", help="print the JSON Schema of pipeline files",
        description="Print the JSON Schema (draft 2020-12) of a pipeline file, for editors "
        "that complete and check YAML against a schema; every stage setting appears with "
        "its type, bounds, choices and default. schemas/pipeline.schema.json is this "
        "output.",
        epilog="examples:\n"
        "  processor pipeline schema > schemas/pipeline.schema.json")
    schema.set_defaults(func=cmd_schema)


def cmd_check(args: argparse.Namespace) -> int:
    report = check_pipeline(load_pipeline(args.file), handlers=args.handlers)
    for line in report.lines():
        print(line)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_graph(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.file)
    text = mermaid(flow(pipeline))
    if pipeline.problems:
        sys.stderr.write(f"processor pipeline graph: {pipeline.source} has "
                         f"{len(pipeline.problems)} problem(s), drawn as far as it is "
                         f"valid: see processor pipeline check {args.file}\n")
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ProcessorError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors for repeated values, multi-line strings as `|` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # a list indented under its key


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Text that reads as another type ("9100", "true") in double quotes; so is "9092:9092",
    # which a YAML 1.1 reader may take for a base-60 number (80:80).
    tag = dumper.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    plain = tag == "tag:yaml.org,2002:str"
    style = "|" if "\n" in value else (
        None if plain and not re.fullmatch(r"[0-9][0-9.:]*", value) else '"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def dump_yaml(data: Mapping[str, Any]) -> str:
    """`data` as YAML, keys in their order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=1000, allow_unicode=True)


def _comment(text: str) -> str:
    import textwrap

    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 88))


def rendered_header(target: str, source: str, pipeline: Pipeline) -> str:
    """The comment every rendered file starts with."""
    again = f"processor pipeline render {target} {source}" + (
        " > docker-compose.yml" if target == "compose" else " --out DIR")
    named = f" (pipeline {pipeline.name})" if pipeline.name else ""
    return (f"# generated by processor pipeline render {target} from {source}{named}; "
            f"do not edit\n# to write it again: {again}\n")


def compose_text(path: Path, source: str | None = None) -> str:
    """The rendered compose file of the pipeline file at `path` (`source`: its name in the
    header)."""
    pipeline = load_pipeline(path).require_valid()
    data = render_compose(pipeline, load_deploy(path))
    return rendered_header("compose", source or str(path), pipeline) + "\n" + dump_yaml(data)


def k8s_texts(path: Path, source: str | None = None) -> dict[str, str]:
    """Stage -> its rendered manifests, of the pipeline file at `path`."""
    pipeline = load_pipeline(path).require_valid()
    out: dict[str, str] = {}
    for stage, docs in render_k8s(pipeline, load_deploy(path)).items():
        plan = pipeline.stages[stage]
        options = plan.options
        head = rendered_header("k8s", source or str(path), pipeline) + _comment(
            f"Stage {stage!r}: {options.input_topic} -> {options.output_topic or '(none)'}.")
        parts = []
        for doc in docs:
            note = K8S_NOTES.get(doc["kind"], "")
            parts.append(_comment(note.format(name=doc["metadata"]["name"])) + dump_yaml(doc))
        out[stage] = head + "---\n".join(parts)
    return out


def cmd_render(args: argparse.Namespace) -> int:
    if args.target == "compose":
        if args.out is not None:
            sys.stderr.write("processor pipeline render: --out is for k8s; compose is "
                             "written to standard output\n")
            return 2
        sys.stdout.write(compose_text(args.file))
        return 0
    texts = k8s_texts(args.file)
    if args.out is None:
        sys.stdout.write("---\n".join(texts.values()))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for stage, text in texts.items():
        (args.out / f"{stage}.yaml").write_text(text, encoding="utf-8")
        print(f"wrote {args.out / f'{stage}.yaml'}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.file).require_valid()
    broker = kafka_broker(args)
    admin = broker.admin()
    try:
        plans = plan_topics(pipeline, admin)
    finally:
        admin.close()
    for line in plan_lines(plans):
        print(line)
    print(plan_summary(plans, pipeline.source))
    return 0
