"""The Artifact value type: builders, typed metadata, immutability."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from processor.core.artifact import Artifact, MediaType, Role, Scope, State, checksum_of


def test_new_sets_identity_time_and_checksum() -> None:
    artifact = Artifact.new(b"data", origin="svc", meta={"k": 1})
    assert uuid.UUID(artifact.id).version == 4
    assert artifact.timestamp > 1_600_000_000_000  # milliseconds, not seconds
    assert artifact.checksum == hashlib.sha256(b"data").digest()
    assert artifact.checksum_ok()
    assert artifact.role == Role.DATA and artifact.scope == Scope.GENERIC
    assert artifact.state == State.CREATED
    assert artifact.media_type == MediaType.OCTET_STREAM
    assert artifact.origin == "svc" and artifact.meta == {"k": 1}
    assert artifact.signature is None and artifact.encrypted_key is None


def test_new_with_text_is_utf8_and_text_plain() -> None:
    artifact = Artifact.new("héllo")
    assert artifact.payload == "héllo".encode()
    assert artifact.media_type == MediaType.TEXT
    assert artifact.text() == "héllo"
    assert Artifact.new("{}", media_type=MediaType.JSON).media_type == MediaType.JSON


def test_new_ids_differ_and_explicit_ones_are_kept() -> None:
    assert Artifact.new().id != Artifact.new().id
    assert Artifact.new(id="x", timestamp=5)[:2] == ("x", 5)


def test_with_meta_replaces_instead_of_appending() -> None:
    first = Artifact.new(meta={"k": 1, "other": "x"})
    second = first.with_meta("k", 2)
    assert second.meta == {"k": 2, "other": "x"}
    assert len(second.meta) == 2
    assert first.meta == {"k": 1, "other": "x"}  # the original is untouched
    assert second.with_meta(k=3, new=True).meta == {"k": 3, "other": "x", "new": True}


def test_with_meta_requires_a_value_and_a_valid_type() -> None:
    artifact = Artifact.new()
    with pytest.raises(TypeError, match="value is missing"):
        artifact.with_meta("k")
    with pytest.raises(TypeError, match="not list"):
        artifact.with_meta("k", [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not NoneType"):
        Artifact.new(meta={"k": None})  # type: ignore[dict-item]


def test_without_meta() -> None:
    artifact = Artifact.new(meta={"a": 1, "b": 2, "c": 3})
    assert artifact.without_meta("a", "c", "missing").meta == {"b": 2}


@pytest.mark.parametrize(
    ("stored", "default", "expected"),
    [
        (5, 0, 5),
        (True, 0, 0),  # a bool is not an int here
        (1, False, False),
        (True, False, True),
        ("5", 0, 0),
        (5, 0.0, 5.0),  # an int widens to a float default
        (1.5, 0, 0),
        (b"x", b"", b"x"),
        ("t", "", "t"),
    ],
)
def test_typed_get(stored: Any, default: Any, expected: Any) -> None:
    value = Artifact.new(meta={"k": stored}).get("k", default)
    assert value == expected
    assert type(value) is type(expected)


def test_get_without_default_and_missing_keys() -> None:
    artifact = Artifact.new(meta={"k": "v"})
    assert artifact.get("k") == "v"
    assert artifact.get("missing") is None
    assert artifact.get("missing", 7) == 7


def test_artifacts_are_immutable() -> None:
    artifact = Artifact.new(b"x", meta={"k": 1})
    with pytest.raises(AttributeError):
        artifact.payload = b"y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        artifact.meta["k"] = 2  # type: ignore[index]
    source = {"k": 1}
    copied = Artifact.new(meta=source)
    source["k"] = 2
    assert copied.meta == {"k": 1}


def test_with_payload_updates_the_checksum_and_drops_the_signature() -> None:
    signed = Artifact.new(b"a").with_fields(signature=b"sig")
    changed = signed.with_payload("b", media_type=MediaType.TEXT)
    assert changed.payload == b"b" and changed.checksum == checksum_of(b"b")
    assert changed.media_type == MediaType.TEXT
    assert changed.signature is None
    assert signed.signature == b"sig"


def test_with_fields_follows_the_payload_and_checks_meta() -> None:
    artifact = Artifact.new(b"a").with_fields(payload=b"b", origin="o")
    assert artifact.checksum_ok() and artifact.origin == "o"
    with pytest.raises(TypeError):
        artifact.with_fields(meta={"k": object()})
    assert not artifact.with_fields(checksum=b"bad").checksum_ok()


def test_simple_builders() -> None:
    artifact = (
        Artifact.new()
        .with_state(State.VALIDATED)
        .with_role(Role.EVENT)
        .with_scope(Scope.METRIC)
        .with_origin("here")
        .with_issuer("key-1")
    )
    assert (artifact.state, artifact.role, artifact.scope) == ("validated", "event", "metric")
    assert (artifact.origin, artifact.issuer) == ("here", "key-1")


def test_repr_shows_the_size_not_the_payload() -> None:
    text = repr(Artifact.new(b"secret" * 10, id="i"))
    assert "60 bytes" in text and "secret" not in text
