"""Real-broker fixtures, loaded as a pytest plugin by `tests/conftest.py`.

`kafka_bootstrap` finds an Apache Kafka broker as the setting PROCESSOR_TEST_KAFKA says:

* `external`: the broker at KAFKA_BOOTSTRAP_SERVERS (someone else runs it);
* `local`: a local one-node KRaft cluster (`processor.devtools.local_kafka.LocalKafka`),
  started once per test session and stopped at its end -- needs `java` and `mvn`;
* `testcontainers`: Kafka in a container (the image of PROCESSOR_IMAGE_KAFKA, default
  apache/kafka, or its local stand-in where it cannot be pulled; see tests/containers/), on the
  host network, with a Docker engine found or started by tests/containers/engine.py.

Unset, it is `external` when KAFKA_BOOTSTRAP_SERVERS is set, else `local`, falling back to
`testcontainers` when Java or Maven is missing. Without any broker the tests are skipped with
the reason, except under `CI=true`, where a missing broker fails the test: CI must never pass by
skipping the real-broker tiers.

`secured_kafka` is a local one-node cluster whose only listener is SASL_SSL (TLS,
SCRAM-SHA-512 logins, the StandardAuthorizer: see `processor.devtools.kafka_security`),
with the users `SECURED_USERS` besides `admin`, and each user's client settings files
(`USER.kafka.yaml`, `USER.properties`) written as `processor broker --secure` writes them.
It is module-scoped: a test module that needs it starts it and stops it when done, so
that it never runs beside the rest of the suite's brokers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from processor.backends.kafka import KafkaBroker
    from processor.devtools.kafka_security import BrokerSecurity
    from processor.devtools.local_kafka import LocalKafka

logger = logging.getLogger(__name__)

CHOICES = ("external", "local", "testcontainers")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _no_broker(reason: str) -> None:
    message = f"no Kafka broker for this test: {reason}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: real-broker tests must run, not skip)",
                    pytrace=False)
    pytest.skip(message)


def kafka_choice(env: dict[str, str] | None = None) -> tuple[str, bool]:
    """(where the broker comes from, whether that was chosen explicitly)."""
    env = dict(os.environ) if env is None else env
    value = env.get("PROCESSOR_TEST_KAFKA", "").strip().lower()
    if not value:
        return ("external" if env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() else "local"), False
    if value not in CHOICES:
        raise pytest.UsageError(f"PROCESSOR_TEST_KAFKA must be one of {', '.join(CHOICES)}, "
                                f"not {value!r}")
    return value, True


def _testcontainers_kafka() -> Iterator[str]:
    """Kafka in a container for the session; the engine is stopped after if started here."""
    from tests.containers.engine import EngineError, ensure_engine
    from tests.containers.images import Docker, ImageBuilder, ImageError, ImageSettings
    from tests.containers.kafka import start_kafka

    try:
        engine = ensure_engine()
    except EngineError as error:
        _no_broker(f"no Docker engine for testcontainers: {error}")
        return
    try:
        builder = ImageBuilder(Docker(engine.host), ImageSettings.from_env(), engine.private)
        image = builder.kafka()
        saved = os.environ.get("DOCKER_HOST")
        if engine.host:
            os.environ["DOCKER_HOST"] = engine.host
        try:
            kafka = start_kafka(image)
        finally:
            if saved is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved
        logger.info("Kafka container %s at %s", image, kafka.bootstrap_servers)
        try:
            yield kafka.bootstrap_servers
        finally:
            kafka.stop()
    except (ImageError, RuntimeError) as error:
        pytest.fail(f"the Kafka container did not start: {error}", pytrace=False)
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap servers of a real Apache Kafka broker (see the module docstring)."""
    choice, explicit = kafka_choice()
    if choice == "external":
        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if not configured:
            _no_broker("PROCESSOR_TEST_KAFKA=external needs KAFKA_BOOTSTRAP_SERVERS")
        yield configured
        return
    if choice == "testcontainers":
        yield from _testcontainers_kafka()
        return

    from processor.devtools.local_kafka import LocalKafka, LocalKafkaError, ToolMissing

    local: LocalKafka | None = None
    try:
        local = LocalKafka(nodes=1)
        local.start()
    except ToolMissing as error:
        if explicit:
            _no_broker(str(error))
        logger.info("no local Kafka (%s): trying testcontainers", error)
        yield from _testcontainers_kafka()
        return
    except LocalKafkaError as error:
        # Java and Maven are there, yet the broker did not start: a real failure.
        pytest.fail(f"the local Kafka broker did not start: {error}", pytrace=False)
    logger.info("local Kafka at %s (started in %.1fs)", local.bootstrap_servers,
                local.startup_seconds or 0.0)
    try:
        yield local.bootstrap_servers
    finally:
        local.stop()


@pytest.fixture
def kafka_broker(kafka_bootstrap: str) -> KafkaBroker:
    """A `KafkaBroker` on the session's broker."""
    from processor.backends.kafka import KafkaBroker

    return KafkaBroker(kafka_bootstrap)


SECURED_USERS = ("stage-ok", "stage-no-write", "stage-no-dlq", "stage-read-only", "cli")
"""The SCRAM users of `secured_kafka` besides `admin` (created when its storage is
formatted), each with a random password and no ACL."""


@dataclass
class Secured:
    """The SASL_SSL local cluster of `secured_kafka` and its certificates and users."""

    kafka: LocalKafka
    security: BrokerSecurity

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap_servers

    def admin_broker(self) -> KafkaBroker:
        from processor.backends.kafka import KafkaBroker

        return KafkaBroker(self.bootstrap, self.security.client_settings())

    def settings_file(self, user: str = "admin") -> Path:
        """`USER.kafka.yaml`: bootstrap servers and the user's `kafka:` settings."""
        return self.security.directory / f"{user}.kafka.yaml"


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A local SASL_SSL Kafka for the module (see the module docstring)."""
    from processor.devtools.kafka_security import BrokerSecurity
    from processor.devtools.local_kafka import LocalKafka, LocalKafkaError, ToolMissing

    directory = tmp_path_factory.mktemp("secured-kafka")
    security = BrokerSecurity.create(directory / "tls",
                                     users={name: "" for name in SECURED_USERS})
    kafka = LocalKafka(nodes=1, workdir=directory / "kafka", security=security)
    try:
        kafka.start()
        kafka.warm_up()
    except ToolMissing as error:
        _no_broker(str(error))
    except LocalKafkaError as error:
        kafka.stop()
        pytest.fail(f"the secured local Kafka did not start: {error}", pytrace=False)
    try:
        security.write_client_files(kafka.bootstrap_servers)
        yield Secured(kafka, security)
    finally:
        kafka.stop()
