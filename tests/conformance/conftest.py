"""The conformance suite runs every test against both backends.

`broker` is parametrised over the in-memory broker and a real Apache Kafka broker (found
by `tests/kafka_fixtures.py`). A behaviour the in-memory broker cannot offer is marked in
its test with `xfail(strict=True)` and the reason, for the memory parameter only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from processor.backends.abstract import Broker


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "memory":
        from processor.backends.memory import MemoryBroker

        yield MemoryBroker()
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    from processor.backends.kafka import KafkaBroker

    yield KafkaBroker(bootstrap)


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.node.callspec.params["broker"]
    return name


@pytest.fixture
def new_topic(broker: Broker, unique_name: Callable[[str], str]) -> Callable[[int], str]:
    """Create a uuid-named topic with the given number of partitions; returns its name."""
    admin = broker.admin()

    def make(partitions: int = 1) -> str:
        name = unique_name("topic")
        admin.create_topic(name, partitions=partitions)
        return name

    return make
