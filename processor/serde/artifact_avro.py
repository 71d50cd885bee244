"""The specialised encoder and decoder for the packaged artifact schema.

Installing the package compiles this module with mypyc (`setup.py`; `processor.serde.fast`
chooses the compiled extension or this source), so it stays strictly typed, plain Python
that mypyc can compile: no dynamic tricks, annotations it can trust.

`Codec` (in `processor.serde.codec`, through `processor.serde.fast`) uses them when its
schema has the packaged schema's parsing canonical form (it checks by fingerprint) and the
data was written with it; every other case goes through fastavro. They are written out for
`artifact.avsc` field by field, following the Avro specification's binary encoding:
strings and bytes are a zigzag-varint length then the content; a long is a zigzag varint;
the meta map is blocks of (count, key/value pairs) ended by a 0 count (a negative count is
followed by the block's size in bytes); a union is its branch index (a long) then the
value.

* `encode` writes exactly what fastavro's `schemaless_writer` writes, and raises (anything)
  for whatever it does not handle exactly (a value of an unusual type, an int beyond 64
  bits): the codec then falls back to fastavro, which encodes it or says why it cannot.
* `decode` reads what fastavro's `schemaless_reader` reads and is at least as strict: it
  also rejects varints over 10 bytes or 64 bits and boolean bytes other than 0 and 1. Only
  `ProcessorError`s (`DecodeError`, `ChecksumMismatch`) come out of it.

Framing costs no copy: `encode(artifact, prefix)` writes the prefix (the Confluent wire
format's magic byte and schema id) in the same join, and `decode(data, start)` reads the
record from an offset. `decode(data, legacy=True)` reads bytes written with version 1 of
the schema (`artifact.v1.avsc`: the same fields up to `signature`, none of version 2's)
and gives version 2's fields their defaults, which is what Avro's schema resolution of a
version 1 writer into the version 2 reader gives.

Both are tested byte for byte against fastavro (`tests/unit/test_codec_fast.py`), and the
compiled module against this source (`tests/unit/test_codec_compiled.py`). Per ~300-byte
artifact, best of 5 x 200,000 calls in one run on the development machine
(`benchmarks/codec_micro.py`): decode 5.65 us as source, 1.85 us compiled (fastavro's
schemaless_reader 6.35 us); encode 4.59 us as source, 2.37 us compiled (fastavro 7.83 us).
Compiled, a direct `parts.append(...)` and `text.encode()` are C calls where a bound
method kept in a local (the usual interpreter idiom) is a generic Python call.
"""

from __future__ import annotations

import hashlib
import struct
from types import MappingProxyType
from typing import Any, Final

from processor.core.artifact import Approval, Artifact, MetaValue
from processor.core.errors import ChecksumMismatch, DecodeError

_sha256: Final = hashlib.sha256

_verified: tuple[bytes, bytes] = (b"", _sha256(b"").digest())
"""The payload `decode` verified last, and its digest. A stage decodes a record, and its
handler mostly returns an artifact with the same payload object for `encode`, which then
need not hash it again: SHA-256 was about 0.44 us of the 2.5 us an encode took. bytes are
immutable, so the same object has the same digest; the pair is one object, replaced
whole, so a reader in another thread never sees one payload's digest with another."""

# What fastavro raises on bytes that are not a valid encoding of the schema.
READ_ERRORS: Final = (
    EOFError,
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    struct.error,
)


def checksum_mismatch(artifact: Artifact) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"artifact {artifact.id!r}: checksum {artifact.checksum.hex() or '(empty)'} is not "
        f"the SHA-256 of its {len(artifact.payload)}-byte payload"
    )


def read_failure(exc: BaseException, size: int) -> str:
    if isinstance(exc, EOFError):
        return f"truncated artifact: input ended early ({size} bytes): {exc}"
    return f"not an Avro-encoded artifact ({size} bytes): {type(exc).__name__}: {exc}"


_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1
# The varint of a length (or of a long) 0..63: zigzag doubles it, one byte.
_SMALL: Final = tuple(bytes((i << 1,)) for i in range(64))
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_tuple_new: Final = tuple.__new__
_EXACT_MAPS: Final = (dict, MappingProxyType)
_V2_DEFAULTS: Final[tuple[tuple[Approval, ...], None, None]] = ((), None, None)
"""The defaults of version 2's fields: no approvals, no pseudonym hash, no Merkle root."""


def _varint(value: int) -> bytes:
    """The zigzag varint of a long; OverflowError beyond 64 bits (fastavro then decides)."""
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise OverflowError(f"{value} does not fit in an Avro long")
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = [n & 0x7F | 0x80]
    n >>= 7
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(artifact: Artifact, prefix: bytes = b"") -> bytes:
    """`prefix`, then what fastavro's schemaless_writer writes for `artifact` (checksum set
    from payload).

    Raises (anything) for whatever it does not handle exactly: a type other than the exact
    wire type, an int beyond 64 bits... The codec then falls back to fastavro, which
    encodes it the way it always did or raises `EncodeError`.
    """
    (
        id_, timestamp, media_type, role, scope, origin, issuer, state,
        meta, payload, _, encrypted_payload, encrypted_key, ephemeral_public_key, signature,
        approvals, pseudonym_hash, merkle_root,
    ) = artifact  # fmt: skip
    small = _SMALL
    parts: list[bytes] = [prefix]
    data = id_.encode()
    size = len(data)
    parts.append(small[size] if size < 64 else _varint(size))
    parts.append(data)
    if type(timestamp) is not int:
        raise TypeError("timestamp is not an int")
    parts.append(small[timestamp] if 0 <= timestamp < 64 else _varint(timestamp))
    for field in (media_type, role, scope, origin, issuer, state):
        data = field.encode()
        size = len(data)
        parts.append(small[size] if size < 64 else _varint(size))
        parts.append(data)
    if type(meta) not in _EXACT_MAPS:
        raise TypeError("meta is not a dict or a mapping proxy")
    item: Any
    if meta:
        size = len(meta)
        parts.append(small[size] if size < 64 else _varint(size))
        for key, item in meta.items():
            data = key.encode()
            size = len(data)
            parts.append(small[size] if size < 64 else _varint(size))
            parts.append(data)
            kind = type(item)
            # Branches: 0 string, 1 boolean, 2 long, 3 double, 4 bytes (zigzag: 0 2 4 6 8).
            if kind is str:
                data = item.encode()
                size = len(data)
                parts.append(b"\x00" + small[size] if size < 64 else b"\x00" + _varint(size))
                parts.append(data)
            elif kind is int:
                parts.append(b"\x04" + small[item] if 0 <= item < 64 else b"\x04" + _varint(item))
            elif kind is bool:
                parts.append(b"\x02\x01" if item else b"\x02\x00")
            elif kind is float:
                parts.append(b"\x06" + _pack_double(item))
            elif kind is bytes:
                size = len(item)
                parts.append(b"\x08" + small[size] if size < 64 else b"\x08" + _varint(size))
                parts.append(item)
            else:
                raise TypeError(f"meta item of type {kind.__name__}")
    parts.append(b"\x00")
    if type(payload) is not bytes:
        raise TypeError("payload is not bytes")
    size = len(payload)
    parts.append(small[size] if size < 64 else _varint(size))
    parts.append(payload)
    parts.append(b"\x40")  # 32, the length of a SHA-256 digest
    verified = _verified
    parts.append(verified[1] if verified[0] is payload else _sha256(payload).digest())
    for blob in (encrypted_payload, encrypted_key, ephemeral_public_key, signature):
        if blob is None:
            parts.append(b"\x00")
        elif type(blob) is bytes:
            size = len(blob)
            parts.append(b"\x02" + small[size] if size < 64 else b"\x02" + _varint(size))
            parts.append(blob)
        else:
            raise TypeError("an optional bytes field is neither None nor bytes")
    if not approvals and pseudonym_hash is None and merkle_root is None:
        parts.append(b"\x00\x00\x00")  # no approvals, two nulls: the common case
        return b"".join(parts)
    if type(approvals) is not tuple:
        raise TypeError("approvals is not a tuple")
    if approvals:
        size = len(approvals)
        parts.append(small[size] if size < 64 else _varint(size))
        for approval in approvals:
            if type(approval) is not Approval:
                raise TypeError("an approval is not an Approval")
            key_id, approval_signature, approved_at = approval
            data = key_id.encode()
            size = len(data)
            parts.append(small[size] if size < 64 else _varint(size))
            parts.append(data)
            if type(approval_signature) is not bytes or type(approved_at) is not int:
                raise TypeError("an approval's signature or timestamp has the wrong type")
            size = len(approval_signature)
            parts.append(small[size] if size < 64 else _varint(size))
            parts.append(approval_signature)
            parts.append(small[approved_at] if 0 <= approved_at < 64 else _varint(approved_at))
    parts.append(b"\x00")
    for blob in (pseudonym_hash, merkle_root):
        if blob is None:
            parts.append(b"\x00")
        elif type(blob) is bytes:
            size = len(blob)
            parts.append(b"\x02" + small[size] if size < 64 else b"\x02" + _varint(size))
            parts.append(blob)
        else:
            raise TypeError("an optional bytes field is neither None nor bytes")
    return b"".join(parts)


def _truncated(size: int) -> DecodeError:
    return DecodeError(f"truncated artifact: input ended early ({size} bytes)")


def _long_at(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint long at `pos`, and the position after it (any length, strict)."""
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift > 63:
            raise DecodeError(f"a varint at byte {pos - 11} is longer than 10 bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
    if value >> 64:
        raise DecodeError(f"a varint ending at byte {pos} does not fit in 64 bits")
    return (value >> 1) ^ -(value & 1), pos


def _length_at(data: bytes, pos: int) -> tuple[int, int]:
    """The length (of a string or bytes) at `pos`, and the position after it."""
    size, after = _long_at(data, pos)
    if size < 0:
        raise DecodeError(f"negative length {size} at byte {pos}")
    return size, after


def _branch_at(data: bytes, pos: int, branches: int) -> tuple[int, int]:
    """A union's branch index at `pos` as its zigzag byte (0, 2, 4...), and the position."""
    index, after = _long_at(data, pos)
    if not 0 <= index < branches:
        raise DecodeError(f"union branch {index} at byte {pos} is not one of 0..{branches - 1}")
    return index << 1, after


def decode(data: bytes | bytearray | memoryview, start: int = 0, *,
           legacy: bool = False) -> Artifact:
    """Decode what the packaged schema wrote, from byte `start` on (`legacy`: what its
    version 1 wrote); only `ProcessorError`s escape."""
    # `_decode` takes exactly `bytes`: compiled, its indexing and slicing are then direct.
    return _decode(data if type(data) is bytes else bytes(data), start, legacy)


def _decode(data: bytes, start: int, legacy: bool) -> Artifact:
    # Every read is written out: a 1-byte varint inline (for a length: `byte & 0x81 == 0`,
    # below 0x80 and even, so not negative), longer ones through `_long_at`. A slice does
    # not raise past the end, so each one checks its end against the size first.
    try:
        n = len(data)
        byte = data[start]
        if byte & 0x81:
            size, pos = _length_at(data, start)
        else:
            size, pos = byte >> 1, start + 1
        end = pos + size
        if end > n:
            raise _truncated(n)
        id_ = data[pos:end].decode()
        pos = end
        byte = data[pos]
        if byte < 0x80:
            timestamp = (byte >> 1) ^ -(byte & 1)
            pos += 1
        else:
            timestamp, pos = _long_at(data, pos)
        texts: list[str] = []
        for _ in range(6):
            byte = data[pos]
            if byte & 0x81:
                size, pos = _length_at(data, pos)
            else:
                size = byte >> 1
                pos += 1
            end = pos + size
            if end > n:
                raise _truncated(n)
            texts.append(data[pos:end].decode())
            pos = end
        meta: dict[str, MetaValue] = {}
        while True:
            byte = data[pos]
            if byte < 0x80:
                count = (byte >> 1) ^ -(byte & 1)
                pos += 1
            else:
                count, pos = _long_at(data, pos)
            if not count:
                break
            if count < 0:  # a negative count is followed by the block's size in bytes
                count = -count
                block, after = _long_at(data, pos)
                if not 0 <= block <= n - after:
                    raise DecodeError(f"map block size {block} at byte {pos} is out of range")
                pos = after
            for _ in range(count):
                byte = data[pos]
                if byte & 0x81:
                    size, pos = _length_at(data, pos)
                else:
                    size = byte >> 1
                    pos += 1
                end = pos + size
                if end > n:
                    raise _truncated(n)
                key = data[pos:end].decode()
                pos = end
                branch = data[pos]
                if branch < 0x80:
                    pos += 1
                else:
                    branch, pos = _branch_at(data, pos, 5)
                if branch == 0 or branch == 8:  # string, bytes
                    byte = data[pos]
                    if byte & 0x81:
                        size, pos = _length_at(data, pos)
                    else:
                        size = byte >> 1
                        pos += 1
                    end = pos + size
                    if end > n:
                        raise _truncated(n)
                    meta[key] = data[pos:end].decode() if branch == 0 else data[pos:end]
                    pos = end
                elif branch == 4:  # long
                    byte = data[pos]
                    if byte < 0x80:
                        meta[key] = (byte >> 1) ^ -(byte & 1)
                        pos += 1
                    else:
                        meta[key], pos = _long_at(data, pos)
                elif branch == 2:  # boolean: one byte, 0 or 1
                    byte = data[pos]
                    if byte > 1:
                        raise DecodeError(f"boolean byte {byte} at {pos} is neither 0 nor 1")
                    meta[key] = byte == 1
                    pos += 1
                elif branch == 6:  # double: 8 bytes, little-endian
                    if pos + 8 > n:
                        raise _truncated(n)
                    meta[key] = _unpack_double(data, pos)[0]
                    pos += 8
                else:
                    raise DecodeError(f"meta value union branch byte {branch} at {pos - 1} is bad")
        blobs: list[bytes] = []
        for _ in range(2):  # payload, checksum
            byte = data[pos]
            if byte & 0x81:
                size, pos = _length_at(data, pos)
            else:
                size = byte >> 1
                pos += 1
            end = pos + size
            if end > n:
                raise _truncated(n)
            blobs.append(data[pos:end])
            pos = end
        optional: list[bytes | None] = []
        for _ in range(4):  # ["null", "bytes"]
            branch = data[pos]
            if branch < 0x80:
                pos += 1
            else:
                branch, pos = _branch_at(data, pos, 2)
            if branch == 0:
                optional.append(None)
            elif branch == 2:
                byte = data[pos]
                if byte & 0x81:
                    size, pos = _length_at(data, pos)
                else:
                    size = byte >> 1
                    pos += 1
                end = pos + size
                if end > n:
                    raise _truncated(n)
                optional.append(data[pos:end])
                pos = end
            else:
                raise DecodeError(f"optional field union branch byte {branch} at {pos - 1} is bad")
        tail: tuple[tuple[Approval, ...], bytes | None, bytes | None] = _V2_DEFAULTS
        if legacy:
            pass  # version 1 ends here: version 2's fields take their defaults
        elif data[pos] == 0 and data[pos + 1] == 0 and data[pos + 2] == 0:
            pos += 3  # no approvals, two nulls: the common case
        else:
            approvals, pos = _approvals_at(data, pos, n)
            hashes: list[bytes | None] = []
            pos = _optionals_at(data, pos, n, hashes)
            tail = (approvals, hashes[0], hashes[1])
        if pos != n:
            raise DecodeError(
                f"{n - pos} trailing bytes after a {pos - start}-byte "
                "artifact: one message must hold exactly one record"
            )
        # Written out, not unpacked with `*`: compiled, a display of fixed length is one
        # tuple filled in place, where unpacking built and grew a list first.
        artifact: Artifact = _tuple_new(Artifact, (
            id_, timestamp, texts[0], texts[1], texts[2], texts[3], texts[4], texts[5],
            MappingProxyType(meta), blobs[0], blobs[1],
            optional[0], optional[1], optional[2], optional[3], tail[0], tail[1], tail[2],
        ))
        if _sha256(blobs[0]).digest() != blobs[1]:
            raise checksum_mismatch(artifact)
        global _verified
        _verified = (blobs[0], blobs[1])
        return artifact

    except IndexError as exc:  # a single-byte read past the end
        raise _truncated(len(data)) from exc
    except READ_ERRORS as exc:  # invalid UTF-8, mostly
        raise DecodeError(read_failure(exc, len(data))) from exc


def _approvals_at(data: bytes, pos: int, n: int) -> tuple[tuple[Approval, ...], int]:
    """The approvals array at `pos` (blocks of records, ended by a 0 count), and the
    position after it."""
    byte = data[pos]
    if not byte:
        return (), pos + 1
    out: list[Approval] = []
    while True:
        count, pos = _long_at(data, pos)
        if not count:
            return tuple(out), pos
        if count < 0:  # a negative count is followed by the block's size in bytes
            count = -count
            block, after = _long_at(data, pos)
            if not 0 <= block <= n - after:
                raise DecodeError(f"array block size {block} at byte {pos} is out of range")
            pos = after
        for _ in range(count):
            size, pos = _length_at(data, pos)
            end = pos + size
            if end > n:
                raise _truncated(n)
            key_id = data[pos:end].decode()
            size, pos = _length_at(data, end)
            end = pos + size
            if end > n:
                raise _truncated(n)
            signature = data[pos:end]
            approved_at, pos = _long_at(data, end)
            out.append(Approval(key_id, signature, approved_at))


def _optionals_at(data: bytes, pos: int, n: int, optional: list[bytes | None]) -> int:
    """Append the two ["null", "bytes"] fields at `pos` to `optional`; returns the position
    after them."""
    for _ in range(2):
        branch, pos = _branch_at(data, pos, 2)
        if branch == 0:
            optional.append(None)
        else:
            size, pos = _length_at(data, pos)
            end = pos + size
            if end > n:
                raise _truncated(n)
            optional.append(data[pos:end])
            pos = end
    return pos

