"""`processor pipeline check | graph | render | plan | up | down | status | schema`: a whole
pipeline in one file.

`check` lists every problem of a pipeline file, each as `FILE:LINE: place: message`
(exit 1), or prints a one-line summary (exit 0). `graph` draws the pipeline as Mermaid
text. `render` writes the compose file or the Kubernetes manifests of the pipeline
(`processor.pipeline.render` builds them; the YAML is written here). `plan` prints what
bringing the file's topics up would change on a cluster. `up` creates the missing topics
and runs every stage as local processes under a supervisor (`processor.pipeline.supervisor`),
`down` stops it, `status` shows each stage's figures (`processor.pipeline.status`).
`schema` prints the file's JSON Schema, the one `schemas/pipeline.schema.json` holds. See
docs/pipelines.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from processor.cli.common import (
    BOOTSTRAP_ENV,
    CONFIG_ENV,
    Subcommands,
    add_client_settings,
    client_config,
    command_parser,
    kafka_broker,
    positive_float,
    positive_int,
)
from processor.core.errors import ProcessorError
from processor.pipeline.check import check_pipeline
from processor.pipeline.graph import flow, mermaid
from processor.pipeline.load import Pipeline, load_pipeline
from processor.pipeline.model import schema_text
from processor.pipeline.plan import create_missing, plan_lines, plan_summary, plan_topics
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
        "  processor pipeline up pipeline.yaml --bootstrap-servers localhost:9092\n"
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
    _add_run_parsers(actions)
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
    from processor.cli.run import _import_from_cwd

    _import_from_cwd()  # handlers resolve as processor run resolves them
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


# --- up, down, status -------------------------------------------------------------------


def _add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, metavar="DIR", default=None,
                        help="the run directory: state file and logs (default: "
                        ".processor/run/<pipeline name> below the current directory)")


def _add_run_parsers(actions: Subcommands) -> None:
    up = command_parser(
        actions, "up", help="create the missing topics and run every stage locally, "
        "supervised",
        description="Bring a pipeline file up on a cluster from this machine: create the "
        "topics that plan shows missing (+), then run scale.replicas processes of each "
        "stage (processor run, with the stage's effective settings as PROCESSOR_* "
        "variables, metrics on a free port of 127.0.0.1, output in a log file per stage "
        "in the run directory), under one supervisor, in the foreground. A stage that "
        "exits on its own is started again after a delay doubling from 1 s to 30 s; one "
        "that crashes --max-restarts times in a row stops the pipeline.\n\n"
        "Ctrl-C or SIGTERM (processor pipeline down) stops the stages in file order, the "
        "first first, each after the one before it stopped and it read what that one "
        "wrote: SIGTERM, up to its shutdown_timeout + 10 s to drain and commit, then "
        "SIGKILL; a second Ctrl-C kills them at once. The exit status is 0 when every "
        "stage stopped in time, 1 when one had to be killed or kept crashing.\n\n"
        "The client settings name the cluster, in place of the stages' own "
        "bootstrap_servers (and kafka settings added to theirs); without any, the stages "
        "use their own. The run directory holds state.json (the supervisor's pid, each "
        "process's pid, metrics URL and log file), which status and down read.",
        epilog="examples:\n"
        "  processor pipeline up examples/pipelines/demo.yaml --bootstrap-servers "
        "localhost:9092\n"
        "  processor pipeline up pipeline.yaml --command-config admin.kafka.yaml "
        "--run-dir /tmp/run")
    up.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    add_client_settings(up, config_flag=False)
    _add_run_dir(up)
    up.add_argument("--max-restarts", type=positive_int, metavar="N", default=5,
                    help="crashes in a row of one process after which the pipeline is "
                    "stopped (default: 5)")
    up.set_defaults(func=cmd_up)
    down = command_parser(
        actions, "down", help="stop a pipeline that processor pipeline up runs",
        description="Send SIGTERM to the supervisor of processor pipeline up that runs "
        "the pipeline file (found in the state file of its run directory) and wait until "
        "it has stopped every stage in order. The exit status is the supervisor's: 0 when "
        "every stage stopped in time; 1 when nothing runs there.",
        epilog="examples:\n"
        "  processor pipeline down examples/pipelines/demo.yaml")
    down.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    _add_run_dir(down)
    down.add_argument("--timeout", type=positive_float, metavar="SECONDS", default=None,
                      help="wait at most this long (default: what stopping every stage "
                      "may take, plus 30 s)")
    down.set_defaults(func=cmd_down)
    status = command_parser(
        actions, "status", help="show each stage of a running pipeline: rates, lag, "
        "health",
        description="Print a table of the stages of the pipeline processor pipeline up "
        "runs, from their Prometheus metrics, summed over each stage's processes: UP "
        "(processes running whose metrics answer), IN and OUT (records consumed; produced "
        "to the outputs, dead letters left out), IN/S and OUT/S (per second between two "
        "scrapes), DROPPED, DEAD (dead-lettered), LAG (consumer lag), HEALTH (/healthz) "
        "and RESTARTS. The exit status is 1 when the pipeline is not running.",
        epilog="examples:\n"
        "  processor pipeline status examples/pipelines/demo.yaml\n"
        "  processor pipeline status examples/pipelines/demo.yaml --watch 2")
    status.add_argument("file", type=Path, metavar="FILE", help="the pipeline file (YAML)")
    _add_run_dir(status)
    status.add_argument("--watch", type=positive_float, metavar="SECONDS", default=None,
                        help="print the table again every SECONDS until Ctrl-C (or until "
                        "the pipeline stops)")
    status.set_defaults(func=cmd_status)


def _run_dir(args: argparse.Namespace, pipeline: Pipeline | None = None) -> Path:
    from processor.pipeline.supervisor import run_dir_of

    if args.run_dir is not None:
        return Path(args.run_dir)
    return run_dir_of(pipeline or load_pipeline(args.file), args.file)


def _client_given(args: argparse.Namespace) -> bool:
    return bool(args.bootstrap_servers or args.command_config or args.kafka
                or os.environ.get(BOOTSTRAP_ENV) or os.environ.get(CONFIG_ENV))


def cmd_up(args: argparse.Namespace) -> int:
    from processor.backends.kafka import KafkaBroker
    from processor.pipeline.supervisor import ClientSettings, Supervisor, refuse_second_run

    pipeline = load_pipeline(args.file).require_valid()
    run_dir = _run_dir(args, pipeline)
    refuse_second_run(run_dir)
    client = None
    if _client_given(args):
        config = client_config(args)
        client = ClientSettings(config.bootstrap_servers,
                                {k: str(v).lower() if isinstance(v, bool) else str(v)
                                 for k, v in config.kafka.items()})
        broker = kafka_broker(args)
    else:
        first = next(iter(pipeline.stages.values())).settings
        broker = KafkaBroker(first.bootstrap_servers, first.kafka)
    admin = broker.admin()
    try:
        plans = plan_topics(pipeline, admin)
        created = create_missing(plans, admin)
    finally:
        admin.close()
    for plan in plans:
        if plan in created:
            print(f"created {plan.lines()[0][2:]}")
        elif plan.action == "change" or plan.conflicts:
            for line in plan.lines():
                print(f"left as it is: {line}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s pipeline %(message)s", "%H:%M:%S"))
    log = logging.getLogger("processor.pipeline.supervisor")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    supervisor = Supervisor(pipeline, run_dir, source=str(args.file), client=client,
                            max_crashes=args.max_restarts)
    print(f"{pipeline.source}: {len(supervisor.stages)} stage(s) starting; state and logs "
          f"in {run_dir}; Ctrl-C (or processor pipeline down {args.file}) stops them",
          flush=True)
    code = supervisor.up()
    print(f"{pipeline.source}: stopped" + (
        "" if code == 0 else f" (exit status {code}: see the log above)"), flush=True)
    return code


def cmd_down(args: argparse.Namespace) -> int:
    from processor.pipeline.supervisor import stop_supervisor

    run_dir = _run_dir(args)
    code = stop_supervisor(run_dir, args.timeout)
    print(f"{args.file}: stopped" + ("" if code == 0 else f" (exit status {code})"))
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from processor.pipeline.status import heading, stage_rows, status_table
    from processor.pipeline.supervisor import read_state, supervisor_alive

    run_dir = _run_dir(args)
    state = read_state(run_dir)
    if state is None:
        print(f"{args.file}: not running (no {run_dir / 'state.json'})")
        return 1
    rows, samples = stage_rows(state)
    if args.watch is None:  # a second scrape, for the rates
        time.sleep(1.0)
        state = read_state(run_dir) or state
        rows, samples = stage_rows(state, samples)
    clear = "\x1b[H\x1b[2J" if args.watch is not None and sys.stdout.isatty() else ""
    try:
        while True:
            live = supervisor_alive(state)
            sys.stdout.write(clear + heading(state, live) + "\n" + status_table(rows))
            sys.stdout.flush()
            if args.watch is None or not live:
                return 0 if live else 1
            time.sleep(args.watch)
            state = read_state(run_dir) or state
            rows, samples = stage_rows(state, samples)
    except KeyboardInterrupt:
        return 0
