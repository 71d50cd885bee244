"""Data contracts on a real Kafka and a real schema registry (Apicurio, Confluent API):
mixed-version chains, round trips with confluent-kafka's own Avro serializers, and
`processor schema register | check | show`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.contracts import stage_codec
from processor.serde.codec import load_schema
from processor.serde.wire import WireCodec
from tests.procs import ROOT, processor_cmd
from tests.unit.stage_support import options

pytestmark = [pytest.mark.kafka]

COUNT = 2000
V1_FILE = ROOT / "schemas" / "artifact.v1.avsc"


def approve(artifact: Artifact) -> Outcome:
    hops = artifact.get("hops", 0) + 1
    return artifact.with_meta("hops", hops).with_approval(f"key-{hops}", b"sig", hops)


def hop(artifact: Artifact) -> Outcome:
    return artifact.with_meta("hops", artifact.get("hops", 0) + 1)


def read(broker: KafkaBroker, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
    """The first `count` messages of `topic`."""
    consumer = broker.consumer(f"reader-{topic}", auto_offset_reset="earliest")
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        out.extend(consumer.consume(1000, 0.5))
    consumer.close()
    return out


def run_chain(broker: KafkaBroker, topics: list[str], dlq: str, versions: list[int],
              registry_url: str | None) -> list[int]:
    """One stage per version, run one after the other over `topics`; dead letters each."""
    dead = []
    for i, version in enumerate(versions):
        opts = options(name=f"v{version}-hop{i}", input_topic=topics[i],
                       output_topic=topics[i + 1], group=f"{topics[i]}-g", dlq_topic=dlq,
                       batch_size=500, poll_timeout=0.2, commit_interval=0.5)
        settings = SimpleNamespace(schema_file=str(V1_FILE) if version == 1 else None,
                                   schema_registry_url=registry_url)
        stage = build_stage(StageSetup(opts), broker, handler=approve if version == 2 else hop,
                            codec=stage_codec(settings, opts))
        stage.run(max_records=COUNT, idle_timeout=15.0)
        assert stage.stats.consumed == COUNT, stage.stats
        dead.append(stage.stats.dead_lettered)
    return dead


@pytest.mark.parametrize("framing", ["header", "registry"])
@pytest.mark.parametrize("versions", [[1, 2, 1, 2], [2, 1, 2, 1]], ids=["up", "down"])
def test_mixed_version_chain_on_kafka(
    kafka_bootstrap: str, schema_registry_url: str, unique_name: Callable[[str], str],
    versions: list[int], framing: str,
) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    topics = [unique_name(f"mix{i}") for i in range(len(versions) + 1)]
    dlq = unique_name("mix-dlq")
    for topic in [*topics, dlq]:
        admin.create_topic(topic, partitions=2)
    registry_url = schema_registry_url if framing == "registry" else None
    first = stage_codec(SimpleNamespace(
        schema_file=str(V1_FILE) if versions[0] == 1 else None,
        schema_registry_url=registry_url), options(output_topic=topics[0]))
    producer = broker.producer()
    for i in range(COUNT):
        artifact = Artifact.new(f"p{i}", meta={"seq": i})
        producer.produce(topics[0], first.encode(artifact), str(i % 16).encode(),
                         first.headers(None))
    producer.flush()

    dead = run_chain(broker, topics, dlq, versions, registry_url)
    reader = stage_codec(SimpleNamespace(schema_registry_url=registry_url), options())
    out = [reader.decode(m.value(), m.headers()) for m in read(broker, topics[-1], COUNT)]
    print(f"{framing} chain {versions}: {COUNT} in, {len(out)} out, dead-lettered "
          f"per stage {dead}, on the dead-letter topic "
          f"{sum(admin.high_watermarks(dlq).values())}")
    assert dead == [0] * len(versions)
    assert sum(admin.high_watermarks(dlq).values()) == 0
    assert sorted(a.get("seq", -1) for a in out) == list(range(COUNT))
    assert all(a.get("hops", 0) == len(versions) for a in out)
    assert all(len(a.approvals) == (1 if versions[-1] == 2 else 0) for a in out)
    if framing == "registry":
        assert all(m.value()[:1] == b"\x00" for m in read(broker, topics[-1], 10))


def test_confluent_serializers_round_trip_through_a_stage(
    kafka_bootstrap: str, schema_registry_url: str, unique_name: Callable[[str], str],
) -> None:
    """Records written by confluent-kafka's AvroSerializer (a plain version 1 producer)
    pass through a stage, and its AvroDeserializer reads what the stage wrote."""
    broker = KafkaBroker(kafka_bootstrap)
    src, dst, dlq = (unique_name(n) for n in ("cf-in", "cf-out", "cf-dlq"))
    for topic in (src, dst, dlq):
        broker.admin().create_topic(topic, partitions=2)
    # A timeout turns a registry that stops answering into an error the client retries
    # (max.retries, 3 by default), where its default (none) waited for ever.
    client = SchemaRegistryClient({"url": schema_registry_url, "timeout": 10})
    serializer = AvroSerializer(client, json.dumps(load_schema("artifact.v1.avsc")))
    producer = broker.producer()
    for i in range(COUNT):
        a = Artifact.new(f"cf{i}", meta={"seq": i})
        record = {**a._asdict(), "meta": {"seq": i}}
        for name in ("approvals", "pseudonym_hash", "merkle_root"):
            del record[name]
        producer.produce(src, serializer(record, SerializationContext(src, MessageField.VALUE)),
                         str(i % 8).encode())
    producer.flush()

    opts = options(name="cf", input_topic=src, output_topic=dst, group=f"{src}-g",
                   dlq_topic=dlq, batch_size=500, poll_timeout=0.2, commit_interval=0.5)
    codec = stage_codec(SimpleNamespace(schema_registry_url=schema_registry_url), opts)
    stage = build_stage(StageSetup(opts), broker, handler=approve, codec=codec)
    stage.run(max_records=COUNT, idle_timeout=15.0)

    deserializer = AvroDeserializer(client)
    ctx = SerializationContext(dst, MessageField.VALUE)
    records = [deserializer(m.value(), ctx) for m in read(broker, dst, COUNT)]
    print(f"confluent AvroSerializer -> stage -> AvroDeserializer: {COUNT} in, "
          f"{len(records)} out, {stage.stats.dead_lettered} dead-lettered")
    assert stage.stats.dead_lettered == 0
    assert len(records) == COUNT
    assert sorted(r["meta"]["seq"] for r in records) == list(range(COUNT))
    assert all(r["approvals"][0]["key_id"] == "key-1" for r in records)
    assert isinstance(codec, WireCodec) and codec.schema_id is not None


# --- processor schema -----------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(processor_cmd("schema", *args), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_schema_register_check_show(
    schema_registry_url: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_name("orders")
    url = ["--registry-url", schema_registry_url, "--topic", topic]
    registered = cli("register", *url, "--schema-file", str(V1_FILE))
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.startswith(f"registered under subject {topic}-value with id ")

    # Version 2 only adds fields with defaults: compatible in every mode.
    for mode in ("BACKWARD", "FORWARD", "FULL_TRANSITIVE"):
        ok = cli("check", *url, "--mode", mode)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"compatible with 1 version(s) under {mode}" in ok.stdout
    assert cli("register", *url).returncode == 0

    # A field without a default, and a changed type: what breaks, and a non-zero exit.
    breaking = load_schema()
    breaking["fields"].append({"name": "tenant", "type": "string"})
    breaking["fields"][1]["type"] = "string"
    path = tmp_path / "breaking.avsc"
    path.write_text(json.dumps(breaking))
    bad = cli("check", *url, "--schema-file", str(path), "--mode", "FULL_TRANSITIVE")
    print(bad.stdout)
    assert bad.returncode == 1
    assert "NOT compatible with 2 of 2 version(s) under FULL_TRANSITIVE" in bad.stdout
    assert "tenant" in bad.stdout and "/fields/1/type" in bad.stdout
    assert "has no default" in bad.stdout
    forward = cli("check", *url, "--schema-file", str(path), "--mode", "FORWARD")
    assert forward.returncode == 1 and "tenant" not in forward.stdout

    shown = cli("show", *url, "--version", "1")
    assert shown.returncode == 0, shown.stderr
    header, _, body = shown.stdout.partition("\n")
    assert header.startswith(f"subject {topic}-value version 1 id ")
    assert json.loads(body) == load_schema("artifact.v1.avsc")
    missing = cli("show", "--registry-url", schema_registry_url, "--subject", "nope-value")
    assert missing.returncode == 1 and "processor schema: error: subject 'nope-value'" in (
        missing.stderr)


# --- plain records in and out: produce/tail formats and an edge stage ------------------


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(processor_cmd(*args), input=stdin, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_plain_records_in_and_out_through_produce_a_stage_and_tail(
    kafka_bootstrap: str, schema_registry_url: str, unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    plain_in, artifacts, plain_out, dlq = (unique_name(n) for n in ("pin", "part", "pout",
                                                                     "pdlq"))
    for topic in (plain_in, artifacts, plain_out, dlq):
        broker.admin().create_topic(topic, partitions=1)
    order = {"type": "record", "name": "Order",
             "fields": [{"name": "n", "type": "long"}, {"name": "sku", "type": "string"}]}
    schema_file = tmp_path / "order.avsc"
    schema_file.write_text(json.dumps(order))
    lines = "".join(json.dumps({"n": i, "sku": f"s{i}"}) + "\n" for i in range(20))
    produced = run_cli("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", plain_in,
                       "--format", "avro", "--schema-file", str(schema_file),
                       "--registry-url", schema_registry_url, stdin=lines + '{"n": "x"}\n')
    assert produced.returncode == 1, produced.stderr  # the last line is not an Order
    assert "20 avro records written" in produced.stderr

    # An ingest stage wraps them into artifacts; an egress stage unwraps the payloads.
    for source, target, formats in ((plain_in, artifacts, ("avro", "artifact")),
                                    (artifacts, plain_out, ("artifact", "payload"))):
        opts = options(name=f"edge-{formats[0]}", input_topic=source, output_topic=target,
                       group=f"{source}-g", dlq_topic=dlq, poll_timeout=0.2)
        settings = SimpleNamespace(schema_registry_url=schema_registry_url,
                                   input_format=formats[0], output_format=formats[1])
        stage = build_stage(StageSetup(opts), broker, handler=hop,
                            codec=stage_codec(settings, opts))
        stage.run(max_records=20, idle_timeout=10.0)
        assert (stage.stats.consumed, stage.stats.dead_lettered) == (20, 0)

    tailed = run_cli("tail", "--bootstrap-servers", kafka_bootstrap, "--topic", artifacts,
                     "--from-beginning", "--count", "20", "--timeout", "20",
                     "--registry-url", schema_registry_url)
    shown = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert len(shown) == 20 and {a["media_type"] for a in shown} == {"application/avro"}
    assert all(a["meta"]["hops"] == 1 and a["origin"] == plain_in for a in shown)
    out = run_cli("tail", "--bootstrap-servers", kafka_bootstrap, "--topic", plain_out,
                  "--from-beginning", "--count", "20", "--timeout", "20", "--format", "avro",
                  "--registry-url", schema_registry_url)
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"n": i, "sku": f"s{i}"} for i in range(20)], out.stderr
