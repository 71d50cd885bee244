"""Avro encoding of artifacts: the wire contract in `schemas/artifact.avsc`.

The schema is parsed once, when a `Codec` is built; encoding and decoding then do only
per-record work. Encoding sets the checksum to the SHA-256 of the payload, whatever the
artifact carried; decoding verifies it and raises `ChecksumMismatch` when it is wrong.

Decoding is strict: empty input raises `EmptyInput`, truncated input, undecodable bytes
and trailing bytes after the record raise `DecodeError`. A message is one record and
nothing else, so trailing bytes mean the framing is wrong.

Two paths, one result. With the packaged schema (or any schema of the same parsing
canonical form, hence the same fingerprint) and data written with it, `encode` and
`decode` use the specialised encoder and decoder of `processor.serde.fast`, byte-identical
to fastavro's generic `schemaless_writer` / `schemaless_reader` and about twice as fast.
Any other schema, a different writer schema, and anything the specialised encoder does not
handle exactly go through fastavro.

Writer schemas (kept for schema evolution, which the data-contracts work builds on: every
record will carry the identity of the schema it was written with, and a consumer resolves
that writer schema into its own reader schema):

* `schema_fingerprint` gives a schema's identity, the CRC-64-AVRO fingerprint of its
  parsing canonical form; `Codec.fingerprint` is the one this codec writes with;
* `SCHEMA_HEADER` names the Kafka header meant to carry that fingerprint (no stage sets it
  yet);
* a codec knows other writer schemas by fingerprint: `Codec(writer_schemas=...)`,
  `Codec.register`, `Codec.writer_schema`, `Codec.fingerprints`, and for the shared
  default codec `register_writer_schema` and `writer_schema_for`;
* `Codec.decode(data, writer_schema=...)` takes a schema or a known fingerprint (text, or
  the header's ASCII bytes) and resolves the record into the codec's schema, so data
  written with an older or newer version (fields added or removed, each with a default)
  decodes into this one.

Avro object container files and the Confluent wire format (magic byte and registry id)
were here once and are not: nothing in the product used them. The schema registry framing
comes back with the registry client that needs it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from io import BytesIO
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processor.core.artifact import Artifact
from processor.core.errors import (
    DecodeError,
    EmptyInput,
    EncodeError,
    SchemaError,
)
from processor.serde.fast import READ_ERRORS, checksum_mismatch, read_failure
from processor.serde.fast import decode as _fast_decode
from processor.serde.fast import encode as _fast_encode

SCHEMA_HEADER: Final = "artifact-schema"
"""The Kafka header meant to carry the fingerprint of the schema a record was written with."""

FINGERPRINT_ALGORITHM: Final = "CRC-64-AVRO"

Schema: TypeAlias = dict[str, Any]
"""An Avro schema as a JSON object (parsed by fastavro or not)."""

_FIELDS: Final = Artifact._fields
_make = Artifact._make
_sha256 = hashlib.sha256


def load_schema() -> Schema:
    """The artifact schema shipped with the package, as a fresh (unparsed) JSON object."""
    schema_file = resources.files("processor.serde").joinpath("schemas", "artifact.avsc")
    text = schema_file.read_text("utf-8")
    loaded: Schema = json.loads(text)
    return loaded


def _parse(schema: Mapping[str, Any] | str) -> Schema:
    try:
        raw = json.loads(schema) if isinstance(schema, str) else dict(schema)
        parsed = parse_schema(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"not a usable Avro schema: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SchemaError(f"an artifact schema must be a record, not {parsed!r}")
    return parsed


def schema_fingerprint(schema: Mapping[str, Any] | str) -> str:
    """The Rabin CRC-64-AVRO fingerprint of a schema's parsing canonical form, as hex.

    Two schemas that differ only in docs, defaults or field order of JSON keys have the
    same fingerprint; any change a reader would notice gives another.
    """
    if isinstance(schema, dict) and "__fastavro_parsed" in schema:
        parsed: Schema = schema
    else:
        parsed = _parse(schema)
    canonical = to_parsing_canonical_form(parsed)
    result: str = fingerprint(canonical, FINGERPRINT_ALGORITHM)
    return result


def _fingerprint_text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii").strip().lower()
        except UnicodeDecodeError as exc:
            raise SchemaError(f"schema fingerprint {value!r} is not ASCII hex") from exc
    return value.strip().lower()


class Codec:
    """Encodes artifacts to Avro bytes and back, with one schema parsed up front.

    `schema` is the schema this codec writes and reads into (default: the packaged
    `artifact.avsc`); its fields must be the `Artifact` fields, in order. `writer_schemas`
    are other versions the decoder should know by fingerprint.
    """

    __slots__ = ("_fast", "_schema", "_writers", "fingerprint")

    def __init__(
        self,
        schema: Mapping[str, Any] | str | None = None,
        *,
        writer_schemas: Iterable[Mapping[str, Any] | str] = (),
    ) -> None:
        parsed = _parse(schema if schema is not None else load_schema())
        names = tuple(f.get("name") for f in parsed.get("fields", ()))
        if parsed.get("type") != "record" or names != _FIELDS:
            raise SchemaError(
                f"an artifact schema must be a record with the fields {', '.join(_FIELDS)} "
                f"in that order; got {', '.join(map(str, names)) or 'no fields'}"
            )
        self._schema = parsed
        self.fingerprint: str = schema_fingerprint(parsed)
        """The fingerprint of the schema this codec writes (for `SCHEMA_HEADER`)."""
        self._writers: dict[str, Schema] = {self.fingerprint: parsed}
        # The specialised encoder and decoder are written for the packaged schema only.
        self._fast: bool = self.fingerprint == _PACKAGED_FINGERPRINT
        for other in writer_schemas:
            self.register(other)

    @property
    def schema(self) -> Schema:
        """The parsed schema this codec writes with and reads into."""
        return self._schema

    # --- writer schemas ----------------------------------------------------------------

    def register(self, writer_schema: Mapping[str, Any] | str) -> str:
        """Make a writer schema known by its fingerprint, which is returned."""
        parsed = _parse(writer_schema)
        fp = schema_fingerprint(parsed)
        self._writers.setdefault(fp, parsed)
        return fp

    def writer_schema(self, schema_fingerprint: str | bytes) -> Schema:
        """A known writer schema by fingerprint (hex text, or its ASCII bytes)."""
        fp = _fingerprint_text(schema_fingerprint)
        found = self._writers.get(fp)
        if found is None:
            known = ", ".join(sorted(self._writers))
            raise SchemaError(f"unknown writer schema fingerprint {fp!r}; known: {known}")
        return found

    def fingerprints(self) -> list[str]:
        """The fingerprints of every schema this codec can decode."""
        return sorted(self._writers)

    # --- single records ----------------------------------------------------------------

    def _record(self, artifact: Artifact) -> dict[str, Any]:
        record = dict(zip(_FIELDS, artifact, strict=True))
        record["checksum"] = _sha256(artifact.payload).digest()
        # fastavro writes a plain dict faster than a read-only mapping proxy.
        record["meta"] = dict(artifact.meta)
        return record

    def encode(self, artifact: Artifact) -> bytes:
        """The Avro encoding of `artifact`, with its checksum set from its payload."""
        if self._fast:
            try:
                return _fast_encode(artifact)
            except Exception:
                pass  # fastavro, below, encodes it or says why it cannot
        try:
            record = self._record(artifact)
            out = BytesIO()
            schemaless_writer(out, self._schema, record)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode artifact {_describe(artifact)}: {exc}") from exc
        return out.getvalue()

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        writer_schema: Mapping[str, Any] | str | bytes | None = None,
    ) -> Artifact:
        """The artifact encoded in `data`.

        `writer_schema` is the schema the data was written with, when not this codec's:
        a schema, or the fingerprint of a known one (text or ASCII bytes, as found in the
        `SCHEMA_HEADER` header).
        """
        if not data:
            raise EmptyInput()
        writer = self._schema
        if writer_schema is not None:
            if isinstance(writer_schema, str | bytes):
                writer = self.writer_schema(writer_schema)
            else:
                writer = self._writers.get(schema_fingerprint(writer_schema)) or _parse(
                    writer_schema
                )
        if writer is self._schema and self._fast:
            return _fast_decode(data)
        source = BytesIO(data)
        try:
            if writer is self._schema:
                record = schemaless_reader(source, writer, None)
            else:
                record = schemaless_reader(source, writer, self._schema)
        except SchemaResolutionError as exc:
            raise SchemaError(
                f"writer schema does not resolve to the artifact schema: {exc}"
            ) from exc
        except READ_ERRORS as exc:
            raise DecodeError(read_failure(exc, len(data))) from exc
        if source.tell() != len(data):
            raise DecodeError(
                f"{len(data) - source.tell()} trailing bytes after a {source.tell()}-byte "
                "artifact: one message must hold exactly one record"
            )
        return _artifact(record, ordered=writer is self._schema)


def _artifact(record: object, *, ordered: bool) -> Artifact:
    """Build the artifact from a decoded record and verify its checksum."""
    if not isinstance(record, dict):
        raise DecodeError(f"decoded a {type(record).__name__}, not an artifact record")
    record["meta"] = MappingProxyType(record["meta"])
    # With the codec's own schema as writer, the record's keys come in the field order.
    artifact = _make(record.values() if ordered else [record[name] for name in _FIELDS])
    if _sha256(artifact.payload).digest() != artifact.checksum:
        raise checksum_mismatch(artifact)
    return artifact


def _describe(artifact: object) -> str:
    return repr(getattr(artifact, "id", artifact))


_PACKAGED_FINGERPRINT: Final = schema_fingerprint(load_schema())
"""The fingerprint the specialised encoder and decoder are written for."""

default_codec: Final = Codec()
"""The codec for the packaged schema, shared by the module-level functions."""


def encode(artifact: Artifact) -> bytes:
    """Encode with the packaged schema (see `Codec.encode`)."""
    return default_codec.encode(artifact)


def decode(
    data: bytes | bytearray | memoryview,
    writer_schema: Mapping[str, Any] | str | bytes | None = None,
) -> Artifact:
    """Decode into the packaged schema (see `Codec.decode`)."""
    return default_codec.decode(data, writer_schema)


def register_writer_schema(writer_schema: Mapping[str, Any] | str) -> str:
    """Make a writer schema known to the default codec; returns its fingerprint."""
    return default_codec.register(writer_schema)


def writer_schema_for(schema_fingerprint: str | bytes) -> Schema:
    """A writer schema the default codec knows, by fingerprint."""
    return default_codec.writer_schema(schema_fingerprint)
