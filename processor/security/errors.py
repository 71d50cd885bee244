"""The security errors: each a `SecurityError`, with the dead-letter reason it stands for."""

from __future__ import annotations

from typing import ClassVar

from processor.core.errors import ConfigError, SecurityError


class SignatureRefused(SecurityError):
    """An artifact whose signature is missing, does not verify, or was made by a key the
    trust store does not know or has retired."""

    reason: ClassVar[str] = "signature"


class ApprovalsMissing(SignatureRefused):
    """Fewer valid approvals from distinct trusted approvers than the policy requires."""


class SealRefused(SecurityError):
    """A sealed payload that cannot be opened: not sealed for this key, a wrong key, or a
    payload or envelope changed since it was sealed."""

    reason: ClassVar[str] = "sealed"


class KeyFileError(ConfigError):
    """A key file that cannot be read, holds the wrong kind of key, or would be overwritten;
    a key id that is not allowed."""


class TrustStoreConflict(KeyFileError):
    """A trust store that holds one public key under two ids, or a retired key under an
    id that is not retired: the stage refuses to start."""


class PseudonymRefused(SecurityError):
    """An output whose subject has no pseudonym (a type without one, a float NaN, an
    integer outside 64 bits, text that is not valid Unicode): dead-lettered rather than
    written with the subject in clear."""

    reason: ClassVar[str] = "invalid"
