"""Approvals: Ed25519 signatures by approvers over the same canonical form as the issuer's.

An approval signs `canonical.approval_bytes`: the fields the issuer's signature covers
(under the approval purpose byte, so a signature can never pass for an approval) and the
approval's own timestamp. Approvals and the issuer's signature do not cover each other,
so they can be given in any order; any change to a covered field (a new state, new
metadata, another issuer) ends every approval, as it ends the signature.

`check_approvals` counts approvers by public key, never by id: the approvals that
verify, each made by a key that the trust store trusts (not retired, under any of its
ids), that is among the allowed approvers' keys (when a list of ids is given) and that
is not the issuer's own key, whatever id the approval carries: separation of duties, the
issuer cannot approve its own artifact. Two approvals by one key count once. An artifact
whose issuer is not in the trust store has no approval that counts (its key cannot be
told apart from an approver's). Fewer than required is `ApprovalsMissing`.

`check_approvals` does not check the issuer's signature: call `signing.verify` first, as
the stage policy (`require_approvals` implies it) and the built-in `verify` handler do.
Approvals of content that anyone may have issued under the issuer's id prove nothing.
"""

from __future__ import annotations

from collections.abc import Collection

from cryptography.exceptions import InvalidSignature

from processor.core.artifact import Artifact, now_millis
from processor.security.canonical import approval_bytes
from processor.security.errors import ApprovalsMissing
from processor.security.keys import SigningKey
from processor.security.truststore import TrustStore


def approve(artifact: Artifact, key: SigningKey, timestamp: int | None = None) -> Artifact:
    """A copy of `artifact` with `key`'s approval added."""
    when = now_millis() if timestamp is None else timestamp
    return artifact.with_approval(key.id, key.private.sign(approval_bytes(artifact, when)),
                                  when)


def valid_approvers(artifact: Artifact, store: TrustStore,
                    approvers: Collection[str] = ()) -> tuple[set[str], list[str]]:
    """The key ids whose approvals count, one per distinct public key, and why each other
    approval did not."""
    raw_keys = store.raw_keys
    issuer_key = raw_keys.get(artifact.issuer)
    if issuer_key is None:
        return set(), [f"{approval.key_id}: the issuer {artifact.issuer!r} is not in the "
                       "trust store" for approval in artifact.approvals]
    allowed = {raw_keys[a] for a in approvers if a in raw_keys}
    counted: dict[bytes, str] = {}
    refused: list[str] = []
    for approval in artifact.approvals:
        key_id = approval.key_id
        found = store.keys.get(key_id)
        if found is None:
            refused.append(f"{key_id}: unknown key")
            continue
        public = raw_keys[key_id]
        if store.is_retired(key_id):
            refused.append(f"{key_id}: retired key")
        elif key_id == artifact.issuer or public == issuer_key:
            refused.append(f"{key_id}: the issuer's own key cannot approve its artifact")
        elif approvers and public not in allowed:
            refused.append(f"{key_id}: not an allowed approver")
        else:
            try:
                found.verify(approval.signature, approval_bytes(artifact, approval.timestamp))
            except InvalidSignature:
                refused.append(f"{key_id}: does not verify")
                continue
            if public in counted:
                first = counted[public]
                refused.append(f"{key_id}: " + ("approved again" if first == key_id else
                                                f"the key of {first!r}") + ", counted once")
            else:
                counted[public] = key_id
    return set(counted.values()), refused


def check_approvals(artifact: Artifact, store: TrustStore, required: int,
                    approvers: Collection[str] = ()) -> Artifact:
    """`artifact` itself if at least `required` distinct trusted approvers' keys approved
    it (its signature is the caller's to verify first)."""
    if required <= 0:
        return artifact
    counted, refused = valid_approvers(artifact, store, approvers)
    if len(counted) < required:
        why = f"; not counted: {', '.join(refused)}" if refused else ""
        raise ApprovalsMissing(
            f"artifact {artifact.id} has {len(counted)} valid approval(s) from distinct "
            f"trusted approvers, {required} required{why}")
    return artifact
