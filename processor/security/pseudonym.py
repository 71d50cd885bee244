"""Pseudonym hashes: HMAC-SHA256 of a subject identifier under a secret key.

The same subject gives the same pseudonym under one key, so records about one subject can
be joined without naming it; without the key a pseudonym cannot be computed from a
guessed identifier (a plain hash could be). The key comes from the `pseudonym_key`
setting, a secret never printed or logged.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from pydantic import SecretStr

from processor.core.artifact import Artifact

DEFAULT_SUBJECT_KEY: Final = "subject"


class Pseudonymizer:
    """Computes pseudonyms with one secret key; its repr never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: SecretStr | bytes | str) -> None:
        if isinstance(key, SecretStr):
            key = key.get_secret_value()
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(raw) < 16:
            raise ValueError("a pseudonym key must be at least 16 bytes long")
        self._key = raw

    def hash(self, subject: str | bytes) -> bytes:
        """The pseudonym of `subject`: HMAC-SHA256(key, subject as UTF-8)."""
        data = subject.encode("utf-8") if isinstance(subject, str) else subject
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def apply(self, artifact: Artifact, meta_key: str = DEFAULT_SUBJECT_KEY) -> Artifact:
        """A copy whose `pseudonym_hash` stands for the subject in metadata `meta_key`,
        which is removed; the artifact as is when it has no such key."""
        subject = artifact.meta.get(meta_key)
        if subject is None or not isinstance(subject, str | bytes):
            return artifact
        return artifact.without_meta(meta_key)._replace(pseudonym_hash=self.hash(subject))

    def __repr__(self) -> str:
        return "Pseudonymizer(key=***)"
