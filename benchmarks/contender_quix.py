"""Quix Streams doing the same work: Avro in, checksum check, the shared transform, Avro out.

Runs in the benchmark's own Quix virtual environment (Quix Streams pins an older
confluent-kafka than this project, so it is kept out of the project's environment). The
app uses Quix's own Avro (fastavro, schemaless) deserializer and serializer with the
artifact schema, at-least-once, the same commit interval and producer settings as the
other contenders. Runs until SIGTERM (Quix stops gracefully and commits), then writes its
report.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quixstreams
import workload
from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer


class BadChecksum(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()

    schema = workload.load_schema_json()
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=workload.COMMIT_INTERVAL,
        processing_guarantee="at-least-once",
        producer_extra_config={"client.id": "bench-quix", **workload.PRODUCER_SETTINGS},
        consumer_extra_config={"client.id": "bench-quix", **workload.CONSUMER_SETTINGS},
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel=logging.WARNING,
        consumer_poll_timeout=0.1,
    )
    source = app.topic(args.input, key_deserializer="bytes",
                       value_deserializer=AvroDeserializer(schema))
    sink = app.topic(args.output, key_serializer="bytes",
                     value_serializer=AvroSerializer(schema))

    counts = {"consumed": 0, "bad": 0}
    first: list[float] = []
    sha256 = hashlib.sha256
    transform = workload.transform_record

    def handle(record: dict[str, Any]) -> dict[str, Any]:
        if not first:
            first.append(time.time())
        counts["consumed"] += 1
        if sha256(record["payload"]).digest() != record["checksum"]:
            counts["bad"] += 1
            raise BadChecksum(record["id"])
        transform(record)
        return record

    sdf = app.dataframe(source)
    sdf = sdf.apply(handle)
    sdf.to_topic(sink)
    app.run()
    workload.write_result(
        args.result,
        contender="quix",
        first_consumed=first[0] if first else None,
        consumed=counts["consumed"],
        produced=counts["consumed"] - counts["bad"],
        bad=counts["bad"],
        versions={"quixstreams": quixstreams.__version__, **workload.client_versions()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
