"""The bytes of state: keys, values with their expiry time, and the source header.

* A **state key** is `k` + the record key's length (4 bytes, big-endian) + the record
  key + the name, UTF-8; a record without a key has length 0xFFFFFFFF. A **dedup key** is
  `d` + the artifact's id. Keys starting with a zero byte are the store's own (its
  checkpoint).
* A **stored value** is its expiry time (8 bytes, big-endian milliseconds since the
  epoch, 0 for never), a tag (`j`: JSON follows, `b`: raw bytes follow), the payload. The
  changelog carries the same bytes, so a recovered entry keeps its expiry time.
* The changelog's **source header** (`processor.state.source`) says which input record
  wrote it: `topic:partition:offset`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from processor.core.errors import InvalidArtifact

SOURCE_HEADER = "processor.state.source"
NO_KEY = 0xFFFFFFFF
_EXPIRY = struct.Struct(">q")
_LEN = struct.Struct(">I")
JSON_TAG = ord("j")
BYTES_TAG = ord("b")


def state_key(record_key: bytes | None, name: str) -> bytes:
    if record_key is None:
        return b"k" + _LEN.pack(NO_KEY) + name.encode()
    return b"k" + _LEN.pack(len(record_key)) + record_key + name.encode()


def parse_state_key(key: bytes) -> tuple[bytes | None, str] | None:
    """(record key, name) of a state key; None for another kind of key (dedup)."""
    if not key.startswith(b"k") or len(key) < 5:
        return None
    size = _LEN.unpack_from(key, 1)[0]
    if size == NO_KEY:
        return None, key[5:].decode()
    return key[5:5 + size], key[5 + size:].decode()


def dedup_key(artifact_id: str) -> bytes:
    return b"d" + artifact_id.encode()


def encode_value(value: Any, expires_ms: int = 0) -> bytes:
    """The stored bytes of `value` (JSON, or bytes as they are)."""
    head = _EXPIRY.pack(expires_ms)
    if isinstance(value, bytes | bytearray | memoryview):
        return head + b"b" + bytes(value)
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArtifact(f"a state value must be JSON or bytes: {exc}") from exc
    return head + b"j" + text.encode()


def decode_value(raw: bytes) -> Any:
    if raw[8] == BYTES_TAG:
        return raw[9:]
    return json.loads(raw[9:])


def expires(raw: bytes) -> int:
    """The expiry time of stored bytes, in epoch milliseconds (0: never)."""
    return int(_EXPIRY.unpack_from(raw)[0])


def is_live(raw: bytes, now_ms: int) -> bool:
    at = expires(raw)
    return at == 0 or at > now_ms


def source_header(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}:{offset}".encode()


def source_offset(headers: list[tuple[str, bytes]] | None) -> int | None:
    """The input offset a changelog record's source header names (None: no header)."""
    for name, value in headers or ():
        if name == SOURCE_HEADER:
            try:
                return int(value.rsplit(b":", 1)[1])
            except (IndexError, ValueError):
                return None
    return None
