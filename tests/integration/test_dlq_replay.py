"""`processor dlq replay` and `processor dlq inspect` on a real Kafka: dead letters go back
exactly once (a second run copies nothing), as their original bytes and key, with their
history in headers; the dead-letter topic of an exactly-once stage (transaction markers)
is read to its end."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Callable

import pytest

from processor.backends.kafka import KafkaBroker
from processor.cli.main import main
from processor.core.artifact import Artifact
from processor.runtime.stage import Stage
from processor.serde.codec import Codec
from tests.faults.raw import read_raw
from tests.strategies import tampered_checksum
from tests.unit.stage_support import identity, options

pytestmark = [pytest.mark.kafka]

CODEC = Codec()


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


def test_replay_exactly_once_and_inspect(kafka_bootstrap: str,
                                         unique_name: Callable[[str], str]) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, sink, dlq = unique_name("rp-in"), unique_name("rp-out"), unique_name("rp-dlq")
    for topic in (source, sink, dlq):
        admin.create_topic(topic, partitions=2)
    producer = broker.producer()
    originals: dict[bytes, bytes | None] = {}
    for i in range(40):
        key = b"junk-%d" % i
        originals[key] = b"\x00not avro %d" % i
        producer.produce(source, originals[key], key, [("trace", b"t%d" % i)])
    for i in range(25):
        artifact = Artifact.new(f"tampered {i}")
        data = tampered_checksum(CODEC.encode(artifact), artifact)
        key = b"sum-%d" % i
        originals[key] = bytes(data)
        producer.produce(source, originals[key], key)
    for i in range(30):
        producer.produce(source, CODEC.encode(Artifact.new(f"good {i}")), b"good-%d" % i)
    producer.produce(source, None, b"tomb")
    originals[b"tomb"] = None
    assert producer.flush(30) == 0
    producer.close()

    stage = Stage(options(input_topic=source, output_topic=sink, dlq_topic=dlq,
                          group=unique_name("rp-stage"), guarantee="exactly-once",
                          transactional_id=unique_name("rp-txn"), poll_timeout=0.2),
                  broker, identity)
    stats = stage.run(idle_timeout=3.0)
    assert stats.dead_letter_reasons == {"decode": 41, "checksum": 25}

    code, text = cli("dlq", "inspect", "--bootstrap-servers", kafka_bootstrap,
                     "--topic", dlq, "--idle", "2")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0] == f"{dlq}: 66 dead letters"
    assert lines[2].split()[:2] == ["decode", "41"]
    assert lines[3].split()[:2] == ["checksum", "25"]
    assert f"checksum: stages s1 (25); from {source} (25)" in text

    target = unique_name("rp-back")
    admin.create_topic(target, partitions=3)
    args = ("dlq", "replay", "--bootstrap-servers", kafka_bootstrap, "--from", dlq,
            "--to", target, "--idle", "2", "--batch-size", "10")
    code, text = cli(*args, "--reason", "checksum")
    assert code == 0, text
    assert text.startswith(f"copied 25 of 66 records from {dlq} to {target}"), text
    assert "41 passed over" in text
    code, text = cli(*args, "--reason", "checksum")
    assert text.startswith(f"copied 0 of 0 records from {dlq} to {target}"), text
    code, text = cli(*args)  # every reason: another group
    assert text.startswith(f"copied 66 of 66 records from {dlq} to {target}"), text
    code, text = cli(*args)
    assert text.startswith("copied 0 of 0 records"), text

    copies = read_raw(broker, target, expect=91)
    keys = Counter(m.key() for m in copies)
    assert sum(keys.values()) == 91
    assert all(n == 2 for k, n in keys.items() if k is not None and k.startswith(b"sum-"))
    assert all(n == 1 for k, n in keys.items() if k is not None and not k.startswith(b"sum-"))
    for msg in copies:
        found = msg.key()
        assert found is not None
        key = found
        assert msg.value() == originals[key]  # the original bytes; a tombstone stays one
        headers = dict(msg.headers() or [])
        assert headers["replay.reason"] in (b"decode", b"checksum")
        assert headers["replay.original.topic"] == source.encode()
        assert headers["replay.from"] == dlq.encode()
        assert not any(k.startswith("dlq.") for k in headers)
        if key.startswith(b"junk-"):
            assert headers["trace"] == b"t" + key[5:]

    code, text = cli("dlq", "replay", "--bootstrap-servers", kafka_bootstrap, "--from", dlq,
                     "--to", target, "--since", "last tuesday")
    assert code == 1
    assert text.startswith("processor dlq: error: --since 'last tuesday' is neither"), text
