"""Pseudonym hashes: HMAC-SHA256 of a typed subject identifier under a secret key.

    pseudonym = HMAC-SHA256(key, tag || encoding)

The tag byte names the subject's type, the same type bytes as the metadata values of the
canonical form (`canonical.py`), and the encoding is the value's canonical one:

    tag   type     encoding
    0x01  text     its UTF-8 bytes
    0x02  boolean  1 byte, 0x00 false or 0x01 true
    0x03  integer  8 bytes, big-endian two's complement (a 64-bit long, as Avro's)
    0x04  float    8 bytes, big-endian IEEE 754 binary64; -0.0 is encoded as 0.0
    0x05  bytes    the bytes

The tag keeps the types apart: the text "42", the bytes b"42", the integer 42, the float
42.0 and the boolean true each have a pseudonym of their own (a bool is tested before an
int, since a Python bool is an int). No length prefix is needed: the HMAC input holds one
value. A subject that has no pseudonym is `PseudonymRefused` (reason `invalid`, so the
stage dead-letters the record rather than write its subject in clear): a type other than
these five, a float NaN (NaN is equal to nothing, itself included), an integer outside
the signed 64-bit range, text that is not valid Unicode (a lone surrogate). Its message
names the metadata key and the type, never the value.

The same subject gives the same pseudonym under one key, so records about one subject can
be joined without naming it; without the key a pseudonym cannot be computed from a
guessed identifier (a plain hash could be). The key comes from the `pseudonym_key`
setting, a secret never printed or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from typing import Final

from pydantic import SecretStr

from processor.core.artifact import Artifact
from processor.security.errors import PseudonymRefused

DEFAULT_SUBJECT_KEY: Final = "subject"

TEXT: Final = b"\x01"
BOOLEAN: Final = b"\x02"
INTEGER: Final = b"\x03"
FLOAT: Final = b"\x04"
BYTES: Final = b"\x05"

_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")


def subject_bytes(subject: object) -> bytes:
    """The HMAC input of `subject`: its tag byte and canonical encoding (see the module
    documentation); PseudonymRefused, naming the type only, when it has none."""
    # bool before int: a bool is an int in Python.
    if isinstance(subject, bool):
        return BOOLEAN + (b"\x01" if subject else b"\x00")
    if isinstance(subject, str):
        try:
            return TEXT + subject.encode("utf-8")
        except UnicodeEncodeError:
            raise PseudonymRefused("text that is not valid Unicode (a lone surrogate) has "
                                   "no pseudonym") from None
    if isinstance(subject, bytes):
        return BYTES + subject
    if isinstance(subject, int):
        try:
            return INTEGER + _I64.pack(subject)
        except struct.error:
            raise PseudonymRefused("an integer outside the signed 64-bit range has no "
                                   "pseudonym") from None
    if isinstance(subject, float):
        if math.isnan(subject):
            raise PseudonymRefused("a float NaN has no pseudonym")
        return FLOAT + _F64.pack(subject + 0.0)  # -0.0 + 0.0 is 0.0
    raise PseudonymRefused(f"a value of type {type(subject).__name__} has no pseudonym "
                           "(text, bytes, integers, floats and booleans have)")


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

    def hash(self, subject: object) -> bytes:
        """The pseudonym of `subject`: HMAC-SHA256(key, tag || encoding); PseudonymRefused
        for a subject that has none."""
        return hmac.new(self._key, subject_bytes(subject), hashlib.sha256).digest()

    def apply(self, artifact: Artifact, meta_key: str = DEFAULT_SUBJECT_KEY) -> Artifact:
        """A copy whose `pseudonym_hash` stands for the subject in metadata `meta_key`,
        which is removed; the artifact as is when it has no such key; PseudonymRefused
        when the subject has no pseudonym."""
        meta = artifact.meta
        if meta_key not in meta:
            return artifact
        try:
            pseudonym = self.hash(meta[meta_key])
        except PseudonymRefused as exc:
            raise PseudonymRefused(f"artifact {artifact.id}: metadata {meta_key!r}: {exc}; "
                                   "the record is not written with its subject in "
                                   "clear") from None
        return artifact.without_meta(meta_key)._replace(pseudonym_hash=pseudonym)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=***)"
