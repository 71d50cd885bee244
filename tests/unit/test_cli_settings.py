"""Client settings of the commands, `processor config check`, and the Kafka clients'
settings and logs.

* `load_client_config`: the bootstrap servers and `kafka:` settings of `produce`, `tail`,
  `topics`, `lag` and `dlq`, from a file, the environment and flags, as `processor run`
  reads them;
* `processor config check` reads the file, the environment and the flags of
  `processor run`, imports the handlers, and says where each wrong value came from;
* a setting of one client kind never reaches (nor makes librdkafka warn in) the other;
* a client setting librdkafka refuses is one `ConfigError` naming it and its source;
* librdkafka's repeated log lines are let through once a minute;
* the client settings files of the secured local broker name absolute paths.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import confluent_kafka as ck
import pytest
import yaml

from processor.backends.kafka import KafkaBroker
from processor.backends.kafka.settings import (
    CONSUMER_ONLY,
    PRODUCER_ONLY,
    RDKAFKA_LOGGER,
    RepeatFilter,
    for_client,
)
from processor.cli.main import main
from processor.core.errors import ConfigError
from processor.devtools.kafka_security import BrokerSecurity
from processor.ops.settings import load_client_config

STAGE = "input_topic: in\ngroup: g\nhandlers: [validate]\nbootstrap_servers: k:9092\n"


@pytest.fixture(autouse=True)
def no_processor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own environment only: no PROCESSOR_* setting of the caller's."""
    import os

    for name in list(os.environ):
        if name.startswith("PROCESSOR_") and name != "PROCESSOR_KAFKA_HOME":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "stage.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the client settings of the commands ---------------------------------------------------


def test_client_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, STAGE + "batch_size: 5\nkafka:\n  linger.ms: 20\n"
                 "  security.protocol: SSL\n  sasl.username: file\n")
    env = {"PROCESSOR_KAFKA__SASL_USERNAME": "env", "PROCESSOR_KAFKA__SSL_CA_LOCATION": "/ca",
           "PROCESSOR_GROUP": "not read by a command", "PROCESSOR_BATCH_SIZE": "not either"}
    config = load_client_config(path, env, {
        "bootstrap_servers": "flag:9092", "kafka": ["linger.ms=50"]})
    assert config.bootstrap_servers == "flag:9092"
    assert dict(config.kafka) == {"linger.ms": "50", "security.protocol": "SSL",
                                  "sasl.username": "env", "ssl.ca.location": "/ca"}
    assert config.kafka_origins == {
        "linger.ms": "flag --set", "security.protocol": "file stage.yaml",
        "sasl.username": "environment PROCESSOR_KAFKA__SASL_USERNAME",
        "ssl.ca.location": "environment PROCESSOR_KAFKA__SSL_CA_LOCATION"}
    assert config.sources["bootstrap_servers"] == "flag --bootstrap-servers"


def test_client_settings_file_from_processor_config(tmp_path: Path) -> None:
    path = write(tmp_path, "bootstrap_servers: k:9092\nkafka: {acks: all}\n", "c.kafka.yaml")
    config = load_client_config(None, {"PROCESSOR_CONFIG": str(path)}, {})
    assert (config.bootstrap_servers, dict(config.kafka)) == ("k:9092", {"acks": "all"})


@pytest.mark.parametrize(("text", "env", "message"), [
    (STAGE + "bacth_size: 5\n", {},
     r"unknown key 'bacth_size' in stage.yaml; known keys: batch_size, bootstrap_servers"),
    (STAGE + "kafka: [a]\n", {},
     r"kafka: expected a mapping of names to values, got list \(from file stage.yaml\)"),
    ("bootstrap_servers: k:9092\n", {"PROCESSOR_BOOTSTRAP_SERVERS": ""},
     r"bootstrap_servers: must not be empty \(from environment PROCESSOR_BOOTSTRAP_SERVERS\)"),
    ("kafka: {acks: all}\n", {}, r"bootstrap_servers: required"),
])
def test_client_settings_errors_name_the_setting_and_its_source(
        tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_client_config(write(tmp_path, text), env, {})


def test_a_bad_set_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "list", "--bootstrap-servers", "k:9092", "--set", "acks"]) == 1
    assert capsys.readouterr().err == (
        "processor topics: error: --set: expected NAME=VALUE, got 'acks' (from flag --set)\n")


@pytest.mark.parametrize("words", [
    ["produce", "--topic", "t"], ["tail", "--topic", "t"], ["topics", "list"],
    ["topics", "describe", "t"], ["topics", "delete", "t"], ["lag", "--group", "g"],
    ["dlq", "inspect", "--topic", "t"], ["dlq", "replay", "--from", "a", "--to", "b"],
])
def test_every_client_command_takes_the_client_settings(words: list[str]) -> None:
    from processor.cli.main import build_parser

    args = build_parser().parse_args([*words, "--command-config", "c.yaml", "--set", "a=1",
                                      "--set", "b=2", "--bootstrap-servers", "k:1"])
    assert (args.command_config, args.kafka, args.bootstrap_servers) == (
        Path("c.yaml"), ["a=1", "b=2"], "k:1")
    assert build_parser().parse_args([*words, "--config", "d.yaml"]).command_config == Path(
        "d.yaml")


def test_topics_create_keeps_config_for_topic_settings() -> None:
    from processor.cli.main import build_parser

    args = build_parser().parse_args(["topics", "create", "t", "--config", "retention.ms=1",
                                      "--command-config", "c.yaml"])
    assert args.config == [("retention.ms", "1")] and args.command_config == Path("c.yaml")


# --- processor config check ------------------------------------------------------------


def test_config_check_applies_environment_and_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "input_topic: in\nhandlers: [validate]\nbootstrap_servers: k:1\n")
    monkeypatch.setenv("PROCESSOR_GROUP", "from-env")
    assert main(["config", "check", str(path), "--batch-size", "7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid\n")
    assert "group: from-env  (environment PROCESSOR_GROUP)" in out
    assert "batch_size: 7  (flag --batch-size)" in out


def test_config_check_errors_say_where_each_value_came_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, STAGE + "commit_interval: 0\n")
    monkeypatch.setenv("PROCESSOR_BATCH_SIZE", "0")
    assert main(["config", "check", "--config", str(path), "--processes", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("processor config: error: ")
    assert "batch_size: must be at least 1, got 0 (from environment PROCESSOR_BATCH_SIZE)" in err
    assert "processes: must be at least 1, got 0 (from flag --processes)" in err
    assert "commit_interval: " in err and "(from file stage.yaml)" in err
    assert "Traceback" not in err


def test_config_check_resolves_the_handlers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, STAGE.replace("[validate]", "[validate, nosuchmod_x:fn]"))
    assert main(["config", "check", str(path)]) == 1
    assert capsys.readouterr().err == (
        "processor config: error: handlers: handler 'nosuchmod_x:fn': cannot import "
        "'nosuchmod_x': No module named 'nosuchmod_x' (from file stage.yaml)\n")
    monkeypatch.setenv("PROCESSOR_HANDLERS", "no_such_name")
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "no handler named 'no_such_name'" in err
    assert err.rstrip().endswith("(from environment PROCESSOR_HANDLERS)")


def test_config_check_finds_handlers_in_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "check_cwd_handlers.py").write_text("def shout(a):\n    return a\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "check_cwd_handlers", raising=False)
    path = write(tmp_path, STAGE)
    assert main(["config", "check", str(path), "--handler", "check_cwd_handlers:shout"]) == 0
    assert "handlers: check_cwd_handlers:shout  (flag --handler)" in capsys.readouterr().out
    assert main(["config", "check", str(path), "--handler", "check_cwd_handlers:whisper"]) == 1
    assert capsys.readouterr().err.endswith("has no 'whisper' (from flag --handler)\n")


def test_config_check_takes_the_file_once(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, STAGE)
    assert main(["config", "check", str(path), "--config", str(path)]) == 1
    assert "give the file once" in capsys.readouterr().err


# --- one client kind's settings ----------------------------------------------------------


def test_the_settings_of_one_kind_reach_that_kind_only() -> None:
    settings = {"compression.type": "zstd", "fetch.min.bytes": 10, "linger.ms": 5,
                "security.protocol": "SSL", "client.id": "c"}
    assert for_client(settings, "consumer") == {
        "fetch.min.bytes": 10, "security.protocol": "SSL", "client.id": "c"}
    assert for_client(settings, "producer") == {
        "compression.type": "zstd", "linger.ms": 5, "security.protocol": "SSL",
        "client.id": "c"}
    assert for_client(settings, "admin") == {"security.protocol": "SSL", "client.id": "c"}
    assert not PRODUCER_ONLY & CONSUMER_ONLY


class Reachable(KafkaBroker):
    """A `KafkaBroker` that skips the connection check: its clients are real, but no
    broker answers them."""

    def ensure_reachable(self) -> None:
        pass


def test_librdkafka_warns_of_no_setting_of_the_other_kind(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(RDKAFKA_LOGGER, "filters", [])  # every line, none held back
    caplog.set_level(logging.DEBUG, logger=RDKAFKA_LOGGER.name)
    broker = Reachable("127.0.0.1:1", {"compression.type": "zstd", "linger.ms": 20,
                                       "fetch.min.bytes": 10, "session.timeout.ms": 30000})
    consumer = broker.consumer("g")
    consumer.consume(1, 0.3)
    consumer.close(1.0)
    producer = broker.producer()
    producer.poll(0.3)
    producer.close(1.0)
    warnings = [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()]
    assert warnings == []
    # The same settings given to a consumer as they are: librdkafka does warn.
    caplog.clear()
    plain = ck.Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g",
                         "compression.type": "zstd", "logger": RDKAFKA_LOGGER})
    plain.poll(0.3)
    plain.close()
    assert any("compression.codec is a producer property" in r.getMessage()
               for r in caplog.records)


def test_a_refused_setting_is_one_error_naming_it_and_its_source(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    broker = KafkaBroker("127.0.0.1:1", {"security.protocol": "SSL",
                                         "ssl.ca.location": str(missing)},
                         origins={"ssl.ca.location": "flag --set"})
    with pytest.raises(ConfigError) as refused:
        broker.admin()
    text = str(refused.value)
    assert text.startswith("invalid Kafka settings: ")
    assert f"(ssl.ca.location from flag --set: no such file {missing})" in text
    assert "\n" not in text
    with pytest.raises(ConfigError, match=r'No such configuration property: "no.such.key"'):
        KafkaBroker("127.0.0.1:1", {"no.such.key": 1}).admin()


# --- librdkafka's log lines ----------------------------------------------------------------


def test_repeated_lines_are_let_through_once_per_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("processor.backends.kafka.settings.time.monotonic", lambda: now[0])
    repeat = RepeatFilter(interval=60)

    def line(text: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, "", 0, text, args, None)

    refused = "%s [%s] Connect to 127.0.0.1:%d failed: Connection refused (after %dms)"
    assert repeat.filter(line(refused, "FAIL", "rdkafka#producer-1", 1, 0))
    held = [repeat.filter(line(refused, "FAIL", "rdkafka#producer-1", 1, ms))
            for ms in range(50)]
    assert not any(held)
    assert repeat.filter(line("%s other", "FAIL"))  # another line is let through
    now[0] += 61
    again = line(refused, "FAIL", "rdkafka#producer-1", 1, 3)
    assert repeat.filter(again)
    assert again.getMessage().endswith("(after 3ms) (and 50 more like it, held back)")


# --- the secured local broker's client settings files -----------------------------------


def test_client_settings_files_name_absolute_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    security = BrokerSecurity.create("tls")  # as `processor broker --secure tls`
    security.write_client_files("127.0.0.1:9092")
    document = yaml.safe_load((tmp_path / "tls" / "admin.kafka.yaml").read_text())
    assert document["kafka"]["ssl.ca.location"] == str(tmp_path / "tls" / "ca.pem")
    properties = (tmp_path / "tls" / "admin.properties").read_text().splitlines()
    assert f"ssl.ca.location={tmp_path / 'tls' / 'ca.pem'}" in properties
    assert security.server_properties()["ssl.keystore.location"] == str(
        tmp_path / "tls" / "broker-keystore.pem")
