"""Stage configuration: sources, precedence, validation messages, redaction, flags."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pickle
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from processor.core.errors import ConfigError
from processor.core.options import RetryPolicy, StageOptions
from processor.ops.settings import (
    DEFAULT_METRICS_PORT,
    ENV_VARS,
    FIELDS,
    KNOWN_KEYS,
    SETTINGS,
    StageConfig,
    add_run_arguments,
    check_file,
    is_known_env_var,
    kafka_key_from_env,
    load_config,
    redact,
    secret_values,
)

MINIMAL = {"PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_GROUP": "g",
           "PROCESSOR_HANDLERS": "processor.core.handlers:chain",
           "PROCESSOR_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
BASE = "input_topic: in\ngroup: g\nhandlers: [a:b]\nbootstrap_servers: k:9092\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="processor run")
    add_run_arguments(p)
    return p


def flags(*argv: str) -> dict[str, object]:
    return vars(parser().parse_args(list(argv)))


FULL_YAML = """\
name: validate
input_topic: artifacts.raw
output_topic: artifacts.valid
group: validators
dlq_topic: artifacts.dlq
outputs:
  late: artifacts.late
guarantee: exactly-once
batch_size: 500
poll_timeout: 0.5
commit_interval: 2
max_in_flight: 1000
error_policy: fail
shutdown_timeout: 10
transactional_id: validate-0
bootstrap_servers: kafka:9092
handlers:
  - processor.demo:validate
  - upper
kafka:
  compression.type: lz4
  sasl.password: hunter22
  enable.idempotence: true
retry:
  max_attempts: 3
  jitter: 0
metrics_port: 9200
metrics_host: 127.0.0.1
log_format: json
log_level: debug
processes: 4
"""


# --- sources -----------------------------------------------------------------------------


def test_defaults_with_only_the_required_fields() -> None:
    config = load_config(None, MINIMAL, {})
    o = config.options
    assert (o.name, o.input_topic, o.group, o.output_topic) == ("g", "in", "g", None)
    assert o.guarantee == "at-least-once" and o.batch_size == 2000
    assert config.bootstrap_servers == "127.0.0.1:9092"
    assert config.metrics_port == DEFAULT_METRICS_PORT == 0  # any free port: no collisions
    assert (config.create_topics, config.topic_partitions, config.topic_replication) == (
        False, None, None)
    assert config.metrics_host == "127.0.0.1"
    assert (config.log_format, config.log_level, config.processes) == ("text", "INFO", 1)
    assert config.handlers == ("processor.core.handlers:chain",)
    assert dict(config.kafka) == {}
    assert config.sources["batch_size"] == "default"
    assert config.sources["name"] == "the group"


def test_every_field_from_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_YAML), {}, {})
    o = config.options
    assert o.name == "validate"
    assert (o.input_topic, o.output_topic, o.dlq_topic) == (
        "artifacts.raw", "artifacts.valid", "artifacts.dlq")
    assert o.group == "validators" and dict(o.outputs) == {"late": "artifacts.late"}
    assert o.guarantee == "exactly-once" and o.error_policy == "fail"
    assert (o.batch_size, o.poll_timeout, o.commit_interval) == (500, 0.5, 2.0)
    assert (o.max_in_flight, o.shutdown_timeout, o.transactional_id) == (1000, 10.0, "validate-0")
    assert o.retry.max_attempts == 3 and o.retry.jitter == 0 and o.retry.max_backoff == 10.0
    assert config.bootstrap_servers == "kafka:9092"
    assert config.handlers == ("processor.demo:validate", "upper")
    assert dict(config.kafka) == {"compression.type": "lz4", "sasl.password": "hunter22",
                                  "enable.idempotence": True}
    assert (config.metrics_port, config.metrics_host) == (9200, "127.0.0.1")
    assert (config.log_format, config.log_level, config.processes) == ("json", "DEBUG", 4)
    assert config.sources["batch_size"] == "file stage.yaml"


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_YAML)
    env = {"PROCESSOR_BATCH_SIZE": "700", "PROCESSOR_GROUP": "from-env",
           "PROCESSOR_KAFKA__COMPRESSION_TYPE": "zstd", "PROCESSOR_KAFKA__LINGER_MS": "5",
           "PROCESSOR_HANDLERS": "a:b, c:d", "PROCESSOR_RETRY_MAX_ATTEMPTS": "9"}
    config = load_config(path, env, flags("--batch-size", "800", "--set", "linger.ms=20",
                                          "--handler", "x:y"))
    o = config.options
    assert o.batch_size == 800                      # flag beats env and file
    assert config.sources["batch_size"] == "flag --batch-size"
    assert o.group == "from-env"                    # env beats file
    assert config.sources["group"] == "environment PROCESSOR_GROUP"
    assert o.input_topic == "artifacts.raw"         # file beats default
    assert o.poll_timeout == 0.5
    assert o.shutdown_timeout == 10.0
    assert config.handlers == ("x:y",)              # a list is replaced whole
    assert o.retry.max_attempts == 9 and o.retry.jitter == 0
    # kafka settings merge key by key
    assert dict(config.kafka) == {"compression.type": "zstd", "sasl.password": "hunter22",
                                  "enable.idempotence": True, "linger.ms": "20"}


def test_flags_not_given_do_not_override(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_YAML), {}, flags())
    assert config.options.batch_size == 500
    assert config.log_format == "json"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_YAML)
    config = load_config(None, {"PROCESSOR_CONFIG": str(path)}, {})
    assert config.name == "validate"


def test_env_values_are_parsed() -> None:
    env = {**MINIMAL, "PROCESSOR_METRICS_PORT": "off", "PROCESSOR_PROCESSES": "3",
           "PROCESSOR_COMMIT_INTERVAL": "0.25", "PROCESSOR_OUTPUT_TOPIC": "out",
           "PROCESSOR_DLQ_TOPIC": "none", "PROCESSOR_LOG_LEVEL": "warning",
           "PROCESSOR_OUTPUTS": "late=t.late, bad=t.bad", "PROCESSOR_NAME": "n1",
           "PROCESSOR_ARCHITECTURE": "AMD64", "PROCESSOR_GUARANTEE": "exactly-once"}
    config = load_config(None, env, {})
    assert config.metrics_port is None
    assert config.processes == 3 and config.options.commit_interval == 0.25
    assert config.options.output_topic == "out" and config.options.dlq_topic is None
    assert config.log_level == "WARNING" and config.name == "n1"
    assert dict(config.options.outputs) == {"late": "t.late", "bad": "t.bad"}
    assert config.options.guarantee == "exactly-once"


def test_metrics_port_zero_and_off_from_flags() -> None:
    assert load_config(None, MINIMAL, flags("--metrics-port", "0")).metrics_port == 0
    assert load_config(None, MINIMAL, flags("--metrics-port", "off")).metrics_port is None


def test_unknown_env_var_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    load_config(None, {**MINIMAL, "PROCESSOR_BACTH_SIZE": "5"}, {})
    assert "PROCESSOR_BACTH_SIZE" in caplog.text


def test_kafka_env_key_mapping() -> None:
    assert kafka_key_from_env("PROCESSOR_KAFKA__SASL_PASSWORD") == "sasl.password"
    assert kafka_key_from_env("PROCESSOR_KAFKA__STATISTICS_INTERVAL_MS") == \
        "statistics.interval.ms"
    assert is_known_env_var("PROCESSOR_KAFKA__SECURITY_PROTOCOL")
    assert is_known_env_var("PROCESSOR_INPUT_TOPIC")
    assert not is_known_env_var("PROCESSOR_KAFKA__")
    assert not is_known_env_var("PROCESSOR_NOPE")


def test_mappings_merge_key_by_key_and_lists_are_replaced(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "outputs:\n  late: f.late\n  bad: f.bad\n"
                                  "retry:\n  max_attempts: 2\n")
    config = load_config(path, {"PROCESSOR_OUTPUTS": "late=e.late",
                                "PROCESSOR_RETRY_JITTER": "0.5",
                                "PROCESSOR_HANDLERS": "x:y,z:w"}, {})
    assert dict(config.options.outputs) == {"late": "e.late", "bad": "f.bad"}
    assert config.options.retry == RetryPolicy(max_attempts=2, jitter=0.5)
    assert config.handlers == ("x:y", "z:w")
    assert "outputs: bad=f.bad, late=e.late  (file stage.yaml, environment " \
           "PROCESSOR_OUTPUTS)" in config.describe()


def test_text_none_words_unset_optional_settings(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "dlq_topic: dead\ntransactional_id: t\n")
    config = load_config(path, {"PROCESSOR_DLQ_TOPIC": "-"},
                         flags("--transactional-id", "none"))
    assert config.options.dlq_topic is None and config.options.transactional_id is None
    # in YAML a word is a word; null unsets
    config = load_config(write(tmp_path, BASE + "dlq_topic: none\nmetrics_port: null\n"), {}, {})
    assert config.options.dlq_topic == "none" and config.metrics_port is None


def test_env_var_mapping_covers_the_brief() -> None:
    for name in ("BOOTSTRAP_SERVERS", "INPUT_TOPIC", "OUTPUT_TOPIC", "GROUP", "HANDLERS",
                 "DLQ_TOPIC", "GUARANTEE", "METRICS_PORT", "LOG_FORMAT", "LOG_LEVEL",
                 "PROCESSES", "NAME", "BATCH_SIZE", "COMMIT_INTERVAL"):
        assert "PROCESSOR_" + name in ENV_VARS


# --- validation messages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "bacth_size: 5\n",
         r"unknown key 'bacth_size' in stage.yaml; known keys: batch_size, bootstrap_servers"),
        (BASE + "batch_size: lots\n",
         r"batch_size: expected an integer, got 'lots' \(str\).*\(from file stage.yaml\)"),
        (BASE + "batch_size: true\n",
         r"batch_size: expected an integer, got True"),
        (BASE + "guarantee: twice\n",
         r"guarantee: 'twice' is not allowed; allowed values: at-least-once, exactly-once"),
        (BASE + "batch_size: -5\n",
         r"batch_size: must be at least 1, got -5"),
        (BASE + "poll_timeout: -1\n",
         r"poll_timeout: must not be negative, got -1"),
        (BASE + "commit_interval: 0\n",
         r"commit_interval: must be greater than 0, got 0"),
        (BASE + "metrics_port: 70000\n",
         r"metrics_port: must be between 0 and 65535, got 70000"),
        (BASE + "processes: 0\n",
         r"processes: must be at least 1, got 0"),
        (BASE + "log_format: xml\n",
         r"log_format: 'xml' is not allowed; allowed values: text, json"),
        (BASE + "log_level: loud\n",
         r"log_level: 'loud' is not allowed; allowed values: DEBUG, INFO, WARNING"),
        (BASE + "dlq_max_share: 1.5\n",
         r"dlq_max_share: must be between 0 and 1, got 1.5"),
        (BASE + "dlq_window: 0\n",
         r"dlq_window: must be greater than 0, got 0"),
        (BASE + "dlq_min_records: 0\n",
         r"dlq_min_records: must be at least 1, got 0"),
        (BASE + "error_policy: ignore\n",
         r"error_policy: 'ignore' is not allowed; allowed values: dead-letter, fail"),
        ("group: g\nhandlers: [a:b]\n",
         r"input_topic: required; set input_topic in the YAML file, PROCESSOR_INPUT_TOPIC "
         r"or --input-topic"),
        ("input_topic: in\nhandlers: [a:b]\n", r"group: required"),
        ("input_topic: in\ngroup: g\nbootstrap_servers: k:9092\n",
         r"handlers: required; set handlers in the YAML file, PROCESSOR_HANDLERS or --handler"),
        ("input_topic: in\ngroup: g\nhandlers: []\nbootstrap_servers: k:9092\n",
         r"handlers: at least one is required \(from file stage.yaml\)"),
        ("input_topic: in\ngroup: g\nhandlers: ['a:b', ' ']\nbootstrap_servers: k:9092\n",
         r"handlers: must not be empty \(from file stage.yaml\)"),
        ("input_topic: in\ngroup: g\nhandlers: 5\nbootstrap_servers: k:9092\n",
         r"handlers: expected a list, got 5 \(from file stage.yaml\)"),
        ("input_topic: in\ngroup: g\nhandlers: [a:b]\n",
         r"bootstrap_servers: required; set bootstrap_servers in the YAML file, "
         r"PROCESSOR_BOOTSTRAP_SERVERS or --bootstrap-servers"),
        ("input_topic: in\ngroup: g\nhandlers: [a:b]\nbootstrap_servers: ''\n",
         r"bootstrap_servers: must not be empty"),
        (BASE + "retry:\n  max_attempts: 0\n",
         r"retry.max_attempts: must be at least 1, got 0"),
        (BASE + "retry:\n  tries: 3\n",
         r"retry: unknown key 'tries' in stage.yaml; known keys: max_attempts"),
        (BASE + "retry:\n  jitter: 2\n",
         r"retry.jitter: must be between 0 and 1, got 2 \(from file stage.yaml\)"),
        (BASE + "retry: 3\n",
         r"retry: expected a mapping of names to values, got int \(from file stage.yaml\)"),
        (BASE + "kafka: [1, 2]\n",
         r"kafka: expected a mapping of names to values, got list"),
        (BASE + "kafka:\n  acks: [1]\n",
         r"kafka.acks: librdkafka values are strings, numbers or booleans"),
        (BASE + "outputs:\n  late: 3\n",
         r"outputs.late: expected a string, got 3 \(int\); quote it in YAML"),
        (BASE + "metrics_port: off\n", r"metrics_port: expected an integer, got False"),
        (BASE + "commit_interval: [1]\n", r"commit_interval: expected a number, got \[1\]"),
        ("input_topic: 42\ngroup: g\nhandlers: [a:b]\n",
         r"input_topic: expected a string, got 42 \(int\); quote it in YAML"),
        (BASE + "output_topic: in\n",
         r"input_topic must differ from output_topic"),
        ("- just\n- a list\n", r"the top level must be a mapping of keys"),
        ("input_topic: in\ngroup: g\n  handlers: [a:b]\n",
         r"stage.yaml: YAML syntax error at line 3, column 11"),
    ],
)
def test_file_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), {}, {})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROCESSOR_BATCH_SIZE": "many"},
         r"batch_size: expected an integer, got 'many' \(from environment PROCESSOR_BATCH_SIZE\)"),
        ({"PROCESSOR_METRICS_PORT": "-1"}, r"metrics_port: must be between 0 and 65535, got -1"),
        ({"PROCESSOR_PROCESSES": "0"},
         r"processes: must be at least 1, got 0 \(from environment PROCESSOR_PROCESSES\)"),
        ({"PROCESSOR_GUARANTEE": "maybe"},
         r"guarantee: 'maybe' is not allowed; allowed values: at-least-once, exactly-once"),
        ({"PROCESSOR_COMMIT_INTERVAL": "soon"}, r"commit_interval: expected a number"),
        ({"PROCESSOR_OUTPUTS": "late"}, r"outputs: expected NAME=VALUE, got 'late'"),
        ({"PROCESSOR_GROUP": " "}, r"group: must not be empty"),
        ({"PROCESSOR_RETRY_JITTER": "2"}, r"retry.jitter: must be between 0 and 1, got 2 "
                                          r"\(from environment PROCESSOR_RETRY_JITTER\)"),
        ({"PROCESSOR_METRICS_PORT": "abc"},
         r"metrics_port: expected an integer, got 'abc' \(from environment "
         r"PROCESSOR_METRICS_PORT\)"),
        ({"PROCESSOR_PROCESSES": "1.5"}, r"processes: expected an integer, got '1.5'"),
        ({"PROCESSOR_HANDLER_TIMEOUT": "0"},
         r"handler_timeout: must be greater than 0, got 0 \(from environment "
         r"PROCESSOR_HANDLER_TIMEOUT\)"),
        ({"PROCESSOR_MEMORY_LIMIT": "10"},
         r"memory_limit: must be at least 32, got 10 \(from environment "
         r"PROCESSOR_MEMORY_LIMIT\)"),
        ({"PROCESSOR_BOOTSTRAP_SERVERS": ""},
         r"bootstrap_servers: must not be empty \(from environment PROCESSOR_BOOTSTRAP_SERVERS\)"),
    ],
)
def test_env_errors_name_the_field_and_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**MINIMAL, **env}, {})


def test_handler_timeout_and_memory_limit_are_off_unless_set() -> None:
    cfg = load_config(None, MINIMAL, {})
    assert cfg.options.handler_timeout is None
    assert cfg.memory_limit is None
    cfg = load_config(None, MINIMAL, flags("--handler-timeout", "2.5", "--memory-limit", "512"))
    assert cfg.options.handler_timeout == 2.5
    assert cfg.memory_limit == 512
    cfg = load_config(None, {**MINIMAL, "PROCESSOR_MEMORY_LIMIT": "off"}, {})
    assert cfg.memory_limit is None


def test_flag_errors() -> None:
    with pytest.raises(ConfigError, match=r"batch_size: must be at least 1, got -3 \(from flag "
                                          r"--batch-size\)"):
        load_config(None, MINIMAL, flags("--batch-size", "-3"))
    with pytest.raises(ConfigError, match=r"--set: expected NAME=VALUE, got 'linger.ms'"):
        load_config(None, MINIMAL, flags("--set", "linger.ms"))


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "group: g\nhandlers: [a:b]\nbatch_size: 0\nfoo: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"PROCESSOR_PROCESSES": "0"}, {})
    text = str(info.value)
    assert "unknown key 'foo'" in text
    assert "batch_size: must be at least 1" in text
    assert "processes: must be at least 1" in text
    assert "input_topic: required" in text


def test_the_rule_across_fields_is_reported_with_the_others(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "output_topic: in\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, {})
    assert str(info.value).splitlines() == [
        "batch_size: must be at least 1, got 0 (from file stage.yaml)",
        "input_topic must differ from output_topic and dlq_topic"]


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"config file /no/such/stage.yaml: cannot read it"):
        load_config(Path("/no/such/stage.yaml"), {}, {})


def test_check_file(tmp_path: Path) -> None:
    assert check_file(write(tmp_path, FULL_YAML)).name == "validate"
    with pytest.raises(ConfigError, match="group: required"):
        check_file(write(tmp_path, "input_topic: in\nhandlers: [a:b]\n"))
    path = write(tmp_path, "input_topic: in\nhandlers: [a:b]\nbootstrap_servers: k:9092\n")
    assert check_file(path, {"PROCESSOR_GROUP": "g"}).options.group == "g"


def test_stage_config_validates_when_built_directly() -> None:
    options = StageOptions(name="s", input_topic="in", output_topic=None, group="g")
    with pytest.raises(ValidationError, match="metrics_port"):
        StageConfig(options=options, bootstrap_servers="k:1", handlers=("a:b",),
                    metrics_port=99999)
    with pytest.raises(ValidationError, match="processes"):
        StageConfig(options=options, bootstrap_servers="k:1", handlers=("a:b",), processes=0)
    with pytest.raises(ValidationError, match="handlers"):
        StageConfig(options=options, bootstrap_servers="k:1", handlers=())
    config = StageConfig(options=options, bootstrap_servers="k:1", handlers=("a:b",),
                         kafka={"acks": "all"})
    with pytest.raises(TypeError):
        config.kafka["acks"] = "1"  # type: ignore[index]


def test_stage_options_validate_once_with_the_declared_bounds() -> None:
    base = {"name": "s", "input_topic": "in", "output_topic": None, "group": "g"}
    with pytest.raises(ValidationError, match="batch_size"):
        StageOptions(**base, batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="batch_size"):
        StageOptions(**base, batch_size=True)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="input_topic must differ"):
        StageOptions(**{**base, "output_topic": "in"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError, match="group"):
        StageOptions(**{**base, "group": " "})  # type: ignore[arg-type]


def test_config_and_options_pickle_for_worker_processes() -> None:
    config = load_config(None, {**MINIMAL, "PROCESSOR_OUTPUTS": "late=t.late",
                                "PROCESSOR_KAFKA__LINGER_MS": "5"}, {})
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and copy.options == config.options
    assert dict(copy.options.outputs) == {"late": "t.late"}
    assert dict(copy.kafka) == {"linger.ms": "5"} and copy.sources == config.sources
    moved = dataclasses.replace(config.options, transactional_id="t-1")
    assert moved.transactional_id == "t-1" and moved.batch_size == config.options.batch_size


# --- the PROCESSOR_ prefix ---------------------------------------------------------------


def test_platform_variables_are_neither_read_nor_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    windows = {"PROCESSOR_ARCHITECTURE": "AMD64", "PROCESSOR_ARCHITEW6432": "AMD64",
               "PROCESSOR_IDENTIFIER": "Intel64 Family 6", "PROCESSOR_LEVEL": "6",
               "PROCESSOR_REVISION": "9e0a"}
    with caplog.at_level(logging.WARNING, logger="processor.ops.settings"):
        config = load_config(None, {**MINIMAL, **windows}, {})
    assert caplog.records == []
    assert not any(name in where for where in config.sources.values() for name in windows)
    assert not any(is_known_env_var(name) for name in windows)


def test_the_local_broker_home_is_not_a_kafka_setting(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="processor.ops.settings"):
        config = load_config(None, {**MINIMAL, "PROCESSOR_KAFKA_HOME": "/opt/kafka",
                                    "PROCESSOR_KAFKA__CLIENT_ID": "c1"}, {})
    assert dict(config.kafka) == {"client.id": "c1"}
    assert caplog.records == []
    assert not is_known_env_var("PROCESSOR_KAFKA_HOME")


def test_a_single_underscore_kafka_variable_is_ignored_with_a_hint(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="processor.ops.settings"):
        config = load_config(None, {**MINIMAL, "PROCESSOR_KAFKA_LINGER_MS": "5"}, {})
    assert dict(config.kafka) == {}
    assert "PROCESSOR_KAFKA_LINGER_MS" in caplog.text
    assert "PROCESSOR_KAFKA__<KEY>, with two underscores" in caplog.text


def test_a_kafka_variable_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="PROCESSOR_KAFKA__: name a librdkafka key after "
                                          "PROCESSOR_KAFKA__"):
        load_config(None, {**MINIMAL, "PROCESSOR_KAFKA__": "x"}, {})


# --- secrets -----------------------------------------------------------------------------


def test_redact() -> None:
    settings: dict[str, object] = {
        "sasl.password": "p", "sasl.username": "alice", "ssl.key.password": "k",
        "ssl.key.pem": "-----BEGIN", "sasl.oauthbearer.client.secret": "s",
        "sasl.oauthbearer.config": "principal=x", "api_token": "t", "SASL_JAAS_CONFIG": "j",
        "bootstrap.servers": "b:9092", "nested": {"ssl.keystore.password": "x", "linger.ms": 5},
    }
    assert redact(settings) == {
        "sasl.password": "***", "sasl.username": "alice", "ssl.key.password": "***",
        "ssl.key.pem": "***", "sasl.oauthbearer.client.secret": "***",
        "sasl.oauthbearer.config": "***", "api_token": "***", "SASL_JAAS_CONFIG": "***",
        "bootstrap.servers": "b:9092", "nested": {"ssl.keystore.password": "***",
                                                   "linger.ms": 5},
    }
    assert settings["sasl.password"] == "p"  # the input is untouched


def test_a_secret_str_is_redacted_whatever_its_key() -> None:
    settings: dict[str, object] = {"registry.auth": SecretStr("s3cret"), "linger.ms": 5,
                                   "sasl.password": "hunter22", "nested": {"x": SecretStr("n")}}
    assert redact(settings) == {"registry.auth": "***", "linger.ms": 5,
                                "sasl.password": "***", "nested": {"x": "***"}}
    assert sorted(secret_values(settings)) == ["hunter22", "n", "s3cret"]


def test_describe_never_shows_secrets(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_YAML),
                         {"PROCESSOR_KAFKA__SSL_KEY_PASSWORD": "topsecret-2"}, {})
    text = config.describe()
    assert "hunter22" not in text and "topsecret-2" not in text
    assert "sasl.password: ***" in text
    assert "ssl.key.password: ***  (environment PROCESSOR_KAFKA__SSL_KEY_PASSWORD)" in text
    assert "compression.type: lz4" in text
    assert "batch_size: 500  (file stage.yaml)" in text
    assert "input_topic: artifacts.raw" in text
    assert "hunter22" not in repr(config.options) and "hunter22" not in repr(config)
    assert "metrics_port: 9200  (file stage.yaml)" in text
    assert "retry: max_attempts=3 initial_backoff=0.1 max_backoff=10 multiplier=2 jitter=0  " \
           "(file stage.yaml)" in text


def test_describe_shows_defaults_and_off() -> None:
    text = load_config(None, {**MINIMAL, "PROCESSOR_METRICS_PORT": "off"}, {}).describe()
    assert text.splitlines()[0] == "stage g"
    assert "  name: g  (the group)" in text
    assert "  batch_size: 2000  (default)" in text
    assert "  output_topic: -  (default)" in text
    assert "  metrics_port: off  (environment PROCESSOR_METRICS_PORT)" in text
    assert "kafka:" not in text


# --- flags -------------------------------------------------------------------------------


def test_every_flag_defaults_to_none() -> None:
    values = flags()
    assert values and all(v is None for v in values.values())
    for key in FIELDS:
        assert key in values


def test_run_flags_of_the_brief() -> None:
    p = parser()
    options = {s for action in p._actions for s in action.option_strings}
    for flag in ("--config", "--bootstrap-servers", "--input-topic", "--output-topic", "--group",
                 "--handler", "--dlq-topic", "--guarantee", "--metrics-port", "--metrics-host",
                 "--log-format", "--log-level", "--processes", "--name", "--batch-size",
                 "--commit-interval", "--set"):
        assert flag in options, flag
    help_text = p.format_help()
    assert "PROCESSOR_BATCH_SIZE" in help_text and "module:function" in help_text


def test_flags_parse_to_typed_values() -> None:
    values = flags("--handler", "a:b", "--handler", "c:d", "--guarantee", "exactly-once",
                   "--processes", "2", "--commit-interval", "0.5", "--log-level", "debug",
                   "--set", "acks=all", "--config", "x.yaml")
    assert values["handlers"] == ["a:b", "c:d"]
    assert values["processes"] == 2 and values["commit_interval"] == 0.5
    assert values["log_level"] == "DEBUG" and values["kafka"] == ["acks=all"]
    assert values["config"] == Path("x.yaml")
    config = load_config(None, {"PROCESSOR_INPUT_TOPIC": "in",
                                "PROCESSOR_BOOTSTRAP_SERVERS": "k:9092"},
                         {**values, "group": "g", "config": None})
    assert config.handlers == ("a:b", "c:d") and dict(config.kafka) == {"acks": "all"}


def test_bad_choice_flag_is_refused_by_argparse() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--guarantee", "twice"])


def test_known_keys_are_documented_fields() -> None:
    assert set(KNOWN_KEYS) == set(SETTINGS)
    assert {"handlers", "kafka", "retry", "outputs", "batch_size"} <= set(KNOWN_KEYS)


def test_nested_and_mapping_settings_have_flags() -> None:
    values = flags("--retry-max-attempts", "7", "--retry-jitter", "0.5", "--output",
                   "late=t.late", "--output", "bad=t.bad", "--metrics-port", "0")
    config = load_config(None, MINIMAL, values)
    assert config.options.retry.max_attempts == 7 and config.options.retry.jitter == 0.5
    assert dict(config.options.outputs) == {"late": "t.late", "bad": "t.bad"}
    assert config.sources["retry.max_attempts"] == "flag --retry-max-attempts"
    assert config.sources["outputs.late"] == "flag --output"
    assert config.metrics_port == 0


def test_one_declaration_gives_every_name() -> None:
    """Each setting's flag, variable and YAML key come from its field."""
    help_text = parser().format_help()
    for key, info in FIELDS.items():
        assert info.description and info.description.split(" (")[0] in " ".join(
            help_text.split())
        if key != "kafka":
            assert ENV_VARS["PROCESSOR_" + key.upper().replace(".", "_")] == key
        assert key.partition(".")[0] in KNOWN_KEYS


# --- creating topics ---------------------------------------------------------------------


def test_create_topics_from_each_source(tmp_path: Path) -> None:
    on = load_config(None, MINIMAL, flags("--create-topics", "--topic-partitions", "3"))
    assert (on.create_topics, on.topic_partitions, on.topic_replication) == (True, 3, None)
    assert on.sources["create_topics"] == "flag --create-topics"
    env = {**MINIMAL, "PROCESSOR_CREATE_TOPICS": "yes", "PROCESSOR_TOPIC_REPLICATION": "2"}
    assert load_config(None, env, {}).create_topics is True
    assert load_config(None, env, {}).topic_replication == 2
    assert load_config(None, env, flags("--no-create-topics")).create_topics is False
    path = write(tmp_path, BASE + "create_topics: true\ntopic_partitions: 6\n")
    from_file = load_config(path, {}, {})
    assert (from_file.create_topics, from_file.topic_partitions) == (True, 6)
    described = from_file.describe()
    assert "create_topics: true  (file stage.yaml)" in described
    assert "topic_replication: cluster default  (default)" in described


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROCESSOR_CREATE_TOPICS": "maybe"},
         r"create_topics: expected true or false, got 'maybe' \(from environment "
         r"PROCESSOR_CREATE_TOPICS\)"),
        ({"PROCESSOR_TOPIC_PARTITIONS": "0"},
         r"topic_partitions: must be at least 1, got 0"),
    ],
)
def test_create_topics_errors_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**MINIMAL, **env}, {})
