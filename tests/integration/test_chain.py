"""Three `processor run` processes chained through real Kafka topics."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from tests.procs import produce_artifacts, read_topic, start, stop, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

COUNT = 100_000


def test_three_chained_stages_carry_every_artifact_in_order_per_key(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    topics = [unique_name(f"chain{i}") for i in range(4)]
    dlq = unique_name("chain-dlq")
    for topic in [*topics, dlq]:
        admin.create_topic(topic, partitions=4)
    sent = produce_artifacts(broker, topics[0], COUNT, keys=64)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            procs.append(start(
                ["run", "--bootstrap-servers", kafka_bootstrap,
                 "--input-topic", topics[i], "--output-topic", topics[i + 1],
                 "--group", unique_name(f"chain-g{i}"), "--name", f"hop{i}",
                 "--handler", "tests.integration.chain_handlers:hop",
                 "--dlq-topic", dlq, "--log-level", "WARNING",
                 "--metrics-port", "0", "--metrics-host", "127.0.0.1"],
                tmp_path / f"stage{i}.log",
            ))
        last = topics[-1]
        wait_for(lambda: sum(admin.high_watermarks(last).values()) >= COUNT, 240,
                 f"{COUNT} artifacts on {last}")
        for p in procs:
            assert p.poll() is None, (tmp_path / "stage0.log").read_text()[-2000:]
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0, 0], [(tmp_path / f"stage{i}.log").read_text()[-1500:] for i in range(3)]

    received = read_topic(broker, topics[-1], COUNT, timeout=120)
    ids = [a.id for a in received]
    print(f"sent {COUNT}, received {len(received)}, distinct {len(set(ids))}")
    assert len(received) == COUNT
    assert set(ids) == {a.id for a in sent}
    assert all(a.get("hops", 0) == 3 for a in received)
    last_seq: dict[str, int] = {}
    for a in received:
        key, seq = str(a.get("key", "")), a.get("seq", -1)
        assert seq > last_seq.get(key, -1), f"key {key}: {seq} after {last_seq[key]}"
        last_seq[key] = seq
    assert sum(admin.high_watermarks(dlq).values()) == 0
