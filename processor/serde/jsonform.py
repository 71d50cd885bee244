"""The JSON form of an artifact, as `processor tail` prints it and `produce --artifacts` reads it.

Bytes are base64 text. A payload whose media type is textual (text/*, JSON) is kept as text
under `payload`; any other payload is base64 under `payload_b64`. Metadata values keep
their type: bytes become `{"$bytes": "<base64>"}`, and a double that is not a finite
number `{"$double": "NaN"}`, `{"$double": "Infinity"}` or `{"$double": "-Infinity"}`, so
that every line is strict JSON (RFC 8259 has no NaN or Infinity) and the double comes
back a double, never taken for text. Reading also accepts the bare `NaN`, `Infinity` and
`-Infinity` tokens that Python's `json` writes by default.

`strict_json` writes any other value (a plain record `processor tail` prints) as strict
JSON: a non-finite double there becomes the string "NaN", "Infinity" or "-Infinity".

Reading, the checksum is computed from the payload; a `checksum` given in the JSON must
match it (hex), so an edited payload with a stale checksum is refused, not silently fixed.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

from processor.core.artifact import Artifact, MediaType, MetaValue
from processor.core.errors import InvalidArtifact

_OPTIONAL_BYTES = ("encrypted_payload", "encrypted_key", "ephemeral_public_key", "signature",
                   "pseudonym_hash", "merkle_root")


def _is_textual(media_type: str) -> bool:
    return media_type.startswith("text/") or media_type.endswith("json")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_LONG_MIN = -(2**63)
_LONG_MAX = 2**63 - 1
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _non_finite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _finite(value: Any) -> Any:
    """`value` (nested lists and mappings too) with every non-finite float as its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return _non_finite_name(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_json(value: Any, **options: Any) -> str:
    """`json.dumps(value)` as strict JSON: a non-finite float is written as the string
    "NaN", "Infinity" or "-Infinity"."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def _unb64(text: object, field: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidArtifact(f"field {field!r} must be base64 text, not {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidArtifact(f"field {field!r} is not valid base64") from exc


def artifact_to_json_dict(artifact: Artifact) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in artifact.meta.items():
        if isinstance(value, bytes):
            meta[key] = {"$bytes": _b64(value)}
        elif isinstance(value, float) and not math.isfinite(value):
            meta[key] = {"$double": _non_finite_name(value)}
        else:
            meta[key] = value
    out: dict[str, Any] = {
        "id": artifact.id,
        "timestamp": artifact.timestamp,
        "media_type": artifact.media_type,
        "role": artifact.role,
        "scope": artifact.scope,
        "origin": artifact.origin,
        "issuer": artifact.issuer,
        "state": artifact.state,
        "meta": meta,
    }
    text: str | None = None
    if _is_textual(artifact.media_type):
        try:
            text = artifact.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None:
        out["payload"] = text
    else:
        out["payload_b64"] = _b64(artifact.payload)
    out["checksum"] = artifact.checksum.hex()
    for name in _OPTIONAL_BYTES:
        value = getattr(artifact, name)
        if value is not None:
            out[name] = _b64(value)
    if artifact.approvals:
        out["approvals"] = [{"key_id": a.key_id, "signature": _b64(a.signature),
                             "timestamp": a.timestamp} for a in artifact.approvals]
    return out


def artifact_to_json(artifact: Artifact) -> str:
    return json.dumps(artifact_to_json_dict(artifact), ensure_ascii=False, sort_keys=False,
                      allow_nan=False)


def _meta_from_json(raw: Any) -> dict[str, MetaValue]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidArtifact("field 'meta' must be an object")
    meta: dict[str, MetaValue] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and set(value) == {"$bytes"}:
            meta[key] = _unb64(value["$bytes"], f"meta.{key}")
        elif isinstance(value, Mapping) and set(value) == {"$double"}:
            name = value["$double"]
            if not isinstance(name, str) or name not in _NON_FINITE:
                raise InvalidArtifact(f'metadata value for {key!r}: "$double" must be "NaN", '
                                      f'"Infinity" or "-Infinity", not {name!r}')
            meta[key] = _NON_FINITE[name]
        elif isinstance(value, int) and not _LONG_MIN <= value <= _LONG_MAX:
            raise InvalidArtifact(f"metadata value for {key!r} does not fit a 64-bit integer")
        elif isinstance(value, str | int | float | bool):
            meta[key] = value
        else:
            raise InvalidArtifact(
                f"metadata value for {key!r} must be text, a number, a bool or "
                f'{{"$bytes": ...}}, not {type(value).__name__}'
            )
    return meta


def artifact_from_json_dict(data: Mapping[str, Any]) -> Artifact:
    """An artifact from its JSON form; missing fields take the defaults of `Artifact.new`."""
    if not isinstance(data, Mapping):
        raise InvalidArtifact("an artifact must be a JSON object")
    if "payload_b64" in data:
        payload = _unb64(data["payload_b64"], "payload_b64")
    else:
        raw = data.get("payload", "")
        if isinstance(raw, str):
            payload = raw.encode("utf-8")
        else:
            payload = json.dumps(raw, separators=(",", ":")).encode("utf-8")
    kwargs: dict[str, Any] = {}
    for name in ("id", "media_type", "role", "scope", "origin", "issuer", "state"):
        if name in data:
            if not isinstance(data[name], str):
                raise InvalidArtifact(f"field {name!r} must be text")
            kwargs[name] = data[name]
    if "timestamp" in data:
        stamp = data["timestamp"]
        if (
            not isinstance(stamp, int)
            or isinstance(stamp, bool)
            or not _LONG_MIN <= stamp <= _LONG_MAX
        ):
            raise InvalidArtifact("field 'timestamp' must be a 64-bit integer (ms since epoch)")
        kwargs["timestamp"] = data["timestamp"]
    if "media_type" not in kwargs and "payload" in data and not isinstance(data["payload"], str):
        kwargs["media_type"] = MediaType.JSON
    artifact = Artifact.new(payload, meta=_meta_from_json(data.get("meta")), **kwargs)
    claimed = data.get("checksum")
    if claimed is not None and (
        not isinstance(claimed, str) or claimed.lower() != artifact.checksum.hex()
    ):
        raise InvalidArtifact(
            "field 'checksum' is not the SHA-256 of the payload (leave it out to have it set)"
        )
    extra: dict[str, Any] = {
        n: _unb64(data[n], n) for n in _OPTIONAL_BYTES if data.get(n) is not None}
    if data.get("approvals"):
        extra["approvals"] = _approvals_from_json(data["approvals"])
    return artifact.with_fields(**extra) if extra else artifact


def _approvals_from_json(raw: object) -> list[tuple[str, bytes, int]]:
    if not isinstance(raw, list):
        raise InvalidArtifact("field 'approvals' must be a list")
    out: list[tuple[str, bytes, int]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("key_id"), str) or (
                type(item.get("timestamp")) is not int):
            raise InvalidArtifact(f"approvals[{i}] must be an object with key_id (text), "
                                  "signature (base64) and timestamp (an integer)")
        out.append((item["key_id"], _unb64(item.get("signature", ""), f"approvals[{i}]"),
                    item["timestamp"]))
    return out


def artifact_from_json(line: str) -> Artifact:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidArtifact(f"not valid JSON: {exc.msg} at column {exc.colno}") from exc
    return artifact_from_json_dict(data)
