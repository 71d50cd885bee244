"""Sealed payloads: X25519 with an ephemeral key, HKDF-SHA256 and AES-256-GCM.

Sealing an artifact for one or more recipients (X25519 public keys with ids):

1. a random 256-bit content key `K` and a random 96-bit nonce `n` encrypt the payload:
   `encrypted_payload = n || AES-256-GCM(K, n, payload, aad)`;
2. one ephemeral X25519 key pair `e` per artifact; `ephemeral_public_key = e.public`;
3. for each recipient `r`: `okm = HKDF-SHA256(X25519(e, r), salt=none,
   info="processor-seal-v1" || e.public || r.public, 44 bytes)`; the first 32 bytes are the
   key-wrapping key, the last 12 its nonce (each is used once: `e` is fresh), and
   `wrapped_r = AES-256-GCM(okm[:32], okm[32:], K, aad)`. `encrypted_key` lists
   `(r.id, wrapped_r)` for every recipient: the content key is never stored raw;
4. `aad` is `canonical.sealing_aad`: the envelope's id, timestamp, media_type, role,
   scope and origin, the ephemeral public key and the recipients' ids. A sealed payload
   moved into another envelope, or an envelope whose bound fields changed, does not open.

The clear `payload` becomes empty (its `checksum` that of the empty payload), the
signature is dropped (the envelope changed; sign after sealing), and a Merkle root, if
present, is recomputed over the encrypted payload (`merkle` says why).

`encrypted_key` layout: version byte 1, u16 count, then per recipient u16 id length, the
id (UTF-8), u16 wrapped length, the wrapped key (48 bytes: 32 + the 16-byte tag): 52
bytes plus the id per recipient. The recipients come in the order `seal` was given them,
the order of the ids in `aad` too. A key id may appear once: `seal` refuses a repeated
one (ValueError), and `open_sealed` refuses an `encrypted_key` that repeats one.

`_seal` takes the random inputs (the ephemeral private key, `K`, `n`) as arguments, so
that the test vectors of docs/security-vectors.json can be recomputed; `seal` draws them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from processor.core.artifact import Artifact, checksum_of
from processor.security.canonical import sealing_aad
from processor.security.errors import SealRefused
from processor.security.keys import OpeningKey, RecipientKey
from processor.security.merkle import merkle_root

WRAP_VERSION: Final = 1
HKDF_INFO: Final = b"processor-seal-v1"
NONCE_SIZE: Final = 12
_U16 = struct.Struct(">H")
_EMPTY_CHECKSUM: Final = checksum_of(b"")


def is_sealed(artifact: Artifact) -> bool:
    return artifact.encrypted_payload is not None


def _wrapping_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=32 + NONCE_SIZE, salt=None,
               info=HKDF_INFO + ephemeral + recipient).derive(shared)
    return okm[:32], okm[32:]


def _pack_keys(entries: Sequence[tuple[str, bytes]]) -> bytes:
    parts = [bytes((WRAP_VERSION,)), _U16.pack(len(entries))]
    for key_id, wrapped in entries:
        encoded = key_id.encode("utf-8")
        parts += [_U16.pack(len(encoded)), encoded, _U16.pack(len(wrapped)), wrapped]
    return b"".join(parts)


def _unpack_keys(data: bytes, what: str) -> list[tuple[str, bytes]]:
    try:
        if data[0] != WRAP_VERSION:
            raise SealRefused(f"{what}: encrypted_key has version {data[0]}, expected "
                              f"{WRAP_VERSION}")
        (count,), at = _U16.unpack_from(data, 1), 3
        entries = []
        for _ in range(count):
            (size,) = _U16.unpack_from(data, at)
            key_id = data[at + 2: at + 2 + size].decode("utf-8")
            at += 2 + size
            (size,) = _U16.unpack_from(data, at)
            entries.append((key_id, data[at + 2: at + 2 + size]))
            at += 2 + size
        if at != len(data):
            raise ValueError("trailing bytes")
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise SealRefused(f"{what}: encrypted_key is malformed ({exc})") from None
    return entries


def seal(artifact: Artifact, recipients: Sequence[RecipientKey]) -> Artifact:
    """A copy of `artifact` whose payload only `recipients` can open."""
    if not recipients:
        raise ValueError("sealing needs at least one recipient")
    ids = tuple(r.id for r in recipients)
    if len(set(ids)) != len(ids):
        raise ValueError(f"recipient key ids repeat: {', '.join(ids)}")
    if is_sealed(artifact):
        raise SealRefused(f"artifact {artifact.id} is sealed already")
    return _seal(artifact, recipients, X25519PrivateKey.generate(),
                 AESGCM.generate_key(bit_length=256), os.urandom(NONCE_SIZE))


def _seal(artifact: Artifact, recipients: Sequence[RecipientKey],
          ephemeral: X25519PrivateKey, content_key: bytes, nonce: bytes) -> Artifact:
    """`seal` with its random inputs given: the ephemeral key `e`, the content key `K`
    and the payload's nonce `n`. Never reuse them: only `seal` and the test vectors call
    this."""
    if len(content_key) != 32 or len(nonce) != NONCE_SIZE:
        raise ValueError("the content key is 32 bytes and the nonce 12")
    ids = tuple(r.id for r in recipients)
    epk = ephemeral.public_key().public_bytes_raw()
    aad = sealing_aad(artifact, epk, ids)
    wrapped = []
    for r in recipients:
        kek, wrap_nonce = _wrapping_key(ephemeral.exchange(r.public), epk, r.public_bytes())
        wrapped.append((r.id, AESGCM(kek).encrypt(wrap_nonce, content_key, aad)))
    ciphertext = nonce + AESGCM(content_key).encrypt(nonce, artifact.payload, aad)
    return artifact._replace(
        payload=b"", checksum=_EMPTY_CHECKSUM, encrypted_payload=ciphertext,
        encrypted_key=_pack_keys(wrapped), ephemeral_public_key=epk, signature=None,
        merkle_root=None if artifact.merkle_root is None else merkle_root(ciphertext))


def recipients_of(artifact: Artifact) -> list[str]:
    """The key ids a sealed artifact was sealed for."""
    if artifact.encrypted_key is None:
        return []
    return [key_id for key_id, _ in _unpack_keys(artifact.encrypted_key, artifact.id)]


def open_sealed(artifact: Artifact, key: OpeningKey) -> Artifact:
    """A copy of a sealed `artifact` with its payload opened by `key` (an artifact that is
    not sealed is returned as is). SealRefused when it was not sealed for `key`'s id, the
    key is not the one it was sealed for, or the payload or a bound envelope field
    changed."""
    ciphertext = artifact.encrypted_payload
    if ciphertext is None:
        return artifact
    what = f"artifact {artifact.id}"
    epk = artifact.ephemeral_public_key
    if artifact.encrypted_key is None or epk is None or len(epk) != 32:
        raise SealRefused(f"{what}: sealed, but encrypted_key or ephemeral_public_key is "
                          "missing or malformed")
    entries = _unpack_keys(artifact.encrypted_key, what)
    ids = tuple(key_id for key_id, _ in entries)
    if len(set(ids)) != len(ids):
        raise SealRefused(f"{what}: encrypted_key names a key id more than once "
                          f"({', '.join(ids)})")
    wrapped = dict(entries).get(key.id)
    if wrapped is None:
        raise SealRefused(f"{what} is not sealed for key {key.id!r} (sealed for "
                          f"{', '.join(ids) or 'nobody'})")
    aad = sealing_aad(artifact, epk, ids)
    try:
        shared = key.private.exchange(X25519PublicKey.from_public_bytes(epk))
        kek, nonce = _wrapping_key(shared, epk, key.public_bytes())
        content_key = AESGCM(kek).decrypt(nonce, wrapped, aad)
    except (InvalidTag, ValueError):
        raise SealRefused(f"{what}: the content key does not open with key {key.id!r} (a "
                          "different key under that id, or the envelope changed)") from None
    try:
        payload = AESGCM(content_key).decrypt(ciphertext[:NONCE_SIZE],
                                              ciphertext[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError):
        raise SealRefused(f"{what}: the sealed payload does not open (changed, or moved "
                          "from another envelope)") from None
    return artifact._replace(
        payload=payload, checksum=checksum_of(payload), encrypted_payload=None,
        encrypted_key=None, ephemeral_public_key=None, signature=None,
        merkle_root=None if artifact.merkle_root is None else merkle_root(payload))
