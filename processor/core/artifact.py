"""The artifact: the typed envelope every stage reads, handles and writes.

An `Artifact` is an immutable value. Builders return a new artifact and leave the old one
as it was, so a handler that does not change an artifact can return it as is, and the
stage then passes the original bytes through without encoding them again.

Metadata values are typed: text, int, float, bool or bytes. Setting a key replaces its
value (the original Go code appended a second entry instead).

Version 2 of the wire schema added three optional fields for the security features, each
with a default so that readers and writers of either version understand each other:
`approvals` (a tuple of `Approval`s, empty by default), `pseudonym_hash` and `merkle_root`
(bytes, or None by default).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar, overload

MetaValue = str | int | float | bool | bytes
"""The types a metadata value may have; they map to the Avro union of the wire schema."""

_META_TYPES: Final = frozenset((str, int, float, bool, bytes))
_EMPTY_META: Final[Mapping[str, MetaValue]] = MappingProxyType({})

T = TypeVar("T", str, int, float, bool, bytes)


class Role:
    """Well-known roles of an artifact. Any other string is allowed too."""

    SYSTEM: Final = "system"
    USER: Final = "user"
    ASSISTANT: Final = "assistant"
    TOOL: Final = "tool"
    DATA: Final = "data"
    EVENT: Final = "event"
    COMMAND: Final = "command"
    RESULT: Final = "result"
    ERROR: Final = "error"


class Scope:
    """Well-known scopes of an artifact. Any other string is allowed too."""

    GENERIC: Final = "generic"
    MESSAGE: Final = "message"
    QUESTION: Final = "question"
    ANSWER: Final = "answer"
    CONTEXT: Final = "context"
    METRIC: Final = "metric"
    LOG: Final = "log"


class MediaType:
    """Common media types of a payload. Any other string is allowed too."""

    OCTET_STREAM: Final = "application/octet-stream"
    JSON: Final = "application/json"
    TEXT: Final = "text/plain"
    AVRO: Final = "application/avro"
    PROTOBUF: Final = "application/protobuf"
    CSV: Final = "text/csv"


class State:
    """Processing states an artifact passes through. Any other string is allowed too."""

    CREATED: Final = "created"
    VALIDATED: Final = "validated"
    TRANSFORMED: Final = "transformed"
    ENRICHED: Final = "enriched"
    FAILED: Final = "failed"


_tuple_new: Final = tuple.__new__
# Field positions, for the one-field builders.
_ROLE, _ORIGIN, _ISSUER, _STATE, _META = 3, 5, 6, 7, 8
_SCOPE = 4


def _copy_meta(meta: Mapping[str, MetaValue]) -> dict[str, MetaValue]:
    # A mapping proxy's copy() copies the dict behind it at C speed; dict(proxy) goes
    # through the generic mapping protocol and is several times slower.
    if type(meta) is MappingProxyType or type(meta) is dict:
        return meta.copy()
    return dict(meta)


def checksum_of(payload: bytes) -> bytes:
    """The checksum the wire contract requires: the SHA-256 digest of the payload."""
    return hashlib.sha256(payload).digest()


def now_millis() -> int:
    """Wall-clock time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def _check_meta(meta: Mapping[str, Any]) -> None:
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata key {key!r} must be a str, not {type(key).__name__}")
        if not isinstance(value, str | int | float | bool | bytes):
            raise TypeError(
                f"metadata value for {key!r} must be str, int, float, bool or bytes, "
                f"not {type(value).__name__}"
            )


class Approval(NamedTuple):
    """One approver's signature over an artifact (wire schema version 2)."""

    key_id: str
    """The id of the approver's signing key."""
    signature: bytes
    timestamp: int
    """When the approval was given, in milliseconds since the Unix epoch."""


def _approvals(value: Any) -> tuple[Approval, ...]:
    """Approvals as a tuple of `Approval`s, from approvals or (key_id, signature, timestamp)
    sequences or mappings."""
    out: list[Approval] = []
    for item in value:
        if isinstance(item, Mapping):
            item = (item["key_id"], item["signature"], item["timestamp"])
        key_id, signature, timestamp = item
        if not isinstance(key_id, str) or not isinstance(signature, bytes) or (
                type(timestamp) is not int):
            raise TypeError("an approval is (key_id: str, signature: bytes, timestamp: int), "
                            f"got {item!r}")
        out.append(Approval(key_id, signature, timestamp))
    return tuple(out)


class Artifact(NamedTuple):
    """An immutable artifact. Build one with `Artifact.new(...)`."""

    id: str
    """A UUID, as text."""
    timestamp: int
    """Creation time in milliseconds since the Unix epoch."""
    media_type: str
    """The media type of `payload`."""
    role: str
    scope: str
    origin: str
    """Where the artifact came from (a system, a service, a stage)."""
    issuer: str
    """Who vouches for it; the key id that signed it, when signed."""
    state: str
    meta: Mapping[str, MetaValue]
    """Typed metadata; read-only."""
    payload: bytes
    checksum: bytes
    """SHA-256 of `payload`; set by `new`/`with_payload` and by the codec on encode."""
    encrypted_payload: bytes | None = None
    encrypted_key: bytes | None = None
    ephemeral_public_key: bytes | None = None
    signature: bytes | None = None
    approvals: tuple[Approval, ...] = ()
    """Approvals in the order they were given (schema version 2)."""
    pseudonym_hash: bytes | None = None
    """A keyed hash standing for a pseudonymised identity (schema version 2)."""
    merkle_root: bytes | None = None
    """The root of a Merkle tree over the artifact's parts (schema version 2)."""

    # --- building --------------------------------------------------------------------

    @classmethod
    def new(
        cls,
        payload: bytes | str = b"",
        *,
        media_type: str = MediaType.OCTET_STREAM,
        role: str = Role.DATA,
        scope: str = Scope.GENERIC,
        origin: str = "",
        issuer: str = "",
        state: str = State.CREATED,
        meta: Mapping[str, MetaValue] | None = None,
        id: str | None = None,
        timestamp: int | None = None,
    ) -> Artifact:
        """A new artifact with a fresh UUID, the current time and its checksum set."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        if isinstance(payload, str) and media_type == MediaType.OCTET_STREAM:
            media_type = MediaType.TEXT
        frozen: Mapping[str, MetaValue] = _EMPTY_META
        if meta:
            _check_meta(meta)
            frozen = MappingProxyType(dict(meta))
        return cls(
            id=id if id is not None else str(uuid.uuid4()),
            timestamp=timestamp if timestamp is not None else now_millis(),
            media_type=media_type,
            role=role,
            scope=scope,
            origin=origin,
            issuer=issuer,
            state=state,
            meta=frozen,
            payload=data,
            checksum=checksum_of(data),
        )

    def with_payload(self, payload: bytes | str, media_type: str | None = None) -> Artifact:
        """A copy with a new payload (and checksum); the signature no longer applies."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        return self._replace(
            payload=data,
            checksum=checksum_of(data),
            media_type=media_type if media_type is not None else self.media_type,
            signature=None,
        )

    def with_meta(self, key: str | None = None, value: MetaValue | None = None,
                  /, **more: MetaValue) -> Artifact:
        """A copy with metadata keys set, replacing any earlier value of the same key.

        `a.with_meta("k", 1)` sets one key; `a.with_meta(k=1, other="x")` sets several.
        """
        if not more and type(key) is str and type(value) in _META_TYPES:
            # The common case, one key: no intermediate dicts (this runs per record).
            merged = _copy_meta(self.meta)
            merged[key] = value  # type: ignore[assignment]
            return self._set(_META, MappingProxyType(merged))
        updates: dict[str, MetaValue] = dict(more)
        if key is not None:
            if value is None:
                raise TypeError("with_meta(key, value): value is missing")
            updates[key] = value
        _check_meta(updates)
        merged = _copy_meta(self.meta)
        merged.update(updates)
        return self._set(_META, MappingProxyType(merged))

    def without_meta(self, *keys: str) -> Artifact:
        """A copy without the given metadata keys."""
        merged = {k: v for k, v in self.meta.items() if k not in keys}
        return self._replace(meta=MappingProxyType(merged))

    def with_state(self, state: str) -> Artifact:
        return self._set(_STATE, state)

    def with_role(self, role: str) -> Artifact:
        return self._set(_ROLE, role)

    def with_scope(self, scope: str) -> Artifact:
        return self._set(_SCOPE, scope)

    def with_origin(self, origin: str) -> Artifact:
        return self._set(_ORIGIN, origin)

    def with_issuer(self, issuer: str) -> Artifact:
        return self._set(_ISSUER, issuer)

    def _set(self, index: int, value: object) -> Artifact:
        """A copy with one field replaced by position (faster than `_replace`)."""
        fields: list[object] = list(self)
        fields[index] = value
        return _tuple_new(Artifact, fields)

    def with_approval(self, key_id: str, signature: bytes,
                      timestamp: int | None = None) -> Artifact:
        """A copy with one more approval (timestamp: now, unless given)."""
        approval = _approvals([(key_id, signature,
                                timestamp if timestamp is not None else now_millis())])
        return self._replace(approvals=(*self.approvals, *approval))

    def with_fields(self, **fields: Any) -> Artifact:
        """A copy with any fields replaced (the checksum follows a new payload)."""
        if "approvals" in fields:
            fields["approvals"] = _approvals(fields["approvals"])
        if "payload" in fields and "checksum" not in fields:
            fields["checksum"] = checksum_of(fields["payload"])
        if "meta" in fields:
            _check_meta(fields["meta"])
            fields["meta"] = MappingProxyType(dict(fields["meta"]))
        return self._replace(**fields)

    # --- reading ---------------------------------------------------------------------

    @overload
    def get(self, key: str, default: T) -> T: ...

    @overload
    def get(self, key: str, default: None = None) -> MetaValue | None: ...

    def get(self, key: str, default: MetaValue | None = None) -> MetaValue | None:
        """A metadata value; with a default, only a value of the default's type counts.

        `a.get("retries", 0)` returns an int: the stored value if it is an int (not a
        bool), else 0.
        """
        value = self.meta.get(key)
        if value is None:
            return default
        if default is None:
            return value
        if type(value) is type(default) or (
            isinstance(default, float) and type(value) is int
        ):
            return value if not isinstance(default, float) else float(value)
        return default

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")

    def checksum_ok(self) -> bool:
        return self.checksum == checksum_of(self.payload)

    def __repr__(self) -> str:
        return (
            f"Artifact(id={self.id!r}, role={self.role!r}, scope={self.scope!r}, "
            f"media_type={self.media_type!r}, state={self.state!r}, "
            f"meta={dict(self.meta)!r}, payload={len(self.payload)} bytes)"
        )


assert Artifact._fields.index("role") == _ROLE and Artifact._fields.index("scope") == _SCOPE
assert Artifact._fields.index("origin") == _ORIGIN and Artifact._fields.index("issuer") == _ISSUER
assert Artifact._fields.index("state") == _STATE and Artifact._fields.index("meta") == _META
