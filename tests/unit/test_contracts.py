"""Data contracts on the memory broker: stages of schema versions 1 and 2 chained in both
directions, writer identities in headers and in the Confluent wire format (`mock://`
registry), and the `schema` dead-letter reason."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_writer

from processor.backends.memory import MemoryBroker
from processor.core.artifact import Approval, Artifact
from processor.core.errors import SchemaError
from processor.core.handlers import Outcome
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.contracts import stage_codec
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.serde.codec import SCHEMA_HEADER, Codec, load_schema, schema_fingerprint
from processor.serde.registry import RegistryConfig, RegistrySchemas, framed_id, subject_name
from processor.serde.wire import WireCodec
from tests.unit.stage_support import options, read_all

V1 = load_schema("artifact.v1.avsc")
V2 = load_schema()
COUNT = 200


def v1_codec() -> WireCodec:
    return WireCodec(Codec(V1))


def chain_broker(hops: int) -> tuple[MemoryBroker, list[str]]:
    broker = MemoryBroker()
    topics = [f"t{i}" for i in range(hops + 1)]
    for topic in [*topics, "dlq"]:
        broker.admin().create_topic(topic, partitions=2)
    return broker, topics


def approve(artifact: Artifact) -> Outcome:
    """A version 2 stage's handler: counts the hop and adds an approval."""
    hops = artifact.get("hops", 0) + 1
    return artifact.with_meta("hops", hops).with_approval(f"key-{hops}", b"sig", hops)


def hop(artifact: Artifact) -> Outcome:
    """A version 1 stage's handler: counts the hop."""
    return artifact.with_meta("hops", artifact.get("hops", 0) + 1)


def run_chain(versions: list[int], first_writer: WireCodec,
              handlers: dict[int, Callable[[Artifact], Outcome]] | None = None,
              ) -> tuple[list[Artifact], list[int]]:
    """Feed COUNT artifacts written by `first_writer`, run one stage per version in order;
    the artifacts at the end (read by a version 2 codec) and each stage's dead letters."""
    handlers = handlers or {1: hop, 2: approve}
    broker, topics = chain_broker(len(versions))
    producer = broker.producer()
    for i in range(COUNT):
        artifact = Artifact.new(f"p{i}", meta={"seq": i})
        producer.produce(topics[0], first_writer.encode(artifact), str(i % 5).encode(),
                         first_writer.headers(None))
    producer.flush()
    dead: list[int] = []
    for i, version in enumerate(versions):
        codec = v1_codec() if version == 1 else WireCodec()
        stage = build_stage(
            StageSetup(options(name=f"hop{i}", input_topic=topics[i], output_topic=topics[i + 1],
                               group=f"g{i}")),
            broker, handler=handlers[version], codec=codec)
        stage.run(max_records=COUNT, idle_timeout=2.0)
        dead.append(stage.stats.dead_lettered)
    reader = WireCodec()
    out = [reader.decode(m.value() or b"", m.headers()) for m in read_all(broker, topics[-1])]
    return out, dead


@pytest.mark.parametrize("versions", [[1, 2, 1, 2], [2, 1, 2, 1]])
def test_a_chain_mixing_versions_loses_nothing_in_either_direction(versions: list[int]) -> None:
    first = v1_codec() if versions[0] == 1 else WireCodec()
    out, dead = run_chain(versions, first)
    print(f"chain {versions}: {COUNT} in, {len(out)} out, dead-lettered per stage {dead}")
    assert dead == [0, 0, 0, 0]
    assert sorted(a.get("seq", -1) for a in out) == list(range(COUNT))
    assert all(a.get("hops", 0) == 4 for a in out)
    # The last stage re-encoded: a version 2 stage keeps the approval it added, a version 1
    # stage writes only its own fields (Avro drops what its reader does not know).
    expected = 1 if versions[-1] == 2 else 0
    assert all(len(a.approvals) == expected for a in out)


def test_a_version_1_stage_passes_version_2_bytes_through_with_their_fields() -> None:
    out, dead = run_chain([2, 1, 2], WireCodec(), {1: lambda a: a, 2: approve})
    assert dead == [0, 0, 0]
    assert len(out) == COUNT
    assert all([x.key_id for x in a.approvals] == ["key-1", "key-2"] for a in out)


def test_records_without_identity_of_either_version_are_read() -> None:
    """Records written before identities existed were version 1; plain producers write
    the current version without a header."""
    artifact = Artifact.new("legacy").with_approval("k", b"s", 1)
    reader, old_reader = WireCodec(), v1_codec()
    v1_bytes, v2_bytes = Codec(V1).encode(artifact), Codec().encode(artifact)
    assert reader.decode(v1_bytes) == artifact._replace(approvals=())
    assert reader.decode(v2_bytes) == artifact
    assert old_reader.decode(v2_bytes) == artifact._replace(approvals=())


def test_the_schema_header_is_set_replaced_or_kept() -> None:
    codec, old = WireCodec(), v1_codec()
    mine = (SCHEMA_HEADER, codec.fingerprint.encode())
    assert codec.headers(None) == [mine]
    assert codec.headers([("k", b"v")]) == [("k", b"v"), mine]
    same = [mine, ("k", b"v")]
    assert codec.headers(same) is same
    assert codec.headers(old.headers([("k", b"v")])) == [("k", b"v"), mine]
    assert codec.fingerprint == schema_fingerprint(V2) != old.fingerprint


def incompatible_schema() -> dict[str, Any]:
    """A writer schema whose id is a long: no Avro resolution into a string."""
    schema = load_schema("artifact.v1.avsc")
    schema["fields"][0] = {"name": "id", "type": "long"}
    return schema


def test_unresolvable_and_unknown_writer_schemas_are_dead_lettered_as_schema() -> None:
    broker, topics = chain_broker(1)
    bad = incompatible_schema()
    writer_fp = schema_fingerprint(bad)
    buf = io.BytesIO()
    record = {**{f["name"]: f.get("default") for f in V1["fields"]}, "id": 7, "timestamp": 1,
              "payload": b"", "checksum": b""}
    schemaless_writer(buf, parse_schema(bad), record)
    producer = broker.producer()
    producer.produce(topics[0], buf.getvalue(), b"k", [(SCHEMA_HEADER, writer_fp.encode())])
    producer.produce(topics[0], WireCodec().encode(Artifact.new("x")), b"k",
                     [(SCHEMA_HEADER, b"0123456789abcdef")])
    good = WireCodec()
    producer.produce(topics[0], good.encode(Artifact.new("ok")), b"k", good.headers(None))
    producer.flush()
    # The stage knows the incompatible schema (its writer_schemas), not the other one.
    codec = WireCodec(Codec(writer_schemas=[bad]))
    stage = build_stage(StageSetup(options(input_topic=topics[0], output_topic=topics[1])),
                        broker, handler=lambda a: a, codec=codec)
    stage.run(max_records=3, idle_timeout=2.0)
    dlq = read_all(broker, "dlq")
    assert [header_dict(m.headers())[H_REASON] for m in dlq] == ["schema", "schema"]
    assert "does not resolve" in header_dict(dlq[0].headers())["dlq.error.message"]
    assert "unknown writer schema" in header_dict(dlq[1].headers())["dlq.error.message"]
    assert stage.stats.dead_letter_reasons == {"schema": 2}
    assert len(read_all(broker, topics[1])) == 1


# --- the registry's wire format (the client's mock:// registry) ------------------------


def mock_registry(strategy: str = "topic") -> RegistrySchemas:
    config = RegistryConfig(url="mock://contracts", subject_strategy=strategy)  # type: ignore[arg-type]
    return RegistrySchemas(SchemaRegistryClient.new_client({"url": config.url}), config)


def test_framed_records_carry_the_registry_id_and_round_trip() -> None:
    registry = mock_registry()
    codec = WireCodec(registry=registry, topics=["out", "other"])
    artifact = Artifact.new("framed").with_approval("k", b"s", 3)
    data = codec.encode(artifact)
    assert data[:1] == b"\x00" and framed_id(data) == codec.schema_id
    assert data[5:] == Codec().encode(artifact)
    assert codec.decode(data) == artifact
    assert codec.headers([(SCHEMA_HEADER, b"x"), ("k", b"v")]) == [("k", b"v")]
    subjects = registry.client.get_subjects()
    assert sorted(subjects) == ["other-value", "out-value"]


def test_a_version_1_stage_reads_framed_version_2_records_by_asking_the_registry() -> None:
    registry = mock_registry()
    new = WireCodec(registry=registry, topics=["t"])
    old = WireCodec(Codec(V1), registry=registry, topics=["t"])
    assert old.schema_id != new.schema_id
    artifact = Artifact.new("both ways").with_approval("k", b"s", 3)
    assert old.decode(new.encode(artifact)) == artifact._replace(approvals=())
    assert new.decode(old.encode(artifact)) == artifact._replace(approvals=())


def test_an_id_the_registry_does_not_have_is_a_schema_error() -> None:
    codec = WireCodec(registry=mock_registry(), topics=["t"])
    with pytest.raises(SchemaError, match="schema id 999"):
        codec.decode(b"\x00\x00\x00\x03\xe7" + Codec().encode(Artifact.new("x")))


@pytest.mark.parametrize(
    ("strategy", "subject"),
    [("topic", "orders-value"), ("record", "processor.v1.Artifact"),
     ("topic-record", "orders-processor.v1.Artifact")],
)
def test_subject_naming_strategies(strategy: str, subject: str) -> None:
    assert subject_name(strategy, "orders", "processor.v1.Artifact") == subject
    registry = mock_registry(strategy)
    WireCodec(registry=registry, topics=["orders"])
    assert subject in registry.client.get_subjects()


def test_confluent_serializers_and_our_codec_read_each_other() -> None:
    registry = mock_registry()
    client = registry.client
    ours = WireCodec(registry=registry, topics=["t"])
    ctx = SerializationContext("t", MessageField.VALUE)
    artifact = Artifact.new("cross", meta={"n": 1}).with_approval("k", b"s", 3)
    # Theirs reads ours: the artifact as a plain record.
    record = AvroDeserializer(client)(ours.encode(artifact), ctx)
    assert isinstance(record, dict)
    assert record["payload"] == b"cross" and record["approvals"][0]["key_id"] == "k"
    # Ours reads theirs (a version 1 writer, auto-registered by their serializer).
    theirs = AvroSerializer(client, json.dumps(V1), conf={"auto.register.schemas": True})
    plain = {**record, "meta": {"n": 1}}
    del plain["approvals"], plain["pseudonym_hash"], plain["merkle_root"]
    back = ours.decode(theirs(plain, ctx) or b"")
    assert back == artifact._replace(approvals=())


def test_stage_codec_from_settings_registers_under_the_output_subjects() -> None:
    settings = SimpleNamespace(schema_registry_url="mock://settings", schema_file=None,
                               writer_schemas=(), schema_subject_strategy="topic-record")
    codec = stage_codec(settings, options(outputs={"audit": "audit-topic"}))
    assert codec.framed and codec.schema_id is not None
    header_only = stage_codec(SimpleNamespace(), options())
    assert not header_only.framed and header_only.schema_id is None


def test_registry_config_keeps_the_password_out_of_its_repr() -> None:
    from pydantic import SecretStr

    config = RegistryConfig(url="https://r", user="u", password=SecretStr("hunter2"))
    assert "hunter2" not in repr(config)
    assert config.client_config()["basic.auth.user.info"] == "u:hunter2"
    assert Approval("k", b"s", 1).key_id == "k"


def test_the_registry_password_is_a_secret_in_the_settings() -> None:
    from processor.ops.settings import load_config

    config = load_config(None, {"PROCESSOR_SCHEMA_REGISTRY_PASSWORD": "hunter2"}, {
        "input_topic": "in", "group": "g", "handlers": ["validate"],
        "bootstrap_servers": "127.0.0.1:9092", "schema_registry_url": "mock://cfg",
        "schema_registry_user": "u", "schema_subject_strategy": "record"})
    text = config.describe()
    assert "hunter2" not in text and "schema_registry_password: ***" in text
    registry = stage_codec(config, config.options)
    assert registry.framed


# --- plain records in and out (FormatCodec) -------------------------------------------


def edge_stage(broker: MemoryBroker, codec: WireCodec, handler: Callable[[Artifact], Outcome]
               ) -> Any:
    stage = build_stage(StageSetup(options(input_topic="t0", output_topic="t1")), broker,
                        handler=handler, codec=codec)
    return stage


def test_plain_json_and_bytes_are_wrapped_with_key_headers_and_timestamp() -> None:
    from processor.serde.formats import FormatCodec

    for kind, values in (("json", [b'{"n": 1}', b"[2]", b"not json"]),
                         ("bytes", [b"\x00\xff", b"", b"x"])):
        broker, _ = chain_broker(1)
        producer = broker.producer()
        for i, value in enumerate(values):
            producer.produce("t0", value, f"k{i}".encode(), [("trace", b"t")])
        producer.flush()
        seen: list[Artifact] = []

        def keep(a: Artifact, seen: list[Artifact] = seen) -> Outcome:
            seen.append(a)
            return a  # unchanged: still encoded, as an artifact

        stage = edge_stage(broker, FormatCodec(input_format=kind), keep)  # type: ignore[arg-type]
        stage.run(max_records=3, idle_timeout=1.0)
        good = [v for v in values if kind == "bytes" or v != b"not json"]
        assert [a.payload for a in seen] == good
        assert {a.media_type for a in seen} == {"application/json" if kind == "json"
                                                else "application/octet-stream"}
        assert all(a.origin == "t0" and a.timestamp > 0 for a in seen)
        out = read_all(broker, "t1")
        reader = WireCodec()
        assert [reader.decode(m.value() or b"", m.headers()) for m in out] == seen
        assert [m.key() for m in out] == [f"k{i}".encode() for i, v in enumerate(values)
                                          if v in good]
        assert all(("trace", b"t") in (m.headers() or []) for m in out)
        dlq = read_all(broker, "dlq")
        assert [header_dict(m.headers())[H_REASON] for m in dlq] == (
            ["decode"] if kind == "json" else [])


def test_plain_avro_through_the_registry_in_and_payloads_out() -> None:
    from processor.serde.formats import SCHEMA_ID_META, FormatCodec

    registry = mock_registry()
    schema = {"type": "record", "name": "Order", "fields": [{"name": "n", "type": "long"}]}
    serializer = AvroSerializer(registry.client, json.dumps(schema))
    value = serializer({"n": 7}, SerializationContext("t0", MessageField.VALUE)) or b""
    broker, _ = chain_broker(1)
    producer = broker.producer()
    producer.produce("t0", value, b"k")
    producer.produce("t0", b"\x00\x00\x00\x03\xe7\x02", b"k")  # an id the registry lacks
    producer.flush()
    ids: list[int] = []

    def check(a: Artifact) -> Outcome:
        ids.append(int(a.get(SCHEMA_ID_META, -1)))
        return a.with_state("seen")

    codec = FormatCodec(registry=registry, input_format="avro", output_format="payload")
    edge_stage(broker, codec, check).run(max_records=2, idle_timeout=1.0)
    out = read_all(broker, "t1")
    assert [m.value() for m in out] == [value]  # the plain record, unwrapped, as it came
    assert AvroDeserializer(registry.client)(
        out[0].value(), SerializationContext("t1", MessageField.VALUE)) == {"n": 7}
    assert ids == [framed_id(value)]
    assert [header_dict(m.headers())[H_REASON] for m in read_all(broker, "dlq")] == ["schema"]


def test_payload_egress_drops_the_schema_header() -> None:
    from processor.serde.formats import FormatCodec

    codec = FormatCodec(output_format="payload")
    assert codec.encode(Artifact.new(b"raw")) == b"raw"
    assert codec.headers([(SCHEMA_HEADER, b"x"), ("k", b"v")]) == [("k", b"v")]
    with pytest.raises(SchemaError, match="schema_registry_url"):
        FormatCodec(input_format="avro")


def test_the_json_form_carries_the_version_2_fields() -> None:
    from processor.serde.jsonform import artifact_from_json, artifact_to_json

    artifact = Artifact.new("x").with_approval("k", b"\x00s", 5).with_fields(
        pseudonym_hash=b"p", merkle_root=b"r")
    text = artifact_to_json(artifact)
    assert json.loads(text)["approvals"] == [{"key_id": "k", "signature": "AHM=",
                                              "timestamp": 5}]
    assert artifact_from_json(text) == artifact


def test_resolution_keeps_each_meta_value_in_its_own_type() -> None:
    """Across versions a bytes meta value stays bytes (not the string branch a union
    resolution by first compatible branch would give), both ways."""
    artifact = Artifact.new("m", meta={"raw": b"\x80\x00", "text": "t", "n": 1, "ok": True})
    new, old = WireCodec(), v1_codec()
    assert old.decode(new.encode(artifact), new.headers(None)) == artifact
    assert new.decode(old.encode(artifact), old.headers(None)) == artifact
