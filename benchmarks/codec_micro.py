"""Per-record cost of the artifact codec: the compiled specialised path, its pure-Python
source and fastavro's generic functions, on one ~300-byte artifact (the benchmark's).

    .venv/bin/python benchmarks/codec_micro.py [--number 200000] [--repeat 5]

Prints the best of `--repeat` runs of `--number` calls each, in microseconds per call. No
Kafka: this is the codec alone, to choose and check the fast path before a full run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import timeit
import uuid
from collections.abc import Callable
from io import BytesIO
from typing import Any

import fastavro

from processor.serde import artifact_avro, codec, fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codec_micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is shown")
    args = parser.parse_args(argv)

    schema = fastavro.parse_schema(codec.load_schema())
    payload = os.urandom(150)
    record: dict[str, Any] = {
        "id": str(uuid.uuid4()), "timestamp": 1_700_000_000_000,
        "media_type": "application/octet-stream", "role": "data", "scope": "generic",
        "origin": "bench", "issuer": "", "state": "created", "meta": {"seq": 123_456},
        "payload": payload, "checksum": hashlib.sha256(payload).digest(),
        "encrypted_payload": None, "encrypted_key": None, "ephemeral_public_key": None,
        "signature": None, "approvals": [], "pseudonym_hash": None, "merkle_root": None,
    }
    out = BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    data = out.getvalue()
    pure = fast.pure_module()
    artifact = pure.decode(data)
    changed = artifact.with_meta("bench.handled_ms", 1_700_000_000_123).with_state("done")

    def fastavro_write() -> bytes:
        sink = BytesIO()
        fastavro.schemaless_writer(sink, schema, record)
        return sink.getvalue()

    cases: list[tuple[str, Callable[[], object]]] = [
        ("decode, fastavro schemaless_reader", lambda: fastavro.schemaless_reader(
            BytesIO(data), schema, None)),
        ("decode, specialised, pure Python", lambda: pure.decode(data)),
    ]
    if fast.is_compiled(artifact_avro):
        cases.append(("decode, specialised, compiled", lambda: artifact_avro.decode(data)))
    # `changed` comes from the pure module's decode: to the compiled module its fields are
    # other objects than those of the artifact it decoded last, so it writes every field.
    cases += [
        ("encode, fastavro schemaless_writer", fastavro_write),
        ("encode, specialised, pure Python", lambda: pure.encode(changed)),
    ]
    if fast.is_compiled(artifact_avro):
        cases.append(("encode, specialised, compiled, every field written",
                      lambda: artifact_avro.encode(changed)))

    def stage_transform(module: Any) -> Callable[[], bytes]:
        """What a stage does per record: decode, the bench transform, encode (which
        copies the fields the transform left as they were, see `artifact_avro._source`)."""
        def run() -> bytes:
            decoded = module.decode(data)
            return bytes(module.encode(decoded.with_meta(
                "bench.handled_ms", 1_700_000_000_123).with_state("done")))
        return run

    cases.append(("decode + transform + encode, pure Python", stage_transform(pure)))
    if fast.is_compiled(artifact_avro):
        cases.append(("decode + transform + encode, compiled", stage_transform(artifact_avro)))
    cases += [
        (f"Codec.decode ({fast.IMPLEMENTATION})", lambda: codec.decode(data)),
        (f"Codec.encode ({fast.IMPLEMENTATION})", lambda: codec.encode(changed)),
        ("with_meta + with_state (the bench transform)", lambda: artifact.with_meta(
            "bench.handled_ms", 1_700_000_000_123).with_state("done")),
        ("sha256 of the 150-byte payload", lambda: hashlib.sha256(payload).digest()),
    ]
    print(f"one artifact of {len(data)} bytes; best of {args.repeat} x {args.number:,} calls")
    for label, function in cases:
        best = min(timeit.repeat(function, number=args.number, repeat=args.repeat))
        print(f"  {label:52s} {best / args.number * 1e6:6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
