"""What `processor run` does before its stage starts, on a real broker: it creates its
missing topics when told to, two stages share a host on the default metrics port, and a
metrics port that is taken is one error line naming it and the setting to change."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from tests.procs import ROOT, processor_cmd, start, stop, wait_for

pytestmark = pytest.mark.kafka

LOCAL_METRICS = ("--metrics-host", "127.0.0.1")


def stage_args(bootstrap: str, source: str, group: str, *more: str) -> list[str]:
    return ["run", "--bootstrap-servers", bootstrap, "--input-topic", source, "--group", group,
            "--handler", "validate", *LOCAL_METRICS, *more]


def started(log: Path) -> Callable[[], bool]:
    return lambda: "event=start" in log.read_text()


def test_run_creates_its_missing_topics_when_told_to(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    src, dst, dlq = (unique_name(n) for n in ("cin", "cout", "cdlq"))
    log = tmp_path / "run.log"
    proc = start(stage_args(kafka_bootstrap, src, unique_name("g"), "--output-topic", dst,
                            "--dlq-topic", dlq, "--create-topics", "--topic-partitions", "2"),
                 log)
    try:
        wait_for(lambda: "event=assignment" in log.read_text(), 90, "the stage to start")
    finally:
        assert stop(proc) == 0, log.read_text()[-2000:]
    admin = KafkaBroker(kafka_bootstrap).admin()
    for topic in (src, dst, dlq):
        described = admin.describe_topic(topic)
        assert (len(described.partitions), described.replication) == (2, 1)
        assert f"created topic {topic}" in log.read_text()


def test_two_stages_share_a_host_on_the_default_metrics_port(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_name("shared")
    KafkaBroker(kafka_bootstrap).admin().create_topic(topic)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(stage_args(kafka_bootstrap, topic, unique_name("g")), log) for log in logs]
    try:
        for log in logs:
            wait_for(started(log), 90, "a stage to start")
        urls = [re.search(r"serving (http://127\.0\.0\.1:\d+)/metrics", log.read_text())
                for log in logs]
        assert all(urls), [log.read_text()[-2000:] for log in logs]
        assert len({u.group(1) for u in urls if u}) == 2
        for url in urls:
            assert url is not None
            with urllib.request.urlopen(url.group(1) + "/healthz", timeout=10) as answer:
                assert answer.status == 200
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_taken_metrics_port_is_one_line(
    kafka_bootstrap: str, unique_name: Callable[[str], str], processes: str
) -> None:
    topic = unique_name("busy")
    KafkaBroker(kafka_bootstrap).admin().create_topic(topic)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            processor_cmd(*stage_args(kafka_bootstrap, topic, unique_name("g"),
                                      "--metrics-port", str(port), "--processes", processes)),
            capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"processor run: error: cannot serve metrics on 127.0.0.1:{port}: the port is in use "
        "by another process; choose another port with --metrics-port (PROCESSOR_METRICS_PORT, "
        "metrics_port in YAML), 0 for any free port, or off for none"], result.stderr
