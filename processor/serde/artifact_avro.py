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
compiled module against this source (`tests/unit/test_codec_compiled.py`), including every
mix of fields copied from the last decoded record and fields written out.

`encode` copies rather than writes the fields an artifact shares with the one `decode`
returned last (`_source`): a stage's transform mostly changes a field or two and keeps
the others, payload included, as the very same objects. Per ~300-byte artifact, best of
5 x 200,000 calls, in one run each on the development machine (`benchmarks/codec_micro.py`):

| compiled | before | now |
|---|---:|---:|
| decode | 1.68 us | 1.67 us |
| encode, every field written | 2.45 us | 1.68 us |
| decode, `with_meta` + `with_state`, encode (a stage's transform) | 5.00 us | 4.12 us |

fastavro's schemaless_reader takes 6.9 us and its writer 8.3 us. Compiled, a direct
`parts.append(...)` and `text.encode()` are C calls where a bound method kept in a local
(the usual interpreter idiom) is a generic Python call; iterating a `dict[str, Any]` is
direct where a mapping proxy's items() is generic.
"""

from __future__ import annotations

import hashlib
import struct
from types import MappingProxyType
from typing import Any, Final

from processor.core.artifact import Approval, Artifact, MetaValue
from processor.core.errors import ChecksumMismatch, DecodeError

_sha256: Final = hashlib.sha256

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
_ONE_BYTE: Final = tuple(bytes((i,)) for i in range(128))
_TAGGED: Final = 1 << 60
"""Longs of magnitude below this take `_varint`'s fast path (see there)."""
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_tuple_new: Final = tuple.__new__
_EXACT_MAPS: Final = (dict, MappingProxyType)
_V2_DEFAULTS: Final[tuple[tuple[Approval, ...], None, None]] = ((), None, None)
"""The defaults of version 2's fields: no approvals, no pseudonym hash, no Merkle root."""


def _placeholder() -> tuple[Artifact, bytes, int, int, int, int, int]:
    """`_source` while the module sets it up (see its end): an artifact whose first field
    in each of `encode`'s runs (id, state, meta, payload, encrypted_payload) is a new
    object no other artifact holds, so `encode` writes every run out. Strings and bytes of
    length 2 or more: CPython shares the empty and the one-character ones."""
    text = "".join(["no ", "record"])
    blob = bytes(bytearray(2))
    return (_tuple_new(Artifact, (text, -1, text, text, text, text, text, text,
                                  MappingProxyType({}), blob, blob, blob, None, None, None,
                                  (), None, None)), b"", 0, 0, 0, 0, 0)


_source: tuple[Artifact, bytes, int, int, int, int, int] = _placeholder()
"""The artifact `decode` returned last, the bytes it read it from, and where in them its
runs of fields start: (artifact, data, start, state_at, meta_at, payload_at, optional_at),
the record from `start` to the end of `data`. A stage decodes a record, and its handler
mostly returns an artifact that shares most field objects with it (`with_meta`,
`with_state` copy the others as they are); `encode` copies the bytes of a run whose fields
are all the very objects (`is`) of this artifact instead of writing them out again. The
same object holds the same value, which has one encoding, so this is right whichever
artifact the encoded one came from. The payload's run holds the checksum `decode`
verified, so an unchanged payload is not hashed again. The memo is one tuple, replaced
whole, so a reader in another thread never sees one record's offsets with another's
bytes."""


def _varint(value: int) -> bytes:
    """The zigzag varint of a long; OverflowError beyond 64 bits (fastavro then decides)."""
    if -_TAGGED < value < _TAGGED:
        # Compiled, these ints stay machine words (no 64-bit constants, which are boxed),
        # and int.to_bytes is one C call: 0.09 us for a timestamp, where a list of bytes
        # took 0.21 us.
        n = value << 1 if value >= 0 else ((-value) << 1) - 1
        if n < 0x80:
            return _ONE_BYTE[n]
        word = 0
        shift = 0
        while n >= 0x80:
            word |= (n & 0x7F | 0x80) << shift
            shift += 8
            n >>= 7
        word |= n << shift
        return word.to_bytes((shift >> 3) + 1, "little")
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise OverflowError(f"{value} does not fit in an Avro long")
    n = (value << 1) ^ (value >> 63)
    out = [n & 0x7F | 0x80]
    n >>= 7
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _put_text(parts: list[bytes], text: str) -> None:
    data = text.encode()
    size = len(data)
    parts.append(_SMALL[size] if size < 64 else _varint(size))
    parts.append(data)


def _put_meta(parts: list[bytes], meta: Any) -> None:
    kind = type(meta)
    # Compiled, iterating a `dict[str, Any]` is direct; a mapping proxy's items() went
    # through the generic protocol at twice the cost of copying the dict behind it first.
    entries: dict[str, Any]
    if kind is MappingProxyType:
        entries = meta.copy()
    elif kind is dict:
        entries = meta
    else:
        raise TypeError("meta is not a dict or a mapping proxy")
    small = _SMALL
    if entries:
        size = len(entries)
        parts.append(small[size] if size < 64 else _varint(size))
        for key, item in entries.items():
            data = key.encode()
            size = len(data)
            parts.append(small[size] if size < 64 else _varint(size))
            parts.append(data)
            kind = type(item)
            # Branches: 0 string, 1 boolean, 2 long, 3 double, 4 bytes (zigzag: 0 2 4 6 8).
            if kind is str:
                text: str = item
                data = text.encode()
                size = len(data)
                parts.append(b"\x00")
                parts.append(small[size] if size < 64 else _varint(size))
                parts.append(data)
            elif kind is int:
                number: int = item
                parts.append(b"\x04")
                parts.append(small[number] if 0 <= number < 64 else _varint(number))
            elif kind is bool:
                parts.append(b"\x02\x01" if item else b"\x02\x00")
            elif kind is float:
                parts.append(b"\x06")
                parts.append(_pack_double(item))
            elif kind is bytes:
                blob: bytes = item
                size = len(blob)
                parts.append(b"\x08")
                parts.append(small[size] if size < 64 else _varint(size))
                parts.append(blob)
            else:
                raise TypeError(f"meta item of type {kind.__name__}")
    parts.append(b"\x00")


def _put_optional(parts: list[bytes], blob: bytes | None) -> None:
    """A ["null", "bytes"] union."""
    if blob is None:
        parts.append(b"\x00")
    elif type(blob) is bytes:
        size = len(blob)
        parts.append(b"\x02" + _SMALL[size] if size < 64 else b"\x02" + _varint(size))
        parts.append(blob)
    else:
        raise TypeError("an optional bytes field is neither None nor bytes")


def _put_tail(parts: list[bytes], approvals: Any, pseudonym_hash: bytes | None,
              merkle_root: bytes | None) -> None:
    """Version 2's fields: the approvals array and the two optional hashes."""
    if not approvals and pseudonym_hash is None and merkle_root is None:
        parts.append(b"\x00\x00\x00")  # no approvals, two nulls: the common case
        return
    if type(approvals) is not tuple:
        raise TypeError("approvals is not a tuple")
    small = _SMALL
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
    _put_optional(parts, pseudonym_hash)
    _put_optional(parts, merkle_root)


def encode(artifact: Artifact, prefix: bytes = b"") -> bytes:
    """`prefix`, then what fastavro's schemaless_writer writes for `artifact` (checksum set
    from payload).

    The fields of `artifact` that are the very objects (`is`) of the artifact `decode`
    returned last are copied as that record's bytes, in up to four runs (see `_source`);
    the others are written out.

    Raises (anything) for whatever it does not handle exactly: a type other than the exact
    wire type, an int beyond 64 bits... The codec then falls back to fastavro, which
    encodes it the way it always did or raises `EncodeError`.
    """
    (
        id_, timestamp, media_type, role, scope, origin, issuer, state,
        meta, payload, _, encrypted_payload, encrypted_key, ephemeral_public_key, signature,
        approvals, pseudonym_hash, merkle_root,
    ) = artifact  # fmt: skip
    if type(timestamp) is not int:
        raise TypeError("timestamp is not an int")
    parts: list[bytes] = [prefix]
    (seen, data, start, state_at, meta_at, payload_at, optional_at) = _source
    (
        s_id, s_timestamp, s_media_type, s_role, s_scope, s_origin, s_issuer, s_state,
        s_meta, s_payload, _, s_encrypted_payload, s_encrypted_key, s_ephemeral_public_key,
        s_signature, s_approvals, s_pseudonym_hash, s_merkle_root,
    ) = seen  # fmt: skip
    if (id_ is s_id and timestamp == s_timestamp and media_type is s_media_type
            and role is s_role and scope is s_scope and origin is s_origin
            and issuer is s_issuer):
        parts.append(data[start:state_at])
    else:
        _put_text(parts, id_)
        parts.append(_SMALL[timestamp] if 0 <= timestamp < 64 else _varint(timestamp))
        _put_text(parts, media_type)
        _put_text(parts, role)
        _put_text(parts, scope)
        _put_text(parts, origin)
        _put_text(parts, issuer)
    if state is s_state:
        parts.append(data[state_at:meta_at])
    else:
        _put_text(parts, state)
    if meta is s_meta:
        parts.append(data[meta_at:payload_at])
    else:
        _put_meta(parts, meta)
    if payload is s_payload:  # with the digest `decode` verified
        parts.append(data[payload_at:optional_at])
    else:
        _put_payload(parts, payload)
    if (encrypted_payload is s_encrypted_payload and encrypted_key is s_encrypted_key
            and ephemeral_public_key is s_ephemeral_public_key and signature is s_signature
            and approvals is s_approvals and pseudonym_hash is s_pseudonym_hash
            and merkle_root is s_merkle_root):
        parts.append(data[optional_at:])
    else:
        _put_optional(parts, encrypted_payload)
        _put_optional(parts, encrypted_key)
        _put_optional(parts, ephemeral_public_key)
        _put_optional(parts, signature)
        _put_tail(parts, approvals, pseudonym_hash, merkle_root)
    return b"".join(parts)


def _put_payload(parts: list[bytes], payload: bytes) -> None:
    """The payload and its checksum, the SHA-256 digest of it."""
    if type(payload) is not bytes:
        raise TypeError("payload is not bytes")
    size = len(payload)
    parts.append(_SMALL[size] if size < 64 else _varint(size))
    parts.append(payload)
    parts.append(b"\x40")  # 32, the length of a SHA-256 digest
    parts.append(_sha256(payload).digest())


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
        state_at = pos
        for index in range(6):
            if index == 5:
                state_at = pos
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
        meta_at = pos
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
        payload_at = pos
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
        optional_at = pos
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
        if not legacy:  # a version 1 record's bytes lack version 2's fields
            global _source
            _source = (artifact, data, start, state_at, meta_at, payload_at, optional_at)
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


# From here on `_source` holds what a decode returned: an empty artifact, written out in
# full past the placeholder and read back.
decode(encode(_tuple_new(Artifact, ("", 0, "", "", "", "", "", "", MappingProxyType({}), b"",
                                    _sha256(b"").digest(), None, None, None, None, (), None,
                                    None))))
