"""Running the stage image with testcontainers, and reading topics back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from testcontainers.core.container import DockerContainer

from processor.backends.abstract import TopicPartition
from processor.backends.kafka import KafkaBroker

HANDLERS_DIR = Path(__file__).resolve().parent / "handlers"


@dataclass
class StageTopics:
    """The input, output and dead-letter topics and the group of one stage under test."""

    input: str
    output: str
    dlq: str
    group: str

    def create(self, broker: KafkaBroker, partitions: int = 3) -> None:
        admin = broker.admin()
        admin.create_topic(self.input, partitions=partitions)
        admin.create_topic(self.output, partitions=partitions)
        admin.create_topic(self.dlq, partitions=1)


def stage_container(image: str, bootstrap: str, topics: StageTopics, handlers: str,
                    metrics_port: int, extra_env: Mapping[str, str] | None = None,
                    mount_handlers: bool = False) -> DockerContainer:
    """A (not yet started) stage container on the host network, metrics on loopback."""
    env = {
        "PROCESSOR_NAME": topics.group,
        "PROCESSOR_GROUP": topics.group,
        "PROCESSOR_BOOTSTRAP_SERVERS": bootstrap,
        "PROCESSOR_INPUT_TOPIC": topics.input,
        "PROCESSOR_OUTPUT_TOPIC": topics.output,
        "PROCESSOR_DLQ_TOPIC": topics.dlq,
        "PROCESSOR_HANDLERS": handlers,
        "PROCESSOR_METRICS_HOST": "127.0.0.1",
        "PROCESSOR_METRICS_PORT": str(metrics_port),
        "PROCESSOR_GUARANTEE": "at-least-once",
        **(extra_env or {}),
    }
    container = DockerContainer(image).with_kwargs(network_mode="host")
    if mount_handlers:
        container.with_volume_mapping(str(HANDLERS_DIR), "/handlers", "ro")
        env["PYTHONPATH"] = "/handlers"
    for key, value in env.items():
        container.with_env(key, value)
    return container


def produce_generated(bootstrap: str, topic: str, count: int) -> None:
    """`processor produce --generate COUNT` from the host into `topic`."""
    subprocess.run([sys.executable, "-m", "processor.cli", "produce", "--bootstrap-servers",
                    bootstrap, "--topic", topic, "--generate", str(count)],
                   check=True, capture_output=True, timeout=300)


def topic_count(broker: KafkaBroker, topic: str) -> int:
    """Records in `topic` (sum of its partitions' high watermarks)."""
    return sum(broker.admin().high_watermarks(topic).values())


def committed(broker: KafkaBroker, group: str, topic: str) -> dict[TopicPartition, int]:
    return {tp: offset for tp, offset in broker.admin().group_offsets(group, [topic]).items()
            if tp.topic == topic}


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.5) -> None:
    """Poll `condition()` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def read_all(broker: KafkaBroker, topic: str) -> list[tuple[TopicPartition, int, bytes]]:
    """Every record of `topic` as (partition, offset, value), read up to the high watermarks."""
    ends = broker.admin().high_watermarks(topic)
    consumer = broker.consumer(f"reader-{topic}-{time.time_ns()}")
    consumer.subscribe([topic])
    position = {tp: 0 for tp in ends}
    out: list[tuple[TopicPartition, int, bytes]] = []
    deadline = time.monotonic() + 60
    while any(position[tp] < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise AssertionError(f"could not read {topic} to its end: {position} / {ends}")
        for message in consumer.consume(5000, 0.5):
            tp = TopicPartition(message.topic(), message.partition())
            out.append((tp, message.offset(), message.value() or b""))
            position[tp] = max(position.get(tp, 0), message.offset() + 1)
    consumer.close()
    return out
