"""Properties of the canonical form and of signing, over artifacts of every shape."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.artifact import Artifact
from processor.security.canonical import signed_bytes
from processor.security.keys import new_opening_key, new_signing_key, recipient_of
from processor.security.sealing import open_sealed, seal
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore
from processor.serde.codec import Codec
from tests.strategies import OPTIONAL_BYTES, artifacts

CODEC = Codec()
KEY = new_signing_key("prop")
STORE = TrustStore({"prop": KEY.private.public_key()})
OPENER = new_opening_key("prop-box")
COVERED = [f for f in Artifact._fields if f not in ("signature", "approvals")]


@st.composite
def v2_artifacts(draw: st.DrawFn) -> Artifact:
    a = draw(artifacts())
    return a._replace(pseudonym_hash=draw(OPTIONAL_BYTES), merkle_root=draw(OPTIONAL_BYTES))


@settings(max_examples=150, deadline=None)
@given(v2_artifacts())
def test_a_signature_survives_the_wire(a: Artifact) -> None:
    signed = sign(a, KEY)
    assert verify(CODEC.decode(CODEC.encode(signed)), STORE)


@settings(max_examples=300, deadline=None)
@given(v2_artifacts(), v2_artifacts(), st.sampled_from(COVERED))
def test_changing_any_covered_field_changes_the_signed_form(
        a: Artifact, b: Artifact, name: str) -> None:
    changed = a._replace(**{name: getattr(b, name)})
    if getattr(changed, name) != getattr(a, name):
        assert signed_bytes(changed) != signed_bytes(a)


@settings(max_examples=100, deadline=None)
@given(v2_artifacts())
def test_seal_then_open_gives_the_payload_back(a: Artifact) -> None:
    plain = a._replace(encrypted_payload=None, encrypted_key=None, ephemeral_public_key=None)
    sealed = CODEC.decode(CODEC.encode(seal(plain, [recipient_of(OPENER)])))
    opened = open_sealed(sealed, OPENER)
    assert opened.payload == plain.payload and opened.checksum == plain.checksum
