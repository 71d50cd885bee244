"""Log formats, lifecycle lines and secret scrubbing."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from processor.backends.abstract import TopicPartition
from processor.core.errors import ConfigError
from processor.ops.logs import configure_logging, lifecycle, register_secret
from processor.ops.secrets import secret_values


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    yield out
    handler = configure_logging("text", "INFO", stream=io.StringIO())
    root.removeHandler(handler)
    root.setLevel(level)


def lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_json_lines_parse(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=stream)
    log = logging.getLogger("processor.test")
    log.info("consumed %d records", 12, extra={"stage": "validate"})
    log.debug("not shown")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed")
    records = [json.loads(line) for line in lines(stream)]
    assert len(records) == 2
    first = records[0]
    assert first["level"] == "INFO" and first["logger"] == "processor.test"
    assert first["message"] == "consumed 12 records" and first["stage"] == "validate"
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert records[1]["level"] == "ERROR"
    assert "ValueError: boom" in records[1]["exc"]


def test_text_format_appends_fields(stream: io.StringIO) -> None:
    configure_logging("text", "DEBUG", stream=stream)
    logging.getLogger("processor.test").debug("hello %s", "there", extra={"stage": "s1"})
    (line,) = lines(stream)
    assert " DEBUG processor.test: hello there stage=s1" in line


def test_configure_twice_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=stream)
    configure_logging("json", "INFO", stream=stream)
    logging.getLogger("processor.test").info("once")
    assert len(lines(stream)) == 1
    json.loads(lines(stream)[0])


def test_bad_format_or_level() -> None:
    with pytest.raises(ConfigError, match="log_format: 'xml' is not allowed"):
        configure_logging("xml", "INFO")
    with pytest.raises(ConfigError, match="log_level: 'LOUD' is not allowed"):
        configure_logging("json", "LOUD")


def test_lifecycle_lines(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=stream)
    log = logging.getLogger("processor.runtime.stage")
    lifecycle(log, "assignment", partitions=[TopicPartition("in", 0), TopicPartition("in", 2)],
              stage="validate")
    lifecycle(log, "shutdown", stage="validate", reason="SIGTERM")
    lifecycle(log, "revocation", partitions=[], stage="validate", name="clash")
    first, second, third = (json.loads(line) for line in lines(stream))
    assert first["event"] == "assignment"
    assert first["partitions"] == ["in[0]", "in[2]"]
    assert first["message"] == "assignment: in[0], in[2]"
    assert first["stage"] == "validate"
    assert second["event"] == "shutdown" and second["reason"] == "SIGTERM"
    assert "partitions" not in second
    assert third["message"] == "revocation: no partitions"
    assert third["field_name"] == "clash"  # a reserved record attribute is renamed


def test_lifecycle_rejects_unknown_events() -> None:
    with pytest.raises(ValueError, match="unknown lifecycle event 'exploded'"):
        lifecycle(logging.getLogger("x"), "exploded")


def test_secrets_are_redacted(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=stream)
    register_secret("s3cr3t-value")
    log = logging.getLogger("processor.test")
    log.info("connecting with %s", "s3cr3t-value", extra={"sasl_password": "abc",
                                                          "user": "alice"})
    configure_logging("text", "INFO", stream=stream)
    log.warning("text too: s3cr3t-value", extra={"api_token": "xyz"})
    json_line, text_line = lines(stream)
    record = json.loads(json_line)
    assert record["message"] == "connecting with ***"
    assert record["sasl_password"] == "***" and record["user"] == "alice"
    assert "s3cr3t-value" not in text_line and "xyz" not in text_line
    assert "api_token=***" in text_line


def test_secret_str_fields_and_configured_secrets_are_redacted(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=stream)
    for value in secret_values({"sasl.password": "pw-from-config", "linger.ms": 5,
                                "registry": {"auth": SecretStr("declared-secret")}}):
        register_secret(value)
    logging.getLogger("processor.test").info(
        "login with pw-from-config", extra={"auth": SecretStr("declared-secret"), "n": 5})
    (line,) = lines(stream)
    assert "pw-from-config" not in line and "declared-secret" not in line
    assert "login with ***" in line and "auth=***" in line and "n=5" in line
