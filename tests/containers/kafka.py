"""Apache Kafka in a container (testcontainers), single-node KRaft on the host's loopback.

The container uses host networking, so its listeners are bound to 127.0.0.1 on free ports: the
same shape works for the official apache/kafka image and for the local stand-in, both of which
take their broker settings from KAFKA_* environment variables.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

from processor.backends.kafka import KafkaBroker
from tests.containers.ports import free_ports

logger = logging.getLogger(__name__)


@dataclass
class KafkaContainer:
    """A running Kafka container and its bootstrap servers."""

    container: DockerContainer
    bootstrap_servers: str
    startup_seconds: float

    def stop(self) -> None:
        self.container.stop()


def kafka_environment(broker_port: int, controller_port: int) -> dict[str, str]:
    """KRaft broker+controller settings for one node listening on 127.0.0.1 only."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": (f"PLAINTEXT://127.0.0.1:{broker_port},"
                            f"CONTROLLER://127.0.0.1:{controller_port}"),
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@127.0.0.1:{controller_port}",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "10",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "10",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }


def _ready(bootstrap: str) -> bool:
    try:
        KafkaBroker(bootstrap).admin().list_topics()
    except Exception:  # any failure means: not ready yet
        return False
    return True


def start_kafka(image: str, timeout: float = 120.0) -> KafkaContainer:
    """Start `image` with testcontainers and wait until its admin API answers."""
    broker_port, controller_port = free_ports(2)
    container = DockerContainer(image).with_kwargs(network_mode="host")
    for key, value in kafka_environment(broker_port, controller_port).items():
        container.with_env(key, value)
    started = time.monotonic()
    container.start()
    bootstrap = f"127.0.0.1:{broker_port}"
    deadline = started + timeout
    while not _ready(bootstrap):
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status != "running" or time.monotonic() > deadline:
            logs = wrapped.logs(tail=40).decode(errors="replace")
            container.stop()
            raise RuntimeError(f"Kafka container {image} did not become ready: {logs}")
        time.sleep(0.5)
    seconds = time.monotonic() - started
    logger.info("Kafka container %s at %s (ready in %.1fs)", image, bootstrap, seconds)
    return KafkaContainer(container, bootstrap, seconds)
