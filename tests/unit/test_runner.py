"""The worker runner: transactional id slots (distinct for live replicas, reused after one
dies) and the stage a worker builds."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

import processor.runtime.build  # noqa: F401 - binds the real KafkaBroker before a test swaps it
from processor.ops.metrics import REGISTRY
from processor.ops.settings import load_config
from processor.runtime import runner
from processor.runtime.runner import claim_transactional_id
from tests.unit.stage_support import KafkaWithoutKafka


def test_live_replicas_get_distinct_ids_and_a_freed_slot_is_reused(tmp_path: Path) -> None:
    host = socket.gethostname()
    first, lock0 = claim_transactional_id("stage-g", tmp_path)
    second, lock1 = claim_transactional_id("stage-g", tmp_path)
    assert first == f"stage-g-{host}-0"
    assert second == f"stage-g-{host}-1"
    lock0.close()  # the process holding slot 0 died
    third, lock2 = claim_transactional_id("stage-g", tmp_path)
    assert third == first
    other, lock3 = claim_transactional_id("other/stage", tmp_path)
    assert other == f"other/stage-{host}-0"
    for lock in (lock1, lock2, lock3):
        lock.close()


def test_a_killed_process_releases_its_slot(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path;"
        "from processor.runtime.runner import claim_transactional_id as c;"
        f"i, h = c('s', Path({str(tmp_path)!r})); print(i, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        held = child.stdout.readline().strip()
        mine, lock = claim_transactional_id("s", tmp_path)
        assert mine != held
        lock.close()
        child.kill()
        child.wait(10)
        again, lock = claim_transactional_id("s", tmp_path)
        assert again == held
        lock.close()
    finally:
        child.kill()
        child.wait(10)


def test_a_worker_reports_the_configured_guarantee(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`processor run` builds its stage with `build_stage`: an exactly-once stage's
    metrics say exactly-once (they used to say at-least-once)."""
    brokers: list[KafkaWithoutKafka] = []

    class Kafka(KafkaWithoutKafka):
        def __init__(self, bootstrap_servers: str, settings: Mapping[str, object]) -> None:
            super().__init__(settings, bootstrap_servers)
            brokers.append(self)

    monkeypatch.setattr("processor.backends.kafka.KafkaBroker", Kafka)
    monkeypatch.setattr(runner, "_catch_stop_signals", lambda: None)
    monkeypatch.setattr(runner, "_STOP_REQUESTS", ["SIGTERM"])  # stop at once
    monkeypatch.setattr(runner, "_RUNNING", [])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    name = f"w-{uuid.uuid4().hex[:8]}"
    cfg = load_config(None, {
        "PROCESSOR_BOOTSTRAP_SERVERS": "kafka.example:9092", "PROCESSOR_NAME": name,
        "PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_OUTPUT_TOPIC": "out",
        "PROCESSOR_GROUP": "g", "PROCESSOR_GUARANTEE": "exactly-once",
        "PROCESSOR_HANDLERS": "processor.demo.handlers:validate",
        "PROCESSOR_METRICS_PORT": "off",
    }, {})
    assert runner.run_worker(cfg, index=0, serve_metrics=False) == 0
    [stage] = runner._RUNNING
    assert stage.options.guarantee == "exactly-once"
    assert stage.options.transactional_id == f"{name}-g-{socket.gethostname()}-0"
    assert REGISTRY.get_sample_value("processor_stage_info", {
        "stage": name, "input_topic": "in", "output_topic": "out", "guarantee": "exactly-once",
    }) == 1
    assert brokers[0].bootstrap_servers == "kafka.example:9092"
    assert callable(brokers[0].given["producer"]["stats_cb"])
