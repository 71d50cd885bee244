"""Plain records in and out: ingest from, and egress to, topics that hold no artifacts.

`FormatCodec` is a `WireCodec` for a stage at the edge of a pipeline:

* **In** (`input_format`): `json` (each value must be one JSON document), `avro` (a record
  in the Confluent wire format whose schema id the registry knows: the value is kept whole,
  framing included, and its schema id goes into the meta key `avro.schema_id`) or `bytes`
  (anything). Each record is wrapped into a new artifact whose payload is the value, whose
  media type is the format's (`application/json`, `application/avro`,
  `application/octet-stream`), whose origin is the input topic and whose timestamp is the
  record's. The record's key and headers go out with the stage's outputs as they came.
  `artifact` reads artifacts, as every stage does.
* **Out** (`output_format`): `payload` writes each artifact's payload alone, for consumers
  that know nothing of artifacts, with the input's headers less the schema header;
  `artifact` writes artifacts.

An edge stage never passes its input bytes through (`passthrough` is False): what it reads
is not what it writes, so every output is encoded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Final, Literal

from processor.core.artifact import Artifact, MediaType
from processor.core.errors import DecodeError, SchemaError
from processor.serde.codec import SCHEMA_HEADER, Codec
from processor.serde.registry import FRAME_SIZE, RegistrySchemas, framed_id
from processor.serde.wire import Headers, Record, WireCodec

InputFormat = Literal["artifact", "json", "avro", "bytes"]
OutputFormat = Literal["artifact", "payload"]
INPUT_FORMATS: Final[tuple[InputFormat, ...]] = ("artifact", "json", "avro", "bytes")
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = ("artifact", "payload")
MEDIA_TYPES: Final = {"json": MediaType.JSON, "avro": MediaType.AVRO,
                      "bytes": MediaType.OCTET_STREAM}
SCHEMA_ID_META: Final = "avro.schema_id"


class FormatCodec(WireCodec):
    """A `WireCodec` that wraps plain input records and/or writes plain payloads."""

    __slots__ = ("_checked", "input_format", "output_format")

    passthrough = False

    def __init__(
        self,
        codec: Codec | None = None,
        registry: RegistrySchemas | None = None,
        topics: Iterable[str] = (),
        *,
        input_format: InputFormat = "artifact",
        output_format: OutputFormat = "artifact",
    ) -> None:
        if input_format not in INPUT_FORMATS or output_format not in OUTPUT_FORMATS:
            raise SchemaError(f"unknown format {input_format!r} -> {output_format!r}; inputs: "
                              f"{', '.join(INPUT_FORMATS)}; outputs: "
                              f"{', '.join(OUTPUT_FORMATS)}")
        if input_format == "avro" and registry is None:
            raise SchemaError("input_format avro reads records through a schema registry: "
                              "set schema_registry_url")
        # Plain payloads out: no artifact schema to register.
        super().__init__(codec, registry, topics if output_format == "artifact" else ())
        self.input_format = input_format
        self.output_format = output_format
        self._checked: set[int] = set()
        """Registry ids of plain Avro input known to be in the registry."""

    def wrap(self, message: Record) -> Artifact:
        """The artifact for one input record (see the module documentation)."""
        value = message.value() or b""
        kind = self.input_format
        if kind == "artifact":
            return self.decode(value, message.headers())
        meta: dict[str, int] = {}
        if kind == "json":
            try:
                json.loads(value)
            except ValueError as exc:
                raise DecodeError(f"not a JSON document ({len(value)} bytes): {exc}") from exc
        elif kind == "avro":
            schema_id = framed_id(value)
            if schema_id is None:
                raise DecodeError(f"not a record in the Confluent wire format ({len(value)} "
                                  f"bytes): it must start with byte 0 and a schema id")
            if schema_id not in self._checked:
                assert self._registry is not None
                self._registry.schema_text(schema_id)  # SchemaError when unknown
                self._checked.add(schema_id)
            if len(value) == FRAME_SIZE:
                raise DecodeError("a Confluent wire format record with no body")
            meta[SCHEMA_ID_META] = schema_id
        kind_of_time, stamp = message.timestamp()
        return Artifact.new(value, media_type=MEDIA_TYPES[kind], origin=message.topic(),
                            meta=meta, timestamp=stamp if kind_of_time else
                            time.time_ns() // 1_000_000)

    def encode(self, artifact: Artifact) -> bytes:
        if self.output_format == "payload":
            return artifact.payload
        return super().encode(artifact)

    def headers(self, headers: Headers | None) -> Headers | None:
        if self.output_format == "payload":
            if headers and any(k == SCHEMA_HEADER for k, _ in headers):
                return [h for h in headers if h[0] != SCHEMA_HEADER]
            return headers
        return super().headers(headers)
