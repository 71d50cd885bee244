"""Artifact cryptography: the canonical form, signatures, approvals, sealed payloads,
rotation, pseudonyms and Merkle roots, with a test for every refusal path."""

from __future__ import annotations

import pytest

from processor.core.artifact import Artifact
from processor.core.errors import SecurityError
from processor.security import canonical
from processor.security.approvals import approve, check_approvals
from processor.security.errors import ApprovalsMissing, SealRefused, SignatureRefused
from processor.security.keys import (
    OpeningKey,
    SigningKey,
    new_opening_key,
    new_signing_key,
    recipient_of,
)
from processor.security.merkle import (
    CHUNK_SIZE,
    check_merkle_root,
    chunks,
    inclusion_proof,
    merkle_root,
    verify_inclusion,
    with_merkle_root,
)
from processor.security.pseudonym import Pseudonymizer
from processor.security.sealing import is_sealed, open_sealed, recipients_of, seal
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore
from processor.serde.codec import Codec

CODEC = Codec()


def store(*keys: SigningKey, retired: tuple[str, ...] = ()) -> TrustStore:
    return TrustStore({k.id: k.private.public_key() for k in keys}, frozenset(retired))


def order(**meta: object) -> Artifact:
    return Artifact.new(b'{"order": 42}', origin="shop", meta={"seq": 1, "ok": True,
                                                               **meta})  # type: ignore[dict-item]


# --- the canonical form ------------------------------------------------------------------


def test_canonical_form_is_versioned_and_ignores_meta_order() -> None:
    a = Artifact.new(b"x", meta={"a": 1, "b": "two"}, id="id-1", timestamp=5)
    b = Artifact.new(b"x", meta={"b": "two", "a": 1}, id="id-1", timestamp=5)
    form = canonical.signed_bytes(a)
    assert form == canonical.signed_bytes(b)
    assert form[:6] == b"PRCA\x01\x01"
    assert canonical.approval_bytes(a, 7)[:6] == b"PRCA\x01\x02"


def test_canonical_form_tells_types_and_fields_apart() -> None:
    base = Artifact.new(b"x", id="i", timestamp=1)
    forms = {canonical.signed_bytes(a) for a in (
        base.with_meta("k", 1), base.with_meta("k", True), base.with_meta("k", "1"),
        base.with_meta("k", 1.0), base.with_meta("k", b"1"),
        base.with_origin("ab"), base.with_state("ab"),
        base._replace(role="a", scope="b"), base._replace(role="ab", scope=""),
        base._replace(pseudonym_hash=b""), base)}
    assert len(forms) == 11


def test_signature_and_approvals_are_outside_the_signed_form() -> None:
    a = order()
    assert canonical.signed_bytes(a) == canonical.signed_bytes(
        a._replace(signature=b"s" * 64).with_approval("k", b"x", 1))


# --- signatures --------------------------------------------------------------------------


def test_signed_artifact_verifies_and_survives_the_codec() -> None:
    key = new_signing_key("signer-1")
    signed = sign(order(), key)
    assert signed.issuer == "signer-1" and signed.signature is not None
    assert verify(signed, store(key)) is signed
    assert verify(CODEC.decode(CODEC.encode(signed)), store(key))


def test_unsigned_is_refused() -> None:
    with pytest.raises(SignatureRefused, match="is not signed"):
        verify(order(), store(new_signing_key("k")))


def test_forged_signature_is_refused() -> None:
    real, forger = new_signing_key("signer"), new_signing_key("signer")
    forged = sign(order(), forger)  # same key id, another key
    with pytest.raises(SignatureRefused, match="does not verify"):
        verify(forged, store(real))
    with pytest.raises(SignatureRefused, match="does not verify"):
        verify(sign(order(), real)._replace(signature=b"\x00" * 64), store(real))


def test_tampered_payload_is_refused() -> None:
    key = new_signing_key("k")
    signed = sign(order(), key)
    tampered = signed.with_fields(payload=b'{"order": 43}')  # checksum follows, signature kept
    assert tampered.signature == signed.signature and tampered.checksum_ok()
    with pytest.raises(SignatureRefused, match="changed after it was signed"):
        verify(tampered, store(key))


@pytest.mark.parametrize("change", [
    lambda a: a.with_origin("elsewhere"), lambda a: a.with_state("approved"),
    lambda a: a.with_meta("seq", 2), lambda a: a.with_meta("extra", "x"),
    lambda a: a._replace(timestamp=a.timestamp + 1), lambda a: a._replace(id="other"),
    lambda a: a._replace(media_type="text/plain"), lambda a: a._replace(issuer="k2"),
    lambda a: a._replace(pseudonym_hash=b"p"), lambda a: a._replace(merkle_root=b"m"),
])
def test_tampered_envelope_field_is_refused(change: object) -> None:
    key, other = new_signing_key("k"), new_signing_key("k2")
    signed = sign(order(), key)
    with pytest.raises(SignatureRefused):
        verify(change(signed), store(key, other))  # type: ignore[operator]


def test_unknown_key_id_is_refused() -> None:
    signed = sign(order(), new_signing_key("stranger"))
    with pytest.raises(SignatureRefused, match="unknown key id 'stranger'"):
        verify(signed, store(new_signing_key("known")))


def test_retired_key_is_refused() -> None:
    key = new_signing_key("old")
    signed = sign(order(), key)
    with pytest.raises(SignatureRefused, match="retired key 'old'"):
        verify(signed, store(key, retired=("old",)))


def test_rotation_old_key_still_verifies_while_the_new_key_signs() -> None:
    old, new = new_signing_key("signer-2026-10"), new_signing_key("signer-2026-11")
    before = sign(order(), old)
    after = sign(order(), new)
    trust = store(old, new)  # rotation: the new key is added, the old one kept
    assert verify(before, trust) and verify(after, trust)
    assert after.issuer == "signer-2026-11"
    # Once everything signed by the old key has been read, the old key is retired.
    with pytest.raises(SignatureRefused, match="retired"):
        verify(before, store(old, new, retired=("signer-2026-10",)))
    assert verify(after, store(old, new, retired=("signer-2026-10",)))


def test_refusals_are_security_errors() -> None:
    assert issubclass(SignatureRefused, SecurityError)
    assert issubclass(SealRefused, SecurityError)
    assert SignatureRefused.reason == "signature" and SealRefused.reason == "sealed"


# --- approvals ---------------------------------------------------------------------------


def test_approvals_by_distinct_trusted_approvers() -> None:
    issuer, alice, bob = (new_signing_key(n) for n in ("issuer", "alice", "bob"))
    trust = store(issuer, alice, bob)
    a = sign(order(), issuer)
    approved = approve(approve(a, alice), bob)
    assert verify(approved, trust)  # approvals do not touch the signature
    assert check_approvals(approved, trust, 2) is approved
    with pytest.raises(ApprovalsMissing, match=r"1 valid approval.*2 required"):
        check_approvals(approve(approve(a, alice), alice), trust, 2)  # not distinct


def test_missing_approvals_are_refused() -> None:
    issuer = new_signing_key("issuer")
    with pytest.raises(ApprovalsMissing, match="0 valid approval"):
        check_approvals(sign(order(), issuer), store(issuer), 1)


@pytest.mark.parametrize("case", ["forged", "unknown", "retired", "issuer", "not-allowed",
                                  "stale", "as-signature"])
def test_approvals_that_do_not_count(case: str) -> None:
    issuer, alice, mallory = (new_signing_key(n) for n in ("issuer", "alice", "mallory"))
    retired: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    a = sign(order(), issuer)
    if case == "forged":
        approved = a.with_approval("alice", mallory.private.sign(
            canonical.approval_bytes(a, 1)), 1)
    elif case == "unknown":
        approved = approve(a, new_signing_key("nobody"))
    elif case == "retired":
        approved, retired = approve(a, alice), ("alice",)
    elif case == "issuer":
        approved = approve(a, issuer)
    elif case == "not-allowed":
        approved, allowed = approve(a, alice), ("bob",)
    elif case == "stale":  # approved, then changed
        approved = approve(a, alice).with_state("changed")
    else:  # the issuer's signature copied as an approval
        approved = a.with_approval("alice", alice.private.sign(canonical.signed_bytes(a)), 1)
    with pytest.raises(ApprovalsMissing, match="not counted"):
        check_approvals(approved, store(issuer, alice, mallory, retired=retired), 1, allowed)


def test_a_changed_approval_timestamp_does_not_count() -> None:
    issuer, alice = new_signing_key("issuer"), new_signing_key("alice")
    a = approve(sign(order(), issuer), alice, timestamp=100)
    moved = a._replace(approvals=(a.approvals[0]._replace(timestamp=101),))
    with pytest.raises(ApprovalsMissing):
        check_approvals(moved, store(issuer, alice), 1)


# --- sealed payloads ---------------------------------------------------------------------


def keys2() -> tuple[OpeningKey, OpeningKey]:
    return new_opening_key("billing"), new_opening_key("audit")


def test_seal_round_trip_with_two_recipients() -> None:
    billing, audit = keys2()
    plain = order()
    sealed = seal(plain, [recipient_of(billing), recipient_of(audit)])
    assert is_sealed(sealed) and sealed.payload == b"" and sealed.checksum_ok()
    assert b"order" not in CODEC.encode(sealed)
    assert sealed.encrypted_key is not None and sealed.ephemeral_public_key is not None
    assert recipients_of(sealed) == ["billing", "audit"]
    assert len(sealed.encrypted_key) < 2 * (2 + 7 + 2 + 48) + 3 + 1
    for key in (billing, audit):
        opened = open_sealed(CODEC.decode(CODEC.encode(sealed)), key)
        assert opened.payload == plain.payload and opened.checksum == plain.checksum
        assert (opened.encrypted_payload, opened.encrypted_key,
                opened.ephemeral_public_key) == (None, None, None)
    # The content key is not stored raw: no recipient's entry is 32 bytes.
    assert all(len(w) == 48 for w in _wrapped(sealed))


def _wrapped(sealed: Artifact) -> list[bytes]:
    from processor.security.sealing import _unpack_keys
    assert sealed.encrypted_key is not None
    return [w for _, w in _unpack_keys(sealed.encrypted_key, "t")]


def test_wrong_recipient_key_is_refused() -> None:
    billing, audit = keys2()
    sealed = seal(order(), [recipient_of(billing)])
    with pytest.raises(SealRefused, match="not sealed for key 'audit'"):
        open_sealed(sealed, audit)
    impostor = new_opening_key("billing")  # the right id, another key
    with pytest.raises(SealRefused, match="does not open with key 'billing'"):
        open_sealed(sealed, impostor)


def test_moved_sealed_payload_fails() -> None:
    billing, _ = keys2()
    rec = [recipient_of(billing)]
    first, second = seal(order(), rec), seal(order(), rec)
    moved = second._replace(encrypted_payload=first.encrypted_payload)
    with pytest.raises(SealRefused, match="moved from another envelope"):
        open_sealed(moved, billing)
    # All three sealed fields moved into another envelope: its id differs, nothing opens.
    transplanted = order()._replace(
        payload=b"", checksum=first.checksum, encrypted_payload=first.encrypted_payload,
        encrypted_key=first.encrypted_key, ephemeral_public_key=first.ephemeral_public_key)
    with pytest.raises(SealRefused):
        open_sealed(transplanted, billing)


@pytest.mark.parametrize("change", [
    lambda a: a.with_origin("elsewhere"), lambda a: a._replace(id="another"),
    lambda a: a._replace(timestamp=1), lambda a: a.with_role("command"),
    lambda a: a._replace(media_type="text/csv"),
])
def test_sealed_payload_bound_to_envelope_fields(change: object) -> None:
    billing, _ = keys2()
    sealed = seal(order(), [recipient_of(billing)])
    with pytest.raises(SealRefused):
        open_sealed(change(sealed), billing)  # type: ignore[operator]


def test_tampered_sealed_payload_and_stripped_recipient_fail() -> None:
    billing, audit = keys2()
    sealed = seal(order(), [recipient_of(billing), recipient_of(audit)])
    assert sealed.encrypted_payload is not None
    flipped = bytearray(sealed.encrypted_payload)
    flipped[-1] ^= 1
    with pytest.raises(SealRefused):
        open_sealed(sealed._replace(encrypted_payload=bytes(flipped)), billing)
    from processor.security.sealing import _pack_keys, _unpack_keys
    assert sealed.encrypted_key is not None
    only_billing = _pack_keys(_unpack_keys(sealed.encrypted_key, "t")[:1])
    with pytest.raises(SealRefused):
        open_sealed(sealed._replace(encrypted_key=only_billing), billing)
    with pytest.raises(SealRefused, match="malformed"):
        open_sealed(sealed._replace(encrypted_key=b"\x01\x00"), billing)


def test_sign_after_seal_covers_the_ciphertext() -> None:
    signer, (billing, _) = new_signing_key("s"), keys2()
    sealed = sign(seal(order(), [recipient_of(billing)]), signer)
    assert verify(sealed, store(signer))
    assert sealed.encrypted_payload is not None
    swapped = sealed._replace(encrypted_payload=sealed.encrypted_payload[:-1] + b"\x00")
    with pytest.raises(SignatureRefused):
        verify(swapped, store(signer))


def test_opening_an_unsealed_artifact_returns_it() -> None:
    a = order()
    assert open_sealed(a, new_opening_key("k")) is a


def test_seal_needs_distinct_recipients() -> None:
    billing, _ = keys2()
    with pytest.raises(ValueError, match="repeat"):
        seal(order(), [recipient_of(billing), recipient_of(billing)])
    with pytest.raises(ValueError, match="at least one"):
        seal(order(), [])


# --- pseudonyms --------------------------------------------------------------------------


def test_pseudonym_is_keyed_and_replaces_the_subject() -> None:
    p = Pseudonymizer(b"k" * 32)
    a = order(subject="customer-17")
    out = p.apply(a)
    assert "subject" not in out.meta and out.pseudonym_hash == p.hash("customer-17")
    assert len(out.pseudonym_hash or b"") == 32
    assert Pseudonymizer(b"k" * 32).hash("customer-17") == p.hash("customer-17")
    assert Pseudonymizer(b"j" * 32).hash("customer-17") != p.hash("customer-17")
    assert "k" * 16 not in repr(p)
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymizer(b"short")


def test_pseudonym_leaves_an_artifact_without_subject_as_is() -> None:
    a = order()
    assert Pseudonymizer(b"k" * 32).apply(a) is a


# --- Merkle roots ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5 * CHUNK_SIZE + 7])
def test_merkle_inclusion_proofs(size: int) -> None:
    data = b"".join(i.to_bytes(4, "big") for i in range(size // 4 + 1))[:size]
    root = merkle_root(data)
    parts = chunks(data)
    for i, chunk in enumerate(parts):
        proof = inclusion_proof(data, i)
        assert verify_inclusion(root, chunk, i, len(parts), proof)
        assert not verify_inclusion(root, chunk + b"x", i, len(parts), proof)
    if len(parts) > 1:
        assert not verify_inclusion(root, parts[0], 1, len(parts), inclusion_proof(data, 1))


def test_merkle_root_of_known_values() -> None:
    import hashlib
    leaf = hashlib.sha256(b"\x00" + b"").digest()
    assert merkle_root(b"") == leaf
    two = b"a" * CHUNK_SIZE + b"b"
    left = hashlib.sha256(b"\x00" + b"a" * CHUNK_SIZE).digest()
    right = hashlib.sha256(b"\x00b").digest()
    assert merkle_root(two) == hashlib.sha256(b"\x01" + left + right).digest()


def test_merkle_root_follows_the_carried_payload() -> None:
    billing, _ = keys2()
    a = with_merkle_root(order())
    assert check_merkle_root(a) is a
    with pytest.raises(SignatureRefused, match="Merkle root"):
        check_merkle_root(a._replace(payload=b"other"))
    sealed = seal(a, [recipient_of(billing)])
    assert sealed.encrypted_payload is not None
    assert sealed.merkle_root == merkle_root(sealed.encrypted_payload) != a.merkle_root
    assert open_sealed(sealed, billing).merkle_root == a.merkle_root
