"""The commands that talk to Kafka take the client settings `processor run` takes.

`topics`, `produce`, `tail`, `lag` and `dlq` run as processes, from a directory of their
own, against the SASL_SSL local Kafka of `secured_kafka`, with the settings file
`processor broker --secure` writes (`--command-config`, or `--config` where that is
free), `--set KEY=VALUE` and `PROCESSOR_KAFKA__*` variables, as `processor run` reads
them. A producer setting given to every command (`compression.type`) makes no
consumer warn. A client setting librdkafka refuses is one error line naming it, and
`processor lag` against a port nobody listens on is one error line, without librdkafka's
own `%3|...|FAIL|` lines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import yaml

from tests.kafka_fixtures import Secured

PROCESSOR = Path(sys.executable).parent / "processor"
"""The installed `processor` command of this environment."""


def processor(*args: str, cwd: Path, env: Mapping[str, str] | None = None,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROCESSOR), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def quiet(done: subprocess.CompletedProcess[str]) -> None:
    """No librdkafka line on stderr: none printed by librdkafka itself (`%4|...`), no
    warning about a setting of the other client kind."""
    lines = done.stderr.splitlines()
    assert not [line for line in lines if line.startswith("%")], done.stderr
    assert "CONFWARN" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory that is neither the project's nor the broker's."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


@pytest.mark.kafka
def test_every_client_command_works_with_the_generated_settings_file(
        secured_kafka: Secured, elsewhere: Path, unique_name: Callable[[str], str]) -> None:
    settings = secured_kafka.settings_file("admin")
    document = yaml.safe_load(settings.read_text())
    assert Path(document["kafka"]["ssl.ca.location"]).is_absolute()
    file = ("--command-config", str(settings))
    producer_only = ("--set", "compression.type=zstd")
    topic, dlq = unique_name("cli-topic"), unique_name("cli-dlq")

    created = processor("topics", "create", topic, dlq, "--partitions", "2", *file,
                        *producer_only, cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [
        f"{topic}: created, 2 partition(s), replication factor 1",
        f"{dlq}: created, 2 partition(s), replication factor 1"]
    quiet(created)
    listed = processor("topics", "list", "--config", str(settings), cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert topic in listed.stdout and dlq in listed.stdout

    # produce: the file from PROCESSOR_CONFIG, the password overridden by the
    # environment with the same value, the producer setting from a flag.
    lines = elsewhere / "orders.jsonl"
    lines.write_text("".join(json.dumps({"order": i}) + "\n" for i in range(12)))
    produced = processor("produce", "--topic", dlq, "orders.jsonl", *producer_only,
                         cwd=elsewhere, env={
                             "PROCESSOR_CONFIG": str(settings),
                             "PROCESSOR_KAFKA__SASL_PASSWORD":
                                 document["kafka"]["sasl.password"]})
    assert produced.returncode == 0, produced.stderr
    assert f"12 artifacts written to {dlq}" in produced.stderr
    quiet(produced)

    # tail: no file at all; every setting from the environment and flags.
    env = {f"PROCESSOR_KAFKA__{key.upper().replace('.', '_')}": str(value)
           for key, value in document["kafka"].items() if key != "sasl.mechanism"}
    tailed = processor("tail", "--topic", dlq, "--from-beginning", "--count", "12",
                       "--timeout", "30", "--bootstrap-servers", document["bootstrap_servers"],
                       "--set", f"sasl.mechanism={document['kafka']['sasl.mechanism']}",
                       *producer_only, cwd=elsewhere, env=env)
    assert tailed.returncode == 0, tailed.stderr
    payloads = sorted(json.loads(json.loads(line)["payload"])["order"]
                      for line in tailed.stdout.splitlines())
    assert payloads == list(range(12))
    quiet(tailed)

    inspected = processor("dlq", "inspect", "--topic", dlq, "--idle", "2", *file,
                          *producer_only, cwd=elsewhere)
    assert inspected.returncode == 0, inspected.stderr
    assert inspected.stdout.startswith(f"{dlq}: 12 dead letters\n")
    quiet(inspected)

    replayed = processor("dlq", "replay", "--from", dlq, "--to", topic, "--idle", "2",
                         "--config", str(settings), *producer_only, cwd=elsewhere)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"copied 12 of 12 records from {dlq} to {topic}")
    quiet(replayed)

    lag = processor("lag", "--group", f"processor-dlq-replay.{dlq}.{topic}", *file,
                    *producer_only, cwd=elsewhere)
    assert lag.returncode == 0, lag.stderr
    rows = lag.stdout.splitlines()
    assert sum(row.startswith(dlq) for row in rows) == 2, lag.stdout
    assert rows[-1].split() == ["total", "0"], lag.stdout
    assert lag.stderr == ""


@pytest.mark.kafka
@pytest.mark.parametrize("command", [
    ["topics", "list"],
    ["produce", "--topic", "t", "--generate", "1"],
    ["tail", "--topic", "t", "--timeout", "1"],
    ["lag", "--group", "g"],
    ["dlq", "inspect", "--topic", "t"],
], ids=lambda words: " ".join(words[:2]))
def test_an_unreadable_ca_file_is_one_error_line_naming_the_setting(
        secured_kafka: Secured, elsewhere: Path, command: list[str]) -> None:
    missing = elsewhere / "no-such-ca.pem"
    done = processor(*command, "--command-config", str(secured_kafka.settings_file("cli")),
                     cwd=elsewhere, env={"PROCESSOR_KAFKA__SSL_CA_LOCATION": str(missing)})
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"processor {command[0]}: error: invalid Kafka settings: ")
    assert "ssl.ca.location from environment PROCESSOR_KAFKA__SSL_CA_LOCATION" in lines[0]
    assert f"no such file {missing}" in lines[0]


def test_lag_on_a_port_nobody_listens_on_is_one_line_without_librdkafka_logs(
        elsewhere: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    done = processor("lag", "--bootstrap-servers", f"127.0.0.1:{port}", "--group", "g",
                     "--timeout", "3", cwd=elsewhere)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "%3|" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"processor lag: error: cannot reach the broker at 127.0.0.1:{port} within 3s")
