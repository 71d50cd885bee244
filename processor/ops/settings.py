"""Stage configuration: a YAML file, the environment and CLI flags, read by pydantic-settings.

One declaration per setting
---------------------------
A setting is one field: the stage's own on `processor.core.options.StageOptions` (and its
`RetryPolicy`), the operational ones on `StageConfig` below. Each `Field` carries the type,
the default, the bounds or choices and the help text. `StageSettings`, the pydantic-settings
model `load_config` validates, is generated from those fields, and so are the YAML key, the
environment variable, the flag of `processor run`, the `describe()` row and the error
message. Adding a setting is adding a field.

Sources and precedence
----------------------
Every setting can come from four places; a higher one wins, field by field:

1. CLI flags (`processor run --batch-size 500`); a flag that is not given is `None`
   and does not count;
2. environment variables `PROCESSOR_<FIELD>` (`PROCESSOR_BATCH_SIZE=500`);
3. the YAML file (`--config stage.yaml`, or the path in `PROCESSOR_CONFIG`);
4. the defaults of the fields.

Names derive from the field: `batch_size` / `PROCESSOR_BATCH_SIZE` / `--batch-size`. A
nested field is `retry: {max_attempts: 3}` / `PROCESSOR_RETRY_MAX_ATTEMPTS` /
`--retry-max-attempts`. Mappings merge key by key across the sources; a list is replaced
whole by a higher source. In particular:

* `handlers` (required): a YAML list, `PROCESSOR_HANDLERS` comma-separated, `--handler`
  repeated. Each is `module:function` or a registered name.
* `kafka`: librdkafka settings, passed through untouched under the one YAML key `kafka:`.
  From the environment, `PROCESSOR_KAFKA__<KEY>` where `<KEY>` is the librdkafka key
  upper-cased with dots written as underscores (`PROCESSOR_KAFKA__SASL_PASSWORD` sets
  `sasl.password`); from flags, `--set key=value` (repeatable).
* `outputs`: a YAML mapping of output name -> topic, `PROCESSOR_OUTPUTS` as
  `name=topic,name=topic`, or `--output name=topic` (repeatable).
* An optional value given as text (environment, flags) is unset by `none`, `null`, `off`,
  `-` or nothing: `metrics_port` `off` (YAML `null`) disables the HTTP server; 0 picks a
  free port.

`input_topic`, `group`, `handlers` and `bootstrap_servers` are required (`processor run`
serves a real Kafka cluster: the in-memory broker lives inside one process, for tests and
the demo); `name` defaults to the group.

The `PROCESSOR_` prefix
-----------------------
Only these variables are read: `PROCESSOR_CONFIG`, `PROCESSOR_<FIELD>`,
`PROCESSOR_RETRY_<KEY>` and `PROCESSOR_KAFKA__<KEY>`. Two kinds of other `PROCESSOR_*`
names are never read as settings nor reported: those Windows sets on its own to describe
the CPU (`PLATFORM_ENV`: `PROCESSOR_ARCHITECTURE`, `PROCESSOR_IDENTIFIER`, ...), and
`PROCESSOR_KAFKA_HOME`, where `processor.devtools.local_kafka` and the Makefile find the
local broker (`TOOLING_ENV`). The double underscore tells a librdkafka setting apart:
`PROCESSOR_KAFKA__` opens one, so `PROCESSOR_KAFKA_HOME` (one underscore) is never taken
for a `kafka.home`. Any other unknown `PROCESSOR_*` variable is ignored with a warning
(for `PROCESSOR_KAFKA_<X>`, one that points at the double underscore).

Errors and secrets
------------------
`load_config` raises one `ConfigError` listing every problem, each naming the key, what
is allowed and its source (`from file stage.yaml`, `from environment PROCESSOR_GROUP`,
`from flag --batch-size`). Secret values never print: a declared secret is a `SecretStr`,
and in the `kafka` pass-through any key that looks secret (`is_secret_key`) is written
`***` by `describe()` and scrubbed from logs (`secret_values`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType, NoneType, UnionType
from typing import Annotated, Any, Final, Literal, Union, cast, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    create_model,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processor.core.errors import ConfigError
from processor.core.options import Count, Name, ReadOnly, RetryPolicy, StageOptions

logger = logging.getLogger(__name__)

LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)
LOG_LEVELS: Final[tuple[str, ...]] = get_args(LogLevel)
DEFAULT_METRICS_PORT: Final = 9100
DEFAULT_METRICS_HOST: Final = "0.0.0.0"

ENV_PREFIX: Final = "PROCESSOR_"
KAFKA_ENV_PREFIX: Final = "PROCESSOR_KAFKA__"
CONFIG_ENV: Final = "PROCESSOR_CONFIG"
PLATFORM_ENV: Final = frozenset({
    "PROCESSOR_ARCHITECTURE", "PROCESSOR_ARCHITEW6432", "PROCESSOR_IDENTIFIER",
    "PROCESSOR_LEVEL", "PROCESSOR_REVISION",
})
"""Set by Windows itself: never settings."""
TOOLING_ENV: Final = frozenset({"PROCESSOR_KAFKA_HOME"})
"""Read by the local broker tooling (`processor.devtools.local_kafka`, the Makefile)."""

SECRET_MARKERS: Final = (
    "password", "secret", "sasl.oauthbearer", "sasl.jaas", "ssl.key", "token",
    "credential", "api.key", "private",
)
REDACTED: Final = "***"
_NONE_WORDS: Final = frozenset({"", "none", "null", "off", "-"})


# --- secrets -----------------------------------------------------------------------------


def is_secret_key(key: str) -> bool:
    """Whether a setting's value is a secret, judged by its name."""
    normal = key.lower().replace("_", ".").replace("-", ".")
    return any(marker in normal for marker in SECRET_MARKERS)


def redact(mapping: Mapping[str, object]) -> dict[str, object]:
    """A copy of `mapping` (nested mappings too) with every secret value (a `SecretStr`,
    or under a secret-looking key) replaced by `***`. Use it on anything about to be
    printed or logged."""
    out: dict[str, object] = {}
    for key, value in mapping.items():
        if is_secret_key(str(key)) or isinstance(value, SecretStr):
            out[key] = REDACTED
        elif isinstance(value, Mapping):
            out[key] = redact(cast(Mapping[str, object], value))
        else:
            out[key] = value
    return out


def secret_values(mapping: Mapping[str, object]) -> list[str]:
    """The secret values of `mapping` (as strings), for log scrubbing."""
    found: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, Mapping):
            found.extend(secret_values(cast(Mapping[str, object], value)))
        elif is_secret_key(str(key)) and value is not None and str(value):
            found.append(str(value))
    return [value for value in found if value]


# --- the configuration value -------------------------------------------------------------


def _kafka_value(value: object) -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    raise PydanticCustomError("kafka_value", "librdkafka values are strings, numbers or "
                              "booleans, got {kind}", {"kind": type(value).__name__})


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


KafkaValue = Annotated[str | int | float | bool, PlainValidator(_kafka_value)]


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class StageConfig:
    """Everything `processor run` needs; built by `load_config`. The fields after `options`
    are the operational settings (`json_schema_extra` names the flag's group, metavar, or
    a flag name other than the field's)."""

    options: StageOptions
    bootstrap_servers: Annotated[Name, Field(
        description="Kafka bootstrap servers host:port[,...]",
        json_schema_extra={"group": "kafka", "metavar": "SERVERS"})]
    handlers: Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(
        min_length=1, description="handler to run, module:function or a registered name; "
                                  "a chain runs in order",
        json_schema_extra={"flag": "handler", "metavar": "REF"})]
    kafka: Annotated[Mapping[str, KafkaValue], ReadOnly, Field(
        description="a librdkafka setting passed to every Kafka client, e.g. "
                    "compression.type=lz4",
        json_schema_extra={"group": "kafka", "flag": "set", "metavar": "KEY=VALUE"})] = (
        dataclasses.field(default_factory=lambda: MappingProxyType({}), repr=False))
    metrics_port: Annotated[Count | None, Field(
        ge=0, le=65535, description="port of /metrics, /healthz, /readyz (0 picks a free "
                                    "port; off disables)",
        json_schema_extra={"group": "operations", "metavar": "PORT", "none": "off"})] = (
        DEFAULT_METRICS_PORT)
    metrics_host: Annotated[Name, Field(
        description="address the metrics server binds",
        json_schema_extra={"group": "operations", "metavar": "HOST"})] = DEFAULT_METRICS_HOST
    log_format: Annotated[LogFormat, Field(
        description="log format: text for a terminal, json for one object a line",
        json_schema_extra={"group": "operations"})] = "text"
    log_level: Annotated[LogLevel, BeforeValidator(_upper), Field(
        description="log level", json_schema_extra={"group": "operations"})] = "INFO"
    processes: Annotated[Count, Field(
        ge=1, description="worker processes, each a member of the consumer group",
        json_schema_extra={"group": "operations", "metavar": "N"})] = 1
    sources: Annotated[Mapping[str, str], ReadOnly] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    """Setting -> where its value came from ("default", "file stage.yaml", ...)."""

    @property
    def name(self) -> str:
        return self.options.name

    def value(self, key: str) -> object:
        """The value of setting `key` (a stage option or an operational setting)."""
        return getattr(self.options if key in _STAGE_FIELDS else self, key)

    def describe(self) -> str:
        """A human summary, secrets redacted, with where each value came from."""
        lines = [f"stage {self.name}"]
        for key, info in SETTINGS.items():
            if key != "kafka":
                lines.append(f"  {key}: {_show(key, info, self.value(key))}{self._from(key)}")
        if self.kafka:
            lines.append("  kafka:")
            for key, value in sorted(redact(self.kafka).items()):
                lines.append(f"    {key}: {value}{self._from('kafka.' + key)}")
        return "\n".join(lines)

    def _from(self, key: str) -> str:
        found = ", ".join(dict.fromkeys(
            where for name, where in sorted(self.sources.items())
            if name == key or name.startswith(key + ".")))
        return f"  ({found})" if found else ""


def _show(key: str, info: FieldInfo, value: object) -> str:
    if value is None:
        return str(_extra(info).get("none", "-"))
    if isinstance(value, SecretStr) or is_secret_key(key):
        return REDACTED
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in sorted(redact(value).items())) or "-"
    if dataclasses.is_dataclass(value):
        return " ".join(f"{f.name}={getattr(value, f.name):g}" for f in dataclasses.fields(value))
    return str(value)


# --- the settings model, generated from the fields ---------------------------------------


def _extra(info: FieldInfo) -> dict[str, Any]:
    return dict(info.json_schema_extra) if isinstance(info.json_schema_extra, dict) else {}


def _fields_of(cls: type) -> dict[str, FieldInfo]:
    """The declared fields of a pydantic dataclass, in order."""
    return cast(dict[str, FieldInfo], getattr(cls, "__pydantic_fields__"))  # noqa: B009


_STAGE_FIELDS: Final = _fields_of(StageOptions)
_RETRY_FIELDS: Final = _fields_of(RetryPolicy)
_OPS_FIELDS: Final = {k: v for k, v in _fields_of(StageConfig).items()
                      if k not in ("options", "sources")}


def _setting(key: str, info: FieldInfo) -> tuple[Any, FieldInfo]:
    """A field of the settings model: the option's own, optional where `load_config`
    fills the value in (`name` from the group) or a sink needs none (`output_topic`)."""
    if key == "name":
        inner = cast(Any, Annotated)[(info.annotation, *info.metadata)]
        return inner | None, FieldInfo(default=None, description=info.description)
    if key == "output_topic":
        return info.annotation, FieldInfo.merge_field_infos(info, default=None)
    return info.annotation, info


_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar(
    "_SOURCES", default=())


class _SettingsBase(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return _SOURCES.get()  # flags, environment, file: highest first


StageSettings: Final = create_model(
    "StageSettings", __base__=_SettingsBase,
    **cast(dict[str, Any], {key: _setting(key, info)
                            for key, info in {**_STAGE_FIELDS, **_OPS_FIELDS}.items()}))
"""The pydantic-settings model of one stage: every setting, flat as in the YAML file."""

SETTINGS: Final[Mapping[str, FieldInfo]] = MappingProxyType(dict(StageSettings.model_fields))
"""Top-level settings (YAML keys) in declaration order."""
FIELDS: Final[Mapping[str, FieldInfo]] = MappingProxyType({
    flat: info
    for key, top in SETTINGS.items()
    for flat, info in ([(key, top)] if key != "retry" else
                       [(f"retry.{k}", v) for k, v in _RETRY_FIELDS.items()])
})
"""Every setting with a flag and a variable of its own: `retry` as `retry.<key>`."""
KNOWN_KEYS: Final = tuple(sorted(SETTINGS))
"""Every top-level key a YAML file may have."""


def env_name(key: str) -> str:
    """`retry.max_attempts` -> `PROCESSOR_RETRY_MAX_ATTEMPTS`."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def flag_name(key: str) -> str:
    """`batch_size` -> `--batch-size`; `handlers` -> `--handler` (its declared flag)."""
    return "--" + str(_extra(FIELDS[key]).get("flag", key)).replace("_", "-").replace(".", "-")


ENV_VARS: Final[Mapping[str, str]] = MappingProxyType({
    **{env_name(key): key for key in FIELDS if key != "kafka"}, CONFIG_ENV: "config"})
"""Environment variable -> the setting it sets (plus `PROCESSOR_KAFKA__*` for `kafka`)."""


def is_known_env_var(name: str) -> bool:
    """Whether `load_config` reads the environment variable `name`."""
    return name in ENV_VARS or (name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(
        KAFKA_ENV_PREFIX))


def kafka_key_from_env(name: str) -> str:
    """`PROCESSOR_KAFKA__SASL_PASSWORD` -> `sasl.password`."""
    return name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")


def _kind(info: FieldInfo) -> str:
    """int, float, str, choice, list, mapping or nested, from the field's annotation."""
    tp: Any = info.annotation
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if a is not NoneType)
        else:
            break
    origin = get_origin(tp)
    if origin is Literal:
        return "choice"
    if origin is tuple or origin is list:
        return "list"
    if origin is Mapping or origin is dict:
        return "mapping"
    return {int: "int", float: "float", str: "str"}.get(tp, "nested")


def _choices(info: FieldInfo) -> tuple[str, ...]:
    tp: Any = info.annotation
    return tuple(get_args(tp)) if get_origin(tp) is Literal else ()


def _optional(info: FieldInfo) -> bool:
    return NoneType in get_args(info.annotation)


# --- the sources -------------------------------------------------------------------------


class _Source(PydanticBaseSettingsSource):
    """The values of one source, nested as in the YAML file, with where each came from
    (by dotted key) and the problems found reading it."""

    def __init__(self) -> None:
        super().__init__(StageSettings)
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
        """A value given as text: lists split at commas, mappings as NAME=VALUE pairs."""
        kind = _kind(FIELDS[key])
        items = [text] if isinstance(text, str) else list(text)
        if kind == "list":
            self.put(key, [p.strip() for item in items for p in item.split(",") if p.strip()],
                     where)
        elif kind == "mapping":
            for item in (p for i in items for p in (i.split(",") if key != "kafka" else [i])):
                name, sep, value = item.partition("=")
                if not sep or not name.strip():
                    self.problems.append(f"{flag_name(key) if where.startswith('flag') else key}"
                                         f": expected NAME=VALUE, got {item!r} (from {where})")
                else:
                    self.put(f"{key}.{name.strip()}", value.strip(), where)
        elif _optional(FIELDS[key]) and isinstance(text, str) and \
                text.strip().lower() in _NONE_WORDS:
            self.put(key, None, where)
        else:
            self.put(key, text, where)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def _read_yaml(path: Path) -> dict[str, object]:
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
                          f"({', '.join(KNOWN_KEYS)}), got {type(data).__name__}")
    return cast(dict[str, object], data)


def _file_source(path: Path) -> _Source:
    source, where = _Source(), f"file {path.name}"
    for key, value in _read_yaml(path).items():
        source.put(str(key), value, where)
        if isinstance(value, dict):
            source.where.update({f"{key}.{sub}": where for sub in value})
    return source


def _env_source(env: Mapping[str, str]) -> _Source:
    source = _Source()
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in PLATFORM_ENV | TOOLING_ENV | {CONFIG_ENV}:
            continue
        where = f"environment {name}"
        if name.startswith(KAFKA_ENV_PREFIX):
            if key := kafka_key_from_env(name):
                source.put(f"kafka.{key}", env[name], where)
            else:
                source.problems.append(f"{name}: name a librdkafka key after {KAFKA_ENV_PREFIX}")
        elif name in ENV_VARS:
            source.put_text(ENV_VARS[name], env[name], where)
        elif name.startswith("PROCESSOR_KAFKA_"):
            logger.warning("ignoring unknown environment variable %s (a librdkafka setting "
                           "is %s<KEY>, with two underscores)", name, KAFKA_ENV_PREFIX)
        else:
            logger.warning("ignoring unknown environment variable %s", name)
    return source


def _flag_source(flags: Mapping[str, object]) -> _Source:
    source = _Source()
    for key, value in flags.items():
        if value is None or key not in FIELDS:
            continue
        where = f"flag {flag_name(key)}"
        if isinstance(value, str | list):
            source.put_text(key, cast(str | list[str], value), where)
        else:
            source.put(key, value, where)
    return source


# --- loading -----------------------------------------------------------------------------


def load_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> StageConfig:
    """Build a `StageConfig` from the YAML file at `path` (or `PROCESSOR_CONFIG`), the
    environment `env` and the CLI `flags` (argparse values; None = not given).

    Raises `ConfigError` listing every problem found.
    """
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    sources = [_flag_source(flags), _env_source(env)]
    if path is not None:
        sources.append(_file_source(Path(path)))
    problems = [p for source in reversed(sources) for p in source.problems]
    where: dict[str, str] = {}
    for source in reversed(sources):
        where.update(source.where)
    token = _SOURCES.set(tuple(sources))
    try:
        values = dict(StageSettings())
    except ValidationError as exc:
        raise ConfigError("\n".join(problems + _messages(exc, where, sources))) from None
    finally:
        _SOURCES.reset(token)
    if problems:
        raise ConfigError("\n".join(problems))
    for key in SETTINGS:
        if key not in where and not any(k.startswith(key + ".") for k in where):
            where[key] = "default"
    if values["name"] is None:
        values["name"], where["name"] = values["group"], "the group"
    try:
        config = StageConfig(
            options=StageOptions(**{k: values[k] for k in _STAGE_FIELDS}),
            sources=where, **{k: values[k] for k in _OPS_FIELDS})
    except ValidationError as exc:
        raise ConfigError("\n".join(_messages(exc, where, sources))) from None
    logger.debug("configuration loaded: %s", config.describe())
    return config


def check_file(path: Path, env: Mapping[str, str] | None = None) -> StageConfig:
    """Validate a YAML file (optionally with an environment) for `processor config check`."""
    return load_config(path, env or {}, {})


# --- error messages ----------------------------------------------------------------------


def _messages(exc: ValidationError, where: Mapping[str, str],
              sources: Sequence[_Source]) -> list[str]:
    """One line per problem, in the words of the settings and naming the source."""
    return list(dict.fromkeys(_message(e, where, sources) for e in exc.errors()))


def _raw(loc: tuple[int | str, ...], sources: Sequence[_Source], default: object) -> object:
    """The value as the user wrote it, from the highest source that has it."""
    for source in sources:
        node: object = source.values
        for part in loc:
            if not isinstance(node, dict | list) or part not in (
                    node if isinstance(node, dict) else range(len(node))):
                break
            node = node[part]  # type: ignore[index]
        else:
            return node
    return default


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _message(err: ErrorDetails, where: Mapping[str, str], sources: Sequence[_Source]) -> str:
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx", {})
    key = ".".join(str(p) for p in loc[:2] if isinstance(p, str))
    info = FIELDS.get(key) or SETTINGS.get(key.partition(".")[0])
    origin = where.get(key) or where.get(key.partition(".")[0], "")
    in_file = origin.startswith("file ")
    tail = f" (from {origin})" if origin else ""
    raw = _raw(loc, sources, err["input"])
    shown = f"{raw!r} ({type(raw).__name__})" if in_file else repr(raw)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent, name = ".".join(str(p) for p in loc[:-1]), loc[-1]
        known = KNOWN_KEYS if not parent else tuple(_RETRY_FIELDS)
        place = f"in {origin.removeprefix('file ')}" if in_file else f"(from {origin})"
        return (f"{parent + ': ' if parent else ''}unknown key {name!r} {place}; "
                f"known keys: {', '.join(known)}")
    if kind == "missing":
        return (f"{key}: required; set {key} in the YAML file, {env_name(key)} or "
                f"{flag_name(key)}")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{key}: expected an integer, got {shown}{tail}"
    if kind in ("float_type", "float_parsing"):
        return f"{key}: expected a number, got {shown}{tail}"
    if kind == "string_type":
        quote = "; quote it in YAML" if in_file else ""
        return f"{key}: expected a string, got {raw!r} ({type(raw).__name__}){quote}{tail}"
    if kind == "string_too_short":
        return f"{key}: must not be empty{tail}"
    if kind == "too_short":
        return f"{key}: at least one is required{tail}"
    if kind == "literal_error" and info is not None:
        return (f"{key}: {raw!r} is not allowed; allowed values: "
                f"{', '.join(_choices(info))}{tail}")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal") and info is not None:
        return f"{key}: {_bound_text(info)}, got {_number(raw)}{tail}"
    if kind in ("dict_type", "mapping_type"):
        return f"{key}: expected a mapping of names to values, got {type(raw).__name__}{tail}"
    if kind in ("tuple_type", "list_type"):
        return f"{key}: expected a list, got {raw!r}{tail}"
    if kind == "value_error" and not loc:
        return str(ctx.get("error", err["msg"]))
    return f"{key or 'configuration'}: {err['msg']}{tail}"


def _bound_text(info: FieldInfo) -> str:
    low = next((m for m in info.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m.le for m in info.metadata if isinstance(m, Le)), None)
    if isinstance(low, Ge) and high is not None:
        return f"must be between {_number(low.ge)} and {_number(high)}"
    if isinstance(low, Gt):
        return f"must be greater than {_number(low.gt)}"
    if isinstance(low, Ge):
        return "must not be negative" if low.ge == 0 else f"must be at least {_number(low.ge)}"
    return f"must be at most {_number(high)}"


# --- CLI flags ---------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `processor run` to `parser`, one per setting. Every default is
    None, so a flag that is not given leaves the environment, the file or the default in
    charge."""
    parser.add_argument(
        "--config", metavar="FILE", type=Path, default=None,
        help=f"YAML configuration file (default: ${CONFIG_ENV}, if set)",
    )
    groups = {name: parser.add_argument_group(name) for name in ("stage", "kafka", "operations")}
    for key, info in FIELDS.items():
        extra, kind = _extra(info), _kind(info)
        group = groups[extra.get("group", "stage")]
        env = f"{KAFKA_ENV_PREFIX}<KEY> with dots as underscores" if key == "kafka" \
            else env_name(key)
        default = "" if info.default in (None, ...) or info.is_required() or \
            info.default_factory else f"; default {info.default}"
        options: dict[str, Any] = {
            "dest": key, "default": None,
            "metavar": extra.get("metavar", {"int": "N", "float": "NUMBER"}.get(kind, key.upper())),
            "help": f"{info.description} [env {env}{default}]",
        }
        if kind in ("list", "mapping"):
            options.update(action="append", help=f"{info.description}; repeatable "
                                                 f"[env {env}]")
        elif kind == "choice":
            choices = _choices(info)
            upper = all(c == c.upper() for c in choices)
            options.update(choices=choices, type=str.upper if upper else str)
            del options["metavar"]
        elif kind in ("int", "float") and not _optional(info):
            options["type"] = int if kind == "int" else float
        group.add_argument(flag_name(key), **options)
