"""Artifact security on a real Kafka: a stage that requires signatures and opens sealed
payloads dead-letters forged and unsigned records with reason `signature`, and passes
the good ones opened; every record is accounted for and committed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.security.keys import (
    generate,
    load_recipient,
    load_signing_key,
    new_signing_key,
)
from processor.security.policy import SecurityConfig
from processor.security.sealing import seal
from processor.security.signing import sign
from processor.serde.codec import Codec
from tests.faults.raw import read_raw
from tests.unit.stage_support import identity, options

pytestmark = [pytest.mark.kafka]

CODEC = Codec()


def test_verifying_and_opening_stage_on_kafka(kafka_bootstrap: str, tmp_path: Path,
                                              unique_name: Callable[[str], str]) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    generate("signing", "shop", trust)
    generate("sealing", "billing", tmp_path)
    shop = load_signing_key(trust / "shop.key")
    (trust / "shop.key").unlink()  # the trust store holds public keys only
    billing = load_recipient(tmp_path / "billing.pub")

    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, sink, dlq = unique_name("sec-in"), unique_name("sec-out"), unique_name("sec-dlq")
    for topic in (source, sink, dlq):
        admin.create_topic(topic, partitions=2)
    producer = broker.producer()
    good = [sign(seal(Artifact.new(f"order {i}"), [billing]), shop) for i in range(30)]
    bad = [Artifact.new(f"unsigned {i}") for i in range(5)] + [
        sign(Artifact.new(f"forged {i}"), new_signing_key("shop")) for i in range(5)]
    for i, artifact in enumerate(good + bad):
        producer.produce(source, CODEC.encode(artifact), b"k%d" % (i % 4))
    producer.flush()

    setup = StageSetup(
        options(input_topic=source, output_topic=sink, dlq_topic=dlq, group=unique_name("g")),
        security=SecurityConfig(trust_store=(str(trust),), require_signature=True,
                                open_key=str(tmp_path / "billing.key")))
    stage = build_stage(setup, broker, handler=identity)
    stats = stage.run(max_records=40, idle_timeout=3.0)

    out = [CODEC.decode(m.value() or b"") for m in read_raw(broker, sink, 30)]
    assert sorted(a.text() for a in out) == sorted(f"order {i}" for i in range(30))
    dead = read_raw(broker, dlq, 10)
    assert len(dead) == 10
    assert {header_dict(m.headers())[H_REASON] for m in dead} == {"signature"}
    assert stats.consumed == 40 == stats.passed + stats.dead_lettered
    committed = broker.admin().group_offsets(setup.options.group, [source])
    assert sum(committed.values()) == 40
