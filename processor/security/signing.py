"""Ed25519 signatures over the canonical form of an artifact.

`sign` sets `issuer` to the signing key's id and `signature` to the Ed25519 signature of
`canonical.signed_bytes` (every field but `signature` and `approvals`, the new issuer
included). `verify` refuses, with `SignatureRefused`, an artifact that is unsigned, names
no issuer, names a key the trust store does not know or has retired, or whose signature
does not verify: forged, or any covered field changed since it was signed.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature

from processor.core.artifact import Artifact
from processor.security.canonical import signed_bytes
from processor.security.errors import SignatureRefused
from processor.security.keys import SigningKey
from processor.security.truststore import TrustStore

SIGNATURE_SIZE = 64


def sign(artifact: Artifact, key: SigningKey) -> Artifact:
    """A copy of `artifact` issued and signed by `key`."""
    issued = artifact._replace(issuer=key.id, signature=None)
    return issued._replace(signature=key.private.sign(signed_bytes(issued)))


def is_signed(artifact: Artifact) -> bool:
    return artifact.signature is not None


def verify(artifact: Artifact, store: TrustStore) -> Artifact:
    """`artifact` itself if its signature verifies with a trusted key; SignatureRefused
    saying why not otherwise."""
    what = f"artifact {artifact.id}"
    signature = artifact.signature
    if signature is None:
        raise SignatureRefused(f"{what} is not signed")
    if not artifact.issuer:
        raise SignatureRefused(f"{what} is signed but names no issuer key id")
    public = store.key(artifact.issuer, what=what)
    try:
        if len(signature) != SIGNATURE_SIZE:
            raise InvalidSignature
        public.verify(signature, signed_bytes(artifact))
    except InvalidSignature:
        raise SignatureRefused(
            f"{what}: the signature of key {artifact.issuer!r} does not verify (forged, or "
            "the artifact was changed after it was signed)") from None
    return artifact
