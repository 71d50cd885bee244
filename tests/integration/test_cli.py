"""The command line end to end: produce -> run -> tail -> lag, and its error paths."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from tests.procs import ROOT, group_caught_up, processor_cmd, start, stop, wait_for

pytestmark = pytest.mark.kafka


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(processor_cmd(*args), input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_produce_run_tail_and_lag(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    src, dst, dlq, copy = (unique_name(n) for n in ("cin", "cout", "cdlq", "ccopy"))
    created = cli("topics", "create", "--bootstrap-servers", kafka_bootstrap, src, dst, dlq,
                  copy, "--partitions", "2")
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [
        f"{t}: created, 2 partition(s), replication factor 1" for t in (src, dst, dlq, copy)]
    again = cli("topics", "create", "--bootstrap-servers", kafka_bootstrap, src)
    assert again.stdout == f"{src}: exists, 2 partition(s), replication factor 1\n"
    listed = cli("topics", "list", "--bootstrap-servers", kafka_bootstrap)
    assert listed.returncode == 0, listed.stderr
    counts = dict(line.split() for line in listed.stdout.splitlines())
    assert {counts[t] for t in (src, dst, dlq, copy)} == {"2"}
    orders = tmp_path / "orders.jsonl"
    lines = [json.dumps({"order": f"o{i}", "customer": "c1", "amount": i + 1,
                         "currency": "eur"}) for i in range(40)]
    lines.insert(5, "{not json")
    orders.write_text("\n".join(lines) + "\n")

    produced = cli("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", src,
                   str(orders), "--key-field", "customer")
    assert produced.returncode == 1  # one line skipped, and said so
    assert "line 6 skipped" in produced.stderr
    assert "40 artifacts written" in produced.stderr

    group = unique_name("cgroup")
    proc = start(["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", src,
                  "--output-topic", dst, "--group", group, "--handler", "validate",
                  "--handler", "processor.demo:transform", "--dlq-topic", dlq,
                  "--metrics-port", "0", "--metrics-host", "127.0.0.1"],
                 tmp_path / "run.log")
    try:
        wait_for(lambda: group_caught_up(broker, group, src), 90, "the stage to catch up")
    finally:
        assert stop(proc) == 0, (tmp_path / "run.log").read_text()[-2000:]

    tailed = cli("tail", "--bootstrap-servers", kafka_bootstrap, "--topic", dst,
                 "--from-beginning", "--count", "40", "--timeout", "20")
    assert tailed.returncode == 0, tailed.stderr
    out = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert len(out) == 40
    assert {json.loads(a["payload"])["order"] for a in out} == {f"o{i}" for i in range(40)}
    assert all(a["state"] == "transformed" for a in out)

    # What tail prints, produce --artifacts reads back unchanged.
    again = cli("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", copy,
                "--artifacts", "-", stdin=tailed.stdout)
    assert again.returncode == 0, again.stderr
    copied = cli("tail", "--bootstrap-servers", kafka_bootstrap, "--topic", copy,
                 "--from-beginning", "--count", "40", "--timeout", "20")
    assert sorted(copied.stdout.splitlines()) == sorted(tailed.stdout.splitlines())

    lag = cli("lag", "--bootstrap-servers", kafka_bootstrap, "--group", group)
    assert lag.returncode == 0, lag.stderr
    assert src in lag.stdout
    total = [line for line in lag.stdout.splitlines() if line.lower().startswith("total")]
    assert total and total[0].split()[-1] == "0", lag.stdout


def test_topics_create_describe_delete(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    kept, plain = unique_name("kept"), unique_name("plain")
    created = cli("topics", "create", "--bootstrap-servers", kafka_bootstrap, kept,
                  "--partitions", "2", "--config", "retention.ms=3600000",
                  "--config", "cleanup.policy=compact")
    assert created.stdout == f"{kept}: created, 2 partition(s), replication factor 1\n"
    defaults = cli("topics", "create", "--bootstrap-servers", kafka_bootstrap, plain)
    # The local broker's num.partitions is 1, its default.replication.factor its size.
    assert defaults.stdout == f"{plain}: created, 1 partition(s), replication factor 1\n"
    described = cli("topics", "describe", "--bootstrap-servers", kafka_bootstrap, kept, plain)
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert lines[:2] == [f"{kept}: 2 partition(s), replication factor 1",
                         "  settings: cleanup.policy=compact, retention.ms=3600000"]
    assert lines[2].split() == ["partition", "leader", "replicas", "in-sync"]
    assert [line.split()[0] for line in lines[3:5]] == ["0", "1"]
    assert lines[5:7] == [f"{plain}: 1 partition(s), replication factor 1",
                          "  settings: none of its own (the broker defaults)"]
    leader, replicas, in_sync = lines[3].split()[1:]
    assert leader == replicas == in_sync

    deleted = cli("topics", "delete", "--bootstrap-servers", kafka_bootstrap, kept,
                  unique_name("never"), plain)
    assert deleted.returncode == 1
    assert deleted.stdout == f"{kept}: deleted\n{plain}: deleted\n"
    assert deleted.stderr.startswith("processor topics: error: unknown topic(s): never-")
    listed = cli("topics", "list", "--bootstrap-servers", kafka_bootstrap).stdout
    assert kept not in listed and plain not in listed
    missing = cli("topics", "describe", "--bootstrap-servers", kafka_bootstrap, kept)
    assert (missing.returncode, missing.stderr) == (
        1, f"processor topics: error: unknown topic {kept!r}\n")
    bad = cli("topics", "create", "--bootstrap-servers", kafka_bootstrap, kept,
              "--config", "no.such.setting=1")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "no.such.setting" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["tail", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t"],
        ["produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--generate", "3"],
        ["run", "--bootstrap-servers", "127.0.0.1:1", "--input-topic", "a", "--output-topic",
         "b", "--group", "g", "--handler", "validate", "--metrics-port", "0",
         "--metrics-host", "127.0.0.1"],
        ["lag", "--bootstrap-servers", "127.0.0.1:1", "--group", "g"],
        ["topics", "list", "--bootstrap-servers", "127.0.0.1:1"],
    ],
    ids=["tail", "produce", "run", "lag", "topics"],
)
def test_an_unreachable_broker_is_one_clear_line(args: list[str]) -> None:
    result = cli(*args, timeout=90)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors, result.stderr
    assert "127.0.0.1:1" in result.stderr or "reach" in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--guarantee", "maybe"], "invalid choice: 'maybe'"),
        (["run", "--input-topic", "a", "--group", "g"], "handler"),
        (["demo", "--count", "0"], "must be at least 1"),
        (["tail", "--topic", "t"], "--bootstrap-servers is required"),
        (["topics", "create", "t", "--partitions", "0"], "must be at least 1"),
        (["topics", "create", "t", "--config", "retention"], "expected KEY=VALUE"),
        (["bench"], "invalid choice: 'bench'"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_flags_are_one_clear_line(args: list[str], expected: str) -> None:
    env_free = cli(*args)
    assert env_free.returncode != 0
    assert "Traceback" not in env_free.stderr
    assert expected in env_free.stderr


def test_run_names_missing_topics_and_exits_cleanly_on_sigterm_at_start(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    result = cli("run", "--bootstrap-servers", kafka_bootstrap, "--input-topic",
                 unique_name("absent"), "--group", "g", "--handler", "validate",
                 "--metrics-port", "0", "--metrics-host", "127.0.0.1")
    assert result.returncode == 1
    assert "do not exist" in result.stderr
    assert "Traceback" not in result.stderr

    topic = unique_name("present")
    KafkaBroker(kafka_bootstrap).admin().create_topic(topic)
    proc = start(["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", topic,
                  "--group", unique_name("g"), "--handler", "validate",
                  "--metrics-port", "0", "--metrics-host", "127.0.0.1"], tmp_path / "r.log")
    wait_for(lambda: "start" in (tmp_path / "r.log").read_text(), 60, "the stage to start")
    assert stop(proc) == 0, (tmp_path / "r.log").read_text()[-2000:]
    assert "event=shutdown signal=SIGTERM" in (tmp_path / "r.log").read_text()
