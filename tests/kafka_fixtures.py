"""Real-broker fixtures, loaded as a pytest plugin by `tests/conftest.py`.

`kafka_bootstrap` finds an Apache Kafka broker, in this order:

1. `KAFKA_BOOTSTRAP_SERVERS`, when set (a broker someone else runs);
2. a local one-node KRaft cluster (`processor.devtools.local_kafka.LocalKafka`), started once per
   test session and stopped at its end -- needs `java` and `mvn`;
3. testcontainers' Kafka module, when it is installed and a Docker engine answers.

Without any of them the tests are skipped with the reason, except under `CI=true`, where
a missing broker fails the test: CI must never pass by skipping the real-broker tiers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from processor.backends.kafka import KafkaBroker

logger = logging.getLogger(__name__)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _no_broker(reason: str) -> None:
    message = f"no Kafka broker for this test: {reason}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: real-broker tests must run, not skip)",
                    pytrace=False)
    pytest.skip(message)


def _docker_kafka() -> tuple[str, object] | None:
    """A testcontainers Kafka when the package is installed and Docker answers."""
    try:
        import docker  # type: ignore[import-not-found, import-untyped, unused-ignore]
        from testcontainers.kafka import (  # type: ignore[import-not-found, unused-ignore]
            KafkaContainer,
        )
    except ImportError:
        return None
    try:
        docker.from_env().ping()
    except Exception:  # any failure means: no usable engine
        return None
    container = KafkaContainer().with_kraft()
    container.start()
    return str(container.get_bootstrap_server()), container


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap servers of a real Apache Kafka broker (see the module docstring)."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        yield configured
        return

    from processor.devtools.local_kafka import LocalKafka, LocalKafkaError, ToolMissing

    local: LocalKafka | None = None
    missing: ToolMissing | None = None
    try:
        local = LocalKafka(nodes=1)
        local.start()
    except ToolMissing as error:
        missing = error
        local = None
    except LocalKafkaError as error:
        # Java and Maven are there, yet the broker did not start: a real failure.
        pytest.fail(f"the local Kafka broker did not start: {error}", pytrace=False)
    if local is not None:
        logger.info("local Kafka at %s (started in %.1fs)", local.bootstrap_servers,
                    local.startup_seconds or 0.0)
        try:
            yield local.bootstrap_servers
        finally:
            local.stop()
        return

    docker_kafka = _docker_kafka()
    if docker_kafka is not None:
        bootstrap, container = docker_kafka
        try:
            yield bootstrap
        finally:
            container.stop()  # type: ignore[attr-defined]
        return
    _no_broker(f"{missing}; or set KAFKA_BOOTSTRAP_SERVERS, or run a Docker engine")


@pytest.fixture
def kafka_broker(kafka_bootstrap: str) -> KafkaBroker:
    """A `KafkaBroker` on the session's broker."""
    from processor.backends.kafka import KafkaBroker

    return KafkaBroker(kafka_bootstrap)
