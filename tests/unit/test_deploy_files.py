"""The deployment files agree with the code: ports, commands, variables, metrics, handlers.

No container engine runs here, so the files are parsed and checked against the CLI parser,
the configuration loader and the metrics registry.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import yaml

from processor.ops import metrics
from processor.ops.settings import (
    CONTAINER_METRICS_PORT,
    PLATFORM_ENV,
    TOOLING_ENV,
    StageConfig,
    add_run_arguments,
    is_known_env_var,
    load_config,
)
from processor.runtime.runner import replica_identity

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
STAGES = ("validate", "transform", "enrich")
METRIC_RE = re.compile(r"\b(processor_[a-z0-9_]+)")
ENV_RE = re.compile(r"\b(PROCESSOR_[A-Z0-9_]+)")


def compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = []
    for item in joined:
        word, _, rest = item.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def cli_parser() -> argparse.ArgumentParser:
    """The real CLI parser when the CLI exists; otherwise a `run` parser from config."""
    if importlib.util.find_spec("processor.cli.main") is not None:
        from processor.cli.main import build_parser

        return build_parser()
    parser = argparse.ArgumentParser(prog="processor")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run"))
    return parser


def parses(argv: list[str]) -> bool:
    try:
        cli_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def stage_config(env: Mapping[str, str]) -> StageConfig:
    for name in env:
        if name.startswith("PROCESSOR_"):
            assert is_known_env_var(name), f"{name} is not read by processor.ops.settings"
    return load_config(None, {k: str(v) for k, v in env.items()}, {})


def check_handlers(config: StageConfig) -> None:
    from processor.core.handlers import registry

    for ref in config.handlers:
        assert callable(registry.resolve(ref)), ref


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile() -> None:
    steps = dockerfile_instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    # The base is a build argument whose default is the official slim image.
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert all(f.startswith("${BASE_IMAGE}") for f in froms)
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [args for word, args in steps if word == "EXPOSE"] == [str(CONTAINER_METRICS_PORT)]
    (healthcheck,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    assert f"'{CONTAINER_METRICS_PORT}'" in healthcheck
    (entrypoint,) = [args for word, args in steps if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["processor", "run"]
    assert parses(["run", "--input-topic", "in", "--metrics-port", str(CONTAINER_METRICS_PORT)])
    for word, args in steps:
        if word == "ENV":
            for name in ENV_RE.findall(args):
                assert is_known_env_var(name), name
    env = " ".join(args for word, args in steps if word == "ENV")
    assert f"PROCESSOR_METRICS_PORT={CONTAINER_METRICS_PORT}" in env


def test_the_healthcheck_line_runs() -> None:
    """The HEALTHCHECK's Python line is valid Python that probes /healthz."""
    (healthcheck,) = [args for word, args in dockerfile_instructions() if word == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")


# --- docker-compose ----------------------------------------------------------------------


def test_compose_kafka_is_kraft() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in kafka["environment"]
    assert "ZOOKEEPER" not in json.dumps(kafka)


def test_compose_stages_are_valid_configurations() -> None:
    from processor.core.handlers import registry

    services = compose()["services"]
    configs = {name: stage_config(services[name]["environment"]) for name in STAGES}
    for name, config in configs.items():
        assert config.name == name
        assert config.metrics_port == CONTAINER_METRICS_PORT
        assert config.bootstrap_servers == "kafka:9092"
        # the demo's handler of the stage's name (registered name or module:function)
        assert [registry.resolve(ref) for ref in config.handlers] == [
            registry.resolve(f"processor.demo:{name}")]
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        check_handlers(config)
    # the stages are chained through their topics
    for upstream, downstream in itertools.pairwise(STAGES):
        assert configs[upstream].options.output_topic == configs[downstream].options.input_topic


def test_compose_topics_exist_for_every_stage() -> None:
    services = compose()["services"]
    script = " ".join(services["topics"]["command"])
    created = set(re.findall(r"--topic\s+(\S+)", script))
    loop = re.search(r"for t in ([^;]+);", script)
    assert loop is not None
    created |= set(loop.group(1).split())
    for name in STAGES:
        config = stage_config(services[name]["environment"])
        o = config.options
        assert {o.input_topic, o.output_topic, o.dlq_topic} <= created


def test_the_demo_chains_the_topics_the_compose_stages_use() -> None:
    from processor.demo.run import _topics

    services = compose()["services"]
    env = [services[name]["environment"] for name in STAGES]
    chain = [env[0]["PROCESSOR_INPUT_TOPIC"], *(e["PROCESSOR_OUTPUT_TOPIC"] for e in env)]
    assert _topics(len(STAGES)) == chain
    assert chain == ["orders.raw", "orders.validated", "orders.transformed", "orders.enriched"]


def processor_commands(text: str) -> list[list[str]]:
    commands = []
    for match in re.finditer(r"\bprocessor\s+([^;&|]+)", text):
        commands.append(shlex.split(match.group(1)))
    return commands


def test_compose_generator_command_is_real() -> None:
    generator = compose()["services"]["generator"]
    commands = processor_commands(" ".join(generator["command"]))
    assert commands, "the generator runs processor produce"
    for argv in commands:
        assert argv[0] == "produce"
        assert parses(argv), argv
    topics = {argv[argv.index("--topic") + 1] for argv in commands}
    validate = stage_config(compose()["services"]["validate"]["environment"])
    assert topics == {validate.options.input_topic}
    assert "PROCESSOR_BOOTSTRAP_SERVERS" in generator["environment"]


def test_prometheus_scrapes_every_stage_on_the_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "processor"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{CONTAINER_METRICS_PORT}" for name in STAGES}
    services = compose()["services"]
    mount = services["prometheus"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).resolve() == (DEPLOY / "prometheus" / "prometheus.yml").resolve()


# --- Grafana -----------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose_mounts() -> None:
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provisioning = ROOT / "deploy/grafana/provisioning"
    dashboards_dir = next(target for source, target in mounts.items()
                          if (ROOT / source).resolve() == (ROOT / "deploy/grafana/dashboards"
                                                           ).resolve())
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards/processor.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == dashboards_dir
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/processor.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


def test_dashboard_uses_only_existing_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/processor.json").read_text())
    known = metrics.metric_names()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(METRIC_RE.findall(target["expr"]))
    for var in dashboard["templating"]["list"]:
        used |= set(METRIC_RE.findall(json.dumps(var["query"])))
    assert used - known == set()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "end-to-end latency", "lag", "dead-lettered"):
        assert topic in titles
    for name in ("processor_consumed_total", "processor_end_to_end_latency_seconds_bucket",
                 "processor_consumer_lag", "processor_dead_lettered_total"):
        assert name in used


# --- Kubernetes --------------------------------------------------------------------------


def by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in k8s_docs() if d["kind"] == kind]


def test_k8s_has_every_object_per_stage() -> None:
    kinds: dict[str, set[str]] = {}
    for _, doc in k8s_docs():
        kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    expected = {f"processor-{name}" for name in STAGES}
    for kind in ("StatefulSet", "Service", "PodDisruptionBudget", "ScaledObject"):
        assert kinds.get(kind) == expected, kind
    assert "Deployment" not in kinds


def test_k8s_statefulsets_are_valid_stages() -> None:
    for _, workload in by_kind("StatefulSet"):
        pod = workload["spec"]["template"]
        assert pod["metadata"]["labels"] == workload["spec"]["selector"]["matchLabels"]
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        config = stage_config(env)
        check_handlers(config)
        assert workload["metadata"]["name"] == f"processor-{config.name}"
        port = config.metrics_port
        assert port == CONTAINER_METRICS_PORT
        (declared,) = container["ports"]
        assert declared["containerPort"] == port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz",
                                                         "port": declared["name"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz",
                                                          "port": declared["name"]}
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        if "args" in container:
            assert parses(["run", *container["args"]])
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert grace > config.options.shutdown_timeout
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_transactional_ids_survive_a_pod_restart() -> None:
    """Each pod's transactional ids come from its StatefulSet ordinal: the same after a
    restart (the pod keeps its name), distinct between the replicas."""
    for _, workload in by_kind("StatefulSet"):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        config = stage_config(env)
        assert config.replica_id == "ordinal"
        name = workload["metadata"]["name"]
        pods = [f"{name}-{n}" for n in range(workload["spec"]["replicas"])]
        assert [replica_identity(config.replica_id, pod) for pod in pods] == [
            str(n) for n in range(len(pods))]
        # Members of one group, not a chain of pods that wait for each other to be ready.
        assert workload["spec"]["podManagementPolicy"] == "Parallel"
        assert workload["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_k8s_services_and_budgets_select_their_statefulset() -> None:
    workloads = {d["metadata"]["name"]: d for _, d in by_kind("StatefulSet")}
    services = {d["metadata"]["name"]: d for _, d in by_kind("Service")}
    for name, workload in workloads.items():
        service = services[workload["spec"]["serviceName"]]
        assert service["metadata"]["name"] == name
        assert service["spec"]["clusterIP"] == "None"  # headless: the pods' own DNS names
    for _, service in by_kind("Service"):
        workload = workloads[service["metadata"]["name"]]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"] == labels
        (port,) = service["spec"]["ports"]
        assert port["port"] == CONTAINER_METRICS_PORT and port["targetPort"] == "metrics"
    for _, budget in by_kind("PodDisruptionBudget"):
        workload = workloads[budget["metadata"]["name"]]
        assert budget["spec"]["selector"]["matchLabels"] == \
            workload["spec"]["selector"]["matchLabels"]
        assert budget["spec"]["minAvailable"] < workload["spec"]["replicas"] + 1


def test_k8s_autoscaling_follows_the_stage_group_and_topic() -> None:
    workloads = {d["metadata"]["name"]: d for _, d in by_kind("StatefulSet")}
    for _, scaled in by_kind("ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
        workload = workloads[target["name"]]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env["PROCESSOR_GROUP"]
        assert meta["topic"] == env["PROCESSOR_INPUT_TOPIC"]
        assert meta["bootstrapServers"] == env["PROCESSOR_BOOTSTRAP_SERVERS"]
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        for name in METRIC_RE.findall(json.dumps(scaled)):
            assert name in metrics.metric_names()


def test_docs_mention_every_metric() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    families = {f.name + ("_total" if f.type == "counter" else "")
                for f in metrics.REGISTRY.collect() if f.name.startswith("processor_")}
    missing = {name for name in families if name not in text}
    assert missing == set()
    for name in ENV_RE.findall(text):
        if not name.endswith("_"):
            assert is_known_env_var(name) or name.startswith("PROCESSOR_KAFKA__") or \
                name in PLATFORM_ENV | TOOLING_ENV, name


def test_the_image_build_copies_what_the_package_links_to() -> None:
    """A symlink in the package (the wire schema) must resolve inside the build stage."""
    copied = [args.split()[0].rstrip("/") for word, args in dockerfile_instructions()
              if word == "COPY" and not args.startswith("--from")]
    package = ROOT / "processor"
    links = [p for p in package.rglob("*") if p.is_symlink()]
    assert links, "the schema link is expected in the package"
    for link in links:
        target = link.resolve().relative_to(ROOT)
        assert any(str(target).startswith(c) for c in copied), (link, target, copied)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "schemas" not in ignored and "processor" not in ignored


def test_the_example_stage_file_is_valid() -> None:
    from processor.ops.settings import check_file

    cfg = check_file(ROOT / "deploy" / "stage.example.yaml")
    assert cfg.options.input_topic == "orders.raw"
    assert cfg.handlers == ("validate",)
