"""Approvals: Ed25519 signatures by approvers over the same canonical form as the issuer's.

An approval signs `canonical.approval_bytes`: the fields the issuer's signature covers
(under the approval purpose byte, so a signature can never pass for an approval) and the
approval's own timestamp. Approvals and the issuer's signature do not cover each other,
so they can be given in any order; any change to a covered field (a new state, new
metadata, another issuer) ends every approval, as it ends the signature.

`check_approvals` counts the approvals that verify, made by distinct keys that the trust
store trusts (not retired), that are among the allowed approvers (when a list is given)
and that are not the issuer's own key: separation of duties, the issuer cannot approve
its own artifact. Fewer than required is `ApprovalsMissing`.
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
    """The distinct key ids whose approvals count, and why each other approval did not."""
    counted: set[str] = set()
    refused: list[str] = []
    for approval in artifact.approvals:
        key_id = approval.key_id
        if approvers and key_id not in approvers:
            refused.append(f"{key_id}: not an allowed approver")
        elif key_id == artifact.issuer:
            refused.append(f"{key_id}: the issuer cannot approve its own artifact")
        elif not store.trusts(key_id):
            refused.append(f"{key_id}: {'retired' if key_id in store.retired else 'unknown'} "
                           "key")
        else:
            try:
                store.keys[key_id].verify(approval.signature,
                                          approval_bytes(artifact, approval.timestamp))
            except InvalidSignature:
                refused.append(f"{key_id}: does not verify")
                continue
            counted.add(key_id)
    return counted, refused


def check_approvals(artifact: Artifact, store: TrustStore, required: int,
                    approvers: Collection[str] = ()) -> Artifact:
    """`artifact` itself if at least `required` distinct trusted approvers approved it."""
    if required <= 0:
        return artifact
    counted, refused = valid_approvers(artifact, store, approvers)
    if len(counted) < required:
        why = f"; not counted: {', '.join(refused)}" if refused else ""
        raise ApprovalsMissing(
            f"artifact {artifact.id} has {len(counted)} valid approval(s) from distinct "
            f"trusted approvers, {required} required{why}")
    return artifact
