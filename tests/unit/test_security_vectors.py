"""The test vectors of docs/security.md (docs/security-vectors.json), recomputed.

Every output of the file is recomputed from its inputs with the project's code and must
equal the file's; the JSON shown in docs/security.md must equal the file, so neither the
specification nor its vectors can drift from the code. Another implementation of the
canonical form, signatures, approvals, sealing, Merkle roots or pseudonyms checks itself
against the same file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from processor.core.artifact import Artifact, MetaValue
from processor.security.approvals import approve
from processor.security.canonical import approval_bytes, sealing_aad, signed_bytes
from processor.security.keys import (
    OpeningKey,
    SigningKey,
    fingerprint,
    recipient_of,
)
from processor.security.merkle import CHUNK_SIZE, chunks, merkle_root
from processor.security.pseudonym import Pseudonymizer, subject_bytes
from processor.security.sealing import _seal, open_sealed
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "docs" / "security-vectors.json"
DOC = ROOT / "docs" / "security.md"


def load() -> dict[str, Any]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _meta_value(entry: dict[str, Any]) -> MetaValue:
    kind, value = entry["type"], entry["value"]
    if kind == "bytes":
        return bytes.fromhex(value)
    if kind == "double":
        return float(value)
    assert type(value).__name__ == {"text": "str", "boolean": "bool", "long": "int"}[kind], entry
    return cast(MetaValue, value)


def _subject(entry: dict[str, Any]) -> object:
    kind, value = entry["type"], entry["value"]
    if kind == "bytes":
        return bytes.fromhex(value)
    if kind == "float":
        return float(value)
    return value


def _key(entry: dict[str, Any]) -> dict[str, Any]:
    private = bytes.fromhex(entry["private"])
    if entry["algorithm"] == "Ed25519":
        public = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    else:
        public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    return {**entry, "public": public.hex(),
            "public_base64": base64.b64encode(public).decode("ascii"),
            "fingerprint": fingerprint(public)}


def artifact_of(vectors: dict[str, Any]) -> Artifact:
    a = vectors["artifact"]
    return Artifact.new(
        bytes.fromhex(a["payload"]), id=a["id"], timestamp=a["timestamp"],
        media_type=a["media_type"], role=a["role"], scope=a["scope"], origin=a["origin"],
        issuer=a["issuer"], state=a["state"],
        meta={entry["key"]: _meta_value(entry) for entry in a["meta"]})


def compute(vectors: dict[str, Any]) -> dict[str, Any]:
    """The vectors with every output recomputed from the inputs."""
    out = json.loads(json.dumps(vectors))
    keys = out["keys"]
    for name in keys:
        keys[name] = _key(keys[name])
    signer = SigningKey(keys["signer"]["id"], Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(keys["signer"]["private"])))
    approver = SigningKey(keys["approver"]["id"], Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(keys["approver"]["private"])))
    openers = {name: OpeningKey(keys[name]["id"], X25519PrivateKey.from_private_bytes(
        bytes.fromhex(keys[name]["private"]))) for name in ("audit", "billing")}

    artifact = artifact_of(vectors)
    out["artifact"]["checksum"] = artifact.checksum.hex()
    out["artifact"]["canonical_form"] = signed_bytes(artifact).hex()

    signed = sign(artifact, signer)
    assert signed.signature is not None
    out["signed"] = {"issuer": signed.issuer, "signed_form": signed_bytes(signed).hex(),
                     "signature": signed.signature.hex()}

    when = vectors["approval"]["timestamp"]
    approved = approve(signed, approver, when)
    out["approval"] = {"timestamp": when, "approval_form": approval_bytes(signed, when).hex(),
                       "signature": approved.approvals[-1].signature.hex()}

    s = vectors["sealed"]
    by_id = {key.id: key for key in openers.values()}
    recipients = [recipient_of(by_id[key_id]) for key_id in s["recipients"]]
    ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(s["ephemeral_private"]))
    sealed = _seal(artifact, recipients, ephemeral, bytes.fromhex(s["content_key"]),
                   bytes.fromhex(s["nonce"]))
    assert sealed.ephemeral_public_key is not None and sealed.encrypted_payload is not None
    assert sealed.encrypted_key is not None
    out["sealed"].update(
        ephemeral_public_key=sealed.ephemeral_public_key.hex(),
        associated_data=sealing_aad(artifact, sealed.ephemeral_public_key,
                                    tuple(s["recipients"])).hex(),
        encrypted_payload=sealed.encrypted_payload.hex(),
        encrypted_key=sealed.encrypted_key.hex(),
        checksum=sealed.checksum.hex())

    m = vectors["merkle"]
    payload = b"".join(bytes.fromhex(byte) * count for byte, count in m["payload_runs"])
    out["merkle"].update(
        chunk_size=CHUNK_SIZE, payload_size=len(payload),
        leaves=[hashlib.sha256(b"\x00" + c).hexdigest() for c in chunks(payload)],
        root=merkle_root(payload).hex(), empty_payload_root=merkle_root(b"").hex())

    p = vectors["pseudonyms"]
    pseudonymizer = Pseudonymizer(p["key"])
    out["pseudonyms"]["key_bytes"] = p["key"].encode("utf-8").hex()
    for entry in out["pseudonyms"]["subjects"]:
        subject = _subject(entry)
        entry["hmac_input"] = subject_bytes(subject).hex()
        entry["pseudonym"] = pseudonymizer.hash(subject).hex()
    return out  # type: ignore[no-any-return]


def test_every_vector_is_what_the_code_computes() -> None:
    vectors = load()
    computed = compute(vectors)
    for section in computed:
        assert computed[section] == vectors[section], section


def test_the_vectors_verify_and_open() -> None:
    vectors = load()
    keys = vectors["keys"]
    signed = artifact_of(vectors)._replace(
        issuer=vectors["signed"]["issuer"],
        signature=bytes.fromhex(vectors["signed"]["signature"]))
    store = TrustStore.load(inline={keys["signer"]["id"]: keys["signer"]["public_base64"]})
    assert verify(signed, store) is signed
    s = vectors["sealed"]
    sealed = artifact_of(vectors)._replace(
        payload=b"", checksum=bytes.fromhex(s["checksum"]),
        encrypted_payload=bytes.fromhex(s["encrypted_payload"]),
        encrypted_key=bytes.fromhex(s["encrypted_key"]),
        ephemeral_public_key=bytes.fromhex(s["ephemeral_public_key"]))
    for name in ("audit", "billing"):
        key = OpeningKey(keys[name]["id"], X25519PrivateKey.from_private_bytes(
            bytes.fromhex(keys[name]["private"])))
        assert open_sealed(sealed, key) == artifact_of(vectors)


def test_the_base64_public_keys_match_the_hex() -> None:
    for entry in load()["keys"].values():
        assert base64.b64decode(entry["public_base64"]).hex() == entry["public"]


def test_the_pseudonyms_of_the_types_differ() -> None:
    pseudonyms = [entry["pseudonym"] for entry in load()["pseudonyms"]["subjects"]]
    assert len(set(pseudonyms)) == len(pseudonyms)


def doc_vectors() -> dict[str, Any]:
    """The JSON block of the section "Test vectors" of docs/security.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Test vectors\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert len(blocks) == 1, "one JSON block in the section Test vectors"
    return json.loads(blocks[0])  # type: ignore[no-any-return]


def test_the_doc_shows_the_vectors_file() -> None:
    assert doc_vectors() == load()


def test_a_recipient_id_appears_once(tmp_path: Path) -> None:
    """What docs/security.md says of a repeated recipient id: sealing refuses it, a
    stage refuses it at build time, opening refuses an encrypted_key that repeats it."""
    from processor.core.errors import ConfigError
    from processor.security.errors import SealRefused
    from processor.security.keys import generate
    from processor.security.policy import Keyring, SecurityConfig
    from processor.security.sealing import _pack_keys, seal

    keys = load()["keys"]
    audit = OpeningKey(keys["audit"]["id"], X25519PrivateKey.from_private_bytes(
        bytes.fromhex(keys["audit"]["private"])))
    artifact = artifact_of(load())
    with pytest.raises(ValueError, match="repeat"):
        seal(artifact, [recipient_of(audit), recipient_of(audit)])
    sealed = seal(artifact, [recipient_of(audit)])
    assert sealed.encrypted_key is not None
    wrapped = sealed.encrypted_key[-48:]
    twice = sealed._replace(encrypted_key=_pack_keys([(audit.id, wrapped), (audit.id, wrapped)]))
    with pytest.raises(SealRefused, match="more than once"):
        open_sealed(twice, audit)
    files = generate("sealing", "twice", tmp_path)
    with pytest.raises(ConfigError, match="twice given more than once"):
        Keyring.load(SecurityConfig(seal_recipients=(str(files.public), str(files.private))))


def test_the_per_recipient_size_is_52_bytes_plus_the_id() -> None:
    sealed = load()["sealed"]
    size = len(bytes.fromhex(sealed["encrypted_key"]))
    assert size == 3 + sum(52 + len(key_id.encode()) for key_id in sealed["recipients"])
    payload = len(bytes.fromhex(load()["artifact"]["payload"]))
    assert len(bytes.fromhex(sealed["encrypted_payload"])) == payload + 28
