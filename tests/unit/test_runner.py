"""The worker runner: transactional id slots (distinct for live replicas, reused after one
dies), the replica's identity in them (stable across a Kubernetes pod restart), the stage a
worker builds, and a runtime that takes settings, not a command line."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from processor.core.errors import ConfigError
from processor.ops.metrics import REGISTRY
from processor.ops.settings import StageConfig, load_config
from processor.runtime import runner
from processor.runtime.runner import (
    claim_transactional_id,
    replica_identity,
    statefulset_ordinal,
)
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


def test_statefulset_host_names_give_their_ordinal() -> None:
    assert statefulset_ordinal("processor-validate-0") == 0
    assert statefulset_ordinal("processor-validate-12") == 12
    assert statefulset_ordinal("web-3.processor-validate.orders.svc.cluster.local") == 3
    for other in ("processor-validate", "laptop", "vm", "processor-validate-01", "-3", "3",
                  "Processor-3", "processor-validate-", "processor_validate-2"):
        assert statefulset_ordinal(other) is None, other
    # A Deployment's pod may end in digits: why the ordinal is taken only when asked for.
    assert statefulset_ordinal("processor-validate-5d8f7c9b4-24567") == 24567


def test_the_replica_identity_is_the_setting_the_ordinal_or_the_host() -> None:
    assert replica_identity(None, "processor-validate-5d8f7c9b4-x2x7k") == \
        "processor-validate-5d8f7c9b4-x2x7k"
    assert replica_identity(None) == socket.gethostname()
    assert replica_identity("ordinal", "processor-validate-2") == "2"
    assert replica_identity("eu-1", "any-host-4") == "eu-1"
    with pytest.raises(ConfigError) as error:
        replica_identity("ordinal", "laptop")
    assert str(error.value) == (
        "replica_id ordinal: the host name 'laptop' is not a StatefulSet pod's (NAME-N); set "
        "replica_id (PROCESSOR_REPLICA_ID, --replica-id) to this replica's own stable "
        "identity, or leave it unset for the host name")


def test_the_same_identity_gets_the_same_id_across_a_pod_restart(tmp_path: Path) -> None:
    """A restarted pod comes back with a fresh /tmp (a new lock directory): the same
    identity still gives the same id, so its producer fences what the dead one left
    open. A Deployment pod's new host name would not."""
    before, lock = claim_transactional_id(
        "validate-validate", tmp_path / "pod-a", identity=replica_identity(
            "ordinal", "processor-validate-1"))
    lock.close()  # the pod died
    after, lock = claim_transactional_id(
        "validate-validate", tmp_path / "pod-b", identity=replica_identity(
            "ordinal", "processor-validate-1"))
    lock.close()
    assert before == after == "validate-validate-1-0"
    named = [claim_transactional_id("s", tmp_path / f"host-{host}",
                                    identity=replica_identity("eu-1", host))
             for host in ("node-a", "node-b")]
    assert [i for i, _ in named] == ["s-eu-1-0", "s-eu-1-0"]
    for _, lock in named:
        lock.close()
    moved = [claim_transactional_id("s", tmp_path / f"deploy-{host}",
                                    identity=replica_identity(None, host))
             for host in ("processor-5d8f7c9b4-x2x7k", "processor-5d8f7c9b4-q9w4z")]
    assert moved[0][0] != moved[1][0]
    for _, lock in moved:
        lock.close()


HOLD = ("import sys, time; from pathlib import Path;"
        "from processor.runtime.runner import claim_transactional_id as c;"
        "i, h = c('s', Path(sys.argv[1]), identity=sys.argv[2]); print(i, flush=True);"
        "time.sleep(60)")


def test_processes_of_one_pod_get_their_own_slots_and_keep_them(tmp_path: Path) -> None:
    """`--processes 2` in one pod: two ids for one identity; a killed worker's successor
    (another process) takes the slot it left, and its id."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "s-0-0"
        mine, lock = claim_transactional_id("s", tmp_path, identity="0")
        assert mine == "s-0-1"
        child.kill()
        child.wait(10)
        successor = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "0"],
                                     stdout=subprocess.PIPE, text=True)
        try:
            assert successor.stdout is not None
            assert successor.stdout.readline().strip() == "s-0-0"
        finally:
            successor.kill()
            successor.wait(10)
        lock.close()
    finally:
        child.kill()
        child.wait(10)


def worker_config(**env: str) -> StageConfig:
    """An exactly-once stage of its own name (its metrics do not mix with another test's)."""
    return load_config(None, {
        "PROCESSOR_BOOTSTRAP_SERVERS": "kafka.example:9092",
        "PROCESSOR_NAME": f"w-{uuid.uuid4().hex[:8]}",
        "PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_OUTPUT_TOPIC": "out",
        "PROCESSOR_GROUP": "g", "PROCESSOR_GUARANTEE": "exactly-once",
        "PROCESSOR_HANDLERS": "processor.demo.handlers:validate",
        "PROCESSOR_METRICS_PORT": "off", **env,
    }, {})


MADE: list[KafkaWithoutKafka] = []


class Kafka(KafkaWithoutKafka):
    """The broker factory the tests hand the runner (as `processor run` hands it
    `KafkaBroker`): no Kafka, and each broker made is kept in `MADE`."""

    def __init__(self, bootstrap_servers: str, settings: Mapping[str, object]) -> None:
        super().__init__(settings, bootstrap_servers)
        MADE.append(self)


@pytest.fixture
def brokers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[KafkaWithoutKafka]:
    """Workers run without Kafka and stop at once; the brokers they made."""
    MADE.clear()
    monkeypatch.setattr(runner, "catch_stop_signals", lambda: None)
    monkeypatch.setattr(runner, "_STOP_REQUESTS", ["SIGTERM"])  # stop at once
    monkeypatch.setattr(runner, "_RUNNING", [])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return MADE


def test_a_worker_reports_the_configured_guarantee(brokers: list[KafkaWithoutKafka]) -> None:
    """`processor run` builds its stage with `build_stage`: an exactly-once stage's
    metrics say exactly-once (they used to say at-least-once)."""
    cfg = worker_config()
    name = cfg.name
    assert runner.run_worker(cfg, 0, False, Kafka) == 0
    [stage] = runner._RUNNING
    assert stage.options.guarantee == "exactly-once"
    assert stage.options.transactional_id == f"{name}-g-{socket.gethostname()}-0"
    assert REGISTRY.get_sample_value("processor_stage_info", {
        "stage": name, "input_topic": "in", "output_topic": "out", "guarantee": "exactly-once",
    }) == 1
    assert brokers[0].bootstrap_servers == "kafka.example:9092"
    assert callable(brokers[0].given["producer"]["stats_cb"])


def test_a_statefulset_worker_keeps_its_id_across_a_restart(
    brokers: list[KafkaWithoutKafka], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "processor-validate-3")
    cfg = worker_config(PROCESSOR_REPLICA_ID="ordinal", PROCESSOR_TRANSACTIONAL_ID="orders")
    ids = []
    for pod in ("first", "restarted"):  # a new pod: a fresh /tmp
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / pod))
        runner._RUNNING.clear()
        assert runner.run_worker(cfg, 0, False, Kafka) == 0
        [stage] = runner._RUNNING
        ids.append(stage.options.transactional_id)
    assert ids == ["orders-3-0", "orders-3-0"]


def test_a_replica_id_that_does_not_fit_the_host_stops_the_start(
    brokers: list[KafkaWithoutKafka], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any worker starts or any broker is dialled: one `ConfigError`."""
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop")
    monkeypatch.setattr("processor.ops.logs.configure_logging", lambda *a: None)
    with pytest.raises(ConfigError, match="host name 'laptop' is not a StatefulSet pod's"):
        runner.run_service(worker_config(PROCESSOR_REPLICA_ID="ordinal",
                                         PROCESSOR_PROCESSES="2"), Kafka)
    assert brokers == [] and runner._RUNNING == []


def test_the_runtime_does_not_read_the_command_line() -> None:
    """The runtime takes settings (`StageConfig`); the CLI parses the command line."""
    package = Path(runner.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "argparse" or n.startswith("processor.cli")
                           for n in names), (path.name, names)
