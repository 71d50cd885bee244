"""`processor pipeline up | status | down` on Kafka: the example pipelines (the demo's
chain, a DAG, a ring, sinks) run as local processes under the supervisor, and give, record
by record, what the in-memory test driver gives for the same input.

A record is compared by its topic and artifact id, with the whole artifact (payload,
state, metadata, timestamps: the handlers are deterministic and keep the input's
timestamp) and the hop count of a ring; a dead letter also by the stage and reason its
headers name; a record that is no artifact (bad input, a plain payload) by its bytes.
Partitions and offsets differ between the two runs (keyless records are spread
differently) and are not compared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import cast

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact, MediaType
from processor.pipeline import load_pipeline
from processor.pipeline.status import stage_rows
from processor.pipeline.supervisor import read_state
from processor.serde.codec import Codec
from processor.serde.wire import WireCodec
from processor.testing import PipelineDriver
from tests.procs import ROOT, processor_cmd, start, stop, wait_for

pytestmark = pytest.mark.timeout(240)

EXAMPLES = ROOT / "examples" / "pipelines"
DEMO_ORDERS = 10_000

Fingerprint = tuple[str, str, str]
"""(topic, artifact id or the bytes' hex, what else is compared)."""


def fingerprint(topic: str, value: bytes,
                headers: Sequence[tuple[str, bytes | None]] | None,
                codec: WireCodec) -> Fingerprint:
    fields = {k: (v or b"").decode("utf-8", "replace") for k, v in headers or ()}
    extra = [fields.get(h) for h in ("processor.hops", "dlq.stage", "dlq.reason")]
    try:
        artifact = codec.decode(value, cast("list[tuple[str, bytes]]", list(headers or ()))
                                or None)
    except Exception:
        return topic, value.hex(), repr(extra)
    meta = sorted(artifact.meta.items())
    return topic, artifact.id, repr((artifact._replace(meta={}), meta, extra))


def read_kafka(broker: KafkaBroker, expect: dict[str, int], timeout: float
               ) -> dict[str, list[Fingerprint]]:
    """Every record of the topics of `expect` until each has its count (one consumer: a
    group joins once); records that come within a short while after are read too."""
    codec = WireCodec(Codec())
    consumer = broker.consumer(f"up-reader-{uuid.uuid4().hex[:8]}", read_committed=True)
    consumer.subscribe(list(expect))
    out: dict[str, list[Fingerprint]] = {topic: [] for topic in expect}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.5)
            for m in batch:
                out[m.topic()].append(fingerprint(m.topic(), m.value() or b"", m.headers(),
                                                  codec))
            if not batch and consumer.assignment() and all(
                    len(out[t]) >= n for t, n in expect.items()):
                break
    finally:
        consumer.close()
    return out


def read_driver(driver: PipelineDriver, topic: str) -> list[Fingerprint]:
    codec = WireCodec(Codec())
    return [fingerprint(topic, r.value, list(r.headers), codec) for r in driver.read(topic)]


def header_names() -> None:
    from processor.runtime.dead_letters import H_REASON, H_STAGE

    assert (H_STAGE, H_REASON) == ("dlq.stage", "dlq.reason"), "fingerprint's header names"


@contextmanager
def pipeline_up(path: Path, bootstrap: str, tmp: Path) -> Iterator[Path]:
    """`processor pipeline up FILE` in the background until the block ends, then `down`;
    yields the run directory."""
    run_dir = tmp / f"run-{path.stem}"
    log = tmp / f"up-{path.stem}.log"
    proc = start(["pipeline", "up", str(path), "--bootstrap-servers", bootstrap,
                  "--run-dir", str(run_dir)], log)
    try:
        wait_for(lambda: (read_state(run_dir) or {}).get("state") == "running" or
                 proc.poll() is not None, 60, f"{path.name} up")
        assert proc.poll() is None, log.read_text()
        yield run_dir
        down = subprocess.run(
            processor_cmd("pipeline", "down", str(path), "--run-dir", str(run_dir)),
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert down.returncode == 0, down.stdout + down.stderr + log.read_text()
        assert proc.wait(30) == 0, log.read_text()
        text = log.read_text()
        names = list(load_pipeline(path).stages)
        stopped = [line for line in text.splitlines() if line.endswith(": stopped")
                   and " stage " in line]
        assert [line.split(" stage ")[1].split(":")[0] for line in stopped] == names, text
    finally:
        if proc.poll() is None:
            stop(proc, 60)
        for stage in (read_state(run_dir) or {}).get("stages", []):
            for replica in stage["replicas"]:
                if isinstance(replica.get("pid"), int) and replica.get("state") in (
                        "running", "stopping"):
                    with suppress(ProcessLookupError):
                        os.kill(replica["pid"], signal.SIGKILL)


def produce(broker: KafkaBroker, topic: str, records: list[Artifact | bytes]) -> None:
    codec = WireCodec(Codec())
    producer = broker.producer(client_id="up-test-feed")
    for record in records:
        if isinstance(record, Artifact):
            producer.produce(topic, codec.encode(record), None, codec.headers(None))
        else:
            producer.produce(topic, record, None, None)
    assert producer.flush(60) == 0
    producer.close()


def compare(path: Path, broker: KafkaBroker, driver: PipelineDriver,
            timeout: float = 90) -> dict[str, int]:
    """Every topic of the file, on Kafka and in the driver: the same records. Returns the
    count of each topic."""
    expected = {topic: read_driver(driver, topic) for topic in load_pipeline(path).topics}
    got = read_kafka(broker, {t: len(records) for t, records in expected.items()}, timeout)
    for topic, records in expected.items():
        on_kafka = got[topic]
        assert Counter(on_kafka) == Counter(records), (
            f"{topic}: {len(on_kafka)} records on Kafka, {len(records)} in the driver; "
            f"only on Kafka: {list((Counter(on_kafka) - Counter(records)).items())[:3]}; "
            f"only in the driver: {list((Counter(records) - Counter(on_kafka)).items())[:3]}")
    return {topic: len(records) for topic, records in got.items()}


def event(**fields: object) -> Artifact:
    return Artifact.new(json.dumps(fields), media_type=MediaType.JSON)


SHAPE_INPUTS: dict[str, tuple[str, list[Artifact | bytes]]] = {
    "graph": ("graph.events", [
        *(event(kind="order", quantity=i % 4, unit_cents=125 * i) for i in range(30)),
        *(event(kind="payment", amount=i) for i in range(20)),
        event(kind="refund"), event(note="no kind"), b"not an artifact"]),
    "ring": ("ring.start", [*(event(n=n % 9, seq=n) for n in range(40)), b"\x00junk"]),
    "sink": ("sink.events", [*(event(name=f" e{i} ", seq=i) for i in range(40)),
                             Artifact.new("not json"), b"garbage"]),
}


@pytest.mark.parametrize("shape", ["graph", "ring", "sink"])
def test_each_shape_runs_on_kafka_as_in_the_driver(
        shape: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    header_names()
    path = EXAMPLES / f"{shape}.yaml"
    topic, records = SHAPE_INPUTS[shape]
    broker = KafkaBroker(kafka_bootstrap)
    with PipelineDriver(path) as driver:
        driver.feed(topic, records)
        driver.run_until_idle()
        with pipeline_up(path, kafka_bootstrap, tmp_path):
            produce(broker, topic, records)
            counts = compare(path, broker, driver)
    dlq = next(t for t in counts if t.endswith(".dlq"))
    assert counts[topic] == len(records) and counts[dlq] >= 2


@pytest.fixture(scope="module")
def demo_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, object]]:
    """The demo on Kafka with 10,000 generated orders, and the driver fed the same."""
    tmp = tmp_path_factory.mktemp("demo")
    path = EXAMPLES / "demo.yaml"
    broker = KafkaBroker(kafka_bootstrap)
    result: dict[str, object] = {}
    with pipeline_up(path, kafka_bootstrap, tmp) as run_dir:
        started = time.monotonic()
        producer = start(["produce", "--topic", "orders.raw", "--generate",
                          str(DEMO_ORDERS), "--bootstrap-servers", kafka_bootstrap],
                         tmp / "produce.log")
        try:  # status while the orders go through
            status = subprocess.run(
                processor_cmd("pipeline", "status", str(path), "--run-dir", str(run_dir)),
                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
            result["status"] = status.stdout
            assert producer.wait(120) == 0, (tmp / "produce.log").read_text()
        finally:
            stop(producer)
        raw = read_kafka_raw(broker, "orders.raw", DEMO_ORDERS)
        with PipelineDriver(path) as driver:
            driver.feed("orders.raw", raw)
            driver.run_until_idle()
            result["counts"] = compare(path, broker, driver)
            result["driver"] = {name: driver.stats(name) for name in driver.stages}
        result["seconds"] = time.monotonic() - started
        state = read_state(run_dir)
        assert state is not None
        wait_for(lambda: all(r.lag == 0 for r in stage_rows(state)[0]), 30, "lag 0")
        result["rows"] = stage_rows(state)[0]
    yield result


def read_kafka_raw(broker: KafkaBroker, topic: str, expect: int) -> list[bytes]:
    consumer = broker.consumer(f"up-raw-{uuid.uuid4().hex[:8]}", read_committed=True)
    consumer.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out += [m.value() or b"" for m in consumer.consume(5000, 0.5)]
    finally:
        consumer.close()
    assert len(out) == expect
    return out


def test_demo_status_shows_the_three_stages(demo_run: dict[str, object]) -> None:
    print(demo_run["status"])  # shown with pytest -rP
    lines = str(demo_run["status"]).splitlines()
    assert lines[0].startswith("pipeline demo: running (supervisor ")
    assert lines[1].split()[:3] == ["STAGE", "UP", "IN"]
    assert [line.split()[0] for line in lines[2:]] == ["validate", "transform", "enrich"]
    assert all(line.split()[1] == "1/1" and " ok " in line for line in lines[2:])


def test_demo_on_kafka_accounts_for_every_record_as_the_driver_does(
        demo_run: dict[str, object]) -> None:
    counts = demo_run["counts"]
    rows = {row.stage: row for row in demo_run["rows"]}  # type: ignore[attr-defined]
    assert isinstance(counts, dict)
    dlq_by_stage = demo_run["driver"]
    assert isinstance(dlq_by_stage, dict)
    # each stage: inputs = outputs + dropped + dead letters, from its metrics...
    for name, row in rows.items():
        assert row.consumed == row.produced + row.dropped + row.dead_lettered, name
        assert row.consumed == dlq_by_stage[name].consumed, name
        assert row.dead_lettered == dlq_by_stage[name].dead_lettered, name
        assert row.dropped == dlq_by_stage[name].dropped, name
    # ... and from the topics
    assert counts["orders.raw"] == rows["validate"].consumed == DEMO_ORDERS
    assert counts["orders.validated"] == rows["validate"].produced == rows[
        "transform"].consumed
    assert counts["orders.transformed"] == rows["transform"].produced == rows[
        "enrich"].consumed
    assert counts["orders.enriched"] == rows["enrich"].produced
    assert counts["orders.dlq"] == sum(row.dead_lettered for row in rows.values())
    assert rows["validate"].dead_lettered > 0 and rows["transform"].dropped > 0
