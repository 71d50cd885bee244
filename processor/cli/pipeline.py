"""`processor pipeline check | graph | schema`: a whole pipeline in one file.

`check` lists every problem of a pipeline file, each as `FILE:LINE: place: message`
(exit 1), or prints a one-line summary (exit 0). `graph` draws the pipeline as Mermaid
text. `schema` prints the file's JSON Schema, the one `schemas/pipeline.schema.json`
holds. See docs/pipelines.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from processor.cli.common import Subcommands, command_parser
from processor.pipeline.check import check_pipeline
from processor.pipeline.graph import flow, mermaid
from processor.pipeline.load import load_pipeline
from processor.pipeline.model import schema_text

FORMATS = ("mermaid",)


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
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0
