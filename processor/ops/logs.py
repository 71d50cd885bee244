"""Logging setup: plain text for a terminal, JSON lines for log collectors.

`configure_logging("json", "INFO")` makes every record one JSON object on one line:

    {"ts": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "processor.runtime.stage",
     "message": "assignment: orders[0], orders[1]", "event": "assignment",
     "stage": "validate", "partitions": ["orders[0]", "orders[1]"]}

Fields passed with `extra=` (and by `lifecycle`) become keys of the object; in text mode
they are appended as `key=value`.

Lifecycle events
----------------
A stage logs each change of its life with `lifecycle(logger, event, partitions=..., **fields)`,
one INFO line whose `event` field is one of `LIFECYCLE_EVENTS`:

* `start`: the stage runs (fields: stage, input_topic, output_topic, group, guarantee);
* `assignment` / `revocation` / `lost`: partitions given, taken back, or lost in a rebalance;
* `pause` / `resume`: partitions paused by backpressure and resumed;
* `shutdown`: the stage is stopping (field: reason), then `stopped` once it has committed.

`partitions` (TopicPartitions or strings) is always a list of `topic[partition]` strings,
so a log query can follow a partition through rebalances.

Secrets
-------
Extra fields whose name looks secret (see `processor.ops.secrets.is_secret_key`), or whose
value is a `pydantic.SecretStr`, are written as `***`, and `register_secret(value)` (called
by the runner with the secret values of the configuration) replaces any occurrence of that
value in a message with `***`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from typing import Final, Literal, TextIO, get_args

from pydantic import SecretStr

from processor.core.errors import ConfigError
from processor.ops.secrets import REDACTED, is_secret_key
from processor.ops.tracing import current_ids

LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)
LOG_LEVELS: Final[tuple[str, ...]] = get_args(LogLevel)

LIFECYCLE_EVENTS: Final = (
    "start", "assignment", "revocation", "lost", "pause", "resume", "shutdown", "stopped",
)

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Scrub `value` from every log message from now on (ignored if shorter than 4)."""
    if len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields given with `extra=`, secrets redacted."""
    fields: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key.startswith("_"):
            continue
        fields[key] = REDACTED if is_secret_key(key) or isinstance(value, SecretStr) else value
    return fields


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, `trace_id` and `span_id`
    when a span is current (`processor.ops.tracing`), extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        ids = current_ids()
        if ids is not None:
            obj["trace_id"], obj["span_id"] = ids
        for key, value in extra_fields(record).items():
            obj.setdefault(key, _jsonable(value))
        if record.exc_info:
            obj["exc"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            obj["stack"] = scrub(record.stack_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2025-01-31 12:00:00,123 INFO processor.runtime.stage: message key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if fields:
            tail = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            head, sep, rest = text.partition("\n")
            text = f"{head} {tail}{sep}{rest}"
        return scrub(text)


def _text_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


_HANDLER_MARK: Final = "_processor_handler"


class _Worker(logging.Filter):
    """Stamps every record with the worker process's index (`processor run --processes`),
    so that the lines of the workers can be told apart: `worker=N` in text, `"worker": N`
    in JSON."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


QUIET_LIBRARIES: Final = ("httpx", "httpcore")
"""Libraries a handler may use that log a line per request at INFO: kept to WARNING
unless the level is DEBUG."""


def configure_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None,
                      *, worker: int | None = None) -> logging.Handler:
    """Send the root logger's records to `stream` (default stderr) as `fmt` ("text" or
    "json") at `level`; with `worker`, every record names that worker index. Calling it
    again replaces the handler it installed before."""
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log_format: {fmt!r} is not allowed; allowed values: "
                          f"{', '.join(LOG_FORMATS)}")
    if level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {level!r} is not allowed; allowed values: "
                          f"{', '.join(LOG_LEVELS)}")
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_Worker(worker))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The metrics server's one line per scrape stays out, even at DEBUG.
    logging.getLogger("processor.ops.health").setLevel(max(root.level, logging.INFO))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(
            logging.DEBUG if root.level <= logging.DEBUG else max(root.level, logging.WARNING))
    return handler


def _partition_names(partitions: Iterable[object]) -> list[str]:
    return [str(p) for p in partitions]


def lifecycle(
    logger: logging.Logger,
    event: str,
    partitions: Iterable[object] | None = None,
    **fields: object,
) -> None:
    """Log one lifecycle event (see `LIFECYCLE_EVENTS`) as one INFO line with its fields.

    >>> lifecycle(log, "assignment", partitions=[TopicPartition("in", 0)], stage="validate")
    """
    if event not in LIFECYCLE_EVENTS:
        raise ValueError(f"unknown lifecycle event {event!r}; use one of "
                         f"{', '.join(LIFECYCLE_EVENTS)}")
    extra: dict[str, object] = {"event": event}
    for key, value in fields.items():
        extra[f"field_{key}" if key in _RECORD_ATTRS else key] = value
    if partitions is not None:
        names = _partition_names(partitions)
        extra["partitions"] = names
        logger.info("%s: %s", event, ", ".join(names) or "no partitions", extra=extra)
    else:
        logger.info("%s", event, extra=extra)
