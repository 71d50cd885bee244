"""Fixtures shared by every test tier.

The real-broker fixtures (`kafka_bootstrap`, ...) live in `tests/kafka_fixtures.py` and are
loaded as a plugin, so tiers that do not touch Kafka never start a broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

pytest_plugins = ["tests.kafka_fixtures", "tests.registry_fixtures"]


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """uuid-suffixed names for topics and groups, so tests never share state."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
