"""A stage's codec on the wire: every record says which schema wrote it.

`WireCodec` wraps a `Codec` (the schema the stage reads into and writes with) and adds the
writer schema's identity to what it writes, and reads it from what it consumes:

* **Without a registry**, the identity is the `SCHEMA_HEADER` header: the CRC-64-AVRO
  fingerprint of the writer schema, as hex. `headers()` gives a re-encoded record's
  headers: the input's, with that header set to this codec's fingerprint. A consumer
  resolves a known fingerprint's schema into its own (`Codec.decode`); a fingerprint it
  does not know is a `SchemaError`.
* **With a registry** (`RegistrySchemas`), a value is in the Confluent wire format (magic
  byte 0, 4-byte schema id, Avro body). A record is framed when its first byte is 0; its
  id's schema is asked of the registry once and cached. `headers()` drops a
  `SCHEMA_HEADER` the input may carry, since the framing names the schema.
* **A record with no identity** (written before identities existed, or by a plain
  producer) is read as the codec's own schema; if it does not decode as that, as each other
  known writer schema (the older packaged versions first), since records written before
  identities existed were written with version 1. Avro's binary encoding is not
  self-describing, so this is a best effort for such records only.

An artifact a handler returned unchanged goes out as its input bytes, with its input
headers: its identity travels with it. The current schema's data takes the specialised
path of `processor.serde.fast` in every case (header, framing or none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from processor.core.artifact import Artifact
from processor.core.errors import ChecksumMismatch, DecodeError, EmptyInput, SchemaError
from processor.serde.codec import SCHEMA_HEADER, Codec
from processor.serde.fast import decode as _fast_decode
from processor.serde.fast import encode as _fast_encode
from processor.serde.registry import FRAME_SIZE, MAGIC_BYTE, RegistrySchemas, frame

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
"""Kafka headers as the backends give and take them (`processor.backends.abstract`)."""


class Record(Protocol):
    """What `wrap` reads of a consumed record (a backend's `Message` has it)."""

    def topic(self) -> str: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class WireCodec:
    """A stage's codec: decodes any known writer schema, writes its own with its identity.

    `registry` (with `topics`, the topics the stage writes to) switches to the Confluent
    wire format: the codec's schema is registered or looked up under each topic's subject
    when the `WireCodec` is built, so a registry problem shows at start. Without topics (a
    sink stage) it reads framed records and registers nothing.
    """

    __slots__ = ("_fast", "_fingerprints", "_header", "_order", "_prefix", "_registry",
                 "codec", "schema_id")

    def __init__(
        self,
        codec: Codec | None = None,
        registry: RegistrySchemas | None = None,
        topics: Iterable[str] = (),
    ) -> None:
        self.codec = codec if codec is not None else Codec()
        self._registry = registry
        self._fast = self.codec.fast
        own = self.codec.fingerprint
        self._fingerprints: dict[int, str] = {}
        """Registry id -> fingerprint of the writer schema (registered with the codec)."""
        self.schema_id: int | None = None
        """The registry id this codec writes with (None: no registry)."""
        self._prefix = b""
        self._header: tuple[str, bytes] | None = (SCHEMA_HEADER, own.encode("ascii"))
        topics = list(topics)
        if registry is not None and topics:  # a sink stage only reads framed records
            self.schema_id = registry.own_id(self.codec.schema_json, topics)
            self._fingerprints[self.schema_id] = own
            self._prefix = frame(self.schema_id)
            self._header = None
        # Headerless data: the own schema first, then the others, oldest first.
        self._order = [fp for fp in self.codec.fingerprints(oldest_first=True) if fp != own]

    passthrough = True
    """Whether an artifact a handler returned unchanged may go out as its input bytes."""

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the schema this codec writes."""
        return self.codec.fingerprint

    @property
    def framed(self) -> bool:
        """Whether values are in the Confluent wire format (a registry is configured)."""
        return self._registry is not None

    # --- decoding ----------------------------------------------------------------------

    def decode(self, value: bytes, headers: Headers | None = None) -> Artifact:
        """The artifact in `value`, written with the schema its framing or header names."""
        if not value:
            raise EmptyInput()
        if self._registry is not None and value[0] == MAGIC_BYTE:
            if self._fast and self._prefix and value.startswith(self._prefix):
                return _fast_decode(value, FRAME_SIZE)  # written with this codec's schema
            schema_id = int.from_bytes(value[1:FRAME_SIZE], "big")
            fp = self._fingerprints.get(schema_id)
            if fp is None:
                fp = self._learn(schema_id)
            if self._fast and fp is self.codec.fingerprint:
                return _fast_decode(value, FRAME_SIZE)
            return self.codec.decode(value, fp, FRAME_SIZE)
        if headers:
            for key, written_with in headers:
                if key == SCHEMA_HEADER:
                    if written_with is None:
                        break
                    if self._fast and self._header is not None and (
                            written_with == self._header[1]):
                        return _fast_decode(value)
                    return self.codec.decode(value, written_with)
        return self._unidentified(value)

    def wrap(self, message: Record) -> Artifact:
        """The artifact of a consumed record (`decode` of its value and headers)."""
        return self.decode(message.value() or b"", message.headers())

    def _learn(self, schema_id: int) -> str:
        assert self._registry is not None
        text = self._registry.schema_text(schema_id)
        fp = self.codec.register(text)
        if fp == self.codec.fingerprint:
            fp = self.codec.fingerprint  # the same object: the fast path's identity test
        self._fingerprints[schema_id] = fp
        logger.info("schema id %d is writer schema %s", schema_id, fp)
        return fp

    def _unidentified(self, value: bytes) -> Artifact:
        """A record without identity: the own schema, else another known writer's."""
        try:
            if self._fast:
                return _fast_decode(value)
            return self.codec.decode(value)
        except ChecksumMismatch:
            raise
        except DecodeError as first:
            for fp in self._order:
                try:
                    return self.codec.decode(value, fp)
                except (DecodeError, SchemaError):
                    continue
            raise first from None

    # --- encoding ----------------------------------------------------------------------

    def encode(self, artifact: Artifact) -> bytes:
        """`artifact` in this codec's schema, framed when a registry is configured."""
        if self._fast:
            try:
                return _fast_encode(artifact, self._prefix)
            except Exception:
                pass  # `Codec.encode` hands it to fastavro, or says why it cannot
        return self.codec.encode(artifact, self._prefix)

    def headers(self, headers: Headers | None) -> Headers | None:
        """The headers of a record this codec encoded, from its input's: the schema
        header set to this codec's fingerprint (or, framed, removed)."""
        mine = self._header
        if not headers:
            return [mine] if mine is not None else headers
        for key, written_with in headers:
            if key == SCHEMA_HEADER:
                if mine is not None and written_with == mine[1]:
                    return headers
                break
        else:
            return [*headers, mine] if mine is not None else headers
        kept = [h for h in headers if h[0] != SCHEMA_HEADER]
        if mine is not None:
            kept.append(mine)
        return kept

