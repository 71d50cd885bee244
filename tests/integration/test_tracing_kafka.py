"""Traces across three chained stages on a real Kafka, received by the OpenTelemetry
Collector's OTLP receiver (`processor.devtools.otelcol`) on 127.0.0.1.

`processor produce --trace` writes 200 artifacts, each starting a trace; three stages
(sync, async, sync; the second dead-letters one record in ten) export their spans over
OTLP/gRPC. Every record's spans must form one trace: send -> hop1 -> hop2 -> hop3, each
the parent of the next, the dead-lettered ones ending in hop2's span marked so.

Sharing the receiver and the broker: `processor dlq replay --trace` (the command, over
OTLP/HTTP) links each copy's new trace to the span that dead-lettered the record; and the
`http/protobuf` exporter delivers spans to the receiver's HTTP port."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact
from processor.core.handlers import AnyHandler, Outcome
from processor.core.options import StageOptions
from processor.devtools.local_kafka import ToolMissing
from processor.devtools.otelcol import LocalOtelReceiver, ReceiverError
from processor.ops.metrics import NullMetrics
from processor.ops.tracing import OtelTracer, TracingSettings
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.stage import Stage
from tests.faults.raw import read_raw
from tests.procs import processor_cmd, produce_artifacts, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

COUNT = 200
PRODUCER_SPAN = 4  # SpanKind values of OTLP/JSON: SPAN_KIND_PRODUCER
CONSUMER_SPAN = 5


@pytest.fixture(scope="module")
def receiver() -> Iterator[LocalOtelReceiver]:
    try:
        with LocalOtelReceiver() as running:
            yield running
    except ToolMissing as error:  # no `go`: the receiver cannot be built
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(error))
    except ReceiverError as error:
        pytest.fail(f"the OTLP receiver did not start: {error}", pytrace=False)


def hop(a: Artifact) -> Outcome:
    return a.with_meta("hops", int(a.get("hops", 0)) + 1)


async def hop_or_reject(a: Artifact) -> Outcome:
    if int(a.get("line", 0)) % 10 == 0:
        raise InvalidArtifact("line divisible by ten")
    return hop(a)


def test_three_stages_on_kafka_make_one_trace_per_record(
        kafka_bootstrap: str, receiver: LocalOtelReceiver,
        unique_name: Callable[[str], str], tmp_path: Path) -> None:
    began = time.monotonic()
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    topics = [unique_name(f"trace{i}") for i in range(4)]
    dlq = unique_name("trace-dlq")
    for topic in [*topics, dlq]:
        admin.create_topic(topic, partitions=3)

    # `processor produce --trace` starts a trace per record.
    lines = tmp_path / "orders.jsonl"
    lines.write_text("".join(f'{{"order": {i}}}\n' for i in range(1, COUNT + 1)))
    env = {**os.environ, "PROCESSOR_OTLP_ENDPOINT": receiver.grpc_endpoint,
           "PROCESSOR_OTLP_PROTOCOL": "grpc"}
    import subprocess

    produced = subprocess.run(
        processor_cmd("produce", "--bootstrap-servers", kafka_bootstrap, "--topic",
                      topics[0], "--trace", str(lines)),
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert produced.returncode == 0, produced.stderr[-2000:]

    handlers: list[AnyHandler] = [hop, hop_or_reject, hop]
    stages: list[Stage] = []
    for i, handler in enumerate(handlers):
        options = StageOptions(
            name=f"hop{i + 1}", input_topic=topics[i], output_topic=topics[i + 1],
            group=unique_name(f"trace-g{i}"), dlq_topic=dlq, poll_timeout=0.05,
            commit_interval=0.2)
        setup = StageSetup(options, bootstrap_servers=kafka_bootstrap, tracing="otlp",
                           otlp_endpoint=receiver.grpc_endpoint, otlp_protocol="grpc")
        stages.append(build_stage(setup, broker, handler=handler, metrics=NullMetrics(),
                                  consumer_settings={"auto.offset.reset": "earliest",
                                                     "fetch.queue.backoff.ms": 10}))
    dead = COUNT // 10
    expect = [COUNT, COUNT, COUNT - dead]
    errors: list[BaseException] = []

    def run(stage: Stage, records: int) -> None:
        try:
            stage.run(max_records=records, idle_timeout=45.0)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, n), daemon=True)
               for s, n in zip(stages, expect, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a stage did not finish"
    assert [s.stats.consumed for s in stages] == expect
    assert stages[1].stats.dead_lettered == dead

    want = COUNT * 4 - dead  # send + three process spans, but no hop3 for the dead
    wait_for(lambda: len(receiver.spans()) >= want, 30,
             f"{want} spans at the OTLP receiver")
    spans = receiver.spans()
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    assert len(traces) == COUNT, f"{len(traces)} traces"
    dead_seen = 0
    for trace_id, members in traces.items():
        named = {s["name"]: s for s in members}
        send = named[f"send {topics[0]}"]
        assert send["kind"] == PRODUCER_SPAN and send["parent_span_id"] == ""
        assert send["service"] == "processor-produce"
        parent = send
        chain = [f"hop{i} process" for i in (1, 2, 3)]
        for i, name in enumerate(chain):
            if name not in named:
                assert i == 2, f"trace {trace_id}: {sorted(named)}"
                break
            span = named[name]
            assert span["kind"] == CONSUMER_SPAN
            assert span["parent_span_id"] == parent["span_id"], (trace_id, name)
            attrs = span["attributes"]
            assert attrs["messaging.system"] == "kafka"
            assert attrs["messaging.destination.name"] == topics[i]
            assert attrs["messaging.consumer.group.name"] == stages[i].options.group
            assert attrs["messaging.destination.partition.id"] in ("0", "1", "2")
            assert isinstance(attrs["messaging.kafka.offset"], int)
            assert attrs["messaging.message.id"] == send["attributes"]["messaging.message.id"]
            assert span["service"] == f"hop{i + 1}"
            parent = span
        last = parent
        assert len(members) == (4 if last["name"] == "hop3 process" else 3)
        if last["name"] == "hop2 process":
            dead_seen += 1
            assert last["attributes"]["processor.outcome"] == "dead_lettered"
            assert last["attributes"]["processor.dead_letter.reason"] == "invalid"
            assert [e["name"] for e in last["events"]] == ["dead_letter"]
            assert last["status"].get("code") == 2  # STATUS_CODE_ERROR
        else:
            assert last["attributes"]["processor.outcome"] == "passed"
    assert dead_seen == dead
    print(f"{len(spans)} spans in {len(traces)} traces; {time.monotonic() - began:.1f}s")


def reject(a: Artifact) -> Outcome:
    raise InvalidArtifact(f"rejected {a.id}")


def test_dlq_replay_trace_links_each_copy_to_its_dead_letter(
        kafka_bootstrap: str, receiver: LocalOtelReceiver,
        unique_name: Callable[[str], str]) -> None:
    """`processor dlq replay --trace`, the command itself, exporting over OTLP/HTTP: each
    replayed record starts a trace whose `send` span links to the span that
    dead-lettered it, and the copy carries the new trace in its headers."""
    import subprocess

    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, dlq, target = (unique_name("rtrace-in"), unique_name("rtrace-dlq"),
                           unique_name("rtrace-back"))
    for topic in (source, dlq, target):
        admin.create_topic(topic, partitions=2)
    count = 12
    produce_artifacts(broker, source, count, keys=4)
    options = StageOptions(name="rejecter", input_topic=source, output_topic=target,
                           group=unique_name("rtrace-g"), dlq_topic=dlq, poll_timeout=0.05,
                           commit_interval=0.2)
    setup = StageSetup(options, bootstrap_servers=kafka_bootstrap, tracing="otlp",
                       otlp_endpoint=receiver.grpc_endpoint, otlp_protocol="grpc")
    stage = build_stage(setup, broker, handler=reject, metrics=NullMetrics(),
                        consumer_settings={"auto.offset.reset": "earliest"})
    assert stage.run(max_records=count, idle_timeout=20.0).dead_lettered == count

    dead_spans = {}
    wait_for(lambda: len([s for s in receiver.spans()
                          if s["name"] == "rejecter process"]) >= count, 20,
             "the rejecting stage's spans")
    for span in receiver.spans():
        if span["name"] == "rejecter process":
            assert span["attributes"]["processor.outcome"] == "dead_lettered"
            dead_spans[span["trace_id"], span["span_id"]] = span

    env = {**os.environ, "PROCESSOR_OTLP_ENDPOINT": receiver.http_endpoint,
           "PROCESSOR_OTLP_PROTOCOL": "http/protobuf"}
    env.pop("PROCESSOR_TRACING", None)
    replayed = subprocess.run(
        processor_cmd("dlq", "replay", "--bootstrap-servers", kafka_bootstrap, "--from", dlq,
                      "--to", target, "--idle", "1", "--trace"),
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert replayed.stdout.startswith(f"copied {count} of {count} records"), replayed.stdout

    def sends() -> list[dict[str, Any]]:
        return [s for s in receiver.spans() if s["name"] == f"send {target}"
                and s["service"] == "processor-dlq-replay"]

    wait_for(lambda: len(sends()) >= count, 20, f"{count} replay spans over OTLP/HTTP")
    found = sends()
    assert len(found) == count
    linked = set()
    for span in found:
        assert span["kind"] == PRODUCER_SPAN and span["parent_span_id"] == ""
        [link] = span["links"]
        assert (link["trace_id"], link["span_id"]) in dead_spans
        assert span["trace_id"] != link["trace_id"]  # a new trace, linked to the old
        linked.add((link["trace_id"], link["span_id"]))
    assert linked == set(dead_spans)  # one copy per dead letter

    copies = read_raw(broker, target, expect=count, timeout=30, settle=1.0)
    assert len(copies) == count
    send_ids = {(s["trace_id"], s["span_id"]) for s in found}
    for msg in copies:
        headers = dict(msg.headers() or [])
        assert headers["replay.from"] == dlq.encode()
        _version, trace_id, span_id, flags = headers["traceparent"].decode().split("-")
        assert (trace_id, span_id) in send_ids
        assert int(flags, 16) & 1  # sampled


def test_http_protobuf_exporter_delivers_spans(receiver: LocalOtelReceiver) -> None:
    """The `http/protobuf` protocol: the exporter made from the settings posts spans to
    the receiver's OTLP/HTTP port (`/v1/traces`, added to an endpoint without a path)."""
    tracer = OtelTracer.otlp(
        TracingSettings("otlp", receiver.http_endpoint, "http/protobuf", 1.0),
        service="http-probe")
    publisher = tracer.publisher()
    assert publisher is not None
    topic = f"http-probe-{time.time_ns()}"
    headers = [publisher.send(topic, [], message_id=f"m{i}") for i in range(5)]
    tracer.flush(10.0)
    tracer.provider.shutdown()

    def probes() -> list[dict[str, Any]]:
        return [s for s in receiver.spans() if s["name"] == f"send {topic}"]

    wait_for(lambda: len(probes()) >= 5, 15, "5 spans over OTLP/HTTP")
    found = probes()
    assert {s["service"] for s in found} == {"http-probe"}
    assert sorted(s["attributes"]["messaging.message.id"] for s in found) == [
        f"m{i}" for i in range(5)]
    sent = {dict(h)["traceparent"].decode().split("-")[1] for h in headers}
    assert {s["trace_id"] for s in found} == sent
