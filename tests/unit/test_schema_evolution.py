"""Fields of one's own (docs/data-contracts.md, "Fields of your own"), followed as written:
the repository's example schema given to `processor run --schema-file`, on the memory
broker. A stage running it reads records of every version, keeps its own fields through
pass-through and changed artifacts, and stages running the packaged schema read what it
writes (by header with `--writer-schema`, or through the registry)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from processor.backends.abstract import Message
from processor.backends.memory import MemoryBroker
from processor.cli.main import build_parser
from processor.cli.run import settings_from_args
from processor.core.artifact import Artifact
from processor.core.errors import SchemaError
from processor.core.handlers import Outcome
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.runtime.stage import Stage
from processor.serde import codec as codec_module
from processor.serde import fast
from processor.serde.codec import (
    SCHEMA_HEADER,
    Codec,
    load_schema,
    read_schema_file,
    schema_fingerprint,
)
from processor.serde.registry import (
    FRAME_SIZE,
    RegistryConfig,
    RegistrySchemas,
    frame,
    framed_id,
)
from processor.serde.wire import WireCodec
from tests.unit.stage_support import options, read_all

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "data-contracts.md"
EXAMPLE = "schemas/examples/artifact-with-tenant.avsc"
MINE = read_schema_file(REPO / EXAMPLE)
MINE_FP = schema_fingerprint(MINE)
V1, V2 = load_schema("artifact.v1.avsc"), load_schema()
WRITERS = {schema_fingerprint(s): parse_schema(s) for s in (MINE, V1, V2)}
READER = parse_schema(MINE)
COUNT = 60


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs give schema files relative to where the stage starts: the repository."""
    monkeypatch.chdir(REPO)


def test_every_schema_file_the_docs_name_is_in_the_repository() -> None:
    text = DOC.read_text("utf-8")
    named = set(re.findall(r"[\w./-]+\.avsc", text))
    named = {n for n in named if not re.search(r"\.v[A-Z]\.avsc$", n)}  # artifact.vN.avsc
    assert EXAMPLE in named
    # A path from the repository's root; a bare name is one of schemas/.
    assert sorted(n for n in named if not (REPO / n).is_file()
                  and ("/" in n or not (REPO / "schemas" / n).is_file())) == []
    # What commands take is a path from the root, where the stage starts.
    given = re.findall(r"--(?:schema-file|writer-schema)\s+([^\s`)]+)", text)
    assert f"{EXAMPLE}" in given
    assert sorted(g for g in given if not (REPO / g).is_file()) == []


def test_the_docs_example_of_what_not_to_do_is_refused() -> None:
    with pytest.raises(SchemaError, match="each with a default"):
        Codec(read_schema_file("schemas/examples/artifact-incompatible.avsc"))


# --- the stage, from `processor run` flags -------------------------------------------


def run_stage(broker: MemoryBroker, input_topic: str, output_topic: str, *flags: str,
              handler: Any) -> Stage:
    """A stage built as `processor run` builds it from these flags, on `broker`."""
    args = build_parser().parse_args([
        "run", "--bootstrap-servers", "127.0.0.1:1", "--input-topic", input_topic,
        "--output-topic", output_topic, "--group", f"g-{output_topic}", "--dlq-topic",
        f"dlq-{output_topic}", "--handler", "validate", "--metrics-port", "off", *flags])
    stage = build_stage(settings_from_args(args), broker, handler=handler)
    stage.run(max_records=COUNT, idle_timeout=2.0)
    return stage


def touch_even(artifact: Artifact) -> Outcome:
    """Changes every other artifact (a metadata change), passes the others through."""
    seq = artifact.get("seq", 0)
    return artifact.with_meta("touched", seq) if seq % 2 == 0 else artifact


def written_with_mine(i: int) -> bytes:
    """What another service using the example schema writes (fastavro, not this codec)."""
    artifact = Artifact.new(f"mine {i}", meta={"seq": i})
    record = {**artifact._asdict(), "meta": dict(artifact.meta), "approvals": [],
              "tenant": f"acme-{i}", "labels": ["x", str(i)]}
    out = io.BytesIO()
    schemaless_writer(out, READER, record)
    return out.getvalue()


def feed_every_version(broker: MemoryBroker) -> None:
    """COUNT records on `t0`: a third each written with the example schema, the packaged
    schema (version 2) and version 1, each with its writer's header."""
    broker.admin().create_topic("t0", partitions=2)
    producer = broker.producer()
    v2, v1 = WireCodec(), WireCodec(Codec(V1))
    for i in range(COUNT):
        if i % 3 == 0:
            value, headers = written_with_mine(i), [(SCHEMA_HEADER, MINE_FP.encode())]
        else:
            writer = v2 if i % 3 == 1 else v1
            value = writer.encode(Artifact.new(f"packaged {i}", meta={"seq": i}))
            headers = writer.headers(None) or []
        producer.produce("t0", value, str(i).encode(), headers)
    producer.flush()


def fields(message: Message) -> dict[str, Any]:
    """The record of a message as any Avro reader of the example schema sees it, read
    with the writer schema its header names."""
    headers = dict(message.headers() or [])
    writer = WRITERS[headers[SCHEMA_HEADER].decode()]
    record = schemaless_reader(io.BytesIO(message.value() or b""), writer, READER)
    assert isinstance(record, dict)
    record["writer"] = headers[SCHEMA_HEADER].decode()
    return record


def by_seq(messages: list[Message]) -> dict[int, dict[str, Any]]:
    return {int(r["meta"]["seq"]): r for r in map(fields, messages)}


def test_a_stage_with_the_example_schema_reads_every_version_and_keeps_its_fields() -> None:
    broker = MemoryBroker()
    feed_every_version(broker)
    for topic in ("t1", "dlq-t1"):
        broker.admin().create_topic(topic, partitions=2)
    stage = run_stage(broker, "t0", "t1", "--schema-file", EXAMPLE, handler=touch_even)
    assert stage.stats.dead_lettered == 0
    out = by_seq(read_all(broker, "t1"))
    assert sorted(out) == list(range(COUNT))
    for seq, record in out.items():
        touched = seq % 2 == 0
        assert ("touched" in record["meta"]) == touched
        if seq % 3 == 0:  # written with the example schema: its fields kept either way
            assert (record["tenant"], record["labels"]) == (f"acme-{seq}", ["x", str(seq)])
        else:  # an older writer: the defaults
            assert (record["tenant"], record["labels"]) == ("", [])
        # A changed artifact is written with the stage's schema; an unchanged one goes
        # out as its input bytes, with its writer's identity.
        if touched:
            assert record["writer"] == MINE_FP


def test_stages_on_the_packaged_schema_read_it_with_writer_schema() -> None:
    """Chain: the example schema's stage, then a packaged one given `--writer-schema`."""
    broker = MemoryBroker()
    feed_every_version(broker)
    for topic in ("t1", "t2", "t3", "dlq-t1", "dlq-t2", "dlq-t3"):
        broker.admin().create_topic(topic, partitions=2)
    run_stage(broker, "t0", "t1", "--schema-file", EXAMPLE, handler=lambda a: a)
    packaged = run_stage(broker, "t1", "t2", "--writer-schema", EXAMPLE, handler=touch_even)
    assert packaged.stats.dead_lettered == 0
    out = by_seq(read_all(broker, "t2"))
    assert sorted(out) == list(range(COUNT))
    for seq, record in out.items():
        if seq % 3 == 0:
            # Passed through: every field as written; changed: written with the packaged
            # schema, which has no place for the example's fields (the docs say so).
            expected = ("", []) if seq % 2 == 0 else (f"acme-{seq}", ["x", str(seq)])
            assert (record["tenant"], record["labels"]) == expected
    # Without the file, a packaged stage does not know the fingerprint: dead letters.
    unknowing = run_stage(broker, "t1", "t3", handler=lambda a: a)
    assert unknowing.stats.dead_letter_reasons == {"schema": COUNT // 3}
    reasons = {header_dict(m.headers())[H_REASON] for m in read_all(broker, "dlq-t3")}
    assert reasons == {"schema"}


def test_through_a_registry_either_schema_reads_the_other() -> None:
    config = RegistryConfig(url="mock://evolution")
    registry = RegistrySchemas(SchemaRegistryClient.new_client({"url": config.url}), config)
    mine = WireCodec(Codec(read_schema_file(EXAMPLE)), registry, ["t1"])
    packaged = WireCodec(registry=registry, topics=["t2"])
    assert mine.schema_id != packaged.schema_id
    broker = MemoryBroker()
    for topic in ("t0", "t1", "t2", "dlq"):
        broker.admin().create_topic(topic, partitions=2)
    producer = broker.producer()
    for i in range(COUNT):  # the example schema's records, framed with its id
        producer.produce("t0", frame(mine.schema_id or 0) + written_with_mine(i),
                         str(i).encode())
    producer.flush()
    dead = []
    for codec, src, dst in ((packaged, "t0", "t1"), (mine, "t1", "t2")):
        stage = build_stage(StageSetup(options(input_topic=src, output_topic=dst,
                                               group=f"g-{dst}")),
                            broker, handler=touch_even, codec=codec)
        stage.run(max_records=COUNT, idle_timeout=2.0)
        dead.append(stage.stats.dead_lettered)
    assert dead == [0, 0]
    writers = {mine.schema_id: READER, packaged.schema_id: parse_schema(V2)}
    for topic in ("t1", "t2"):
        records = []
        for message in read_all(broker, topic):
            value = message.value() or b""
            record = schemaless_reader(io.BytesIO(value[FRAME_SIZE:]),
                                       writers[framed_id(value)], READER)
            assert isinstance(record, dict)
            records.append(record)
        assert sorted(int(r["meta"]["seq"]) for r in records) == list(range(COUNT))
        for record in records:
            # The packaged stage passed odd ones through and wrote even ones without the
            # example's fields; the example's stage then keeps what each one has.
            seq = int(record["meta"]["seq"])
            assert record["tenant"] == ("" if seq % 2 == 0 else f"acme-{seq}")


# --- the codec: the specialised path and fastavro agree -------------------------------


@pytest.fixture(params=["in use", "pure Python"])
def implementation(request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The specialised encoder and decoder the codec uses: the one in use (compiled when
    built) and its pure-Python source."""
    if request.param == "pure Python":
        pure = fast.pure_module()
        monkeypatch.setattr(codec_module, "_fast_encode", pure.encode)
        monkeypatch.setattr(codec_module, "_fast_decode", pure.decode)
    yield str(request.param)


def whole(artifact: Artifact, **own: Any) -> bytes:
    """The example schema's encoding of `artifact` by fastavro alone."""
    record = {**artifact._asdict(), "meta": dict(artifact.meta),
              "approvals": [a._asdict() for a in artifact.approvals],
              "tenant": "", "labels": [], **own}
    out = io.BytesIO()
    schemaless_writer(out, READER, record)
    return out.getvalue()


def test_the_example_schema_encodes_as_fastavro_does(implementation: str) -> None:
    codec = Codec(read_schema_file(EXAMPLE))
    artifact = Artifact.new("x", meta={"n": 1, "b": b"\x00", "f": 1.5}).with_approval(
        "k", b"s", 3)
    assert codec.encode(artifact) == whole(artifact)
    # Decoded from the example's bytes, its fields go with the changed artifact.
    decoded = codec.decode(whole(artifact, tenant="t", labels=["l"]))
    assert decoded == artifact
    changed = decoded.with_meta("n", 2).with_state("done")
    assert codec.encode(changed) == whole(changed, tenant="t", labels=["l"])
    new = Artifact.new("new")  # a new id: the defaults
    assert codec.encode(new) == whole(new)
    # Packaged version 2 and version 1 bytes: read by the specialised decoder, defaults.
    packaged = Codec().encode(artifact)
    assert codec.decode(packaged, Codec().fingerprint) == artifact
    assert codec.encode(decoded) == whole(artifact)  # version 2 input of the same id
    v1 = Codec(V1).encode(artifact)
    assert codec.decode(v1, Codec(V1).fingerprint) == artifact._replace(approvals=())


def test_fastavro_encodes_what_the_specialised_encoder_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec(read_schema_file(EXAMPLE))
    artifact = Artifact.new("x", meta={"n": 1})
    decoded = codec.decode(whole(artifact, tenant="t"))

    def refuse(*_: object) -> bytes:
        raise ValueError("not this one")

    monkeypatch.setattr(codec_module, "_fast_encode", refuse)
    assert codec.encode(decoded.with_meta("n", 2)) == whole(decoded.with_meta("n", 2),
                                                            tenant="t")


def test_the_values_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_module, "CARRY_LIMIT", 2)
    codec = Codec(read_schema_file(EXAMPLE))
    first, *others = [Artifact.new(f"{i}", id=f"id-{i}", timestamp=i) for i in range(3)]
    codec.decode(whole(first, tenant="first"))
    for other in others:
        codec.decode(whole(other, tenant="other"))
    assert codec.encode(first) == whole(first)  # evicted: the defaults
    assert codec.encode(others[1]) == whole(others[1], tenant="other")


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["fields"][-1].pop("default"), "each with a default"),
    (lambda s: s["fields"].append({"name": "state", "type": "string", "default": ""}),
     "a name not among them"),
    (lambda s: s["fields"].insert(0, s["fields"].pop(-1)), "begin with"),
    (lambda s: s["fields"][1].update(type="string"), "these do not: timestamp"),
])
def test_a_schema_breaking_the_rules_stops_the_stage_at_start(change: Any,
                                                              message: str) -> None:
    schema = read_schema_file(EXAMPLE)
    change(schema)
    with pytest.raises(SchemaError, match=message):
        Codec(schema)
