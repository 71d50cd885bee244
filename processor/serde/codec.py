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
to fastavro's generic `schemaless_writer` / `schemaless_reader` and, compiled, about three
times as fast.
Any other schema, a different writer schema, and anything the specialised encoder does not
handle exactly go through fastavro.

Writer schemas (schema evolution: every record a stage writes carries the identity of the
schema it was written with, and a consumer resolves that writer schema into its own reader
schema by Avro's rules; `processor.serde.wire` reads and writes that identity):

* `schema_fingerprint` gives a schema's identity, the CRC-64-AVRO fingerprint of its
  parsing canonical form; `Codec.fingerprint` is the one this codec writes with;
* `SCHEMA_HEADER` names the Kafka header that carries that fingerprint;
* a codec knows other writer schemas by fingerprint: every packaged version of the schema
  (`PACKAGED_VERSIONS`), and `Codec(writer_schemas=...)`, `Codec.register`,
  `Codec.writer_schema`, `Codec.fingerprints`, and for the shared default codec
  `register_writer_schema` and `writer_schema_for`;
* `Codec.decode(data, writer_schema=...)` takes a schema or a known fingerprint (text, or
  the header's ASCII bytes) and resolves the record into the codec's schema, so data
  written with an older or newer version (fields added or removed, each with a default)
  decodes into this one.

A codec's schema may be an older version of the artifact schema: its fields must be the
first fields of `Artifact`, in order, at least up to `checksum`, of the packaged schema's
types. Such a codec writes only its fields, and the artifacts it decodes have the later
fields' defaults; that is how a stage runs an older schema version (`schema_file`).

A codec's schema may also have fields of its own after the artifact's (a user's schema,
`schemas/examples/artifact-with-tenant.avsc`), each with a default. `Artifact` has no place
for them: the codec keeps the values each decoded record had, by artifact id, for the last
`CARRY_LIMIT` records whose values are not the defaults, and encodes an artifact of a kept
id with them (a handler's `with_meta` and the like keep the id), any other with the
defaults. Data of the packaged versions decodes through the specialised decoder; when the
schema's artifact fields are the packaged schema's, encoding is the specialised encoder's
bytes followed by fastavro's encoding of the own fields (an Avro record is its fields one
after the other).

Version 2 of the packaged schema (`artifact.avsc`) added `approvals`, `pseudonym_hash` and
`merkle_root`; version 1 is `artifact.v1.avsc`. The specialised decoder reads data of both
versions into version 2.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processor.core.artifact import Approval, Artifact
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

PACKAGED_VERSIONS: Final = ("artifact.v1.avsc", "artifact.avsc")
"""The packaged versions of the artifact schema, oldest first; the last is the current one."""

Schema: TypeAlias = dict[str, Any]
"""An Avro schema as a JSON object (parsed by fastavro or not)."""

CARRY_LIMIT: Final = 65_536
"""How many decoded artifacts' own-field values a codec keeps for re-encoding (see
`Codec`): far more than a stage holds between decoding a record and encoding its
results."""

_FIELDS: Final = Artifact._fields
_DEFAULTS: Final = tuple(Artifact._field_defaults.get(name) for name in _FIELDS)
_MIN_FIELDS: Final = _FIELDS.index("checksum") + 1
_APPROVALS: Final = _FIELDS.index("approvals")
_sha256 = hashlib.sha256


def load_schema(name: str = PACKAGED_VERSIONS[-1]) -> Schema:
    """A packaged version of the artifact schema (default: the current one), as a fresh
    (unparsed) JSON object."""
    schema_file = resources.files("processor.serde").joinpath("schemas", name)
    text = schema_file.read_text("utf-8")
    loaded: Schema = json.loads(text)
    return loaded


def read_schema_file(path: str | Path) -> Schema:
    """An Avro schema from a `.avsc` file, or `SchemaError` saying why it cannot be read."""
    try:
        loaded: Schema = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise SchemaError(f"schema file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise SchemaError(f"schema file {path} is not JSON: {exc}") from exc
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
    `artifact.avsc`); its fields must begin with the `Artifact` fields, in order, at least
    up to `checksum`, and any after those (its own) must have defaults. `writer_schemas`
    are other versions the decoder should know by fingerprint, besides the packaged
    versions, which it always knows.
    """

    __slots__ = ("_extra", "_fast", "_legacy", "_projectable", "_raw", "_schema", "_size",
                 "_writers", "fingerprint")

    def __init__(
        self,
        schema: Mapping[str, Any] | str | None = None,
        *,
        writer_schemas: Iterable[Mapping[str, Any] | str] = (),
    ) -> None:
        raw = schema if schema is not None else load_schema()
        self._raw = json.loads(raw) if isinstance(raw, str) else dict(raw)
        parsed = _parse(raw)
        fields = parsed.get("fields", ())
        names = tuple(f.get("name") for f in fields)
        size = next((i for i, name in enumerate(names[:len(_FIELDS)]) if name != _FIELDS[i]),
                    min(len(names), len(_FIELDS)))
        own = fields[size:]
        if parsed.get("type") != "record" or size < _MIN_FIELDS or any(
                f.get("name") in _FIELDS or "default" not in f for f in own):
            raise SchemaError(
                f"an artifact schema must be a record whose fields begin with "
                f"{', '.join(_FIELDS)} in that order (a version before {_FIELDS[-1]} may end "
                f"after {_FIELDS[_MIN_FIELDS - 1]}); any fields after those are the schema's "
                f"own, each with a default and a name not among them; got "
                f"{_field_list(fields) or 'no fields'}"
            )
        retyped = [f["name"] for f, packaged in zip(fields[:size], _PACKAGED_FIELDS,
                                                    strict=False)
                   if _shape(f["type"]) != _shape(packaged["type"])]
        if retyped:
            raise SchemaError(f"an artifact schema's fields must have the types of "
                              f"{PACKAGED_VERSIONS[-1]}; these do not: {', '.join(retyped)}")
        self._schema = parsed
        self._size = size
        self.fingerprint: str = schema_fingerprint(parsed)
        """The fingerprint of the schema this codec writes (for `SCHEMA_HEADER`)."""
        self._writers: dict[str, Schema] = {self.fingerprint: parsed}
        self._projectable: dict[str, bool] = {}
        """Writer fingerprint -> whether its fields that this schema has are of the same
        types (then resolving is reading with the writer and taking this schema's fields)."""
        # The specialised encoder and decoder are written for the packaged schema only;
        # the decoder also reads what version 1 wrote (`_legacy`: its fingerprint).
        self._fast: bool = self.fingerprint == _PACKAGED_FINGERPRINT
        self._legacy: str | None = _V1_FINGERPRINT if self._fast else None
        self._extra: _ExtraFields | None = _ExtraFields(self._raw, size) if own else None
        """The schema's own fields after the artifact's (None: it has none)."""
        for packaged in _PACKAGED_SCHEMAS:
            self.register(packaged)
        for other in writer_schemas:
            self.register(other)

    @property
    def schema(self) -> Schema:
        """The parsed schema this codec writes with and reads into."""
        return self._schema

    @property
    def schema_json(self) -> Schema:
        """The schema as it was given (unparsed JSON), as a registry stores it."""
        return copy.deepcopy(self._raw)

    @property
    def fast(self) -> bool:
        """Whether this codec's schema is the packaged one, which takes the specialised
        encoder and decoder."""
        return self._fast

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

    def fingerprints(self, *, oldest_first: bool = False) -> list[str]:
        """The fingerprints of every schema this codec can decode: sorted, or in the order
        they became known (its own, the packaged versions oldest first, the others)."""
        return list(self._writers) if oldest_first else sorted(self._writers)

    # --- single records ----------------------------------------------------------------

    def _record(self, artifact: Artifact) -> dict[str, Any]:
        record: dict[str, Any] = dict(zip(_FIELDS[:self._size], artifact, strict=False))
        record["checksum"] = _sha256(artifact.payload).digest()
        # fastavro writes a plain dict faster than a read-only mapping proxy.
        record["meta"] = dict(artifact.meta)
        if self._size > _APPROVALS:
            record["approvals"] = [
                a._asdict() if hasattr(a, "_asdict") else a for a in artifact.approvals]
        return record

    def encode(self, artifact: Artifact, prefix: bytes = b"") -> bytes:
        """`prefix` (a framing, such as the Confluent wire format's), then the Avro
        encoding of `artifact`, with its checksum set from its payload."""
        extra = self._extra
        if self._fast:
            try:
                return _fast_encode(artifact, prefix)
            except Exception:
                pass  # fastavro, below, encodes it or says why it cannot
        elif extra is not None and extra.fast:
            # An Avro record is its fields one after the other: the artifact's fields as
            # the packaged schema writes them, then the schema's own.
            try:
                return _fast_encode(artifact, prefix) + extra.encode(artifact)
            except Exception:
                pass
        try:
            record = self._record(artifact)
            if extra is not None:
                record.update(extra.values(artifact))
            out = BytesIO()
            out.write(prefix)
            schemaless_writer(out, self._schema, record)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode artifact {_describe(artifact)}: {exc}") from exc
        return out.getvalue()

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        writer_schema: Mapping[str, Any] | str | bytes | None = None,
        start: int = 0,
    ) -> Artifact:
        """The artifact encoded in `data` (from byte `start` on, after a framing).

        `writer_schema` is the schema the data was written with, when not this codec's:
        a schema, or the fingerprint of a known one (text or ASCII bytes, as found in the
        `SCHEMA_HEADER` header).
        """
        if len(data) <= start:
            raise EmptyInput()
        writer = self._schema
        fp = self.fingerprint
        if writer_schema is not None:
            if isinstance(writer_schema, str | bytes):
                fp = _fingerprint_text(writer_schema)
                writer = self.writer_schema(fp)
            else:
                fp = schema_fingerprint(writer_schema)
                writer = self._writers.get(fp) or _parse(writer_schema)
        extra = self._extra
        if self._fast:
            if writer is self._schema:
                return _fast_decode(data, start)
            if fp == self._legacy:
                return _fast_decode(data, start, legacy=True)
        elif extra is not None and extra.fast and fp in _FAST_WRITERS:
            # Written by the packaged version 2 (or 1), which this schema begins with: the
            # specialised decoder reads it; the schema's own fields take their defaults.
            artifact = _fast_decode(data, start, legacy=fp == _V1_FINGERPRINT)
            extra.forget(artifact.id)
            return artifact
        source = BytesIO(data)
        source.seek(start)
        project = writer is not self._schema and self._same_types(fp, writer)
        try:
            if writer is self._schema or project:
                record = schemaless_reader(source, writer, None)
            else:
                record = schemaless_reader(source, writer, self._schema)
        except SchemaResolutionError as exc:
            raise SchemaError(
                f"writer schema does not resolve to the artifact schema: {exc}"
            ) from exc
        except READ_ERRORS as exc:
            raise DecodeError(read_failure(exc, len(data) - start)) from exc
        if source.tell() != len(data):
            raise DecodeError(
                f"{len(data) - source.tell()} trailing bytes after a "
                f"{source.tell() - start}-byte artifact: one message must hold exactly one "
                "record"
            )
        if project:
            record = self._projected(record)
        artifact = _artifact(record, self._size)
        if extra is not None and isinstance(record, dict):
            extra.keep(artifact.id, record)
        return artifact

    def _same_types(self, fp: str, writer: Schema) -> bool:
        """Whether every field of `writer` that this schema has is of the same type.

        Then Avro's resolution is plain: read with the writer's schema, keep this schema's
        fields, give the others their defaults. It is done here rather than by fastavro's
        resolution, which matches a union branch by the first compatible reader branch,
        promotions included: a `bytes` meta value would resolve to the `string` branch
        (Apache Avro's Java reader prefers the branch of the same type, as this does).
        """
        known = self._projectable.get(fp)
        if known is None:
            theirs = {f["name"]: _plain_type(f["type"]) for f in writer.get("fields", ())}
            known = all(theirs.get(f["name"], _plain_type(f["type"])) == _plain_type(f["type"])
                        for f in self._schema["fields"])
            self._projectable[fp] = known
        return known

    def _projected(self, record: object) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise DecodeError(f"decoded a {type(record).__name__}, not an artifact record")
        out: dict[str, Any] = {}
        for field in self._schema["fields"]:
            name = field["name"]
            if name in record:
                out[name] = record[name]
            elif self._extra is not None and name in self._extra.defaults:
                out[name] = copy.deepcopy(self._extra.defaults[name])
            elif "default" not in field:
                raise SchemaError(f"writer schema does not resolve to the artifact schema: "
                                  f"it has no field {name!r}, which has no default")
            else:
                default = copy.deepcopy(field["default"])
                if field["type"] == "bytes" and isinstance(default, str):
                    default = default.encode("latin-1")  # Avro's JSON form of bytes
                out[name] = default
        return out


class _ExtraFields:
    """The fields a schema has after the artifact's (its own fields): their defaults, an
    encoder of them alone, and the values recently decoded artifacts carried.

    `Artifact` has no place for them, so they are kept here by artifact id: the last
    `CARRY_LIMIT` decoded artifacts whose values differ from the defaults. An artifact a
    handler derives from a decoded one keeps its id (`with_meta`, `with_payload`, ...),
    and is encoded with that one's values; any other artifact (`Artifact.new`, or an id
    no longer kept) with the defaults.
    """

    __slots__ = ("_carried", "_schema", "defaults", "fast", "names")

    def __init__(self, raw: Schema, size: int) -> None:
        fields = raw["fields"]
        named: dict[str, Any] = {}
        head = _parse_record({**raw, "fields": fields[:size]}, named)
        self.fast: bool = schema_fingerprint(head) == _PACKAGED_FINGERPRINT
        """Whether the artifact's fields are the packaged schema's (the specialised
        encoder and decoder then write and read them)."""
        # The own fields alone, as a record of their own in the same namespace, so names
        # of types the artifact's fields define resolve as they do in the whole schema.
        name = f"{raw['name']}_own_fields"
        empty: Schema = {"type": "record", "name": name, "fields": []}
        if raw.get("namespace") is not None:
            empty["namespace"] = raw["namespace"]
        try:
            self._schema = _parse_record({**empty, "fields": fields[size:]}, dict(named))
            # Avro's JSON form of a default (bytes as text, say) becomes a value by
            # resolving an empty record into the fields.
            defaults = schemaless_reader(BytesIO(b""), _parse_record(empty, {}), self._schema)
        except (ValueError, TypeError, KeyError, SchemaResolutionError) as exc:
            raise SchemaError(f"the schema's own fields: {exc}") from exc
        assert isinstance(defaults, dict)
        self.defaults: dict[str, Any] = defaults
        self.names: tuple[str, ...] = tuple(f["name"] for f in fields[size:])
        self._carried: dict[str, dict[str, Any]] = {}

    def keep(self, artifact_id: str, record: Mapping[str, Any]) -> None:
        """Remember the own fields' values of a decoded record, unless they are the
        defaults."""
        values = {name: record[name] for name in self.names}
        carried = self._carried
        carried.pop(artifact_id, None)  # kept again, as the most recent
        if values == self.defaults:
            return
        carried[artifact_id] = values
        if len(carried) > CARRY_LIMIT:
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del carried[next(iter(carried))]  # unless another thread just did

    def forget(self, artifact_id: str) -> None:
        """A record of this id without the own fields was decoded: they are the defaults."""
        self._carried.pop(artifact_id, None)

    def values(self, artifact: Artifact) -> dict[str, Any]:
        """The own fields' values to encode `artifact` with."""
        return self._carried.get(artifact.id, self.defaults)

    def encode(self, artifact: Artifact) -> bytes:
        """The own fields of `artifact`, encoded (what follows the artifact's fields)."""
        out = BytesIO()
        schemaless_writer(out, self._schema, self.values(artifact))
        return out.getvalue()


def _parse_record(schema: Schema, named: dict[str, Any]) -> Schema:
    parsed = parse_schema(schema, named_schemas=named)
    assert isinstance(parsed, dict)  # a record schema parses to a record schema
    return parsed


def _field_list(fields: Iterable[Mapping[str, Any]]) -> str:
    return ", ".join(f"{f.get('name')}" + ("" if "default" in f else " (no default)")
                     for f in fields)


def _plain_type(schema: object) -> object:
    """A field type without docs, defaults and fastavro's own keys, to compare types."""
    if isinstance(schema, dict):
        return {k: _plain_type(v) for k, v in schema.items()
                if k not in ("doc", "default", "aliases") and not k.startswith("__")}
    if isinstance(schema, list):
        return [_plain_type(v) for v in schema]
    return schema


def _shape(schema: object) -> object:
    """A parsed type without namespaces (and what `_plain_type` leaves out): a record
    renamed into another namespace has the same shape."""
    if isinstance(schema, str):
        return schema.rpartition(".")[2]
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items()
                if k not in ("doc", "default", "aliases", "namespace") and not k.startswith("__")}
    if isinstance(schema, list):
        return [_shape(v) for v in schema]
    return schema


def _artifact(record: object, size: int) -> Artifact:
    """Build the artifact from a decoded record of `size` fields (the later ones take
    their defaults) and verify its checksum."""
    if not isinstance(record, dict):
        raise DecodeError(f"decoded a {type(record).__name__}, not an artifact record")
    record["meta"] = MappingProxyType(record["meta"])
    values = [record[name] for name in _FIELDS[:size]]
    if size > _APPROVALS:
        values[_APPROVALS] = tuple(
            Approval(a["key_id"], a["signature"], a["timestamp"]) for a in values[_APPROVALS])
    artifact: Artifact = _tuple_new(Artifact, (*values, *_DEFAULTS[size:]))
    if _sha256(artifact.payload).digest() != artifact.checksum:
        raise checksum_mismatch(artifact)
    return artifact


def _describe(artifact: object) -> str:
    return repr(getattr(artifact, "id", artifact))


_tuple_new = tuple.__new__
_PACKAGED_SCHEMAS: Final = tuple(_parse(load_schema(name)) for name in PACKAGED_VERSIONS)
_PACKAGED_FIELDS: Final[list[Schema]] = _PACKAGED_SCHEMAS[-1]["fields"]
_PACKAGED_FINGERPRINT: Final = schema_fingerprint(_PACKAGED_SCHEMAS[-1])
"""The fingerprint the specialised encoder and decoder are written for."""
_V1_FINGERPRINT: Final = schema_fingerprint(_PACKAGED_SCHEMAS[0])
"""The fingerprint of version 1, which the specialised decoder reads too."""
_FAST_WRITERS: Final = frozenset((_PACKAGED_FINGERPRINT, _V1_FINGERPRINT))

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
