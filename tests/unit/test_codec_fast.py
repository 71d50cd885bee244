"""The specialised encoder and decoder (`processor.serde.fast`): byte-identical to fastavro,
and as strict. The encoder is tested directly, since the codec would hide a failure of it by
falling back to fastavro."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.core.artifact import Approval, Artifact, MetaValue, checksum_of
from processor.core.errors import DecodeError, EncodeError
from processor.serde import codec, fast
from processor.serde.codec import Codec, decode, encode, load_schema

SCHEMA = fastavro.parse_schema(load_schema())


def fastavro_bytes(artifact: Artifact) -> bytes:
    """What plain fastavro writes for the artifact, checksum set from the payload."""
    record = {**artifact._asdict(), "meta": dict(artifact.meta),
              "approvals": [a._asdict() for a in artifact.approvals]}
    record["checksum"] = checksum_of(artifact.payload)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def fastavro_record(data: bytes) -> dict[str, Any]:
    """What plain fastavro reads from `data`, which it must consume entirely."""
    source = io.BytesIO(data)
    record = fastavro.schemaless_reader(source, SCHEMA, None)
    assert isinstance(record, dict)
    assert source.tell() == len(data)
    # An array of records reads as a list of dicts; the artifact holds a tuple of Approvals.
    record["approvals"] = tuple(
        Approval(a["key_id"], a["signature"], a["timestamp"]) for a in record["approvals"])
    return record


def generic_codec() -> Codec:
    """A codec whose schema has the same wire layout but another fingerprint (a renamed
    record), so it takes the generic fastavro path."""
    schema = load_schema()
    schema["namespace"] = "processor.generic"
    generic = Codec(schema)
    assert generic.fingerprint != codec.default_codec.fingerprint
    return generic


@pytest.fixture
def no_fastavro(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make fastavro's single-record writer and reader fail inside the codec module."""

    def broken(*args: object, **kwargs: object) -> None:
        raise AssertionError("the generic fastavro path was taken")

    monkeypatch.setattr(codec, "schemaless_writer", broken)
    monkeypatch.setattr(codec, "schemaless_reader", broken)
    yield


# --- strategies ---------------------------------------------------------------------------

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
EDGE_LONGS = st.sampled_from(
    [0, -1, 1, 63, -64, 64, -65, 8191, 8192, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63)]
)
TEXT = st.text(max_size=12) | st.text(min_size=60, max_size=200)
BLOBS = (
    st.binary(max_size=70)
    | st.binary(min_size=64, max_size=300)
    | st.integers(min_value=8192, max_value=20_000).map(lambda n: bytes(range(256)) * (n // 256))
)
META_VALUES: st.SearchStrategy[MetaValue] = st.one_of(
    TEXT,
    st.booleans(),
    LONGS,
    EDGE_LONGS,
    st.floats(allow_nan=False),
    st.binary(max_size=100),
)
META = st.dictionaries(TEXT, META_VALUES, max_size=5) | st.dictionaries(
    st.text(max_size=4), META_VALUES, min_size=64, max_size=80
)
OPTIONAL = st.none() | BLOBS
APPROVALS = st.lists(
    st.builds(Approval, TEXT, st.binary(max_size=80), LONGS | EDGE_LONGS), max_size=3
).map(tuple) | st.lists(st.builds(Approval, st.just("k"), st.just(b""), st.just(0)),
                        min_size=64, max_size=70).map(tuple)


@st.composite
def artifacts(draw: st.DrawFn) -> Artifact:
    payload = draw(BLOBS)
    return Artifact(
        id=draw(TEXT),
        timestamp=draw(LONGS | EDGE_LONGS),
        media_type=draw(TEXT),
        role=draw(TEXT),
        scope=draw(st.text(max_size=5)),
        origin=draw(TEXT),
        issuer=draw(st.text(max_size=5)),
        state=draw(TEXT),
        meta=MappingProxyType(draw(META)),
        payload=payload,
        checksum=draw(st.just(checksum_of(payload)) | st.binary(max_size=40)),
        encrypted_payload=draw(OPTIONAL),
        encrypted_key=draw(OPTIONAL),
        ephemeral_public_key=draw(OPTIONAL),
        signature=draw(OPTIONAL),
        approvals=draw(st.just(()) | APPROVALS),
        pseudonym_hash=draw(OPTIONAL),
        merkle_root=draw(OPTIONAL),
    )


FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


# --- encode ---------------------------------------------------------------------------------


@given(artifacts())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_encode_is_byte_identical_to_fastavro(artifact: Artifact) -> None:
    expected = fastavro_bytes(artifact)
    assert fast.encode(artifact) == expected
    assert encode(artifact) == expected


@given(artifacts())
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_encode_of_ordinary_artifacts_does_not_need_fastavro(artifact: Artifact) -> None:
    expected = fastavro_bytes(artifact)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "schemaless_writer", None)
        assert encode(artifact) == expected


def test_edge_lengths_and_values() -> None:
    for size in (0, 63, 64, 127, 128, 8191, 8192, 8193, 2**20):
        artifact = Artifact.new(b"p" * size, id="i" * size, meta={"k" * size: b"v" * size})
        assert fast.encode(artifact) == fastavro_bytes(artifact), size
    meta: dict[str, MetaValue] = {"t": True, "f": False, "z": 0, "n": -1, "d": -0.0}
    meta |= {"inf": float("inf"), "s": "", "b": b"", "u": "\u00e9\U0001f600"}
    artifact = Artifact.new(b"", meta=meta).with_fields(signature=b"")
    assert fast.encode(artifact) == fastavro_bytes(artifact)
    nan = Artifact.new(b"", meta={"nan": float("nan")})
    assert fast.encode(nan) == fastavro_bytes(nan)


@pytest.mark.parametrize(
    "changes",
    [
        {"meta": {"k": 2**63}},  # fastavro writes it as a double
        {"meta": {"k": -(2**63) - 1}},
        {"timestamp": True},
        {"payload": bytearray(b"hi")},
        {"signature": bytearray(b"s")},
        {"meta": [("k", 1)]},
        {"meta": {"k": bytearray(b"x")}},
        {"id": type("Text", (str,), {})("a")},
    ],
)
def test_unusual_values_are_encoded_as_fastavro_encodes_them(changes: dict[str, Any]) -> None:
    artifact = Artifact.new(b"hi")._replace(**changes)
    assert encode(artifact) == generic_codec().encode(artifact)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"meta": {1: "v"}}, "must be string"),
        ({"meta": {"k": None}}, "do not match"),
        ({"meta": {"k": [1]}}, "do not match"),
        ({"meta": None}, "not iterable"),
        ({"timestamp": 2**63}, "cannot encode"),
        ({"timestamp": -(2**63) - 1}, "cannot encode"),
        ({"timestamp": "5"}, "integer is required"),
        ({"id": None}, "must be string"),
        ({"id": "\ud800"}, "surrogates not allowed"),
        ({"signature": "text"}, "do not match"),
        ({"payload": "text"}, "cannot encode"),
    ],
)
def test_unencodable_artifacts_raise_the_same_encode_error(
    changes: dict[str, Any], message: str
) -> None:
    artifact = Artifact.new(b"hi")._replace(**changes)
    with pytest.raises(EncodeError, match=message) as fast:
        encode(artifact)
    with pytest.raises(EncodeError) as generic:
        generic_codec().encode(artifact)
    assert str(fast.value) == str(generic.value)


def test_schemas_with_the_packaged_fingerprint_take_the_fast_path(no_fastavro: None) -> None:
    schema = load_schema()
    for field in schema["fields"]:
        field["doc"] = "another doc"
    same = Codec(schema)
    assert same.fingerprint == codec.default_codec.fingerprint
    artifact = Artifact.new(b"x", meta={"k": 1})
    assert same.decode(same.encode(artifact), writer_schema=same.fingerprint) == artifact
    with pytest.raises(AssertionError, match="generic fastavro path"):
        generic_codec().encode(artifact)
    with pytest.raises(AssertionError, match="generic fastavro path"):
        generic_codec().decode(encode(artifact))


# --- decode --------------------------------------------------------------------------------


@given(artifacts())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_decode_equals_fastavro(artifact: Artifact) -> None:
    data = fastavro_bytes(artifact)
    record = fastavro_record(data)
    back = decode(data)
    assert back._asdict() == {**record, "meta": back.meta}
    assert dict(back.meta) == record["meta"]
    assert [type(v) for v in back.meta.values()] == [type(v) for v in record["meta"].values()]
    assert type(back) is Artifact and type(back.meta) is MappingProxyType
    assert all(type(getattr(back, name)) is bytes for name in ("payload", "checksum"))
    assert back == artifact._replace(checksum=checksum_of(artifact.payload))


@given(artifacts())
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_decode_of_ordinary_data_does_not_need_fastavro(artifact: Artifact) -> None:
    data = fastavro_bytes(artifact)
    expected = generic_codec().decode(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "schemaless_reader", None)
        assert decode(data) == expected
        assert decode(bytearray(data)) == expected
        assert decode(memoryview(data)) == expected


HEAD = bytes.fromhex("0261" "d00f" "0274" "0272" "0273" "00" "00" "0278")
BODY = bytes.fromhex("04" "6869") + b"\x40" + checksum_of(b"hi")
NO_SECURITY = b"\x00\x00\x00\x00\x00\x00\x00"  # four nulls, no approvals, two nulls


def zigzag(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def entry(key: str, branch: int, value: bytes) -> bytes:
    return zigzag(len(key)) + key.encode() + zigzag(branch) + value


def test_map_blocks_with_negative_counts_decode() -> None:
    first = entry("a", 2, zigzag(1)) + entry("b", 0, zigzag(1) + b"c")
    second = entry("big", 2, zigzag(2**40)) + entry("f", 3, struct.pack("<d", 0.5))
    third = entry("t", 1, b"\x01")
    meta = (
        zigzag(-2) + zigzag(len(first)) + first
        + zigzag(-2) + zigzag(len(second)) + second
        + zigzag(1) + third
        + b"\x00"
    )  # fmt: skip
    data = HEAD + meta + BODY + NO_SECURITY
    back = decode(data)
    assert dict(back.meta) == {"a": 1, "b": "c", "big": 2**40, "f": 0.5, "t": True}
    assert dict(back.meta) == fastavro_record(data)["meta"]
    assert type(back.meta) is MappingProxyType
    # A block size past the end of the data is not believed.
    bad = HEAD + zigzag(-1) + zigzag(10_000) + third + b"\x00" + BODY + NO_SECURITY
    with pytest.raises(DecodeError, match="block size"):
        decode(bad)


def test_overlong_but_valid_varints_decode_as_fastavro_reads_them() -> None:
    # The timestamp 1000 in three bytes instead of two, an id length of 1 in two bytes.
    data = bytes.fromhex("8200" "61" "d08f00") + HEAD[4:] + b"\x00" + BODY + NO_SECURITY
    assert decode(data) == decode(HEAD + b"\x00" + BODY + NO_SECURITY)
    assert decode(data)._asdict() == {**fastavro_record(data), "meta": MappingProxyType({})}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01" + HEAD[2:], "negative length -1"),
        (HEAD[:2] + b"\xff" * 11 + HEAD[4:], "longer than 10 bytes"),
        (HEAD[:2] + b"\xff" * 9 + b"\x02" + HEAD[4:], "does not fit in 64 bits"),
        (HEAD + zigzag(1) + entry("k", 5, b"") + b"\x00" + BODY, "union branch byte 10"),
        (HEAD + zigzag(1) + entry("k", -1, b"") + b"\x00" + BODY, "union branch byte 1 "),
        (HEAD + zigzag(1) + b"\x02k\x80\x01" + b"\x00" + BODY, r"union branch 64 at"),
        (HEAD + zigzag(1) + entry("k", 1, b"\x02") + b"\x00" + BODY, "boolean byte 2"),
        (HEAD + b"\x00" + BODY + b"\x04" + NO_SECURITY[1:], "optional field union branch"),
        (HEAD + b"\x00" + BODY + b"\x02\x05" + NO_SECURITY[1:], "negative length"),
        (HEAD + b"\x00" + BODY + b"\x02\x20\x00", "truncated"),
        (HEAD + b"\x00" + BODY[:3], "truncated"),
        (b"\x04\xc3", "truncated"),  # cut inside a character: truncated, not bad UTF-8
        (HEAD[:4] + b"\x04\xc3", "truncated"),
        (HEAD + zigzag(1) + entry("k", 3, b"\x00" * 7), "truncated"),
        (HEAD + b"\x00" + BODY + NO_SECURITY + b"\x00", "1 trailing bytes after a"),
        (HEAD + b"\x00" + BODY + NO_SECURITY[:4], "truncated"),  # version 1 bytes
        (HEAD + b"\x00" + BODY + NO_SECURITY[:5] + b"\x06" + NO_SECURITY[6:],
         "union branch 3 at"),
        (HEAD + b"\x00" + BODY + NO_SECURITY[:4] + b"\x02\x02k\x01" + NO_SECURITY[4:],
         "negative length -1"),
        (HEAD + b"\x00" + BODY + NO_SECURITY[:4] + b"\x01\x7f" + NO_SECURITY[4:],
         "array block size -64"),
        (b"\x02\xc3" + HEAD[2:], "UnicodeDecodeError"),
    ],
)
def test_bad_input_is_a_decode_error_that_says_why(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def valid_encodings() -> st.SearchStrategy[bytes]:
    return artifacts().map(fastavro_bytes)


def decode_or_error(data: bytes) -> Artifact | None:
    """Decode; only `DecodeError` may come out, and what decodes must be what fastavro
    reads (the specialised decoder accepts nothing fastavro would not)."""
    try:
        artifact = decode(data)
    except DecodeError:
        return None
    assert artifact._asdict() == {**fastavro_record(data), "meta": artifact.meta}
    return artifact


@given(st.binary(max_size=400))
@FUZZ
def test_fuzz_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    decode_or_error(data)


@given(valid_encodings(), st.data())
@FUZZ
def test_fuzz_truncations_are_decode_errors(data: bytes, draw: st.DataObject) -> None:
    size = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
    with pytest.raises(DecodeError):
        decode(data[:size])


@given(valid_encodings(), st.data())
@FUZZ
def test_fuzz_mutations_only_raise_decode_errors(data: bytes, draw: st.DataObject) -> None:
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(min_value=1, max_value=4))):
        kind = draw.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = draw.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        value = draw.draw(st.integers(min_value=0, max_value=255))
        if kind == "flip":
            mutated[at] ^= 1 << (value % 8)
        elif kind == "set":
            mutated[at] = value
        elif kind == "insert":
            mutated.insert(at, value)
        elif len(mutated) > 1:
            del mutated[at]
    decode_or_error(bytes(mutated))


V1_SCHEMA = fastavro.parse_schema(load_schema("artifact.v1.avsc"))


@given(artifacts())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_version_1_bytes_decode_as_fastavro_resolves_them(artifact: Artifact) -> None:
    """The specialised decoder's `legacy` mode gives what Avro's schema resolution of a
    version 1 writer into the version 2 reader gives (each meta value in the branch of its
    own type: fastavro's resolution would take a bytes value as a string)."""
    out = io.BytesIO()
    record = {**artifact._asdict(), "meta": dict(artifact.meta),
              "checksum": checksum_of(artifact.payload)}
    fastavro.schemaless_writer(out, V1_SCHEMA, record)
    data = b"\x00\x00\x00\x00\x01" + out.getvalue()
    expected = artifact._replace(checksum=checksum_of(artifact.payload), approvals=(),
                                 pseudonym_hash=None, merkle_root=None)
    assert fast.decode(data, 5, legacy=True) == expected
    # The generic path (a codec of the same layout, another fingerprint) resolves alike.
    generic = generic_codec()
    assert generic.decode(data, load_schema("artifact.v1.avsc"), 5) == expected
    with pytest.raises(DecodeError, match="truncated"):
        fast.decode(data, 5)  # read as version 2, version 1 bytes end too early
