"""Merkle roots over an artifact's payload, in chunks of `CHUNK_SIZE` bytes.

Why the payload's chunks, not a batch of artifacts: an artifact travels alone (a record of
its own, signed on its own), and a stage's batches are an accident of polling that no
reader can reconstruct: a root over a batch could be checked by nobody downstream. A root
over the payload's chunks is checkable by anyone holding the artifact, and with an
inclusion proof a reader can check one chunk of a large payload without the others (a
range served from storage, a part split into its own record), against a root the
signature covers.

The tree follows RFC 6962 (Certificate Transparency): a leaf is `SHA-256(0x00 || chunk)`,
an inner node `SHA-256(0x01 || left || right)`, and `n` leaves split at the largest power
of two below `n`. An empty payload has one empty chunk. The root covers the payload as it
travels: the clear payload, or the encrypted payload of a sealed artifact (a root over
the clear text of a sealed artifact would let anyone confirm a guess of it).
"""

from __future__ import annotations

import hashlib
from typing import Final

from processor.core.artifact import Artifact
from processor.security.errors import SignatureRefused

CHUNK_SIZE: Final = 4096


def _leaf(chunk: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + chunk).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def chunks(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def merkle_root(data: bytes, size: int = CHUNK_SIZE) -> bytes:
    """The Merkle root of `data`'s chunks."""
    return _root([_leaf(c) for c in chunks(data, size)])


def _path(index: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_path(index, leaves[:k]), _root(leaves[k:])]
    return [*_path(index - k, leaves[k:]), _root(leaves[:k])]


def inclusion_proof(data: bytes, index: int, size: int = CHUNK_SIZE) -> list[bytes]:
    """The sibling hashes that prove chunk `index` of `data` is under its root."""
    leaves = [_leaf(c) for c in chunks(data, size)]
    if not 0 <= index < len(leaves):
        raise IndexError(f"chunk {index} of {len(leaves)}")
    return _path(index, leaves)


def verify_inclusion(root: bytes, chunk: bytes, index: int, count: int,
                     proof: list[bytes]) -> bool:
    """Whether `chunk`, number `index` of `count`, is under `root` by `proof`."""
    if not 0 <= index < count:
        return False

    def climb(index: int, count: int, proof: list[bytes]) -> bytes | None:
        if count == 1:
            return _leaf(chunk) if not proof else None
        if not proof:
            return None
        k = _split(count)
        sibling, rest = proof[-1], proof[:-1]
        if index < k:
            below = climb(index, k, rest)
            return None if below is None else _node(below, sibling)
        below = climb(index - k, count - k, rest)
        return None if below is None else _node(sibling, below)

    return climb(index, count, proof) == root


def carried_payload(artifact: Artifact) -> bytes:
    """The payload as it travels: the encrypted one if sealed, else the clear one."""
    return artifact.encrypted_payload if artifact.encrypted_payload is not None \
        else artifact.payload


def with_merkle_root(artifact: Artifact) -> Artifact:
    """A copy with `merkle_root` set over the carried payload's chunks."""
    return artifact._replace(merkle_root=merkle_root(carried_payload(artifact)))


def check_merkle_root(artifact: Artifact) -> Artifact:
    """`artifact` itself when it has no Merkle root or its root matches its payload."""
    if artifact.merkle_root is not None and \
            artifact.merkle_root != merkle_root(carried_payload(artifact)):
        raise SignatureRefused(f"artifact {artifact.id}: its Merkle root does not match "
                               "its payload")
    return artifact
