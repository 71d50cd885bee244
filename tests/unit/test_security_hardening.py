"""Security hardening: approvers and retirement by public key, trust stores that give one
key two ids, typed pseudonyms for every subject type, approvals only of a verified
issuer, and the Merkle root checked with the signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import struct
from pathlib import Path

import pytest
from pydantic import SecretStr

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError, SecurityError
from processor.core.handlers import Outcome
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.dead_letters import H_ERROR_MESSAGE, H_REASON, header_dict
from processor.security.approvals import approve, check_approvals
from processor.security.errors import (
    ApprovalsMissing,
    KeyFileError,
    PseudonymRefused,
    SignatureRefused,
    TrustStoreConflict,
)
from processor.security.keys import SigningKey, generate, new_signing_key, public_info
from processor.security.merkle import merkle_root, with_merkle_root
from processor.security.policy import Keyring, SecurityConfig
from processor.security.pseudonym import Pseudonymizer
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore
from tests.unit.stage_support import CODEC, make_broker, options, read_all

KEY = b"k" * 32


def b64(key: SigningKey) -> str:
    return base64.b64encode(key.public_bytes()).decode("ascii")


def as_id(key: SigningKey, key_id: str) -> SigningKey:
    """The same private key under another id."""
    return SigningKey(key_id, key.private)


def store(*keys: SigningKey, retired: tuple[str, ...] = ()) -> TrustStore:
    return TrustStore({k.id: k.private.public_key() for k in keys}, frozenset(retired))


def order(**meta: object) -> Artifact:
    return Artifact.new(b'{"order": 42}', origin="shop",
                        meta=meta)  # type: ignore[arg-type]


def identity(a: Artifact) -> Outcome:
    return a


async def identity_async(a: Artifact) -> Outcome:
    return a


def identity_batch(batch: list[Artifact]) -> list[Outcome]:
    return list(batch)


# --- trust stores: one key, one id -------------------------------------------------------


def test_a_trust_store_with_one_key_under_two_ids_is_refused(tmp_path: Path) -> None:
    alice = new_signing_key("alice")
    with pytest.raises(TrustStoreConflict) as caught:
        TrustStore.load([], {"alice": b64(alice), "alice-2": b64(alice)})
    message = str(caught.value)
    assert "'alice'" in message and "'alice-2'" in message and "\n" not in message
    assert isinstance(caught.value, KeyFileError) and isinstance(caught.value, ConfigError)

    generate("signing", "bob", tmp_path)
    bob = (tmp_path / "bob.pub").read_bytes()
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "bob.pub").write_bytes(bob)
    (tmp_path / "trust" / "robert.pub").write_bytes(bob)
    with pytest.raises(TrustStoreConflict, match=r"'bob'.*'robert'"):
        TrustStore.load([tmp_path / "trust"])


def test_approvals_are_counted_by_public_key_not_by_id() -> None:
    issuer, alice, bob = (new_signing_key(n) for n in ("issuer", "alice", "bob"))
    trust = store(issuer, alice, as_id(alice, "alice-2"), bob)
    a = sign(order(), issuer)
    twice = approve(approve(a, alice), as_id(alice, "alice-2"))
    with pytest.raises(ApprovalsMissing, match=r"1 valid approval.*2 required"):
        check_approvals(twice, trust, 2)
    assert check_approvals(approve(twice, bob), trust, 2)


def test_the_issuers_key_never_counts_as_an_approver_whatever_its_id() -> None:
    issuer, alice = new_signing_key("issuer"), new_signing_key("alice")
    trust = store(issuer, as_id(issuer, "deputy"), alice)
    a = sign(order(), issuer)
    with pytest.raises(ApprovalsMissing, match="deputy: the issuer's own key"):
        check_approvals(approve(a, as_id(issuer, "deputy")), trust, 1)
    assert check_approvals(approve(a, alice), trust, 1)


# --- retirement by key -------------------------------------------------------------------


def test_retiring_an_id_retires_its_key_under_every_id() -> None:
    old, issuer = new_signing_key("old"), new_signing_key("issuer")
    trust = store(old, as_id(old, "old-copy"), issuer, retired=("old",))
    assert not trust.trusts("old-copy")
    with pytest.raises(SignatureRefused, match="retired"):
        trust.key("old-copy")
    with pytest.raises(SignatureRefused, match="retired"):
        verify(sign(order(), as_id(old, "old-copy")), trust)
    with pytest.raises(ApprovalsMissing, match="old-copy: retired key"):
        check_approvals(approve(sign(order(), issuer), as_id(old, "old-copy")), trust, 1)


def test_a_retired_key_under_an_id_not_retired_stops_the_stage(tmp_path: Path) -> None:
    old = new_signing_key("old")
    with pytest.raises(TrustStoreConflict) as caught:
        TrustStore.load([], {"old": b64(old), "fresh": b64(old)}, retired=["old"])
    message = str(caught.value)
    assert "'old'" in message and "'fresh'" in message and "retired" in message
    assert "\n" not in message
    # Both ids retired: still one key under two ids.
    with pytest.raises(TrustStoreConflict):
        TrustStore.load([], {"old": b64(old), "fresh": b64(old)}, retired=["old", "fresh"])

    trust = tmp_path / "trust"
    trust.mkdir()
    generate("signing", "shop-2026-05", tmp_path)
    (trust / "shop-2026-05.pub").write_bytes((tmp_path / "shop-2026-05.pub").read_bytes())
    inline = {"shop-new": public_info(trust / "shop-2026-05.pub").public}
    setup = StageSetup(options(), security=SecurityConfig(
        trust_store=(str(trust),), trusted_keys=inline, retired_keys=("shop-2026-05",),
        require_signature=True))
    with pytest.raises(ConfigError, match=r"retired as 'shop-2026-05'.*'shop-new'"):
        build_stage(setup, make_broker(), handler=identity)


# --- pseudonyms --------------------------------------------------------------------------


def mac(data: bytes) -> bytes:
    return hmac.new(KEY, data, hashlib.sha256).digest()


def test_pseudonym_encoding_is_a_type_tag_and_a_canonical_encoding() -> None:
    p = Pseudonymizer(KEY)
    assert p.hash("42") == mac(b"\x01" + b"42")
    assert p.hash(True) == mac(b"\x02\x01") and p.hash(False) == mac(b"\x02\x00")
    assert p.hash(42) == mac(b"\x03" + struct.pack(">q", 42))
    assert p.hash(-1) == mac(b"\x03" + b"\xff" * 8)
    assert p.hash(42.0) == mac(b"\x04" + struct.pack(">d", 42.0))
    assert p.hash(b"42") == mac(b"\x05" + b"42")
    assert p.hash(-0.0) == p.hash(0.0)  # equal numbers, one pseudonym
    assert p.hash(math.inf) == mac(b"\x04" + struct.pack(">d", math.inf))
    distinct = {p.hash(v) for v in ("42", b"42", 42, 42.0, "1", b"1", 1, 1.0, True)}
    assert len(distinct) == 9


@pytest.mark.parametrize("subject", ["customer-17", b"\x00\x01", 17, -3.5, True, ""],
                         ids=["text", "bytes", "int", "float", "bool", "empty-text"])
def test_every_subject_type_gets_a_pseudonym(subject: object) -> None:
    p = Pseudonymizer(KEY)
    out = p.apply(order(subject=subject, seq=1))
    assert "subject" not in out.meta and out.get("seq") == 1
    assert out.pseudonym_hash == p.hash(subject)


@pytest.mark.parametrize("subject", [math.nan, 2 ** 63, -(2 ** 63) - 1, object(), [1],
                                     None, "\udc80-lone-surrogate"],
                         ids=["nan", "int-too-large", "int-too-small", "object", "list",
                              "none", "surrogate"])
def test_a_subject_without_a_pseudonym_is_refused(subject: object) -> None:
    p = Pseudonymizer(KEY)
    a = order(seq=1)._replace(meta={"subject": subject, "seq": 1})  # type: ignore[dict-item]
    with pytest.raises(PseudonymRefused, match="'subject'") as caught:
        p.apply(a)
    assert isinstance(caught.value, SecurityError) and caught.value.reason == "invalid"
    assert "lone-surrogate" not in str(caught.value)  # the value is never in the message
    with pytest.raises(PseudonymRefused):
        p.hash(subject)


@pytest.mark.parametrize("handler", [identity, identity_async, identity_batch],
                         ids=["record", "async", "batch"])
def test_a_subject_without_a_pseudonym_is_dead_lettered_not_passed_in_clear(
        handler: object) -> None:
    arts = [order(case="text", subject="cust-1"), order(case="int", subject=12345),
            order(case="nan", subject=math.nan), order(case="bool", subject=False)]
    broker = make_broker()
    producer = broker.producer()
    for i, a in enumerate(arts):
        producer.produce("in", CODEC.encode(a), str(i).encode())
    producer.flush()
    stage = build_stage(StageSetup(options(), security=SecurityConfig(
        pseudonym_key=SecretStr("p" * 32))), broker, handler=handler)  # type: ignore[arg-type]
    stage.run(max_records=len(arts), idle_timeout=0.5)

    out = [CODEC.decode(m.value() or b"") for m in read_all(broker, "out")]
    assert sorted(str(a.get("case")) for a in out) == ["bool", "int", "text"]
    assert all("subject" not in a.meta and a.pseudonym_hash for a in out)
    (dead,) = read_all(broker, "dlq")
    headers = header_dict(dead.headers())
    assert headers[H_REASON] == "invalid"
    assert "pseudonym" in headers[H_ERROR_MESSAGE]
    assert CODEC.decode(dead.value() or b"").get("case") == "nan"
    assert stage.stats.consumed == 4 == stage.stats.passed + stage.stats.dead_lettered


# --- approvals need a verified issuer ----------------------------------------------------


def test_require_approvals_checks_the_issuers_signature() -> None:
    issuer, alice, mallory = (new_signing_key(n) for n in ("issuer", "alice", "mallory"))
    keyring = Keyring.load(SecurityConfig(
        trusted_keys={k.id: b64(k) for k in (issuer, alice)}, require_approvals=1))
    good = approve(sign(order(), issuer), alice)
    assert keyring.inbound(good) is good
    # Made by someone else under the issuer's id, then approved: the signature fails.
    forged = approve(sign(order(), as_id(mallory, "issuer")), alice)
    with pytest.raises(SignatureRefused, match="does not verify"):
        keyring.inbound(forged)
    unsigned = approve(order(), alice)
    with pytest.raises(SignatureRefused, match="not signed"):
        keyring.inbound(unsigned)
    # A keyring made in code holds to the same rule.
    direct = Keyring(trust=store(issuer, alice), require_approvals=1)
    with pytest.raises(SignatureRefused, match="does not verify"):
        direct.inbound(forged)


# --- the Merkle root ---------------------------------------------------------------------


def test_require_signature_checks_a_signed_merkle_root() -> None:
    issuer = new_signing_key("issuer")
    keyring = Keyring(trust=store(issuer), require_signature=True)
    good = sign(with_merkle_root(order()), issuer)
    assert keyring.inbound(good) is good
    wrong = sign(order()._replace(merkle_root=merkle_root(b"another payload")), issuer)
    assert verify(wrong, keyring.trust)  # the signature alone is valid
    with pytest.raises(SignatureRefused, match="Merkle root does not match"):
        keyring.inbound(wrong)


def test_a_stage_dead_letters_a_signed_root_that_does_not_match() -> None:
    issuer = new_signing_key("issuer")
    arts = [sign(with_merkle_root(order(case="good")), issuer),
            sign(order(case="bad")._replace(merkle_root=b"\x00" * 32), issuer)]
    broker = make_broker()
    producer = broker.producer()
    for i, a in enumerate(arts):
        producer.produce("in", CODEC.encode(a), str(i).encode())
    producer.flush()
    stage = build_stage(StageSetup(options(), security=SecurityConfig(
        trusted_keys={"issuer": b64(issuer)}, require_signature=True)), broker,
        handler=identity)
    stage.run(max_records=2, idle_timeout=0.5)
    assert [CODEC.decode(m.value() or b"").get("case") for m in read_all(broker, "out")] == \
        ["good"]
    (dead,) = read_all(broker, "dlq")
    assert header_dict(dead.headers())[H_REASON] == "signature"
    assert "Merkle root" in header_dict(dead.headers())[H_ERROR_MESSAGE]
