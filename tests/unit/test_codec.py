"""The Avro codec: exact bytes, round trips, evolution by writer schema, integrity."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.artifact import Artifact, MetaValue, checksum_of
from processor.core.errors import (
    ChecksumMismatch,
    DecodeError,
    EmptyInput,
    EncodeError,
    SchemaError,
)
from processor.serde import codec
from processor.serde.codec import (
    SCHEMA_HEADER,
    Codec,
    decode,
    encode,
    load_schema,
    register_writer_schema,
    schema_fingerprint,
    writer_schema_for,
)
from tests.strategies import artifacts

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas" / "artifact.avsc"

# --- exact bytes ---------------------------------------------------------------------------

SHA256_HI = "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"


def known(**changes: Any) -> Artifact:
    base = Artifact(
        id="a",
        timestamp=1000,
        media_type="t",
        role="r",
        scope="s",
        origin="",
        issuer="",
        state="x",
        meta=MappingProxyType({}),
        payload=b"hi",
        checksum=checksum_of(b"hi"),
    )
    return base._replace(**changes)


# Hand-derived from the Avro spec: strings and bytes are a zigzag-varint length and the
# content; longs are zigzag varints (1000 -> 2000 -> d0 0f); a map is blocks of
# (count, key, value...) ended by a 0 count; a union is the branch index, then the value.
HEAD = (
    "02" "61"  # id "a"
    "d00f"  # timestamp 1000
    "02" "74"  # media_type "t"
    "02" "72"  # role "r"
    "02" "73"  # scope "s"
    "00"  # origin ""
    "00"  # issuer ""
    "02" "78"  # state "x"
)
BODY = (
    "04" "6869"  # payload b"hi"
    "40" + SHA256_HI  # checksum: 32 bytes (zigzag 64 = 0x40), SHA-256 of b"hi"
)
NO_SECURITY = "00" "00" "00" "00" "00" "00" "00"  # four nulls, no approvals, two nulls

META_CASES: list[tuple[dict[str, MetaValue], str]] = [
    ({}, "00"),
    ({"k": "v"}, "02" "026b" "00" "0276" "00"),  # branch 0 string
    ({"k": True}, "02" "026b" "02" "01" "00"),  # branch 1 boolean
    ({"k": False}, "02" "026b" "02" "00" "00"),
    ({"k": -1}, "02" "026b" "04" "01" "00"),  # branch 2 long, zigzag(-1) = 1
    ({"k": 64}, "02" "026b" "04" "8001" "00"),  # zigzag(64) = 128 = 80 01
    ({"k": 1.0}, "02" "026b" "06" "000000000000f03f" "00"),  # branch 3 double, LE IEEE 754
    ({"k": b"\x00\xff"}, "02" "026b" "08" "04" "00ff" "00"),  # branch 4 bytes
    ({"a": 1, "b": "c"}, "04" "0261" "04" "02" "0262" "00" "0263" "00"),  # one block of two
]


@pytest.mark.parametrize(("meta", "meta_hex"), META_CASES)
def test_exact_bytes_of_metadata(meta: dict[str, MetaValue], meta_hex: str) -> None:
    data = encode(known(meta=MappingProxyType(meta)))
    assert data.hex() == HEAD + meta_hex + BODY + NO_SECURITY


@pytest.mark.parametrize(
    ("fields", "tail_hex"),
    [
        ({}, "00" "00" "00" "00"),
        ({"signature": b"\x01"}, "00" "00" "00" "02" "0201"),
        ({"encrypted_payload": b""}, "02" "00" "00" "00" "00"),
        (
            {"encrypted_payload": b"E", "encrypted_key": b"K", "ephemeral_public_key": b"P"},
            "02" "0245" "02" "024b" "02" "0250" "00",
        ),
    ],
)
def test_exact_bytes_of_optional_fields(fields: dict[str, bytes], tail_hex: str) -> None:
    assert encode(known(**fields)).hex() == HEAD + "00" + BODY + tail_hex + "00" "00" "00"


@pytest.mark.parametrize(
    ("fields", "tail_hex"),
    [
        ({"pseudonym_hash": b"P"}, "00" "02" "0250" "00"),
        ({"merkle_root": b""}, "00" "00" "02" "00"),
        # An array is blocks of (count, items...) ended by a 0 count; an item is a record,
        # its fields in order: key_id "k", signature b"S", timestamp 5 (zigzag 10 = 0a).
        ({"approvals": [("k", b"S", 5)]}, "02" "026b" "0253" "0a" "00" "00" "00"),
        ({"approvals": [("k", b"", -1), ("", b"", 0)]},
         "04" "026b" "00" "01" "00" "00" "00" "00" "00" "00"),
    ],
)
def test_exact_bytes_of_version_2_fields(fields: dict[str, Any], tail_hex: str) -> None:
    """Version 2's fields follow version 1's, which end with four nulls here."""
    data = encode(known().with_fields(**fields))
    assert data.hex() == HEAD + "00" + BODY + "00" "00" "00" "00" + tail_hex
    assert decode(data) == known().with_fields(**fields)


@pytest.mark.parametrize(
    ("timestamp", "varint_hex"),
    [
        (0, "00"),
        (-1, "01"),
        (63, "7e"),
        (-64, "7f"),
        (64, "8001"),
        (1_700_000_000_000, "80a0abfef962"),  # zigzag 3.4e12, seven bits at a time
        (2**63 - 1, "feffffffffffffffff01"),
        (-(2**63), "ffffffffffffffffff01"),
    ],
)
def test_exact_bytes_of_timestamps(timestamp: int, varint_hex: str) -> None:
    data = encode(known(timestamp=timestamp)).hex()
    assert data == "0261" + varint_hex + HEAD[len("0261d00f") :] + "00" + BODY + NO_SECURITY


def test_encode_sets_the_checksum_from_the_payload() -> None:
    data = encode(known(checksum=b"stale"))
    assert data == encode(known())
    assert decode(data).checksum.hex() == SHA256_HI


def test_plain_fastavro_reads_what_the_codec_writes() -> None:
    artifact = Artifact.new(b"payload", meta={"n": 3, "f": 0.5, "ok": True, "b": b"\x00"})
    artifact = artifact.with_fields(signature=b"sig")
    with SCHEMA_FILE.open() as fo:
        schema = fastavro.parse_schema(json.load(fo))
    record = fastavro.schemaless_reader(io.BytesIO(encode(artifact)), schema)
    assert isinstance(record, dict)
    assert record == {**artifact._asdict(), "meta": dict(artifact.meta), "approvals": []}
    assert type(record["meta"]["ok"]) is bool
    assert type(record["timestamp"]) is int


def test_the_packaged_schema_is_the_repository_schema() -> None:
    assert load_schema() == json.loads(SCHEMA_FILE.read_text())


def test_every_schema_field_has_a_doc_and_follows_the_artifact_order() -> None:
    schema = load_schema()
    assert [f["name"] for f in schema["fields"]] == list(Artifact._fields)
    assert all(f.get("doc") for f in schema["fields"])
    # Everything a later field addition may rely on has a default, except the identity.
    assert [f["name"] for f in schema["fields"] if "default" not in f] == ["id", "timestamp"]


# --- round trips ------------------------------------------------------------------------

@given(artifacts())
def test_round_trip_keeps_every_field_and_type(artifact: Artifact) -> None:
    back = decode(encode(artifact))
    assert back == artifact
    assert [type(v) for v in back.meta.values()] == [type(v) for v in artifact.meta.values()]
    assert isinstance(back.meta, MappingProxyType)


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        artifact = decode(data)
    except DecodeError:
        return
    # Rarely, random bytes are a valid artifact; then it must be a consistent one.
    assert artifact.checksum_ok()
    assert decode(encode(artifact)) == artifact


def test_decoded_metadata_is_read_only() -> None:
    back = decode(encode(Artifact.new(b"x", meta={"k": 1})))
    with pytest.raises(TypeError):
        back.meta["k"] = 2  # type: ignore[index]


# --- integrity and bad input -------------------------------------------------------------------


def test_checksum_mismatch_is_caught() -> None:
    data = bytearray(encode(known()))
    data[-8] ^= 0xFF  # the last checksum byte, before four nulls, no approvals, two nulls
    with pytest.raises(ChecksumMismatch, match="not the SHA-256 of its 2-byte payload"):
        decode(bytes(data))


def test_a_changed_payload_is_caught() -> None:
    data = encode(known()).replace(b"hi", b"ho")
    with pytest.raises(ChecksumMismatch):
        decode(data)


def test_empty_input() -> None:
    with pytest.raises(EmptyInput, match="empty input"):
        decode(b"")


def test_every_truncation_is_a_decode_error() -> None:
    data = encode(known(meta=MappingProxyType({"k": 1.0}), signature=b"s"))
    for size in range(1, len(data)):
        with pytest.raises(DecodeError):
            decode(data[:size])


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        decode(encode(known()) + b"\x00")


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\xff" * 12, b"\x03\xff", b"not avro at all", b"\x02a\x02\x02t\x02r\x02s\x00\x00"],
)
def test_garbage_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(garbage)


def test_invalid_utf8_in_a_string_is_a_decode_error() -> None:
    data = bytes.fromhex("02ff") + encode(known())[2:]
    with pytest.raises(DecodeError, match="UnicodeDecodeError"):
        decode(data)


@pytest.mark.parametrize(
    "bad",
    [
        {"meta": MappingProxyType({"k": [1]})},
        {"payload": "text"},
        {"timestamp": 2**63},
        {"id": None},
    ],
)
def test_unencodable_artifacts_raise_encode_error(bad: dict[str, Any]) -> None:
    with pytest.raises(EncodeError):
        encode(known(**bad))


# --- schema evolution ----------------------------------------------------------------------------


def old_schema() -> dict[str, Any]:
    """An earlier version: no `state`, no `signature`."""
    schema = load_schema()
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("state", "signature")]
    return schema


def new_schema() -> dict[str, Any]:
    """A later version with two more fields, one of them a record."""
    schema = load_schema()
    schema["fields"] += [
        {"name": "priority", "type": "int", "default": 0, "doc": "p"},
        {
            "name": "trace",
            "type": {
                "type": "record",
                "name": "Trace",
                "fields": [{"name": "span", "type": "string"}],
            },
            "default": {"span": ""},
            "doc": "t",
        },
    ]
    return schema


def write_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def test_old_writer_decodes_into_the_current_schema() -> None:
    artifact = Artifact.new(b"old", meta={"v": 1}, state="ignored")
    record = {k: v for k, v in artifact._asdict().items() if k not in ("state", "signature")}
    data = write_with(old_schema(), record)
    back = decode(data, writer_schema=old_schema())
    assert back == artifact._replace(state="", signature=None)


def test_new_writer_decodes_into_the_current_schema() -> None:
    artifact = Artifact.new(b"new", meta={"v": True}).with_fields(signature=b"s")
    data = write_with(new_schema(), {**artifact._asdict(), "priority": 7, "trace": {"span": "x"}})
    assert decode(data, writer_schema=new_schema()) == artifact
    # Read as if written with the current schema, the extra fields are trailing bytes.
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode(data)


def test_writer_schema_is_resolved_by_fingerprint_as_a_header_carries_it() -> None:
    codec_ = Codec(writer_schemas=[old_schema()])
    fp = schema_fingerprint(old_schema())
    assert fp in codec_.fingerprints() and codec_.fingerprint in codec_.fingerprints()
    artifact = Artifact.new(b"old")
    record = {k: v for k, v in artifact._asdict().items() if k not in ("state", "signature")}
    data = write_with(old_schema(), record)
    header_value = fp.encode("ascii")  # what a record's SCHEMA_HEADER header would hold
    assert codec_.decode(data, writer_schema=header_value) == artifact._replace(state="")
    assert codec_.decode(data, writer_schema=fp.upper()) == artifact._replace(state="")
    # The codec's own fingerprint reads as written, with no resolution.
    assert codec_.decode(encode(artifact), writer_schema=codec_.fingerprint) == artifact
    # Read as written with the current schema, the old bytes are not the same artifact.
    with pytest.raises(DecodeError):
        codec_.decode(data)
    assert SCHEMA_HEADER == "artifact-schema"  # the header name is part of the wire contract


def test_register_returns_the_fingerprint_and_lookup_finds_it() -> None:
    codec_ = Codec()
    fp = codec_.register(json.dumps(new_schema()))
    assert fp == schema_fingerprint(new_schema())
    assert [f["name"] for f in codec_.writer_schema(fp)["fields"]][-2:] == ["priority", "trace"]
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint"):
        Codec().writer_schema(fp)  # registered with one codec only


def test_the_default_codec_learns_writer_schemas_by_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "default_codec", Codec())  # leave the shared one as it was
    fp = schema_fingerprint(old_schema())
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint"):
        writer_schema_for(fp)
    assert register_writer_schema(old_schema()) == fp
    assert writer_schema_for(fp.encode("ascii")) is codec.default_codec.writer_schema(fp)
    artifact = Artifact.new(b"old")
    record = {k: v for k, v in artifact._asdict().items() if k not in ("state", "signature")}
    back = decode(write_with(old_schema(), record), writer_schema=fp)
    assert back == artifact._replace(state="")


def test_unknown_fingerprint_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint '0000000000000000'"):
        decode(encode(known()), writer_schema="0000000000000000")


def test_incompatible_writer_is_a_schema_error() -> None:
    schema = load_schema()
    schema["fields"][0] = {"name": "id", "type": "long"}
    data = write_with(schema, {**known()._asdict(), "id": 5})
    with pytest.raises(SchemaError, match="does not resolve"):
        decode(data, writer_schema=schema)


def without_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with no default on the fields after the artifact's."""
    for field in schema["fields"][len(Artifact._fields):]:
        field.pop("default", None)
    return schema


def retyped(schema: dict[str, Any], name: str, type_: str) -> dict[str, Any]:
    for field in schema["fields"]:
        if field["name"] == name:
            field["type"] = type_
            field.pop("default", None)
    return schema


@pytest.mark.parametrize(
    "schema",
    [
        without_defaults(new_schema()),
        old_schema(),
        retyped(load_schema(), "timestamp", "string"),
        {"type": "record", "name": "X", "fields": []},
        {"type": "nonsense"},
        '"string"',
    ],
)
def test_a_codec_schema_must_have_the_artifact_fields(schema: dict[str, Any] | str) -> None:
    with pytest.raises(SchemaError):
        Codec(schema)


# --- fingerprints -------------------------------------------------------------------------------

_RABIN_EMPTY = 0xC15D213AA4D7A795


def _rabin_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_RABIN_EMPTY & -(fp & 1))
        table.append(fp)
    return table


def rabin64(data: bytes) -> int:
    """The Avro spec's CRC-64-AVRO, written out from the spec's reference code."""
    table = _rabin_table()
    fp = _RABIN_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(byte ^ fp) & 0xFF]
    return fp


def test_rabin_reference_matches_the_spec_vector() -> None:
    assert rabin64(b'"null"') == 7195948357588979594  # from the Avro spec's test data


def test_fingerprint_is_crc64_avro_of_the_canonical_form_little_endian() -> None:
    schema = {
        "type": "record",
        "name": "T",
        "namespace": "n",
        "doc": "dropped from the canonical form",
        "fields": [{"name": "f", "type": "long", "default": 0}],
    }
    canonical = b'{"name":"n.T","type":"record","fields":[{"name":"f","type":"long"}]}'
    assert schema_fingerprint(schema) == rabin64(canonical).to_bytes(8, "little").hex()
    assert schema_fingerprint(json.dumps(schema)) == schema_fingerprint(schema)


def test_docs_do_not_change_the_fingerprint_but_fields_do() -> None:
    schema = load_schema()
    undocumented = copy.deepcopy(schema)
    for field in undocumented["fields"]:
        field["doc"] = "other"
    assert schema_fingerprint(undocumented) == schema_fingerprint(schema)
    assert schema_fingerprint(old_schema()) != schema_fingerprint(schema)
    assert codec.default_codec.fingerprint == schema_fingerprint(schema)
