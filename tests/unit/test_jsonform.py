"""The JSON form of artifacts (what `tail` prints and `produce --artifacts` reads)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.core.artifact import Artifact, checksum_of
from processor.core.errors import InvalidArtifact
from processor.serde.jsonform import (
    artifact_from_json,
    artifact_from_json_dict,
    artifact_to_json,
    artifact_to_json_dict,
)
from tests.strategies import artifacts as any_artifact

MEDIA_TYPES = st.sampled_from(
    ["text/plain", "application/json", "application/octet-stream", "text/csv", "image/png"]
)


def artifacts() -> st.SearchStrategy[Artifact]:
    return any_artifact(ids=st.uuids().map(str), media_types=MEDIA_TYPES, max_meta=5)


@given(artifacts())
def test_round_trip_through_json_text(artifact: Artifact) -> None:
    back = artifact_from_json(artifact_to_json(artifact))
    assert back == artifact
    assert [type(v) for v in back.meta.values()] == [type(v) for v in artifact.meta.values()]


def test_text_payloads_stay_text_and_binary_ones_are_base64() -> None:
    text = artifact_to_json_dict(Artifact.new("héllo"))
    assert text["payload"] == "héllo" and "payload_b64" not in text
    binary = artifact_to_json_dict(Artifact.new(b"\xff\x00"))
    assert binary["payload_b64"] == "/wA=" and "payload" not in binary
    # A textual media type with bytes that are not UTF-8 falls back to base64.
    bad_text = artifact_to_json_dict(Artifact.new(b"\xff", media_type="text/plain"))
    assert bad_text["payload_b64"] == "/w=="


def test_metadata_keeps_its_types() -> None:
    artifact = Artifact.new("x", meta={"b": b"\x01", "f": 1.0, "i": 2, "t": True, "s": "v"})
    data = json.loads(artifact_to_json(artifact))
    assert data["meta"] == {"b": {"$bytes": "AQ=="}, "f": 1.0, "i": 2, "t": True, "s": "v"}
    assert artifact_to_json_dict(artifact)["checksum"] == checksum_of(b"x").hex()
    assert "signature" not in data


def test_missing_fields_take_defaults_and_a_json_payload_is_json() -> None:
    artifact = artifact_from_json('{"payload": {"a": 1}, "role": "event"}')
    assert artifact.payload == b'{"a":1}'
    assert artifact.media_type == "application/json"
    assert artifact.role == "event" and artifact.state == "created"
    assert artifact.checksum_ok()


def test_a_matching_checksum_is_accepted_in_any_case() -> None:
    digest = checksum_of(b"x").hex().upper()
    assert artifact_from_json_dict({"payload": "x", "checksum": digest}).payload == b"x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "must be a JSON object"),
        ({"payload": "x", "checksum": "00"}, "'checksum' is not the SHA-256"),
        ({"payload_b64": "!!"}, "'payload_b64' is not valid base64"),
        ({"payload_b64": 1234}, "'payload_b64' must be base64 text, not int"),
        ({"signature": 1234}, "'signature' must be base64 text, not int"),
        ({"meta": {"k": {"$bytes": 1234}}}, "'meta.k' must be base64 text"),
        ({"meta": {"k": None}}, "metadata value for 'k'"),
        ({"meta": {"k": 2**63}}, "does not fit a 64-bit integer"),
        ({"meta": []}, "'meta' must be an object"),
        ({"timestamp": "now"}, "'timestamp' must be a 64-bit integer"),
        ({"timestamp": True}, "'timestamp' must be a 64-bit integer"),
        ({"timestamp": -(2**63) - 1}, "'timestamp' must be a 64-bit integer"),
        ({"role": 5}, "'role' must be text"),
    ],
)
def test_invalid_json_artifacts_are_refused(data: Any, message: str) -> None:
    with pytest.raises(InvalidArtifact, match=message):
        artifact_from_json(json.dumps(data))


def test_malformed_json_is_invalid() -> None:
    with pytest.raises(InvalidArtifact, match="not valid JSON"):
        artifact_from_json("{")


def _strict_loads(text: str) -> Any:
    """`json.loads` that refuses NaN, Infinity and -Infinity, as RFC 8259 does."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_doubles_are_strict_json_and_come_back_doubles() -> None:
    import math

    artifact = Artifact.new("x", meta={"nan": math.nan, "inf": math.inf, "ninf": -math.inf,
                                       "text": "NaN", "one": 1.5})
    line = artifact_to_json(artifact)
    data = _strict_loads(line)
    assert data["meta"] == {"nan": {"$double": "NaN"}, "inf": {"$double": "Infinity"},
                            "ninf": {"$double": "-Infinity"}, "text": "NaN", "one": 1.5}
    back = artifact_from_json(line)
    assert math.isnan(back.meta["nan"])  # type: ignore[arg-type]
    assert back.meta["inf"] == math.inf and back.meta["ninf"] == -math.inf
    assert back.meta["text"] == "NaN" and back.meta["one"] == 1.5
    assert back.without_meta("nan") == artifact.without_meta("nan")
    # The bare tokens of Python's json module are still read.
    legacy = artifact_from_json('{"payload": "x", "meta": {"n": NaN, "i": -Infinity}}')
    assert math.isnan(legacy.meta["n"]) and legacy.meta["i"] == -math.inf  # type: ignore[arg-type]
    with pytest.raises(InvalidArtifact, match=r'"\$double" must be'):
        artifact_from_json('{"meta": {"n": {"$double": "nan"}}}')


def test_tail_writes_plain_records_as_strict_json() -> None:
    import argparse
    import math

    from processor.cli.produce import _tail_format
    from processor.serde.jsonform import strict_json

    assert strict_json({"a": [math.nan, {"b": -math.inf}], "c": 1.0}) == \
        '{"a": ["NaN", {"b": "-Infinity"}], "c": 1.0}'
    show = _tail_format(argparse.Namespace(format="json"), None, None, artifact_to_json)
    assert _strict_loads(show(b'{"x": NaN, "y": Infinity, "z": 2}', None)) == {
        "x": "NaN", "y": "Infinity", "z": 2}
