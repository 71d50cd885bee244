"""Logs an operator can work with: retries logged on every handler path (rate-limited),
the worker index on every line under `--processes`, libraries' per-request lines kept
out at INFO, and a start-up error (a bad key file) reported before the metrics endpoint
says it is serving."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError, RetryableError
from processor.core.handlers import Outcome
from processor.core.options import RetryPolicy
from processor.ops.logs import configure_logging
from processor.ops.settings import load_config
from processor.runtime import runner
from processor.runtime.retry import RetryLog
from processor.runtime.stage import Stage
from tests.unit.stage_support import CODEC, make_broker, options, read_all
from tests.unit.test_runner import Kafka, brokers  # noqa: F401 - the fixture

RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001, jitter=0)


def _flaky() -> Callable[[Artifact], Outcome]:
    """Raises `RetryableError` at the first attempt at each artifact."""
    failed: set[str] = set()

    def handler(artifact: Artifact) -> Outcome:
        if artifact.id not in failed:
            failed.add(artifact.id)
            raise RetryableError("the price service said 503")
        return artifact
    return handler


def _handler(kind: str) -> Callable[..., object]:
    sync = _flaky()
    if kind == "sync":
        return sync
    if kind == "async":
        async def handler(artifact: Artifact) -> Outcome:
            return sync(artifact)
        return handler
    if kind == "batch":
        def batch(artifacts: list[Artifact]) -> list[object]:
            out: list[object] = []
            for a in artifacts:
                try:
                    out.append(sync(a))
                except RetryableError as exc:
                    out.append(exc)
            return out
        batch.batch = True  # type: ignore[attr-defined]
        return batch
    return sync  # threads


@pytest.mark.parametrize("kind", ["sync", "async", "threads", "batch"])
def test_a_retry_is_logged_on_every_handler_path(kind: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    broker = make_broker(partitions=1)
    producer = broker.producer()
    for i in range(3):
        producer.produce("in", CODEC.encode(Artifact.new(f"p{i}")), b"k")
    producer.flush()
    extra: dict[str, object] = {}
    if kind == "threads":
        extra = {"handler_mode": "threads"}
    if kind == "batch":
        extra = {"handler_batch_size": 3, "handler_batch_wait": 0.0}
    stage = Stage(options(retry=RETRY, **extra), broker, _handler(kind))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="processor.runtime.retry"):
        stage.start()
        for _ in range(2_000):
            stage.run_once()
            if stage.stats.passed == 3:
                break
        stage.close()
    assert stage.stats.passed == 3
    assert len(read_all(broker, "out")) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "processor.runtime.retry"]
    # Three retries, one line (rate-limited): the first, at once.
    assert len(lines) == 1, lines
    assert "stage s1: retrying in[0]@" in lines[0]
    assert "attempt 1 of 3 failed: the price service said 503" in lines[0]


def test_retry_lines_are_rate_limited_and_count_what_they_stand_for(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RetryLog("s", every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="processor.runtime.retry"):
        for i in range(5):
            log.note(f"in[0]@{i}", 1, 3, 0.5, RetryableError("busy"))
        now[0] = 10.0
        log.note("in[0]@5", 2, 3, 1.0, RetryableError("busy"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "more retries" not in lines[0]
    assert lines[1].endswith("; 4 more retries since the last such line")


def test_every_line_of_a_worker_names_its_index() -> None:
    out = io.StringIO()
    configure_logging("text", "INFO", out, worker=2)
    logging.getLogger("processor.test").info("hello")
    configure_logging("json", "INFO", out, worker=2)
    logging.getLogger("processor.test").info("hello")
    configure_logging("text", "INFO", io.StringIO())  # the default again
    text, line = out.getvalue().splitlines()
    assert text.endswith("processor.test: hello worker=2")
    assert json.loads(line)["worker"] == 2


def test_per_request_lines_of_http_clients_stay_out_at_info() -> None:
    configure_logging("text", "INFO", io.StringIO())
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)
    configure_logging("text", "DEBUG", io.StringIO())
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    configure_logging("text", "INFO", io.StringIO())


def test_a_bad_key_file_stops_the_start_before_serving(
        brokers: list[object], tmp_path: Path,  # noqa: F811 - the fixture
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("processor.ops.logs.configure_logging", lambda *a, **k: None)
    cfg = load_config(None, {
        "PROCESSOR_BOOTSTRAP_SERVERS": "kafka.example:9092", "PROCESSOR_NAME": "keys",
        "PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_OUTPUT_TOPIC": "out",
        "PROCESSOR_GROUP": "g", "PROCESSOR_HANDLERS": "processor.demo.handlers:validate",
        "PROCESSOR_METRICS_PORT": "0", "PROCESSOR_METRICS_HOST": "127.0.0.1",
        "PROCESSOR_SIGN_KEY": str(tmp_path / "missing.key"),
    }, {})
    with caplog.at_level(logging.INFO), pytest.raises(ConfigError, match=r"missing\.key"):
        runner.run_service(cfg, Kafka)
    assert not [r for r in caplog.records if "serving" in r.getMessage()]
    assert brokers == []


def test_a_fatal_error_is_logged_before_the_stop_and_named_on_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """A stage without an output topic whose handler returns an artifact: the error comes
    first, then the lines of the stop, and "stopped" names it (it used to read as a
    normal stop, "consumed=0", with the error only after it)."""
    broker = make_broker(partitions=1)
    producer = broker.producer()
    producer.produce("in", CODEC.encode(Artifact.new("x")), b"k")
    producer.flush()
    stage = Stage(options(output_topic=None), broker, lambda a: a)
    with caplog.at_level(logging.INFO), pytest.raises(Exception, match="no output topic"):
        stage.run(idle_timeout=5.0)
    messages = [r.getMessage() for r in caplog.records]
    fatal = next(i for i, m in enumerate(messages) if "stopping on a fatal error" in m)
    stopped = next(i for i, r in enumerate(caplog.records)
                   if getattr(r, "event", None) == "stopped")
    assert fatal < stopped
    assert "no output topic" in str(getattr(caplog.records[stopped], "failed", ""))
    assert caplog.records[fatal].levelno == logging.ERROR


def test_the_schema_command_examples_name_the_full_registry_path() -> None:
    """The `schema --help` example URL must work against the registry the docs use
    (Apicurio's Confluent API lives under /apis/ccompat/v7; the bare host gave 404)."""
    import argparse

    from processor.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    schema_help = sub.choices["schema"].format_help()
    urls = [w for w in schema_help.split() if w.startswith("http://")]
    assert urls and all(u.endswith("/apis/ccompat/v7") for u in urls), urls
