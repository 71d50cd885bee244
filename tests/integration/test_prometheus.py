"""A real Prometheus scrapes a real `processor run` on a real Kafka.

Prometheus comes from the Debian package (`make test` installs it). Without the binary
the test is skipped on a workstation and fails under CI=true, so CI never passes without
running it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processor.cli.main import main
from processor.core.artifact import Artifact
from processor.serde.codec import encode
from tests.procs import start, stop, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 3000
PARTITIONS = 3


def identity(artifact: Artifact) -> Artifact:
    """The stage's handler: every artifact passes through unchanged."""
    return artifact


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the prometheus binary is missing: apt-get install prometheus")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    return path


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping one target every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: stage\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for(self.ready, 30, "Prometheus to be ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str) -> float | None:
        """The single value of an instant vector query, or None when it has no result."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    binary = prometheus_binary()
    started: list[Prometheus] = []

    def make(target: str) -> Prometheus:
        workdir = tmp_path / f"prometheus{len(started)}"
        workdir.mkdir()
        server = Prometheus(binary, workdir, target)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(count):
        artifact = Artifact.new(f"payload-{i}", meta={"seq": i})
        producer.produce(topic, encode(artifact), key=f"k{i % 16}".encode())
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def commit_start(bootstrap: str, group: str, topic: str) -> None:
    """Commit offset 0 on every partition: the group exists, with everything still to read."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[KafkaTopicPartition(topic, p, 0) for p in range(PARTITIONS)],
                        asynchronous=False)
    finally:
        consumer.close()


def lag_table(bootstrap: str, group: str, topic: str) -> tuple[int, str]:
    """What `processor lag --topic TOPIC` prints (stdout and stderr), and its exit status."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["lag", "--bootstrap-servers", bootstrap, "--group", group,
                     "--topic", topic, "--timeout", "10"])
    return code, out.getvalue()


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return -1


def test_prometheus_scrapes_a_running_stage(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    prometheus_factory: Callable[[str], Prometheus],
    tmp_path: Path,
) -> None:
    source, sink, group = unique_name("prom-in"), unique_name("prom-out"), unique_name("prom-g")
    stage = unique_name("prom-stage")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in (source, sink)]
    ).values():
        future.result(30)

    # Before the stage runs: everything sent is lag.
    produce(kafka_bootstrap, source, COUNT)
    commit_start(kafka_bootstrap, group, source)
    code, table = lag_table(kafka_bootstrap, group, source)
    assert code == 0, table
    assert table.splitlines()[-1].split() == ["total", str(COUNT)], table

    port = free_port()
    prometheus = prometheus_factory(f"127.0.0.1:{port}")
    proc = start(
        ["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", source,
         "--output-topic", sink, "--group", group, "--name", stage,
         "--handler", "tests.integration.test_prometheus:identity",
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
         "--log-format", "json", "--commit-interval", "0.5"],
        tmp_path / "stage.log",
    )
    try:
        def stage_alive() -> None:
            assert proc.poll() is None, (tmp_path / "stage.log").read_text()[-3000:]

        def scraped() -> bool:
            stage_alive()
            return prometheus.query('up{job="stage"}') == 1.0

        wait_for(scraped, 60, "Prometheus to scrape the stage")

        def processed_everything() -> bool:
            stage_alive()
            consumed = prometheus.query(f'sum(processor_consumed_total{{stage="{stage}"}})')
            produced = prometheus.query(
                f'sum(processor_produced_total{{stage="{stage}",topic="{sink}"}})')
            lag = prometheus.query(f'sum(processor_consumer_lag{{stage="{stage}"}})')
            return consumed == COUNT and produced == COUNT and lag == 0

        wait_for(processed_everything, 120, f"Prometheus to see {COUNT} processed and lag 0",
                 interval=1.0)
        assert prometheus.query(
            f'count(processor_consumer_lag{{stage="{stage}",topic="{source}"}})') == PARTITIONS
        assert prometheus.query(
            f'processor_stage_info{{stage="{stage}",input_topic="{source}"}}') == 1
        assert prometheus.query(
            f'sum(processor_dead_lettered_total{{stage="{stage}"}})') == 0
        assert prometheus.query(
            f'sum(processor_batch_size_records_sum{{stage="{stage}"}})') == COUNT
        assert get_status(f"http://127.0.0.1:{port}/healthz") == 200
        assert get_status(f"http://127.0.0.1:{port}/readyz") == 200

        def committed_everything() -> bool:
            stage_alive()
            code, table = lag_table(kafka_bootstrap, group, source)
            return code == 0 and table.splitlines()[-1].split() == ["total", "0"]

        wait_for(committed_everything, 30, "the group's committed lag to reach 0")
    finally:
        exit_code = stop(proc)
    assert exit_code == 0, (tmp_path / "stage.log").read_text()[-3000:]
    for line in (tmp_path / "stage.log").read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # JSON logs: every line one object
            assert {"ts", "level", "logger", "message"} <= record.keys()


def test_lag_reports_unknown_groups(kafka_bootstrap: str,
                                    unique_name: Callable[[str], str]) -> None:
    started = time.monotonic()
    code, text = lag_table(kafka_bootstrap, unique_name("nobody"), unique_name("no-topic"))
    assert code == 1
    assert text.startswith("processor lag: error: unknown consumer group")
    assert text.count("\n") == 1
    assert time.monotonic() - started < 15
