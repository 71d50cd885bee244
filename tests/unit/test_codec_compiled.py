"""The compiled specialised codec (mypyc, built at install) against its pure-Python source
and against fastavro: the same bytes, the same artifacts, the same errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from types import ModuleType

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.core.artifact import Artifact, checksum_of
from processor.core.errors import DecodeError
from processor.serde import artifact_avro, fast
from processor.serde.codec import load_schema
from tests.unit.test_codec_fast import artifacts, fastavro_bytes, fastavro_record

V1_SCHEMA = fastavro.parse_schema(load_schema("artifact.v1.avsc"))


def fastavro_v1_bytes(artifact: Artifact) -> bytes:
    """`artifact` as version 1 of the schema writes it."""
    out = io.BytesIO()
    record = {**artifact._asdict(), "meta": dict(artifact.meta),
              "checksum": checksum_of(artifact.payload)}
    fastavro.schemaless_writer(out, V1_SCHEMA, record)
    return out.getvalue()
CASES = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pure() -> ModuleType:
    module = fast.pure_module()
    assert not fast.is_compiled(module)
    return module


def test_the_installed_package_runs_the_compiled_extension() -> None:
    """`pip install` (the Makefile's set-up) compiles the module; unless the fallback is
    forced, it is what the codec uses."""
    if os.environ.get(fast.PURE_PYTHON_ENV):
        assert not fast.COMPILED
        return
    assert fast.is_compiled(artifact_avro), (
        f"{artifact_avro.__file__} is not the compiled extension: reinstall the package "
        "(pip install -e .) with a C compiler and the Python headers present")
    assert fast.COMPILED
    assert fast.IMPLEMENTATION == "compiled (mypyc)"
    assert fast.encode is artifact_avro.encode


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_the_environment_variable_forces_the_pure_python_source(value: str) -> None:
    code = ("from processor.core.artifact import Artifact; "
            "from processor.serde import fast, codec; "
            "print(fast.COMPILED, fast.IMPLEMENTATION, "
            "codec.decode(codec.encode(Artifact.new(b'x'))).payload)")
    env = {**os.environ, fast.PURE_PYTHON_ENV: value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.split() == ["False", "pure", "Python", "b'x'"]


@given(artifacts())
@CASES
def test_compiled_and_pure_encode_the_same_bytes_as_fastavro(
        pure: ModuleType, artifact: Artifact) -> None:
    expected = fastavro_bytes(artifact)
    for module in (artifact_avro, pure):
        try:
            data = module.encode(artifact, b"\x00\x00\x00\x00\x07")
        except Exception:
            continue  # an unusual value: the codec hands it to fastavro (test_codec_fast)
        assert data == b"\x00\x00\x00\x00\x07" + expected
    assert (_outcome(artifact_avro.encode, artifact) == _outcome(pure.encode, artifact))


def _outcome(function: object, *args: object) -> object:
    try:
        return function(*args)  # type: ignore[operator]
    except Exception as exc:
        return type(exc)


@given(artifacts())
@CASES
def test_compiled_and_pure_decode_what_fastavro_reads(pure: ModuleType,
                                                      artifact: Artifact) -> None:
    data = fastavro_bytes(artifact)
    record = fastavro_record(data)
    compiled_artifact = artifact_avro.decode(data)
    assert compiled_artifact == pure.decode(data)
    assert compiled_artifact._asdict() == {**record, "meta": compiled_artifact.meta}
    assert [type(v) for v in compiled_artifact.meta.values()] == [
        type(v) for v in record["meta"].values()]
    assert compiled_artifact == artifact._replace(checksum=checksum_of(artifact.payload))
    if artifact.payload:
        wrong = data.replace(checksum_of(artifact.payload), bytes(32))
        for module in (artifact_avro, pure):
            with pytest.raises(DecodeError, match="checksum"):
                module.decode(wrong)


@given(artifacts())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_compiled_and_pure_read_version_1_bytes_alike(pure: ModuleType,
                                                      artifact: Artifact) -> None:
    out = io.BytesIO()
    record = {**artifact._asdict(), "meta": dict(artifact.meta),
              "checksum": checksum_of(artifact.payload)}
    fastavro.schemaless_writer(out, V1_SCHEMA, record)
    data = out.getvalue()
    expected = artifact._replace(checksum=checksum_of(artifact.payload), approvals=(),
                                 pseudonym_hash=None, merkle_root=None)
    assert artifact_avro.decode(data, legacy=True) == expected
    assert pure.decode(data, legacy=True) == expected


@given(st.binary(max_size=400) | artifacts().map(fastavro_bytes).flatmap(
    lambda data: st.integers(0, max(0, len(data) - 1)).map(lambda cut: data[:cut])))
@CASES
def test_compiled_and_pure_reject_bad_bytes_alike(pure: ModuleType, data: bytes) -> None:
    outcomes = []
    for module in (artifact_avro, pure):
        try:
            outcomes.append(module.decode(data))
        except DecodeError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_the_stage_image_builds_the_compiled_codec_and_checks_it() -> None:
    """The image's build stage has what the compile needs (setup.py, in the build context
    the container tier hashes), and its runtime stage refuses a codec that is not
    compiled."""
    from tests.containers.images import ROOT, STAGE_CONTEXT

    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    build, runtime = dockerfile.split("\nFROM ", 2)[1:]
    assert "COPY setup.py" in build and "pip wheel" in build
    assert "assert fast.COMPILED" in runtime
    assert "setup.py" in STAGE_CONTEXT
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "processor/**/*.so" in ignored  # built in the image, never copied from the host


@pytest.mark.parametrize("which", ["compiled", "pure"])
def test_encode_copies_the_runs_of_fields_it_shares_with_the_last_decoded_artifact(
        pure: ModuleType, which: str) -> None:
    """`decode` remembers the artifact it returned last and where its fields lie in the
    bytes; `encode` copies the bytes of each run of fields that are the very same objects
    and writes the others out: the result is what fastavro writes, whichever fields
    changed, and a changed payload is hashed again."""
    module = artifact_avro if which == "compiled" else pure
    first = Artifact.new(b"first payload" * 10, meta={"n": 1, "text": "x" * 70},
                         origin="o" * 80, issuer="me")
    decoded = module.decode(module.encode(first, b"\x00\x00\x00\x00\x07"), 5)
    assert module._source[0] is decoded
    changes = [
        decoded,
        decoded.with_meta("n", 2),
        decoded.with_state("done"),
        decoded.with_meta("t", 1_700_000_000_123).with_state("transformed"),
        decoded.with_origin("elsewhere"),
        # Equal metadata, other bytes: keys in another order, and True where 1 was.
        decoded.with_fields(meta={"text": "x" * 70, "n": 1}),
        decoded.with_fields(meta={"n": True, "text": "x" * 70}),
        decoded.with_fields(id="other-id", timestamp=decoded.timestamp + 1),
        decoded.with_fields(signature=b"s" * 64),
        decoded.with_approval("key", b"sig", 5),
        decoded.with_fields(payload=b"other payload", checksum=b"\x00" * 32),
        # Equal values, other objects: written out, with the same bytes.
        Artifact._make(bytes(bytearray(v)) if type(v) is bytes
                       else v.encode().decode() if type(v) is str else v for v in decoded),
    ]
    for changed in changes:
        expected = fastavro_bytes(changed)
        assert module._source[0] is decoded
        assert module.encode(changed) == expected, changed
        assert module.encode(changed, b"\x00\x00\x00\x00\x09") == b"\x00\x00\x00\x00\x09" + expected
    out = module.decode(module.encode(changes[-2]))
    assert out.checksum == checksum_of(b"other payload")
    # Version 1 bytes lack version 2's fields: that decode leaves the memo as it was.
    before = module._source
    module.decode(fastavro_v1_bytes(first), legacy=True)
    assert module._source is before


@pytest.mark.parametrize("which", ["compiled", "pure"])
def test_the_memo_holds_a_decoded_record_from_the_start(which: str) -> None:
    """In a new process, before any decode of its own, the memo is a record the module
    decoded as it loaded; encoding it, or artifacts of equal values, gives fastavro's
    bytes."""
    code = (
        "from processor.serde import artifact_avro, fast\n"
        "from processor.core.artifact import Artifact\n"
        "from tests.unit.test_codec_fast import fastavro_bytes\n"
        f"module = artifact_avro if {which == 'compiled'} else fast.pure_module()\n"
        "seen, data = module._source[:2]\n"
        "assert module.decode(data) == seen\n"
        "twin = Artifact._make(bytes(bytearray(v)) if type(v) is bytes else v for v in seen)\n"
        "for artifact in (seen, twin, seen.with_meta('k', 1), seen.with_state('s' * 70)):\n"
        "    assert module.encode(artifact) == fastavro_bytes(artifact), artifact\n"
        "print(len(data))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert int(out) > 0


@given(artifacts(), artifacts())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_encode_after_decode_is_what_fastavro_writes(
        pure: ModuleType, artifact: Artifact, other: Artifact) -> None:
    """Every mix of fields from the decoded artifact (shared objects) and from another
    artifact encodes as fastavro writes it."""
    for module in (artifact_avro, pure):
        try:
            decoded = module.decode(module.encode(artifact))
        except Exception:
            continue  # a value the specialised encoder leaves to fastavro
        for mask in range(0, 1 << 5):
            fields = list(decoded)
            # Five groups of fields, one per copied run and the state on its own.
            groups = [(0, 1, 2, 3, 4, 5, 6), (7,), (8,), (9, 10), tuple(range(11, 18))]
            for bit, group in enumerate(groups):
                if mask >> bit & 1:
                    for index in group:
                        fields[index] = other[index]
            mixed = Artifact._make(fields)
            try:
                data = module.encode(mixed)
            except Exception:
                continue
            assert data == fastavro_bytes(mixed)
