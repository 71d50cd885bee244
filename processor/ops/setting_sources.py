"""The three sources of a stage's settings: the YAML file, the environment, CLI flags.

Each source is a pydantic-settings source: it hands the settings model a dict nested as
in the YAML file, and pydantic-settings merges the sources (mappings key by key, anything
else replaced whole) before validating. Each also records where each value came from,
by dotted key (`batch_size`, `kafka.linger.ms`), for `describe()` and the error
messages, and the problems it found reading its input, so that one `ConfigError` can
list them all. The names (`PROCESSOR_*` variables, flags) come from the `Schema`, which
`processor.ops.settings` derives from the field declarations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from processor.core.errors import ConfigError
from processor.ops.setting_fields import kind, optional

logger = logging.getLogger(__name__)

ENV_PREFIX: Final = "PROCESSOR_"
KAFKA_ENV_PREFIX: Final = "PROCESSOR_KAFKA__"
CONFIG_ENV: Final = "PROCESSOR_CONFIG"
PLATFORM_ENV: Final = frozenset({
    "PROCESSOR_ARCHITECTURE", "PROCESSOR_ARCHITEW6432", "PROCESSOR_IDENTIFIER",
    "PROCESSOR_LEVEL", "PROCESSOR_REVISION",
})
"""Set by Windows itself to describe the CPU: never settings."""
TOOLING_ENV: Final = frozenset({"PROCESSOR_KAFKA_HOME"})
"""Read by the local broker tooling (`processor.devtools.local_kafka`, the Makefile)."""
NONE_WORDS: Final = frozenset({"", "none", "null", "off", "-"})
"""Text that unsets an optional setting (environment and flags; YAML has `null`)."""


def kafka_key_from_env(name: str) -> str:
    """`PROCESSOR_KAFKA__SASL_PASSWORD` -> `sasl.password`."""
    return name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")


@dataclass(frozen=True, slots=True)
class Schema:
    """What the sources need to know about the settings."""

    model: type[BaseSettings]
    fields: Mapping[str, FieldInfo]
    """Dotted key -> field, for every setting with a variable and a flag of its own."""
    env_vars: Mapping[str, str]
    """Environment variable -> dotted key (`PROCESSOR_KAFKA__*` aside)."""
    flags: Mapping[str, str]
    """Dotted key -> its flag (`--batch-size`)."""
    known_keys: Sequence[str]


class Source(PydanticBaseSettingsSource):
    """The values of one source, nested as in the YAML file, with where each came from
    (by dotted key) and the problems found reading it."""

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema.model)
        self.schema = schema
        self.values: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        self.problems: list[str] = []

    def put(self, key: str, value: object, where: str) -> None:
        top, dot, sub = key.partition(".")
        if dot:
            self.values.setdefault(top, {})[sub] = value
        else:
            self.values[key] = value
        self.where[key] = where

    def put_text(self, key: str, text: str | Sequence[str], where: str) -> None:
        """A value given as text: lists split at commas, mappings as NAME=VALUE pairs
        (`--set` and `PROCESSOR_KAFKA__*` give one pair each), an optional value unset by
        one of `NONE_WORDS`. Numbers stay text: the model parses them."""
        info = self.schema.fields[key]
        items = [text] if isinstance(text, str) else list(text)
        if kind(info) == "list":
            self.put(key, [p.strip() for i in items for p in i.split(",") if p.strip()], where)
        elif kind(info) == "mapping":
            for item in (p for i in items for p in (i.split(",") if key != "kafka" else [i])):
                name, sep, value = item.partition("=")
                if not sep or not name.strip():
                    what = where.removeprefix("flag ") if where.startswith("flag ") else key
                    self.problems.append(f"{what}: expected NAME=VALUE, got {item!r} "
                                         f"(from {where})")
                else:
                    self.put(f"{key}.{name.strip()}", value.strip(), where)
        elif optional(info) and isinstance(text, str) and text.strip().lower() in NONE_WORDS:
            self.put(key, None, where)
        else:
            self.put(key, text, where)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def read_yaml(path: Path, known_keys: Sequence[str]) -> dict[str, object]:
    """The top-level mapping of a YAML file; a file that cannot be read or parsed raises
    `ConfigError` at once."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}: YAML syntax error{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys "
                          f"({', '.join(known_keys)}), got {type(data).__name__}")
    return cast(dict[str, object], data)


def file_source(schema: Schema, path: Path) -> Source:
    """The YAML file, values as YAML typed them (unknown keys are the model's to refuse)."""
    source, where = Source(schema), f"file {path.name}"
    for key, value in read_yaml(path, schema.known_keys).items():
        source.put(str(key), value, where)
        if isinstance(value, dict):
            source.where.update({f"{key}.{sub}": where for sub in value})
    return source


def env_source(schema: Schema, env: Mapping[str, str]) -> Source:
    """The `PROCESSOR_*` variables of `env` (see the prefix rules in `processor.ops.settings`)."""
    source = Source(schema)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in PLATFORM_ENV | TOOLING_ENV | {CONFIG_ENV}:
            continue
        where = f"environment {name}"
        if name.startswith(KAFKA_ENV_PREFIX):
            if key := kafka_key_from_env(name):
                source.put(f"kafka.{key}", env[name], where)
            else:
                source.problems.append(f"{name}: name a librdkafka key after {KAFKA_ENV_PREFIX}")
        elif name in schema.env_vars:
            source.put_text(schema.env_vars[name], env[name], where)
        elif name.startswith("PROCESSOR_KAFKA_"):
            logger.warning("ignoring unknown environment variable %s (a librdkafka setting "
                           "is %s<KEY>, with two underscores)", name, KAFKA_ENV_PREFIX)
        else:
            logger.warning("ignoring unknown environment variable %s", name)
    return source


def flag_source(schema: Schema, flags: Mapping[str, object]) -> Source:
    """argparse values by setting key; None (a flag not given) and other keys are skipped."""
    source = Source(schema)
    for key, value in flags.items():
        if value is None or key not in schema.fields:
            continue
        where = f"flag {schema.flags[key]}"
        if isinstance(value, str | list):
            source.put_text(key, cast(str | list[str], value), where)
        else:
            source.put(key, value, where)
    return source
