"""Rendering a pipeline file for compose and Kubernetes: plain data, ready to dump as YAML.

`render_compose(pipeline, deploy)` returns a compose file: per stage a service (its image,
its effective settings as `PROCESSOR_*` variables, a healthcheck on `/healthz`, a stop
grace period beyond its `shutdown_timeout`), and, with `deploy.compose.kafka`, a one-node
Kafka (KRaft) service `kafka` and a `topics` service that creates the file's topics before
any stage starts; `deploy.compose.services` adds services as written (a generator,
Prometheus, Grafana).

`render_k8s(pipeline, deploy)` returns, per stage, a StatefulSet (`scale.replicas`, the
settings as variables, `secrets` as `secretKeyRef`, `resources`, `image`,
`PROCESSOR_REPLICA_ID=ordinal`), its headless Service, a PodDisruptionBudget and, when
`scale` names an autoscaler's bounds, a KEDA ScaledObject with the kafka trigger on the
stage's group and input topic.

A stage's settings on a target are `defaults`, then `deploy.<target>.settings` (the
target's defaults: its cluster's address, say), then the stage's own, merged as the
effective settings are and validated as the stage validates them (`scale` likewise, with
`deploy.kubernetes.scale`);
only the settings the file writes (and `name`, `group`, `metrics_port`) become variables,
so that the others keep the defaults of the stage and of the image. See
docs/pipelines.md, "Rendering".
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from processor.core.errors import ConfigError
from processor.core.options import StageOptions
from processor.ops.setting_fields import fields_of, kind
from processor.ops.setting_sources import KAFKA_ENV_PREFIX, kafka_key_from_env
from processor.ops.settings import (
    CONTAINER_METRICS_PORT,
    FIELDS,
    SECRET_KEYS,
    StageConfig,
    env_name,
)
from processor.pipeline.load import Pipeline, StagePlan
from processor.pipeline.model import SETTINGS_MODEL, DeploySpec, ScaleSpec

__all__ = [
    "COMPOSE_GRACE_MARGIN", "HEALTHCHECK", "K8S_GRACE_MARGIN", "KAFKA_SERVICE",
    "TargetStage", "load_deploy", "parse_deploy", "render_compose", "render_k8s",
    "stage_env", "target_stage",
]

COMPOSE_GRACE_MARGIN: Final = 10
"""Seconds a compose service's `stop_grace_period` adds to the stage's `shutdown_timeout`."""
K8S_GRACE_MARGIN: Final = 15
"""Seconds `terminationGracePeriodSeconds` adds to the stage's `shutdown_timeout` (the
pod also leaves its Service's endpoints meanwhile)."""

HEALTHCHECK: Final = {
    "test": ["CMD", "python", "-c",
             "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' "
             "% os.environ.get('PROCESSOR_METRICS_PORT', '9100'), timeout=4)"],
    "interval": "15s", "timeout": "5s", "start_period": "30s", "retries": 3,
}
"""A stage service's healthcheck: the image's `HEALTHCHECK` (deploy/Dockerfile)."""

KAFKA_SERVICE: Final = "kafka"
KAFKA_ADDRESS: Final = "kafka:9092"
"""Where the stages reach the one-node broker of `deploy.compose.kafka`."""
_KAFKA_ENV: Final = {
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
    "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}
_KAFKA_BIN: Final = "/opt/kafka/bin"

NAME_PREFIX: Final = "processor-"
"""A stage's Kubernetes objects are `processor-<stage>`."""
_APP: Final = "processor"

_OPTION_KEYS: Final = tuple(fields_of(StageOptions))
_OPS_KEYS: Final = tuple(key for key in fields_of(StageConfig)
                         if key not in ("options", "sources"))


# --- the deploy section -------------------------------------------------------------------


def parse_deploy(text: str) -> DeploySpec:
    """The `deploy` section of the pipeline file's YAML `text` (its defaults when absent).
    `ConfigError` when it does not validate (`processor pipeline check` says where)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None
    raw = data.get("deploy") if isinstance(data, Mapping) else None
    try:
        return DeploySpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigError(f"deploy: {_problems(exc)}") from None


def load_deploy(path: Path | str) -> DeploySpec:
    """The `deploy` section of the pipeline file at `path`."""
    return parse_deploy(Path(path).read_text(encoding="utf-8"))


# --- a stage on a target --------------------------------------------------------------------


def _merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """`high` over `low`: mappings merged key by key, anything else replaced whole."""
    merged = dict(low)
    for key, value in high.items():
        below = merged.get(key)
        merged[key] = _merge(below, value) if isinstance(value, Mapping) and isinstance(
            below, Mapping) else value
    return merged


def _written(model: BaseModel) -> dict[str, Any]:
    return {key: getattr(model, key) for key in model.model_fields_set}


class TargetStage:
    """A stage as one target runs it: the settings the file writes for it there (`raw`,
    as written, with `name` and `group`), their validated whole (`config`) and its
    `scale` there."""

    def __init__(self, plan: StagePlan, raw: dict[str, Any], config: StageConfig,
                 scale: ScaleSpec) -> None:
        self.plan = plan
        self.raw = raw
        self.config = config
        self.scale = scale

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def port(self) -> int | None:
        """The metrics port (probes, Prometheus); None when the stage serves none."""
        return self.config.metrics_port

    @property
    def image(self) -> str:
        if self.plan.image is None:
            raise ConfigError(f"stage {self.name}: no image: set image on the stage or in "
                              "defaults")
        return self.plan.image

    def grace(self, margin: int) -> int:
        """Seconds a stop may take: the stage's `shutdown_timeout` and `margin`."""
        return math.ceil(self.config.options.shutdown_timeout) + margin


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                     for err in exc.errors())


def target_stage(pipeline: Pipeline, plan: StagePlan, target: str,
                 settings: BaseModel | None = None,
                 scale: ScaleSpec | None = None) -> TargetStage:
    """`plan` on `target`: `defaults`, then the target's `settings` and `scale`
    (`deploy.<target>`), then the stage's own; `metrics_port` defaults to the container
    port (9100)."""
    between = _written(settings) if settings is not None else {}
    raw = _merge(_merge(pipeline.defaults, between), plan.spec.settings())
    raw["name"] = plan.name
    raw.setdefault("group", plan.name)
    raw.setdefault("metrics_port", CONTAINER_METRICS_PORT)
    where = f"stage {plan.name} on {target}"
    try:
        values = dict(SETTINGS_MODEL.model_validate(raw))
        config = StageConfig(options=StageOptions(**{k: values[k] for k in _OPTION_KEYS}),
                             **{k: values[k] for k in _OPS_KEYS})
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_problems(exc)}") from None
    if config.metrics_port == 0:
        raise ConfigError(f"{where}: metrics_port 0 (any free port) leaves the probes "
                          "without a port: set a fixed one (9100)")
    own_scale = _written(plan.spec.scale) if plan.spec.scale is not None else {}
    from_defaults = {k: v for k, v in _written(plan.scale).items() if k not in own_scale}
    try:
        scaled = ScaleSpec.model_validate({
            **from_defaults, **(_written(scale) if scale is not None else {}), **own_scale})
    except ValidationError as exc:
        raise ConfigError(f"{where}: scale: {_problems(exc)}") from None
    return TargetStage(plan, raw, config, scaled)


def _text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _kafka_env(stage: str, key: str) -> str:
    name = KAFKA_ENV_PREFIX + key.upper().replace(".", "_")
    if kafka_key_from_env(name) != key:
        raise ConfigError(f"stage {stage}: kafka setting {key!r} has no environment "
                          f"variable ({name} reads as {kafka_key_from_env(name)!r})")
    return name


def stage_env(stage: TargetStage) -> dict[str, str]:
    """The `PROCESSOR_*` variables of the settings written for the stage, in the order of
    the settings' declarations: what `processor run` reads back into `stage.config`."""
    env: dict[str, str] = {}
    for key in ("name", "group", *(k for k in FIELDS if k.partition(".")[0] not in
                                   ("name", "group"))):
        top, _, sub = key.partition(".")
        if top not in stage.raw:
            continue
        value = stage.raw[top]
        if sub:
            if isinstance(value, Mapping) and sub in value:
                env[env_name(key)] = _text(value[sub])
            continue
        if key == "kafka":
            for name, item in cast(Mapping[str, object], value or {}).items():
                env[_kafka_env(stage.name, str(name))] = _text(item)
        elif kind(FIELDS[key]) == "list" and value is not None:
            items = [value] if isinstance(value, str) else list(value)
            if any("," in str(v) for v in items):
                raise ConfigError(f"stage {stage.name}: {key}: an item with a comma has no "
                                  "environment form")
            env[env_name(key)] = ",".join(_text(v) for v in items)
        elif kind(FIELDS[key]) == "mapping" and value is not None:
            env[env_name(key)] = ",".join(f"{k}={_text(v)}"
                                          for k, v in cast(Mapping[str, object], value).items())
        else:
            env[env_name(key)] = _text(value)
    return env


def _secret_env(stage: str, setting: str) -> str:
    """The variable a `secrets` entry sets: `PROCESSOR_<FIELD>` or `PROCESSOR_KAFKA__<KEY>`."""
    top, _, sub = setting.partition(".")
    return _kafka_env(stage, sub) if top == "kafka" and sub else env_name(setting)


# --- compose ------------------------------------------------------------------------------


def _topics_script(pipeline: Pipeline) -> str:
    """`kafka-topics.sh --create --if-not-exists` for every topic of the file; topics that
    are alike (partitions, replication, settings) share a loop."""
    groups: dict[tuple[int | None, int | None, tuple[tuple[str, str], ...]], list[str]] = {}
    for name, topic in pipeline.topics.items():
        alike = (topic.partitions, topic.replication, tuple(sorted(
            (k, _text(v)) for k, v in topic.config.items())))
        groups.setdefault(alike, []).append(name)
    lines = ["set -e"]
    for (partitions, replication, config), names in groups.items():
        command = (f"{_KAFKA_BIN}/kafka-topics.sh --bootstrap-server {KAFKA_ADDRESS} --create "
                   f"--if-not-exists --topic {{topic}}")
        if partitions is not None:
            command += f" --partitions {partitions}"
        if replication is not None:
            command += f" --replication-factor {replication}"
        for key, value in config:
            command += f" --config {shlex.quote(f'{key}={value}')}"
        if len(names) == 1:
            lines.append(command.format(topic=names[0]))
        else:
            lines += [f"for t in {' '.join(names)}; do",
                      "  " + command.format(topic='"$$t"'), "done"]
    return "\n".join(lines) + "\n"


def _compose_secret_name(secret: str, key: str) -> str:
    return f"{secret}-{key}"


def _compose_stage(stage: TargetStage, deploy: DeploySpec,
                   secrets: dict[str, dict[str, str]]) -> dict[str, Any]:
    compose = deploy.compose
    service: dict[str, Any] = {}
    if compose.build is not None:
        service["build"] = dict(compose.build)
    service["image"] = stage.image
    service["restart"] = "unless-stopped"
    if compose.kafka is not None:
        service["depends_on"] = {"topics": {"condition": "service_completed_successfully"}}
    service["stop_grace_period"] = f"{stage.grace(COMPOSE_GRACE_MARGIN)}s"
    env = stage_env(stage)
    mounted: list[dict[str, str]] = []
    for setting, ref in stage.plan.secrets.items():
        key = ref.key or setting
        if setting in SECRET_KEYS:
            name = _compose_secret_name(ref.secret, key)
            secrets[name] = {"file": f"./secrets/{ref.secret}/{key}"}
            mounted.append({"source": name, "target": name})
            env[_secret_env(stage.name, setting) + "_FILE"] = f"/run/secrets/{name}"
        else:
            variable = re.sub(r"[^A-Za-z0-9]", "_", f"{ref.secret}_{key}").upper()
            env[_secret_env(stage.name, setting)] = (
                f"${{{variable}:?the secret {ref.secret}, entry {key}}}")
    env.update({name: _text(value) for name, value in stage.plan.env.items()})
    service["environment"] = env
    if mounted:
        service["secrets"] = mounted
    service["healthcheck"] = dict(HEALTHCHECK) if stage.port is not None else {
        "disable": True}
    return service


def render_compose(pipeline: Pipeline, deploy: DeploySpec) -> dict[str, Any]:
    """The compose file of a valid pipeline (see the module's doc)."""
    pipeline.require_valid()
    compose = deploy.compose
    services: dict[str, Any] = {}
    if compose.kafka is not None:
        kafka = compose.kafka
        services[KAFKA_SERVICE] = {
            "image": kafka.image,
            "hostname": KAFKA_SERVICE,
            "ports": ["9092:9092"],
            "environment": {**_KAFKA_ENV, **{k: _text(v) for k, v in kafka.env.items()}},
            "healthcheck": {
                "test": ["CMD", f"{_KAFKA_BIN}/kafka-broker-api-versions.sh",
                         "--bootstrap-server", "localhost:9092"],
                "interval": "5s", "timeout": "10s", "retries": 20},
        }
        services["topics"] = {
            "image": kafka.image,
            "depends_on": {KAFKA_SERVICE: {"condition": "service_healthy"}},
            "restart": "no",
            "entrypoint": ["/bin/bash", "-c"],
            "command": [_topics_script(pipeline)],
        }
    secrets: dict[str, dict[str, str]] = {}
    for plan in pipeline.stages.values():
        stage = target_stage(pipeline, plan, "compose", compose.settings)
        if compose.kafka is not None and stage.config.bootstrap_servers != KAFKA_ADDRESS:
            raise ConfigError(f"stage {plan.name} on compose: bootstrap_servers is "
                              f"{stage.config.bootstrap_servers}, but the broker of "
                              f"deploy.compose.kafka is {KAFKA_ADDRESS}")
        if plan.name in services:
            raise ConfigError(f"stage {plan.name}: compose already has a service of that "
                              "name")
        services[plan.name] = _compose_stage(stage, deploy, secrets)
    for name, service in compose.services.items():
        if name in services:
            raise ConfigError(f"deploy.compose.services.{name}: compose already has a "
                              "service of that name")
        services[name] = _plain(service)
    out: dict[str, Any] = {"services": services}
    if secrets:
        out["secrets"] = secrets
    return out


def _plain(value: object) -> Any:
    """Mappings and sequences as plain dicts and lists (for the YAML dumper)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- Kubernetes ---------------------------------------------------------------------------


def _labels(stage: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": _APP, "app.kubernetes.io/component": stage}


def _container(stage: TargetStage) -> dict[str, Any]:
    env = stage_env(stage)
    env.setdefault(env_name("replica_id"), "ordinal")
    variables: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    for setting, ref in stage.plan.secrets.items():
        variables.append({"name": _secret_env(stage.name, setting), "valueFrom": {
            "secretKeyRef": {"name": ref.secret, "key": ref.key or setting}}})
    variables += [{"name": k, "value": _text(v)} for k, v in stage.plan.env.items()]
    container: dict[str, Any] = {
        "name": "stage", "image": stage.image, "imagePullPolicy": "IfNotPresent",
        "env": variables,
    }
    if stage.port is not None:
        container["ports"] = [{"name": "metrics", "containerPort": stage.port}]
        container["livenessProbe"] = {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 3}
        container["readinessProbe"] = {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5, "failureThreshold": 2}
    resources = stage.plan.resources
    if resources is not None and (resources.requests or resources.limits):
        container["resources"] = {part: dict(values) for part, values in (
            ("requests", resources.requests), ("limits", resources.limits)) if values}
    container["securityContext"] = {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    return container


def _statefulset(stage: TargetStage) -> dict[str, Any]:
    name = NAME_PREFIX + stage.name
    pod_meta: dict[str, Any] = {"labels": _labels(stage.name)}
    if stage.port is not None:
        pod_meta["annotations"] = {"prometheus.io/scrape": "true",
                                   "prometheus.io/port": str(stage.port),
                                   "prometheus.io/path": "/metrics"}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "labels": _labels(stage.name)},
        "spec": {
            "serviceName": name,
            "replicas": stage.scale.replicas,
            "revisionHistoryLimit": 3,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _labels(stage.name)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "terminationGracePeriodSeconds": stage.grace(K8S_GRACE_MARGIN),
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "runAsGroup": 10001, "fsGroup": 10001},
                    "containers": [_container(stage)],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _service(stage: TargetStage) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": "None", "selector": _labels(stage.name)}
    if stage.port is not None:
        spec["ports"] = [{"name": "metrics", "port": stage.port, "targetPort": "metrics"}]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME_PREFIX + stage.name, "labels": _labels(stage.name)},
            "spec": spec}


def _budget(stage: TargetStage) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": NAME_PREFIX + stage.name},
            "spec": {"minAvailable": min(1, stage.scale.replicas - 1),
                     "selector": {"matchLabels": _labels(stage.name)}}}


def _scaled_object(pipeline: Pipeline, stage: TargetStage) -> dict[str, Any] | None:
    scale = stage.scale
    if scale.max is None and scale.lag_target is None:
        return None
    options = stage.config.options
    topic = pipeline.topics.get(options.input_topic)
    most = scale.max if scale.max is not None else (
        topic.partitions if topic is not None else None)
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet",
                           "name": NAME_PREFIX + stage.name},
        "minReplicaCount": scale.min if scale.min is not None else 1,
    }
    if most is not None:
        spec["maxReplicaCount"] = most
    spec.update(pollingInterval=15, cooldownPeriod=300)
    trigger: dict[str, str] = {
        "bootstrapServers": stage.config.bootstrap_servers,
        "consumerGroup": options.group,
        "topic": options.input_topic,
    }
    if scale.lag_target is not None:
        trigger["lagThreshold"] = str(scale.lag_target)
    trigger.update(offsetResetPolicy="earliest", allowIdleConsumers="false")
    spec["triggers"] = [{"type": "kafka", "metadata": trigger}]
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": NAME_PREFIX + stage.name}, "spec": spec}


def render_k8s(pipeline: Pipeline, deploy: DeploySpec) -> dict[str, list[dict[str, Any]]]:
    """Stage name -> its manifests (StatefulSet, Service, PodDisruptionBudget, and a
    ScaledObject when `scale` has `max` or `lag_target`), of a valid pipeline."""
    pipeline.require_valid()
    out: dict[str, list[dict[str, Any]]] = {}
    for plan in pipeline.stages.values():
        stage = target_stage(pipeline, plan, "kubernetes", deploy.kubernetes.settings,
                             deploy.kubernetes.scale)
        docs = [_statefulset(stage), _service(stage), _budget(stage)]
        scaled = _scaled_object(pipeline, stage)
        if scaled is not None:
            docs.append(scaled)
        out[plan.name] = docs
    return out
