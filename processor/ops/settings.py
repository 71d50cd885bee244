"""Stage configuration: a YAML file, the environment and CLI flags, validated at start.

Sources and precedence
----------------------
Every setting can come from four places; a higher one wins, field by field:

1. CLI flags (`processor run --batch-size 500`); a flag that is not given is `None`
   and does not count;
2. environment variables `PROCESSOR_<FIELD>` (`PROCESSOR_BATCH_SIZE=500`);
3. the YAML file (`--config stage.yaml`, or the path in `PROCESSOR_CONFIG`);
4. the defaults below.

The YAML key, the environment variable and the flag of a field are derived from its name
alone: `batch_size` / `PROCESSOR_BATCH_SIZE` / `--batch-size`. Exceptions:

* `handlers`: a YAML list, `PROCESSOR_HANDLERS` comma-separated, `--handler` repeated.
  A higher source replaces the whole list. Each is `module:function` or a registered name.
* `kafka`: librdkafka settings, passed through untouched under the one YAML key `kafka:`.
  From the environment, `PROCESSOR_KAFKA__<KEY>` where `<KEY>` is the librdkafka key
  upper-cased with dots written as underscores (`PROCESSOR_KAFKA__SASL_PASSWORD` sets
  `sasl.password`); from flags, `--set key=value` (repeatable). Keys are merged one by
  one across the sources.
* `retry`: a YAML mapping (`max_attempts`, `initial_backoff`, `max_backoff`,
  `multiplier`, `jitter`), or `PROCESSOR_RETRY_<KEY>` from the environment.
* `outputs`: a YAML mapping of output name -> topic, or `PROCESSOR_OUTPUTS` as
  `name=topic,name=topic`.
* `metrics_port`: `null` (YAML) or `off` (environment, flag) disables the HTTP server;
  0 picks a free port.

`input_topic` and `group` are required; `name` defaults to the group; no
`bootstrap_servers` means the in-memory broker.

Errors are `ConfigError`s naming the field, the source and what is allowed; all problems
of one configuration are reported together. Secret values (`redact`) are never printed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast

import yaml

from processor.core.errors import ConfigError
from processor.runtime.options import ERROR_POLICIES, GUARANTEES, RetryPolicy, StageOptions

logger = logging.getLogger(__name__)

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_METRICS_PORT: Final = 9100
DEFAULT_METRICS_HOST: Final = "0.0.0.0"

ENV_PREFIX: Final = "PROCESSOR_"
KAFKA_ENV_PREFIX: Final = "PROCESSOR_KAFKA__"
RETRY_ENV_PREFIX: Final = "PROCESSOR_RETRY_"
CONFIG_ENV: Final = "PROCESSOR_CONFIG"

SECRET_MARKERS: Final = (
    "password", "secret", "sasl.oauthbearer", "sasl.jaas", "ssl.key", "token",
    "credential", "api.key", "private",
)
REDACTED: Final = "***"

# Variables some platforms set on their own (Windows describes its CPU with them).
_FOREIGN_ENV: Final = frozenset({
    "PROCESSOR_ARCHITECTURE", "PROCESSOR_ARCHITEW6432", "PROCESSOR_IDENTIFIER",
    "PROCESSOR_LEVEL", "PROCESSOR_REVISION",
    # Read by `processor.devtools.local_kafka` (where the local broker's jars and configs live).
    "PROCESSOR_KAFKA_HOME", "PROCESSOR_KAFKA_DEPLOY",
})

Kind = Literal["str", "opt_str", "int", "float", "choice", "port"]


@dataclass(frozen=True, slots=True)
class _Field:
    kind: Kind
    help: str
    default: object = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None


_DEFAULT_OPTIONS = StageOptions(name="-", input_topic="-in", output_topic=None, group="-")

SCALARS: Final[Mapping[str, _Field]] = MappingProxyType({
    "name": _Field("opt_str", "stage name used in metrics and logs (default: the group)"),
    "input_topic": _Field("str", "topic the stage reads (required)", metavar="TOPIC"),
    "output_topic": _Field("opt_str", "topic the stage writes (none: a sink stage)",
                           metavar="TOPIC"),
    "group": _Field("str", "consumer group; replicas sharing it share the partitions (required)"),
    "dlq_topic": _Field("opt_str", "dead-letter topic (none: a record that must be "
                        "dead-lettered stops the stage, uncommitted)",
                        metavar="TOPIC"),
    "guarantee": _Field("choice", "delivery guarantee", _DEFAULT_OPTIONS.guarantee,
                        choices=GUARANTEES),
    "batch_size": _Field("int", "most records taken from the consumer in one call",
                         _DEFAULT_OPTIONS.batch_size, minimum=1, metavar="N"),
    "poll_timeout": _Field("float", "seconds one consume call waits for a first record",
                           _DEFAULT_OPTIONS.poll_timeout, minimum=0, metavar="SECONDS"),
    "commit_interval": _Field("float", "seconds between commits",
                              _DEFAULT_OPTIONS.commit_interval, minimum=0,
                              exclusive_minimum=True, metavar="SECONDS"),
    "max_in_flight": _Field("int", "records produced but not committed before an early commit",
                            _DEFAULT_OPTIONS.max_in_flight, minimum=1, metavar="N"),
    "error_policy": _Field("choice", "what an unexpected handler exception does",
                           _DEFAULT_OPTIONS.error_policy, choices=ERROR_POLICIES),
    "shutdown_timeout": _Field("float", "seconds a shutdown may take to drain and commit",
                               _DEFAULT_OPTIONS.shutdown_timeout, minimum=0,
                               exclusive_minimum=True, metavar="SECONDS"),
    "transactional_id": _Field("opt_str", "exactly-once: this instance's transactional id "
                               "(default: derived from the name)", metavar="ID"),
    "bootstrap_servers": _Field("opt_str", "Kafka bootstrap servers host:port[,...] "
                                "(none: the in-memory broker)", metavar="SERVERS"),
    "metrics_port": _Field("port", f"port of /metrics, /healthz, /readyz (default "
                           f"{DEFAULT_METRICS_PORT}; 0 picks a free port; 'off' disables)",
                           DEFAULT_METRICS_PORT, metavar="PORT"),
    "metrics_host": _Field("str", f"address the metrics server binds (default "
                           f"{DEFAULT_METRICS_HOST})", DEFAULT_METRICS_HOST, metavar="HOST"),
    "log_format": _Field("choice", "log format: text for a terminal, json for one object a line",
                         "text", choices=LOG_FORMATS),
    "log_level": _Field("choice", "log level", "INFO", choices=LOG_LEVELS),
    "processes": _Field("int", "worker processes, each a member of the consumer group",
                        1, minimum=1, metavar="N"),
})
"""The scalar fields: YAML key -> type, help, default and limits."""

RETRY_FIELDS: Final[Mapping[str, _Field]] = MappingProxyType({
    "max_attempts": _Field("int", "attempts before dead-lettering", minimum=1),
    "initial_backoff": _Field("float", "seconds after the first failure", minimum=0),
    "max_backoff": _Field("float", "longest wait in seconds", minimum=0),
    "multiplier": _Field("float", "backoff growth per attempt", minimum=1),
    "jitter": _Field("float", "random spread, a fraction", minimum=0, maximum=1),
})

STRUCTURED: Final = ("handlers", "kafka", "retry", "outputs")
KNOWN_KEYS: Final = tuple(sorted((*SCALARS, *STRUCTURED)))
"""Every top-level key a YAML file may have."""

ENV_VARS: Final[Mapping[str, str]] = MappingProxyType({
    **{ENV_PREFIX + key.upper(): key for key in (*SCALARS, "handlers", "outputs")},
    **{RETRY_ENV_PREFIX + key.upper(): "retry." + key for key in RETRY_FIELDS},
    CONFIG_ENV: "config",
})
"""Environment variable -> the field it sets (plus `PROCESSOR_KAFKA__*` for `kafka`)."""


def is_known_env_var(name: str) -> bool:
    """Whether `load_config` reads the environment variable `name`."""
    return name in ENV_VARS or (name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(
        KAFKA_ENV_PREFIX))


def kafka_key_from_env(name: str) -> str:
    """`PROCESSOR_KAFKA__SASL_PASSWORD` -> `sasl.password`."""
    return name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")


# --- secrets -----------------------------------------------------------------------------


def is_secret_key(key: str) -> bool:
    """Whether a setting's value is a secret, judged by its name."""
    normal = key.lower().replace("_", ".").replace("-", ".")
    return any(marker in normal for marker in SECRET_MARKERS)


def redact(mapping: Mapping[str, object]) -> dict[str, object]:
    """A copy of `mapping` (nested mappings too) with every secret value replaced by
    `***`. Use it on anything about to be printed or logged."""
    out: dict[str, object] = {}
    for key, value in mapping.items():
        if is_secret_key(str(key)):
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
        if isinstance(value, Mapping):
            found.extend(secret_values(cast(Mapping[str, object], value)))
        elif is_secret_key(str(key)) and value is not None and str(value):
            found.append(str(value))
    return found


# --- the configuration value -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageConfig:
    """Everything `processor run` needs; built by `load_config`."""

    options: StageOptions
    bootstrap_servers: str | None = None
    """None: the in-memory broker."""
    kafka: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """librdkafka settings passed through to every client."""
    handlers: tuple[str, ...] = ()
    metrics_port: int | None = DEFAULT_METRICS_PORT
    """None: no HTTP server; 0: any free port."""
    metrics_host: str = DEFAULT_METRICS_HOST
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    processes: int = 1
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    """Field -> where its value came from ("default", "file stage.yaml", ...)."""

    def __post_init__(self) -> None:
        errors: list[str] = []
        if not self.handlers:
            errors.append("handlers: at least one handler is required (module:function or a "
                          "registered name)")
        for ref in self.handlers:
            if not ref or not ref.strip():
                errors.append("handlers: a handler reference must not be empty")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            errors.append(f"metrics_port: must be between 0 and 65535, got {self.metrics_port}")
        if self.log_format not in LOG_FORMATS:
            errors.append(f"log_format: {self.log_format!r} is not allowed; allowed values: "
                          f"{', '.join(LOG_FORMATS)}")
        if self.log_level not in LOG_LEVELS:
            errors.append(f"log_level: {self.log_level!r} is not allowed; allowed values: "
                          f"{', '.join(LOG_LEVELS)}")
        if self.processes < 1:
            errors.append(f"processes: must be at least 1, got {self.processes}")
        if errors:
            raise ConfigError("\n".join(errors))
        object.__setattr__(self, "kafka", MappingProxyType(dict(self.kafka)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        object.__setattr__(self, "handlers", tuple(self.handlers))

    @property
    def name(self) -> str:
        return self.options.name

    def describe(self) -> str:
        """A human summary, secrets redacted, with where each value came from."""
        o = self.options
        rows: list[tuple[str, object]] = [
            ("name", o.name), ("input_topic", o.input_topic), ("output_topic", o.output_topic),
            ("group", o.group), ("dlq_topic", o.dlq_topic), ("guarantee", o.guarantee),
            ("handlers", ", ".join(self.handlers)),
            ("bootstrap_servers", self.bootstrap_servers or "(in-memory broker)"),
            ("batch_size", o.batch_size), ("poll_timeout", o.poll_timeout),
            ("commit_interval", o.commit_interval), ("max_in_flight", o.max_in_flight),
            ("error_policy", o.error_policy), ("shutdown_timeout", o.shutdown_timeout),
            ("transactional_id", o.transactional_id),
            ("retry", f"max_attempts={o.retry.max_attempts} "
                      f"initial_backoff={o.retry.initial_backoff:g} "
                      f"max_backoff={o.retry.max_backoff:g} multiplier={o.retry.multiplier:g} "
                      f"jitter={o.retry.jitter:g}"),
            ("metrics", "off" if self.metrics_port is None
             else f"{self.metrics_host}:{self.metrics_port}"),
            ("log", f"{self.log_format} {self.log_level}"),
            ("processes", self.processes),
        ]
        if o.outputs:
            rows.append(("outputs", ", ".join(f"{k}={v}" for k, v in sorted(o.outputs.items()))))
        lines = [f"stage {o.name}"]
        for key, value in rows:
            shown = "-" if value is None else value
            source = self.sources.get(key)
            lines.append(f"  {key}: {shown}" + (f"  ({source})" if source else ""))
        if self.kafka:
            lines.append("  kafka:")
            for key, value in sorted(redact(self.kafka).items()):
                source = self.sources.get("kafka." + key)
                lines.append(f"    {key}: {value}" + (f"  ({source})" if source else ""))
        return "\n".join(lines)


# --- reading the sources -----------------------------------------------------------------


class _Collector:
    """Gathers values with their sources, and every problem found on the way."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.sources: dict[str, str] = {}
        self.errors: list[str] = []

    def set(self, key: str, value: object, source: str) -> None:
        self.values[key] = value
        self.sources[key] = source

    def error(self, message: str) -> None:
        self.errors.append(message)


_TRUE_NONE: Final = frozenset({"", "none", "null", "off", "-"})


def _coerce(key: str, spec: _Field, raw: object, source: str, strict: bool) -> object:
    """`raw` as the field's type, or raise ConfigError naming the field and source.

    `strict` (YAML) wants the right type; otherwise (environment, flags) strings parse.
    """
    where = f" (from {source})"
    if raw is None:
        if spec.kind in ("opt_str", "port"):
            return None
        raise ConfigError(f"{key}: a value is required, got nothing{where}")
    if spec.kind in ("str", "opt_str"):
        if not isinstance(raw, str):
            raise ConfigError(
                f"{key}: expected a string, got {raw!r} ({type(raw).__name__}); "
                f"quote it in YAML{where}")
        if spec.kind == "opt_str" and not strict and raw.strip().lower() in _TRUE_NONE:
            return None
        if spec.kind == "str" and not raw.strip():
            raise ConfigError(f"{key}: must not be empty{where}")
        return raw.strip()
    if spec.kind == "choice":
        if not isinstance(raw, str):
            raise ConfigError(f"{key}: expected one of {', '.join(spec.choices)}, got {raw!r}"
                              f"{where}")
        value = raw.strip().upper() if spec.choices == LOG_LEVELS else raw.strip()
        if value not in spec.choices:
            raise ConfigError(f"{key}: {raw!r} is not allowed; allowed values: "
                              f"{', '.join(spec.choices)}{where}")
        return value
    if spec.kind == "port":
        if isinstance(raw, str):
            if raw.strip().lower() in _TRUE_NONE:
                return None
            raw = _parse_number(key, raw, int, where)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{key}: expected a port number (0-65535) or off, got {raw!r}"
                              f"{where}")
        if not 0 <= raw <= 65535:
            raise ConfigError(f"{key}: must be between 0 and 65535, got {raw}{where}")
        return raw
    number: int | float
    if spec.kind == "int":
        if isinstance(raw, str) and not strict:
            number = _parse_number(key, raw, int, where)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            number = raw
        else:
            raise ConfigError(f"{key}: expected an integer, got {raw!r} ({type(raw).__name__})"
                              f"{where}")
    else:
        if isinstance(raw, str) and not strict:
            number = _parse_number(key, raw, float, where)
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            number = float(raw)
        else:
            raise ConfigError(f"{key}: expected a number, got {raw!r} ({type(raw).__name__})"
                              f"{where}")
    _check_range(key, spec, number, where)
    return number


def _parse_number(key: str, text: str, kind: type[int] | type[float], where: str) -> int:
    try:
        return kind(text.strip())  # type: ignore[return-value]
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key}: expected {noun}, got {text!r}{where}") from None


def _check_range(key: str, spec: _Field, number: float, where: str) -> None:
    low, high = spec.minimum, spec.maximum
    if low is not None:
        if spec.exclusive_minimum and number <= low:
            raise ConfigError(f"{key}: must be greater than {low:g}, got {number:g}{where}")
        if not spec.exclusive_minimum and number < low:
            text = "must not be negative" if low == 0 else f"must be at least {low:g}"
            raise ConfigError(f"{key}: {text}, got {number:g}{where}")
    if high is not None and number > high:
        raise ConfigError(f"{key}: must be at most {high:g}, got {number:g}{where}")


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
        if mark is not None:
            raise ConfigError(
                f"config file {path}: YAML syntax error at line {mark.line + 1}, column "
                f"{mark.column + 1}: {problem}") from None
        raise ConfigError(f"config file {path}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys "
                          f"({', '.join(KNOWN_KEYS)}), got {type(data).__name__}")
    return cast(dict[str, object], data)


def _scalar_kafka_value(key: str, value: object, source: str) -> object:
    if isinstance(value, str | int | float | bool):
        return value
    raise ConfigError(f"kafka.{key}: librdkafka values are strings, numbers or booleans, got "
                      f"{type(value).__name__} (from {source})")


def _from_file(c: _Collector, path: Path) -> None:
    data = _read_yaml(path)
    source = f"file {path.name}"
    for key, raw in data.items():
        if not isinstance(key, str) or key not in KNOWN_KEYS:
            c.error(f"unknown key {key!r} in {path.name}; known keys: {', '.join(KNOWN_KEYS)}")
            continue
        try:
            if key in SCALARS:
                c.set(key, _coerce(key, SCALARS[key], raw, source, strict=True), source)
            elif key == "handlers":
                c.set(key, _handlers_from_yaml(raw, source), source)
            elif key == "kafka":
                for k, v in _mapping(key, raw, source).items():
                    c.set("kafka." + k, _scalar_kafka_value(k, v, source), source)
            elif key == "retry":
                for k, v in _mapping(key, raw, source).items():
                    if k not in RETRY_FIELDS:
                        raise ConfigError(f"retry: unknown key {k!r} in {path.name}; known keys: "
                                          f"{', '.join(RETRY_FIELDS)}")
                    c.set("retry." + k, _coerce("retry." + k, RETRY_FIELDS[k], v, source, True),
                          source)
            elif key == "outputs":
                outputs = _mapping(key, raw, source)
                for name, topic in outputs.items():
                    if not isinstance(topic, str) or not topic:
                        raise ConfigError(f"outputs.{name}: expected a topic name, got {topic!r} "
                                          f"(from {source})")
                c.set(key, dict(outputs), source)
        except ConfigError as exc:
            c.error(str(exc))


def _mapping(key: str, raw: object, source: str) -> dict[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"{key}: expected a mapping of names to values, got "
                          f"{type(raw).__name__} (from {source})")
    return cast(dict[str, object], raw)


def _handlers_from_yaml(raw: object, source: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(h, str) and h.strip() for h in raw):
        raise ConfigError(f"handlers: expected a list of handler references (module:function "
                          f"or a registered name), got {raw!r} (from {source})")
    return tuple(h.strip() for h in raw)


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _from_env(c: _Collector, env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _FOREIGN_ENV or name == CONFIG_ENV:
            continue
        raw = env[name]
        source = f"environment {name}"
        try:
            if name.startswith(KAFKA_ENV_PREFIX):
                key = kafka_key_from_env(name)
                if not key:
                    raise ConfigError(f"{name}: name a librdkafka key after {KAFKA_ENV_PREFIX}")
                c.set("kafka." + key, raw, source)
                continue
            target = ENV_VARS.get(name)
            if target is None:
                logger.warning("ignoring unknown environment variable %s", name)
            elif target == "handlers":
                c.set("handlers", _split_list(raw), source)
            elif target == "outputs":
                c.set("outputs", _parse_pairs("outputs", _split_list(raw), source), source)
            elif target.startswith("retry."):
                key = target.removeprefix("retry.")
                c.set(target, _coerce(target, RETRY_FIELDS[key], raw, source, False), source)
            else:
                c.set(target, _coerce(target, SCALARS[target], raw, source, False), source)
        except ConfigError as exc:
            c.error(str(exc))


def _parse_pairs(key: str, items: Sequence[str], source: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{key}: expected NAME=VALUE, got {item!r} (from {source})")
        pairs[name.strip()] = value.strip()
    return pairs


def _from_flags(c: _Collector, flags: Mapping[str, object]) -> None:
    for key, raw in flags.items():
        if raw is None:
            continue
        source = f"flag --{key.replace('_', '-')}"
        try:
            if key in SCALARS:
                c.set(key, _coerce(key, SCALARS[key], raw, source, strict=False), source)
            elif key in ("handlers", "handler"):
                refs = [raw] if isinstance(raw, str) else list(cast(Sequence[str], raw))
                c.set("handlers", tuple(r.strip() for r in refs), "flag --handler")
            elif key == "set":
                items = [raw] if isinstance(raw, str) else list(cast(Sequence[str], raw))
                for k, v in _parse_pairs("--set", items, "flag --set").items():
                    c.set("kafka." + k, v, "flag --set")
        except ConfigError as exc:
            c.error(str(exc))


def load_config(
    path: Path | None, env: Mapping[str, str], flags: Mapping[str, object]
) -> StageConfig:
    """Build a `StageConfig` from the YAML file at `path` (or `PROCESSOR_CONFIG`), the
    environment `env` and the CLI `flags` (argparse values; None = not given).

    Raises `ConfigError` listing every problem found.
    """
    c = _Collector()
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is not None:
        _from_file(c, Path(path))
    _from_env(c, env)
    _from_flags(c, flags)
    return _build(c)


def check_file(path: Path, env: Mapping[str, str] | None = None) -> StageConfig:
    """Validate a YAML file (optionally with an environment) for `processor config check`."""
    return load_config(path, env or {}, {})


def _build(c: _Collector) -> StageConfig:
    v, errors = c.values, list(c.errors)
    sources = dict(c.sources)
    for key, spec in SCALARS.items():
        if key not in v:
            v[key] = spec.default
            sources[key] = "default"
    for key in ("input_topic", "group"):
        if v.get(key) is None and not any(e.startswith(key + ":") for e in errors):
            errors.append(f"{key}: required; set {key} in the YAML file, "
                          f"{ENV_PREFIX}{key.upper()} or --{key.replace('_', '-')}")
    if "handlers" not in v:
        errors.append("handlers: at least one handler is required; set handlers in the YAML "
                      "file, PROCESSOR_HANDLERS or --handler (module:function or a "
                      "registered name)")
    if errors:
        raise ConfigError("\n".join(errors))

    retry_values = {k.removeprefix("retry."): val for k, val in v.items()
                    if k.startswith("retry.")}
    kafka = {k.removeprefix("kafka."): val for k, val in v.items() if k.startswith("kafka.")}
    retry = RetryPolicy(**cast(dict[str, Any], retry_values))
    name = cast(str | None, v["name"]) or cast(str, v["group"])
    if v["name"] is None:
        sources["name"] = "the group"
    options = StageOptions(
        name=name,
        input_topic=_s(v["input_topic"]),
        output_topic=_os(v["output_topic"]),
        group=_s(v["group"]),
        dlq_topic=_os(v["dlq_topic"]),
        outputs=cast(dict[str, str], v.get("outputs") or {}),
        guarantee=cast(_GuaranteeT, v["guarantee"]),
        batch_size=cast(int, v["batch_size"]),
        poll_timeout=cast(float, v["poll_timeout"]),
        commit_interval=cast(float, v["commit_interval"]),
        max_in_flight=cast(int, v["max_in_flight"]),
        retry=retry,
        error_policy=cast(_ErrorPolicyT, v["error_policy"]),
        shutdown_timeout=cast(float, v["shutdown_timeout"]),
        transactional_id=_os(v["transactional_id"]),
    )
    config = StageConfig(
        options=options,
        bootstrap_servers=_os(v["bootstrap_servers"]),
        kafka=kafka,
        handlers=cast(tuple[str, ...], v["handlers"]),
        metrics_port=cast(int | None, v["metrics_port"]),
        metrics_host=_s(v["metrics_host"]),
        log_format=cast(LogFormat, v["log_format"]),
        log_level=_s(v["log_level"]),
        processes=cast(int, v["processes"]),
        sources=sources,
    )
    logger.debug("configuration loaded: %s", config.describe())
    return config


_GuaranteeT = Literal["at-least-once", "exactly-once"]
_ErrorPolicyT = Literal["dead-letter", "fail"]


def _s(value: object) -> str:
    return cast(str, value)


def _os(value: object) -> str | None:
    return cast(str | None, value)


# --- CLI flags ---------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `processor run` to `parser`. Every default is None, so a flag that
    is not given leaves the environment, the file or the default in charge."""
    parser.add_argument(
        "--config", metavar="FILE", type=Path, default=None,
        help=f"YAML configuration file (default: ${CONFIG_ENV}, if set)",
    )
    stage = parser.add_argument_group("stage")
    kafka = parser.add_argument_group("kafka")
    ops = parser.add_argument_group("operations")
    groups: dict[str, argparse._ArgumentGroup] = {
        "bootstrap_servers": kafka, "metrics_port": ops, "metrics_host": ops,
        "log_format": ops, "log_level": ops, "processes": ops,
    }
    types: dict[Kind, Callable[[str], object]] = {"int": int, "float": float}
    for key, spec in SCALARS.items():
        flag = "--" + key.replace("_", "-")
        env = ENV_PREFIX + key.upper()
        default = "" if spec.default is None else f"; default {spec.default}"
        help_text = f"{spec.help} [env {env}{default}]"
        group = groups.get(key, stage)
        if spec.kind == "choice":
            group.add_argument(flag, dest=key, default=None, choices=spec.choices,
                               type=str.upper if spec.choices == LOG_LEVELS else str,
                               help=help_text)
        else:
            group.add_argument(flag, dest=key, default=None, metavar=spec.metavar or "VALUE",
                               type=types.get(spec.kind, str), help=help_text)
        if key == "group":
            stage.add_argument(
                "--handler", dest="handlers", action="append", default=None,
                metavar="REF",
                help="handler to run, module:function or a registered name; repeat for a "
                     "chain, in order [env PROCESSOR_HANDLERS, comma-separated]",
            )
    kafka.add_argument(
        "--set", dest="set", action="append", default=None, metavar="KEY=VALUE",
        help="a librdkafka setting passed to every Kafka client, e.g. "
             "--set compression.type=lz4; repeatable [env PROCESSOR_KAFKA__<KEY> with dots "
             "as underscores]",
    )
