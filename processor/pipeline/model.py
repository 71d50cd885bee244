"""The pipeline file's model: `defaults`, `topics` and `stages`, in pydantic.

A pipeline file describes a whole chain of stages in one YAML document (see
docs/pipelines.md):

* `defaults`: settings every stage gets unless it sets its own;
* `topics`: every topic the pipeline uses, dead-letter topics included, with its
  partitions, replication and topic settings (`retention.ms`, `cleanup.policy`), and
  whether it is a pipeline input (`input: true`: written from outside the pipeline);
* `stages`: stage name -> what the stage is.

A stage (and `defaults`) takes every stage setting under the name it has in a stage's own
YAML file, `processor run --config` (`handlers`, `handler_mode`, `input_topic`,
`output_topic`, `outputs`, `dlq_topic`, `guarantee`, `batch_size`, `sign_key`, ...: the
fields of `processor.ops.settings`), plus what only a pipeline knows: `scale`, `ring`,
`max_hops`, and, for the renderers (`processor.pipeline.render`), `image`, `resources`,
`env` and `secrets`; the top-level `deploy` section holds what the rendered compose file
and Kubernetes manifests need beyond the stages. The setting fields are not declared
again here: they come from `processor.ops.settings.SETTINGS`. In these models a setting
is kept as written (`Any`); `processor.pipeline.load` validates each stage's settings,
`defaults` overlaid by the stage's own, with the stage settings' own fields, so one
declaration decides what a setting accepts wherever it is written.
`pipeline_json_schema()` gives the file's JSON Schema with the settings' types, bounds and
choices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator
from pydantic.fields import FieldInfo

from processor.core.options import Count, Name
from processor.ops.settings import SETTINGS

__all__ = [
    "NOT_IN_DEFAULTS", "NOT_IN_FILE", "SETTINGS_MODEL", "STAGE_NAME_PATTERN",
    "TOPIC_NAME_PATTERN", "ComposeDeploy", "ComposeKafka", "DefaultsSpec", "DeploySettings",
    "DeploySpec", "EntrySpec", "KubernetesDeploy", "PipelineSpec", "Resources", "ScaleSpec",
    "SecretRef", "StageSpec", "TopicSpec", "pipeline_json_schema", "schema_text",
]

TOPIC_NAME_PATTERN: Final = r"^[A-Za-z0-9._-]{1,249}$"
"""A Kafka topic name."""
STAGE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
"""A stage name: lower-case letters, digits and '-', at most 63 (a DNS label), so that it
names a compose service and a Kubernetes object as it is."""

NOT_IN_FILE: Final = ("name",)
"""Settings a pipeline file does not take: a stage's name is its key under `stages`."""
NOT_IN_DEFAULTS: Final = ("input_topic", "output_topic", "outputs", "group",
                          "transactional_id", "max_hops")
"""Settings that belong to one stage: `defaults` does not take them."""

_FROZEN: Final = ConfigDict(extra="forbid", frozen=True)

TopicName = Annotated[str, StringConstraints(pattern=TOPIC_NAME_PATTERN)]
StageName = Annotated[str, StringConstraints(pattern=STAGE_NAME_PATTERN)]
PlainValue = str | int | float | bool


class ScaleSpec(BaseModel):
    """How many replicas of a stage run: a fixed count, or bounds for an autoscaler that
    aims at `lag_target` records of lag per replica."""

    model_config = _FROZEN

    replicas: Annotated[Count, Field(ge=1, description="replicas to start with")] = 1
    min: Annotated[Count | None, Field(
        ge=0, description="fewest replicas an autoscaler keeps (0: scale to zero)")] = None
    max: Annotated[Count | None, Field(
        ge=1, description="most replicas an autoscaler starts; more than the input "
                          "topic's partitions would stand idle")] = None
    lag_target: Annotated[Count | None, Field(
        ge=1, description="records of consumer lag per replica an autoscaler aims at")] = None

    @model_validator(mode="after")
    def _bounds(self) -> ScaleSpec:
        low = self.min if self.min is not None else 0
        if self.max is not None and low > self.max:
            raise ValueError(f"min ({low}) must not exceed max ({self.max})")
        if self.max is not None and self.replicas > self.max:
            raise ValueError(f"replicas ({self.replicas}) must not exceed max ({self.max})")
        if self.replicas < low:
            raise ValueError(f"replicas ({self.replicas}) must be at least min ({low})")
        return self


class Resources(BaseModel):
    """What a replica asks for and may use, as Kubernetes writes it (`cpu: 500m`,
    `memory: 256Mi`)."""

    model_config = _FROZEN

    requests: Mapping[Name, PlainValue] = Field(
        default_factory=dict, description="resources a replica is guaranteed")
    limits: Mapping[Name, PlainValue] = Field(
        default_factory=dict, description="resources a replica may use at most")


class SecretRef(BaseModel):
    """Where a secret setting's value is kept: an entry of a named secret (a Kubernetes
    Secret, a compose secret). The stage reads it from a file (`PROCESSOR_<FIELD>_FILE`)."""

    model_config = _FROZEN

    secret: Annotated[Name, Field(description="the secret's name")]
    key: Annotated[Name | None, Field(
        description="the entry in the secret (default: the setting's name)")] = None


class TopicSpec(BaseModel):
    """A topic of the pipeline; dead-letter topics are topics too."""

    model_config = _FROZEN

    partitions: Annotated[Count | None, Field(
        ge=1, description="partitions (default: the cluster's num.partitions)")] = None
    replication: Annotated[Count | None, Field(
        ge=1, description="replication factor (default: the cluster's "
                          "default.replication.factor)")] = None
    config: Mapping[Name, PlainValue] = Field(
        default_factory=dict,
        description="topic settings, such as retention.ms or cleanup.policy")
    input: bool = Field(
        default=False, description="a pipeline input: written from outside the pipeline")
    signed: bool = Field(
        default=False, description="a pipeline input whose outside writers sign their "
                                   "artifacts (for stages that require signatures)")
    sealed: bool = Field(
        default=False, description="a pipeline input whose outside writers seal their "
                                   "payloads (for stages that open them)")
    description: str | None = Field(default=None, description="what the topic holds")


class EntrySpec(BaseModel):
    """What `defaults` and a stage have in common besides the stage settings."""

    model_config = _FROZEN

    scale: ScaleSpec | None = Field(default=None, description="replicas and autoscaling")
    image: Annotated[Name | None, Field(
        description="container image the stage runs in")] = None
    resources: Resources | None = Field(
        default=None, description="resources of one replica (requests, limits)")
    env: Mapping[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
                 PlainValue] = Field(
        default_factory=dict, description="more environment variables of the container")
    secrets: Mapping[Name, SecretRef] = Field(
        default_factory=dict,
        description="setting (or kafka.<key>) -> the secret holding its value")

    def settings(self) -> dict[str, Any]:
        """The stage settings written here, as written."""
        return {key: getattr(self, key) for key in SETTINGS if key in self.model_fields_set}


class _StageBase(EntrySpec):
    ring: bool = Field(
        default=False, description="this stage closes a cycle on purpose (its outputs "
                                   "come back to a stage before it)")
    max_hops: Annotated[Count | None, Field(
        ge=1, description="this stage closes a cycle on purpose; an artifact goes round "
                          "it at most this many times")] = None

    @property
    def closes_ring(self) -> bool:
        """Whether the stage declares that it closes a cycle."""
        return self.ring or self.max_hops is not None


def _as_written(info: FieldInfo) -> tuple[Any, FieldInfo]:
    """A stage setting in an entry model: any value, validated later with the merged
    settings (`processor.pipeline.load`)."""
    return Any, FieldInfo(default=None, description=info.description)


DefaultsSpec: Final = cast(type[EntrySpec], create_model(
    "DefaultsSpec", __base__=EntrySpec, __doc__="Settings every stage gets unless it sets "
    "its own: any stage setting but a stage's own topics, group and identity.",
    **cast(dict[str, Any], {key: _as_written(info) for key, info in SETTINGS.items()
                            if key not in NOT_IN_FILE + NOT_IN_DEFAULTS})))
"""`defaults`: the model of the entry (settings as written)."""

StageSpec: Final = cast(type[_StageBase], create_model(
    "StageSpec", __base__=_StageBase, __doc__="A stage: its handlers, topics and any other "
    "stage setting (the names of processor run's YAML file), plus scale, rings and "
    "deployment data.",
    **cast(dict[str, Any], {key: _as_written(info) for key, info in SETTINGS.items()
                            if key not in NOT_IN_FILE})))
"""A stage under `stages`: the model of the entry (settings as written)."""


EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

DeploySettings: Final = cast(type[BaseModel], create_model(
    "DeploySettings", __config__=_FROZEN, __doc__="Stage settings of one deployment target "
    "(the cluster's address there, say): over `defaults`, under a stage's own; any stage "
    "setting but a stage's own topics, group and identity.",
    **cast(dict[str, Any], {key: _as_written(info) for key, info in SETTINGS.items()
                            if key not in NOT_IN_FILE + NOT_IN_DEFAULTS})))
"""`deploy.<target>.settings`: the model of the entry (settings as written)."""


class ComposeKafka(BaseModel):
    """A one-node Kafka (KRaft) service `kafka` on `kafka:9092`, and a `topics` service
    that creates the pipeline's topics before the stages start."""

    model_config = _FROZEN

    image: Annotated[Name, Field(description="the Kafka image (apache/kafka or alike, "
                                             "with /opt/kafka/bin)")]
    env: Mapping[EnvName, PlainValue] = Field(
        default_factory=dict, description="more KAFKA_* variables of the broker, over the "
                                          "one-node defaults (KAFKA_NUM_PARTITIONS: 6)")


class ComposeDeploy(BaseModel):
    """What `processor pipeline render compose` needs beyond the stages."""

    model_config = _FROZEN

    settings: DeploySettings = Field(  # type: ignore[valid-type]
        default_factory=DeploySettings, description="stage settings in the compose file: "
                                                    "over defaults, under a stage's own")
    build: Mapping[Name, Any] | None = Field(
        default=None, description="the build section of every stage's service (paths "
                                  "as the compose file reads them)")
    kafka: ComposeKafka | None = Field(
        default=None, description="run a one-node Kafka and create the topics (default: "
                                  "none, the stages' bootstrap_servers is elsewhere)")
    services: Mapping[Name, Mapping[Name, Any]] = Field(
        default_factory=dict, description="more services, as compose writes them "
                                          "(a generator, Prometheus, Grafana)")


class KubernetesDeploy(BaseModel):
    """What `processor pipeline render k8s` needs beyond the stages."""

    model_config = _FROZEN

    settings: DeploySettings = Field(  # type: ignore[valid-type]
        default_factory=DeploySettings, description="stage settings in the manifests: "
                                                    "over defaults, under a stage's own")
    scale: ScaleSpec | None = Field(
        default=None, description="scale in the manifests: over defaults, under a stage's "
                                  "own")


class DeploySpec(BaseModel):
    """The deployment targets' own options: `compose` and `kubernetes`."""

    model_config = _FROZEN

    compose: ComposeDeploy = Field(default_factory=ComposeDeploy,
                                   description="the compose file")
    kubernetes: KubernetesDeploy = Field(default_factory=KubernetesDeploy,
                                         description="the Kubernetes manifests")


class PipelineSpec(BaseModel):
    """A whole pipeline: its defaults, topics and stages."""

    model_config = _FROZEN

    version: Literal[1] = Field(default=1, description="version of the file format")
    name: Annotated[Name | None, Field(description="the pipeline's name")] = None
    description: str | None = Field(default=None, description="what the pipeline does")
    defaults: DefaultsSpec = Field(  # type: ignore[valid-type]
        default_factory=DefaultsSpec, description="settings every stage gets unless it "
                                                  "sets its own")
    topics: Mapping[TopicName, TopicSpec] = Field(
        default_factory=dict, description="topic name -> the topic")
    stages: Annotated[Mapping[StageName, StageSpec], Field(  # type: ignore[valid-type]
        min_length=1, description="stage name -> the stage")]
    deploy: DeploySpec = Field(default_factory=DeploySpec, description=(
        "options of the rendered compose file and Kubernetes manifests"))


SETTINGS_MODEL: Final = create_model(
    "StageSettingsFields", __config__=ConfigDict(extra="forbid"),
    **cast(dict[str, Any], {key: (info.annotation, info) for key, info in SETTINGS.items()}))
"""The stage settings as a plain pydantic model: the fields of
`processor.ops.settings.SETTINGS` (the pydantic-settings model reads its own sources; a
pipeline's values are handed in)."""


# --- the JSON Schema ----------------------------------------------------------------------

_KEYWORDS: Final = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                    "lt": "exclusiveMaximum"}
_CLI_ONLY: Final = frozenset({"metavar", "flag", "group", "none"})


def _clean(node: object) -> object:
    """The settings' schema in JSON Schema's words: pydantic writes the bounds of an
    annotated `Count` as `ge`/`le`, and the declarations' CLI extras (`metavar`, ...)
    mean nothing to an editor."""
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, object] = {}
    for key, value in node.items():
        if key in _CLI_ONLY and not isinstance(value, dict):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(sub) for name, sub in value.items()}
            continue
        out[_KEYWORDS.get(str(key), str(key))] = _clean(value)
    if out.get("type") == "array" and "minLength" in out:
        out["minItems"] = out.pop("minLength")
    return out


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline file: the models above, with each
    stage setting given the schema of its declaration (type, bounds, choices, default)."""
    schema = PipelineSpec.model_json_schema()
    settings = cast(dict[str, Any], _clean(SETTINGS_MODEL.model_json_schema()))
    defs: dict[str, Any] = schema["$defs"]
    for name, sub in settings.get("$defs", {}).items():
        defs.setdefault(name, sub)
    for entry in ("DefaultsSpec", "StageSpec", "DeploySettings"):
        props: dict[str, Any] = defs[entry]["properties"]
        for key in list(props):
            if key in settings["properties"]:
                typed = dict(settings["properties"][key])
                if typed.get("default", ...) is None and key in (
                        "input_topic", "group", "handlers", "bootstrap_servers"):
                    typed.pop("default")
                props[key] = typed
        defs[entry].pop("required", None)
    defs["StageSpec"]["required"] = ["input_topic"]
    defs["StageSpec"]["properties"]["group"]["description"] = (
        "consumer group; replicas sharing it share the partitions (default: the stage's "
        "name)")
    schema.update(title="processor pipeline file", description=(
        "A whole pipeline of processor stages in one file: defaults, topics and stages "
        "(docs/pipelines.md)."))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://processor.invalid/schemas/pipeline.schema.json", **schema}


def schema_text() -> str:
    """`pipeline_json_schema()` as the checked-in `schemas/pipeline.schema.json` holds it."""
    return json.dumps(pipeline_json_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":  # python -m processor.pipeline.model > schemas/pipeline.schema.json
    print(schema_text(), end="")
