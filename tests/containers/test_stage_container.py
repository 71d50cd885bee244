"""The stage image with testcontainers: artifacts through a containerised stage, and the
image's own behaviour (non-root, HEALTHCHECK, draining on SIGTERM with offsets committed).

Kafka runs in a container too (the image named by PROCESSOR_IMAGE_KAFKA, or its local
stand-in); records are produced from the host with `processor produce` and read back with
`KafkaBroker`.
"""

from __future__ import annotations

import time
import uuid

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.errors import ProcessorError
from processor.serde.codec import Codec
from tests.containers.conftest import report
from tests.containers.kafka import KafkaContainer
from tests.containers.ports import container_sockets, free_ports, is_loopback, listeners
from tests.containers.stage import (
    StageTopics,
    committed,
    produce_generated,
    read_all,
    stage_container,
    topic_count,
    wait_until,
)

# Cold, the first test's set-up installs the engine, builds the images and Compose.
pytestmark = pytest.mark.timeout(1800)

# Kubernetes gives the stage terminationGracePeriodSeconds: 45 (deploy/k8s); it drains within
# PROCESSOR_SHUTDOWN_TIMEOUT (30 s).
GRACE_SECONDS = 45


def artifact_id(value: bytes) -> str | None:
    """The id of an encoded artifact, None for a record that is not one."""
    try:
        return Codec().decode(value).id
    except ProcessorError:
        return None


def _topics(prefix: str) -> StageTopics:
    suffix = uuid.uuid4().hex[:8]
    return StageTopics(f"{prefix}-in-{suffix}", f"{prefix}-out-{suffix}",
                       f"{prefix}-dlq-{suffix}", f"{prefix}-{suffix}")


def test_artifacts_pass_through_a_containerised_stage(
        images: dict[str, str], kafka_container: KafkaContainer) -> None:
    bootstrap = kafka_container.bootstrap_servers
    broker = KafkaBroker(bootstrap)
    topics = _topics("tc")
    topics.create(broker)
    count = 5_000
    produce_generated(bootstrap, topics.input, count)
    assert topic_count(broker, topics.input) == count

    (metrics_port,) = free_ports(1)
    container = stage_container(images["stage"], bootstrap, topics, "processor.demo:validate",
                                metrics_port)
    container.start()
    try:
        wait_until(lambda: topic_count(broker, topics.output) + topic_count(broker, topics.dlq)
                   >= count, 120, f"{count} records out of the containerised stage")
        wrapped = container.get_wrapped_container()
        kafka_id = kafka_container.container.get_wrapped_container().id
        opened = listeners(container_sockets([kafka_id, wrapped.id]))
        assert metrics_port in {port for _, port in opened}
        assert all(is_loopback(address) for address, _ in opened), opened
        wrapped.stop(timeout=GRACE_SECONDS)
        wrapped.reload()
        assert wrapped.attrs["State"]["ExitCode"] == 0, wrapped.logs(tail=30)
    finally:
        container.stop()

    sent = {i for _, _, value in read_all(broker, topics.input) if (i := artifact_id(value))}
    out = [artifact_id(value) for _, _, value in read_all(broker, topics.output)]
    dead = topic_count(broker, topics.dlq)
    assert len(out) == len(set(out)), "no duplicates"
    assert set(out) <= sent
    assert len(out) + dead == count, "every record is either passed on or dead-lettered"
    ends = broker.admin().high_watermarks(topics.input)
    assert committed(broker, topics.group, topics.input) == ends, "offsets committed to the end"
    report(f"containerised stage (testcontainers, processor.demo:validate): {count} in, "
           f"{len(out)} out, {dead} dead-lettered, 0 lost; Kafka and stage listen on "
           f"loopback only ({len(opened)} sockets)")


def test_the_image_runs_as_non_root_turns_healthy_and_drains_on_sigterm(
        images: dict[str, str], kafka_container: KafkaContainer) -> None:
    bootstrap = kafka_container.bootstrap_servers
    broker = KafkaBroker(bootstrap)
    topics = _topics("drain")
    topics.create(broker)
    # ~4 ms of work per record: about 50 s of work, so the stage is still busy when the
    # HEALTHCHECK (every 15 s) reports healthy and SIGTERM comes.
    count = 12_000
    produce_generated(bootstrap, topics.input, count)

    (metrics_port,) = free_ports(1)
    container = stage_container(images["stage"], bootstrap, topics,
                                "container_handlers:steady", metrics_port,
                                {"PROCESSOR_SHUTDOWN_TIMEOUT": "30"}, mount_handlers=True)
    container.start()
    wrapped = container.get_wrapped_container()
    try:
        uid = wrapped.exec_run(["id", "-u"]).output.decode().strip()
        assert uid == "10001", f"the stage runs as uid {uid}"

        def health() -> str:
            wrapped.reload()
            return str(wrapped.attrs["State"].get("Health", {}).get("Status"))

        started = time.monotonic()
        wait_until(lambda: health() == "healthy", 90, "the HEALTHCHECK to report healthy")
        healthy_after = time.monotonic() - started
        out_before = topic_count(broker, topics.output)
        assert 0 < out_before < count, "the stage is mid-flight when it is stopped"

        stop_started = time.monotonic()
        wrapped.stop(timeout=GRACE_SECONDS)
        stop_seconds = time.monotonic() - stop_started
        wrapped.reload()
        exit_code = wrapped.attrs["State"]["ExitCode"]
        logs = wrapped.logs(tail=20).decode(errors="replace")
    finally:
        container.stop()
    assert exit_code == 0, f"exit code {exit_code} (137 would mean killed): {logs}"
    assert stop_seconds < GRACE_SECONDS

    # Committed offsets cover exactly what was processed: every input record below a
    # partition's committed offset has its output (at-least-once: never committed ahead).
    offsets = committed(broker, topics.group, topics.input)
    assert sum(offsets.values()) > 0, "the drain committed offsets"
    out_ids = {artifact_id(value) for _, _, value in read_all(broker, topics.output)}
    inputs = read_all(broker, topics.input)
    # The generator mixes in some undecodable records (they go to the dead-letter topic).
    below = [i for tp, offset, value in inputs
             if offset < offsets.get(tp, 0) and (i := artifact_id(value))]
    missing = [i for i in below if i not in out_ids]
    assert not missing, f"{len(missing)} committed input records have no output"
    report(f"drain on SIGTERM: healthy after {healthy_after:.1f} s, stopped in "
           f"{stop_seconds:.1f} s (grace {GRACE_SECONDS} s), exit 0, committed "
           f"{sum(offsets.values())} of {count} with all {len(below)} outputs present")
