"""Fixtures of the fault tests: Kafka clusters of their own, which the tests stop,
restart and freeze (the session's shared broker must not be disturbed)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from processor.devtools.local_kafka import LocalKafka, LocalKafkaError, ToolMissing, free_ports
from tests.faults.proxy import FaultProxy


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _start(nodes: int, advertise_external: tuple[int, ...] = ()) -> LocalKafka:
    kafka = LocalKafka(nodes=nodes, advertise_external=advertise_external)
    try:
        kafka.start()
    except ToolMissing as error:
        if _in_ci():
            pytest.fail(f"fault tests need a local Kafka: {error} (CI=true: no skip)",
                        pytrace=False)
        pytest.skip(f"fault tests need a local Kafka: {error}")
    except LocalKafkaError as error:
        pytest.fail(f"the local Kafka cluster did not start: {error}", pytrace=False)
    return kafka


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[LocalKafka]:
    """A one-node cluster for this module's tests alone, which they may stop and restart."""
    kafka = _start(1)
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def own_kafka3() -> Iterator[LocalKafka]:
    """A three-node cluster for this module's tests alone."""
    kafka = _start(3)
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def proxied_kafka() -> Iterator[tuple[LocalKafka, FaultProxy]]:
    """A one-node cluster behind a fault-injecting proxy: clients bootstrapping at
    `127.0.0.1:<proxy.port>` are told that port for the node, so every connection they
    make goes through the proxy; `kafka.bootstrap_servers` is the direct way in."""
    (port,) = free_ports(1)
    kafka = _start(1, advertise_external=(port,))
    try:
        with FaultProxy(port, kafka.external_target(0)) as proxy:
            yield kafka, proxy
    finally:
        kafka.stop()
