"""A real schema registry for the tests, loaded as a pytest plugin by `tests/conftest.py`.

`schema_registry_url` is the Confluent-compatible API of a registry, in this order:

1. `SCHEMA_REGISTRY_URL`, when set (a registry someone else runs);
2. a local Apicurio Registry (`processor.devtools.registry.LocalRegistry`), started once
   per test session and stopped at its end -- needs Java 21 or later and `mvn`.

Without either the tests are skipped with the reason, except under `CI=true`, where a
missing registry fails the test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """The URL of a real Confluent-compatible schema registry (see the module docstring)."""
    configured = os.environ.get("SCHEMA_REGISTRY_URL", "").strip()
    if configured:
        yield configured
        return
    from processor.devtools.local_kafka import ToolMissing
    from processor.devtools.registry import LocalRegistry, RegistryError

    registry = LocalRegistry()
    try:
        registry.start()
    except ToolMissing as error:
        message = f"no schema registry for this test: {error}"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI=true: registry tests must run, not skip)",
                        pytrace=False)
        pytest.skip(message)
    except RegistryError as error:
        pytest.fail(f"the local schema registry did not start: {error}", pytrace=False)
    logger.info("schema registry at %s (started in %.1fs)", registry.url,
                registry.startup_seconds or 0.0)
    try:
        yield registry.url
    finally:
        registry.stop()
