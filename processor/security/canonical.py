"""The canonical byte encoding of an artifact: what signatures and approvals cover.

Avro bytes are not canonical (a map's entries may come in any order, and the writer
schema may differ between producers), so signatures cover this encoding instead, which
depends only on the artifact's values. It is written by hand because it is small and
must never change under us: a general canonical serialisation library (deterministic
CBOR, for instance) would tie every signature ever made to that library's rules and
version. docs/security.md specifies it byte by byte; `VERSION` changes if it ever does.

Layout (all integers big-endian):

    magic       4 bytes  b"PRCA"
    version     1 byte   1
    purpose     1 byte   1 signature, 2 approval, 3 sealing (associated data)
    then the fields, in the order of the wire schema, each encoded by its kind:
      text      u32 length, then the UTF-8 bytes
      bytes     u32 length, then the bytes
      long      8 bytes, signed
      optional  1 byte 0 (absent) or 1 (present), then the value
      meta      u32 count, then per entry, sorted by the key's UTF-8 bytes:
                the key as text, a type byte (1 text, 2 boolean, 3 long, 4 double,
                5 bytes), the value (boolean 1 byte 0/1, double 8 bytes IEEE 754)

The signed form (`signed_bytes`) has every field except `signature` and `approvals`:
id, timestamp, media_type, role, scope, origin, issuer, state, meta, payload, checksum,
encrypted_payload, encrypted_key, ephemeral_public_key, pseudonym_hash, merkle_root. An
approval signs the same fields under purpose 2, followed by the approval's timestamp
(long). The sealing form (`sealing_aad`) is the envelope a sealed payload is bound to.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from processor.core.artifact import Artifact, MetaValue
from processor.core.errors import EncodeError

MAGIC: Final = b"PRCA"
VERSION: Final = 1
SIGNATURE: Final = 1
APPROVAL: Final = 2
SEALING: Final = 3

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_ABSENT: Final = b"\x00"
_PRESENT: Final = b"\x01"


def _bytes(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _text(value: str) -> bytes:
    return _bytes(value.encode("utf-8"))


def _long(value: int) -> bytes:
    try:
        return _I64.pack(value)
    except struct.error as exc:
        raise EncodeError(f"{value} does not fit a signed 64-bit integer") from exc


def _optional(value: bytes | None) -> bytes:
    return _ABSENT if value is None else _PRESENT + _bytes(value)


def _meta_value(value: MetaValue) -> bytes:
    # bool before int: a bool is an int in Python.
    if isinstance(value, bool):
        return b"\x02" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return b"\x01" + _text(value)
    if isinstance(value, int):
        return b"\x03" + _long(value)
    if isinstance(value, float):
        return b"\x04" + _F64.pack(value)
    return b"\x05" + _bytes(value)


def _meta(meta: Mapping[str, MetaValue]) -> bytes:
    entries = sorted((key.encode("utf-8"), value) for key, value in meta.items())
    parts = [_U32.pack(len(entries))]
    for key, value in entries:
        parts.append(_bytes(key))
        parts.append(_meta_value(value))
    return b"".join(parts)


def _header(purpose: int) -> bytes:
    return MAGIC + bytes((VERSION, purpose))


def _fields(a: Artifact) -> bytes:
    return b"".join((
        _text(a.id), _long(a.timestamp), _text(a.media_type), _text(a.role),
        _text(a.scope), _text(a.origin), _text(a.issuer), _text(a.state), _meta(a.meta),
        _bytes(a.payload), _bytes(a.checksum), _optional(a.encrypted_payload),
        _optional(a.encrypted_key), _optional(a.ephemeral_public_key),
        _optional(a.pseudonym_hash), _optional(a.merkle_root),
    ))


def signed_bytes(artifact: Artifact) -> bytes:
    """What the issuer's signature covers: every field but `signature` and `approvals`."""
    return _header(SIGNATURE) + _fields(artifact)


def approval_bytes(artifact: Artifact, timestamp: int) -> bytes:
    """What an approval covers: the signed fields (purpose 2) and the approval's time."""
    return _header(APPROVAL) + _fields(artifact) + _long(timestamp)


def sealing_aad(artifact: Artifact, ephemeral_public_key: bytes,
                recipients: tuple[str, ...]) -> bytes:
    """The associated data of a sealed payload: the envelope's identity (id, timestamp,
    media_type, role, scope, origin), the ephemeral public key and the recipients' key
    ids. Moving the payload to another envelope, or changing any of these, fails its
    authentication."""
    return b"".join((
        _header(SEALING), _text(artifact.id), _long(artifact.timestamp),
        _text(artifact.media_type), _text(artifact.role), _text(artifact.scope),
        _text(artifact.origin), _bytes(ephemeral_public_key), _U32.pack(len(recipients)),
        *(_text(r) for r in recipients),
    ))
