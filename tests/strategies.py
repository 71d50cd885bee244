"""Hypothesis strategies for artifacts, shared by the property tests."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import strategies as st

from processor.core.artifact import Artifact, checksum_of

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
META_VALUES = st.one_of(
    st.text(), st.booleans(), LONGS, st.floats(allow_nan=False), st.binary(max_size=16)
)
OPTIONAL_BYTES = st.none() | st.binary(max_size=64)
IDS = st.text(max_size=40)
MEDIA_TYPES = st.text(max_size=20)


@st.composite
def artifacts(
    draw: st.DrawFn,
    ids: st.SearchStrategy[str] = IDS,
    media_types: st.SearchStrategy[str] = MEDIA_TYPES,
    max_meta: int = 6,
) -> Artifact:
    """Artifacts with every field drawn, the checksum right for the payload."""
    payload = draw(st.binary(max_size=256))
    return Artifact(
        id=draw(ids),
        timestamp=draw(LONGS),
        media_type=draw(media_types),
        role=draw(st.text(max_size=10)),
        scope=draw(st.text(max_size=10)),
        origin=draw(st.text(max_size=10)),
        issuer=draw(st.text(max_size=10)),
        state=draw(st.text(max_size=10)),
        meta=MappingProxyType(
            draw(st.dictionaries(st.text(max_size=8), META_VALUES, max_size=max_meta))
        ),
        payload=payload,
        checksum=checksum_of(payload),
        encrypted_payload=draw(OPTIONAL_BYTES),
        encrypted_key=draw(OPTIONAL_BYTES),
        ephemeral_public_key=draw(OPTIONAL_BYTES),
        signature=draw(OPTIONAL_BYTES),
    )


def tampered_checksum(data: bytes, artifact: Artifact) -> bytes:
    """`data` (the encoding of `artifact`) with one byte of its checksum flipped: it still
    decodes, but the checksum no longer matches the payload. The checksum is found in the
    bytes, so this holds whatever fields a schema version adds after it."""
    at = data.index(artifact.checksum)
    tampered = bytearray(data)
    tampered[at] ^= 0xFF
    return bytes(tampered)
