"""Reading a pipeline file: the YAML, the models, and each stage's effective settings.

`load_pipeline(path)` (or `parse_pipeline(text)`) never stops at the first problem: it
returns a `Pipeline` with every part that is valid and the list of `Problem`s, each with
its place in the file (`stages.validate.batch_size`) and its line. `Pipeline.require_valid`
raises one `ConfigError` listing them, for the callers that cannot go on with a problem.

A stage's effective settings are `defaults` overlaid by the stage's own (a mapping such as
`kafka` or `retry` key by key, anything else replaced whole, as the sources of a stage's
own settings merge), its name (its key under `stages`) and its group (the name, unless
set). They are validated with the fields of the stage settings
(`processor.ops.settings.SETTINGS`) into the `StageConfig` that `processor run` builds
from its own sources, which `build_stage` takes as it is. An error names the place where
the value was written: `defaults.batch_size` when it came from `defaults`.

Top-level keys starting with `x-` are left alone (as in a compose file): a place for
YAML anchors that stages share.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from processor.core.errors import ConfigError
from processor.core.options import StageOptions
from processor.ops.setting_fields import Context, fields_of, problem
from processor.ops.settings import FIELDS, KNOWN_KEYS, SETTINGS, StageConfig
from processor.pipeline.model import (
    NOT_IN_DEFAULTS,
    NOT_IN_FILE,
    SETTINGS_MODEL,
    STAGE_NAME_PATTERN,
    TOPIC_NAME_PATTERN,
    DefaultsSpec,
    EntrySpec,
    PipelineSpec,
    Resources,
    ScaleSpec,
    SecretRef,
    StageSpec,
    TopicSpec,
)

__all__ = ["Pipeline", "Place", "Problem", "StagePlan", "load_pipeline", "parse_pipeline"]

Place = tuple[str | int, ...]
"""A place in the file: the keys (and list indexes) from the top, ("stages", "x", "k")."""

_OPTION_KEYS: Final = tuple(fields_of(StageOptions))
_OPS_KEYS: Final = tuple(key for key in fields_of(StageConfig) if key not in ("options",
                                                                               "sources"))
_SECTIONS: Final = ("defaults", "topics", "stages")
_Head: Final = create_model(
    "PipelineHead", __config__=ConfigDict(extra="forbid"),
    **cast(dict[str, Any], {key: (info.annotation, info)
                            for key, info in PipelineSpec.model_fields.items()
                            if key not in _SECTIONS}))
"""The top level of the file but its sections, validated on their own."""


def dotted(place: Place) -> str:
    """("stages", "x", "handlers", 0) -> "stages.x.handlers[0]"."""
    text = ""
    for part in place:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a pipeline file: where it is, and what is wrong."""

    place: str
    """The dotted place in the file (`stages.validate.batch_size`); "" for the file."""
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message

    def render(self, source: str) -> str:
        """`FILE:LINE: place: message`, as compilers and linters print it."""
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self}"


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage of a pipeline, as it would run: its effective settings and what the
    pipeline says about it beyond them."""

    name: str
    settings: StageConfig
    """The effective settings: what `build_stage` takes."""
    spec: Any
    """The stage's own entry (`StageSpec`), as written."""
    scale: ScaleSpec
    image: str | None
    resources: Resources | None
    env: Mapping[str, str | int | float | bool]
    secrets: Mapping[str, SecretRef]
    own: frozenset[str]
    """The keys the stage sets itself (the others come from `defaults` or the settings'
    defaults)."""

    @property
    def options(self) -> StageOptions:
        return self.settings.options

    @property
    def closes_ring(self) -> bool:
        """Whether the stage declares it closes a cycle (`ring: true` or `max_hops`)."""
        return bool(self.spec.closes_ring)


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file as read: its valid parts and its problems."""

    source: str
    """The file's name, for messages."""
    name: str | None
    defaults: Mapping[str, Any]
    """The settings `defaults` sets, as written."""
    topics: Mapping[str, TopicSpec]
    stages: Mapping[str, StagePlan]
    """The stages whose entry and settings are valid, in file order."""
    stage_names: tuple[str, ...]
    """Every stage the file names, valid or not, in file order."""
    problems: tuple[Problem, ...]
    lines: Mapping[Place, int] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self, place: Place) -> int | None:
        """The line of `place`, or of the nearest enclosing place the file has."""
        for end in range(len(place), -1, -1):
            found = self.lines.get(place[:end])
            if found is not None:
                return found
        return None

    def problem(self, place: Place, message: str) -> Problem:
        return Problem(dotted(place), message, self.line(place))

    def setting_place(self, stage: str, key: str) -> Place:
        """Where the effective value of setting `key` of `stage` was written: on the
        stage, in `defaults`, or nowhere (the stage's place)."""
        plan = self.stages.get(stage)
        if plan is not None and key in plan.own:
            return ("stages", stage, key)
        if key in self.defaults:
            return ("defaults", key)
        return ("stages", stage)

    def require_valid(self) -> Pipeline:
        """This pipeline, or `ConfigError` listing every problem with its place."""
        if self.problems:
            raise ConfigError(f"{self.source}: {len(self.problems)} problem(s):\n" + "\n".join(
                "  " + p.render(self.source) for p in self.problems))
        return self


# --- the YAML -------------------------------------------------------------------------------


def _walk(node: yaml.Node, place: Place, lines: dict[Place, int],
          problems: list[Problem]) -> None:
    """The line of every key and list item under `node`, and the keys given twice (which
    YAML readers would otherwise settle silently, the last one winning)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key: str | int = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(Problem(dotted((*place, key)), f"given twice (lines "
                                        f"{seen[key]} and {line}): give it once", line))
            seen[key] = line
            lines.setdefault((*place, key), line)
            _walk(value_node, (*place, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*place, index), item.start_mark.line + 1)
            _walk(item, (*place, index), lines, problems)


def _read_yaml(text: str) -> tuple[object, dict[Place, int], list[Problem]]:
    lines: dict[Place, int] = {}
    problems: list[Problem] = []
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines, problems
        _walk(node, (), lines, problems)
        return loader.construct_document(node), lines, problems
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return None, lines, [Problem("", f"not valid YAML: {reason}", line)]
    finally:
        loader.dispose()


# --- validation -----------------------------------------------------------------------------


def _raw_at(data: object, loc: Sequence[str | int]) -> tuple[bool, object]:
    node = data
    for part in loc:
        inside = part in node if isinstance(node, Mapping) else (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if not inside:
            return False, None
        node = node[part]  # type: ignore[index]
    return True, node


def _annotation_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model a field holds (itself, or inside `X | None`), if any."""
    for candidate in (info.annotation, *getattr(info.annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_info(model: type[BaseModel] | None, loc: Sequence[str | int]) -> FieldInfo | None:
    """The declaration of the field at `loc` of `model`, through nested models."""
    info: FieldInfo | None = None
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        model = _annotation_model(info)
    return info


def _known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys allowed in the mapping at `loc` of `model`."""
    if not loc:
        return list(PipelineSpec.model_fields) if model is _Head else list(model.model_fields)
    info = _field_info(model, loc)
    nested = _annotation_model(info) if info is not None else None
    return list(nested.model_fields) if nested is not None else []


def _unknown(key: str, known: Sequence[str], section: str) -> str:
    if key in NOT_IN_FILE:
        return "a stage's name is its key under stages; remove it"
    if section == "defaults" and key in NOT_IN_DEFAULTS:
        return f"{key} belongs to one stage: set it on each stage, not in defaults"
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if not known:
        return f"unknown key {key!r}"
    if len(known) > 12:
        return (f"unknown key {key!r}{hint} (a stage takes the stage settings of "
                "docs/operations.md and scale, ring, max_hops, image, resources, env, "
                "secrets)")
    return f"unknown key {key!r}{hint}; known keys: {', '.join(known)}"


class _Reading:
    """The state of one reading: the raw data, the lines, the problems found."""

    def __init__(self, source: str, lines: dict[Place, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[Problem] = []

    def line(self, place: Place) -> int | None:
        for end in range(len(place), -1, -1):
            if place[:end] in self.lines:
                return self.lines[place[:end]]
        return None

    def add(self, place: Place, message: str) -> None:
        found = Problem(dotted(place), message, self.line(place))
        if found not in self.problems:
            self.problems.append(found)

    def model(self, model: type[BaseModel], raw: object, place: Place,
              section: str) -> Any:
        """`raw` validated by `model` (None, every error added, if it is not valid)."""
        try:
            return model.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            for err in exc.errors():
                self._model_error(model, raw, place, section, err)
            return None

    def _model_error(self, model: type[BaseModel], raw: object, place: Place, section: str,
                     err: ErrorDetails) -> None:
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            self.add((*place, *loc), _unknown(str(loc[-1]), known, section))
            return
        _, value = _raw_at(raw, loc)
        key = dotted((*place, *loc))
        text = problem(err, Context(key=key, info=_field_info(model, loc), origin="",
                                    raw=value, known=(), hint="set it"))
        self.add((*place, *loc), _plain(text.removeprefix(f"{key}: ")))

    def mapping(self, raw: object, place: Place) -> dict[str, Any] | None:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.add(place, f"expected a mapping of names to entries, got "
                            f"{type(raw).__name__}")
            return None
        return {str(k): v for k, v in raw.items()}


def _plain(message: str) -> str:
    """pydantic's words for a validator's own error, without its prefix."""
    return message.removeprefix("Value error, ")


def _merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """`high` over `low`: mappings merged key by key, anything else replaced whole."""
    merged = dict(low)
    for key, value in high.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def _origin(stage: str, own: Mapping[str, Any], defaults: Mapping[str, Any],
            loc: Sequence[str | int]) -> Place:
    """Where the value at `loc` of a stage's merged settings was written."""
    if loc and _raw_at(own, loc)[0]:
        return ("stages", stage, *loc)
    if loc and _raw_at(defaults, loc)[0]:
        return ("defaults", *loc)
    if loc and loc[0] in own:
        return ("stages", stage, loc[0])
    if loc and loc[0] in defaults:
        return ("defaults", loc[0])
    return ("stages", stage, *loc[:1])


def _settings(reading: _Reading, stage: str, own: Mapping[str, Any],
              defaults: Mapping[str, Any]) -> StageConfig | None:
    """The stage's effective settings, validated as the stage settings are."""
    merged = _merge(defaults, own)
    merged["name"] = stage
    merged.setdefault("group", stage)
    source = f"file {reading.source}"
    where = {key: f"{source}, {dotted(_origin(stage, own, defaults, (key,)))}"
             for key in merged if key in own or key in defaults}
    where["name"] = "the stage's key"
    where.setdefault("group", "the stage's name")
    for key in SETTINGS:
        where.setdefault(key, "default")

    def report(exc: ValidationError) -> None:
        for err in exc.errors():
            loc = tuple(err["loc"])
            place = _origin(stage, own, defaults, loc) if loc else ("stages", stage)
            flat = ".".join(str(p) for p in loc[:2] if isinstance(p, str))
            info = FIELDS.get(flat) or (SETTINGS.get(str(loc[0])) if loc else None)
            where_hint = "on the stage" if loc and loc[0] in NOT_IN_DEFAULTS \
                else "on the stage or in defaults"
            key = dotted(place)
            text = problem(err, Context(
                key=key, info=info, origin="", raw=_raw_at(merged, loc)[1] if loc else None,
                known=KNOWN_KEYS, hint=f"set {loc[0] if loc else 'it'} {where_hint}"))
            reading.add(place, _plain(text.removeprefix(f"{key}: ")))

    try:
        values = dict(SETTINGS_MODEL.model_validate(merged))
    except ValidationError as exc:
        report(exc)
        return None
    try:
        return StageConfig(options=StageOptions(**{k: values[k] for k in _OPTION_KEYS}),
                           sources=MappingProxyType(where),
                           **{k: values[k] for k in _OPS_KEYS})
    except ValidationError as exc:  # a rule across fields (a stage must not read its output)
        report(exc)
        return None


def _deployment(reading: _Reading, stage: str, entry: EntrySpec, defaults: EntrySpec | None,
                ) -> tuple[ScaleSpec, str | None, Resources | None, dict[str, Any],
                           dict[str, SecretRef]] | None:
    """Scale, image, resources, env and secrets: `defaults` overlaid by the stage's."""
    base = defaults if defaults is not None else DefaultsSpec()

    def given(model: BaseModel | None) -> dict[str, Any]:
        if model is None:
            return {}
        return {k: getattr(model, k) for k in model.model_fields_set}

    scale = reading.model(ScaleSpec, _merge(given(base.scale), given(entry.scale)),
                          ("stages", stage, "scale"), "scale")
    if scale is None:
        return None
    resources = None
    if base.resources is not None or entry.resources is not None:
        resources = Resources(**_merge(given(base.resources), given(entry.resources)))
    for section, secrets in ((("defaults",), base.secrets),
                             (("stages", stage), entry.secrets)):
        for key in secrets:
            if key not in SETTINGS and key.partition(".")[0] != "kafka":
                reading.add((*section, "secrets", key),
                            "names no stage setting (nor kafka.<key>)")
    return (scale, entry.image or base.image, resources, {**base.env, **entry.env},
            {**base.secrets, **entry.secrets})


def _check_name(reading: _Reading, section: str, name: str, pattern: str,
                rule: str) -> bool:
    if re.fullmatch(pattern, name):
        return True
    reading.add((section, name), f"{name!r} is not a valid {rule}")
    return False


def parse_pipeline(text: str, source: str = "pipeline.yaml") -> Pipeline:
    """A pipeline from the YAML `text` (`source` names it in messages)."""
    data, lines, found = _read_yaml(text)
    reading = _Reading(source, lines)
    reading.problems.extend(found)
    if found and data is None:
        return _empty(reading)
    if not isinstance(data, Mapping):
        reading.add((), "a pipeline file is a mapping with defaults, topics and stages; got "
                        f"{type(data).__name__ if data is not None else 'an empty file'}")
        return _empty(reading)
    top = {str(k): v for k, v in data.items() if not str(k).startswith("x-")}
    head = reading.model(_Head, {k: v for k, v in top.items() if k not in _SECTIONS}, (),
                         "top")
    if "stages" not in top:
        reading.add(("stages",), "required: name at least one stage")

    defaults_raw = reading.mapping(top.get("defaults"), ("defaults",)) or {}
    defaults = reading.model(DefaultsSpec, defaults_raw, ("defaults",), "defaults")
    defaults_settings = {k: v for k, v in defaults_raw.items() if k in SETTINGS
                         and k not in NOT_IN_FILE + NOT_IN_DEFAULTS}

    topics: dict[str, TopicSpec] = {}
    for name, raw in (reading.mapping(top.get("topics"), ("topics",)) or {}).items():
        valid = _check_name(reading, "topics", name, TOPIC_NAME_PATTERN,
                            "topic name (1 to 249 of letters, digits, '.', '_', '-')")
        spec = reading.model(TopicSpec, raw, ("topics", name), "topic")
        if valid and spec is not None:
            topics[name] = spec

    stages: dict[str, StagePlan] = {}
    stages_raw = reading.mapping(top.get("stages"), ("stages",)) or {}
    if "stages" in top and not stages_raw and isinstance(top.get("stages"), Mapping | None):
        reading.add(("stages",), "name at least one stage")
    for name, raw in stages_raw.items():
        valid = _check_name(reading, "stages", name, STAGE_NAME_PATTERN,
                            "stage name (lower-case letters, digits and '-', at most 63, "
                            "starting and ending with a letter or digit)")
        own = reading.mapping(raw, ("stages", name))
        if own is None:
            continue
        entry = reading.model(StageSpec, own, ("stages", name), "stage")
        own_settings = {k: v for k, v in own.items() if k in SETTINGS and k not in NOT_IN_FILE}
        settings = _settings(reading, name, own_settings, defaults_settings)
        if entry is None or settings is None or not valid:
            continue
        deployment = _deployment(reading, name, entry, defaults)
        if deployment is None:
            continue
        scale, image, resources, env, secrets = deployment
        stages[name] = StagePlan(
            name=name, settings=settings, spec=entry, scale=scale, image=image,
            resources=resources, env=MappingProxyType(env),
            secrets=MappingProxyType(secrets), own=frozenset(own))
    return Pipeline(
        source=source, name=head.name if head is not None else None,
        defaults=MappingProxyType(defaults_settings), topics=MappingProxyType(topics),
        stages=MappingProxyType(stages), stage_names=tuple(stages_raw),
        problems=tuple(sorted(reading.problems, key=_order)),
        lines=MappingProxyType(lines))


def _order(p: Problem) -> tuple[int, str]:
    return (p.line if p.line is not None else 0, p.place)


def _empty(reading: _Reading) -> Pipeline:
    return Pipeline(reading.source, None, MappingProxyType({}), MappingProxyType({}),
                    MappingProxyType({}), (), tuple(reading.problems),
                    MappingProxyType(reading.lines))


def load_pipeline(path: Path | str) -> Pipeline:
    """The pipeline in the YAML file at `path` (see `parse_pipeline`); `ConfigError` only
    when the file cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_pipeline(text, path.name)
