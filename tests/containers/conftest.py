"""Fixtures of the container tier: the engine, the images, a Kafka container, the report.

The tier needs a Docker engine. One the environment points at is used; otherwise the private
loopback-only engine of deploy/docker/engine.sh is installed and started for the session, and
stopped at its end. Without any engine the tests are skipped, except under `CI=true`, where
they fail: CI must never pass by skipping this tier.

The figures the tier measures (image sizes and build times, records in and out, Prometheus
targets) are printed in the terminal summary and written to build/container-test-report.txt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import pytest

from tests.containers.engine import Engine, EngineError, ensure_compose, ensure_engine
from tests.containers.images import Docker, ImageBuilder, ImageError, ImageSettings
from tests.containers.kafka import KafkaContainer, start_kafka

ROOT = Path(__file__).resolve().parents[2]
REPORT_FILE = ROOT / "build" / "container-test-report.txt"
REPORT: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def report(line: str) -> None:
    """Add a line to the tier's report (terminal summary and report file)."""
    REPORT.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("container tier figures")
    for line in REPORT:
        terminalreporter.write_line(line)
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text("\n".join(REPORT) + "\n")
    terminalreporter.write_line(f"(written to {REPORT_FILE.relative_to(ROOT)})")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A Docker engine, with DOCKER_HOST exported for testcontainers and compose."""
    try:
        found = ensure_engine()
    except EngineError as error:
        message = f"no Docker engine: {error}"
        if _in_ci():
            pytest.fail(f"{message} (CI=true: the container tier must run)", pytrace=False)
        pytest.skip(message)
    saved = os.environ.get("DOCKER_HOST")
    if found.host:
        os.environ["DOCKER_HOST"] = found.host
    try:
        yield found
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved
        found.stop()


@pytest.fixture(scope="session")
def images(engine: Engine) -> dict[str, str]:
    """Role -> image name for stage, kafka and prometheus, built or found once per session."""
    builder = ImageBuilder(Docker(engine.host), ImageSettings.from_env(), engine.private)
    try:
        names = builder.all()
    except ImageError as error:
        pytest.fail(f"the container images could not be had: {error}", pytrace=False)
    report("images (role, name, size, how obtained, seconds):")
    for record in builder.records.values():
        report("  " + record.line())
    return names


@pytest.fixture(scope="session")
def compose(engine: Engine) -> Engine:
    """The engine, with the Docker Compose v2 plugin installed."""
    ensure_compose(engine)
    return engine


@pytest.fixture(scope="module")
def kafka_container(images: dict[str, str]) -> Iterator[KafkaContainer]:
    """A Kafka container (testcontainers) for the tests of one module."""
    kafka = start_kafka(images["kafka"])
    report(f"Kafka container ({images['kafka']}) ready in {kafka.startup_seconds:.1f} s")
    try:
        yield kafka
    finally:
        kafka.stop()
