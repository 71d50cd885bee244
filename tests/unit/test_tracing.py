"""Tracing across stages on the in-memory broker, with the SDK's in-memory span exporter:
one trace per record across chained stages, on every handler path and both guarantees;
dead letters, fan-out, routed outputs, batch calls, retries, JSON logs, `dlq replay`; and
tracing off costs nothing (OpenTelemetry's SDK is not even imported)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from processor.backends.abstract import Broker, Headers, Message
from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact, RetryableError
from processor.core.handlers import BatchOutcome, Outcome, Routed
from processor.core.options import EXACTLY_ONCE, RetryPolicy
from processor.ops.logs import JsonFormatter
from processor.ops.tracing import (
    NULL_TRACER,
    OtelTracer,
    TracingSettings,
    make_tracer,
    without_trace_headers,
)
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.dead_letters import DeadLetters
from processor.runtime.replay import replay
from processor.runtime.stage import Stage
from tests.unit.stage_support import CODEC, artifacts, make_broker, options, read_all

KINDS = ("sync", "async", "threads", "batch")
GUARANTEES = ("at-least-once", EXACTLY_ONCE)


@pytest.fixture
def spans() -> Iterator[tuple[OtelTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracer(provider), exporter
    provider.shutdown()


def handler_of(kind: str, fn: Callable[[Artifact], Outcome]) -> object:
    """`fn` as a handler of `kind` (a batch handler answers per record)."""
    if kind == "async":
        async def handle(a: Artifact) -> Outcome:
            return fn(a)
        return handle
    if kind == "batch":
        def handle_batch(batch: list[Artifact]) -> Sequence[BatchOutcome]:
            out: list[BatchOutcome] = []
            for a in batch:
                try:
                    out.append(fn(a))
                except Exception as exc:
                    out.append(exc)
            return out
        return handle_batch
    return fn


def stage_options(name: str, kind: str, **overrides: object) -> dict[str, object]:
    mode = {"sync": "sync", "async": "async", "threads": "threads", "batch": "sync"}[kind]
    return dict(name=name, group=name, handler_mode=mode, handler_batch_size=8,
                handler_batch_wait=0.0, max_concurrency=4, **overrides)


def header(headers: Headers | None, key: str) -> str | None:
    for k, v in headers or []:
        if k == key:
            return v.decode()
    return None


def parent_of(traceparent: str) -> tuple[int, int]:
    """(trace id, parent span id) of a `traceparent` header."""
    _version, trace_id, span_id, _flags = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def by_name(finished: Sequence[ReadableSpan], name: str) -> dict[str, ReadableSpan]:
    """The spans named `name`, by the artifact id they processed."""
    return {str(s.attributes["messaging.message.id"]): s for s in finished
            if s.name == name and s.attributes and "messaging.message.id" in s.attributes}


def feed_traced(broker: Broker, tracer: OtelTracer, items: list[Artifact],
                topic: str = "in") -> dict[str, ReadableSpan | None]:
    """Produce `items` as `processor produce --trace` does: each starts a trace."""
    publisher = tracer.publisher()
    assert publisher is not None
    producer = broker.producer()
    for i, a in enumerate(items):
        headers = publisher.send(topic, CODEC_HEADERS, message_id=a.id)
        producer.produce(topic, CODEC.encode(a), str(i % 5).encode(), headers)
    producer.flush()
    return {}


CODEC_HEADERS: Headers = []


def chain(broker: Broker, tracer: OtelTracer, kind: str, guarantee: str,
          first: Callable[[Artifact], Outcome]) -> None:
    """Two stages: `s1` (in -> mid, dead letters to dlq) then `s2` (mid -> out)."""
    s1 = Stage(options(**stage_options("s1", kind, guarantee=guarantee), output_topic="mid"),
               broker, handler_of(kind, first), tracer=tracer)  # type: ignore[arg-type]
    s1.run(idle_timeout=0.5)
    s2 = Stage(options(**stage_options("s2", kind, guarantee=guarantee), input_topic="mid"),
               broker, handler_of(kind, lambda a: a.with_meta(seen=True)),  # type: ignore[arg-type]
               tracer=tracer)
    s2.run(idle_timeout=0.5)


def invalid_every_fifth(a: Artifact) -> Outcome:
    if int(a.get("seq", 0)) % 5 == 0:
        raise InvalidArtifact("seq divisible by five")
    return a


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("kind", KINDS)
def test_each_record_is_one_trace_across_two_stages(
        spans: tuple[OtelTracer, InMemorySpanExporter], kind: str, guarantee: str) -> None:
    tracer, exporter = spans
    broker = make_broker(extra=("mid",))
    items = artifacts(20)
    feed_traced(broker, tracer, items)
    chain(broker, tracer, kind, guarantee, invalid_every_fifth)

    finished = exporter.get_finished_spans()
    sends = {str(s.attributes["messaging.message.id"]): s for s in finished  # type: ignore[index]
             if s.name == "send in"}
    first = by_name(finished, "s1 process")
    second = by_name(finished, "s2 process")
    assert set(first) == {a.id for a in items}
    dead = {a.id for a in items if int(a.get("seq", 0)) % 5 == 0}
    assert set(second) == {a.id for a in items} - dead
    for a in items:
        send, s1 = sends[a.id], first[a.id]
        assert send.kind is SpanKind.PRODUCER
        assert s1.kind is SpanKind.CONSUMER
        assert s1.context is not None and send.context is not None
        assert s1.context.trace_id == send.context.trace_id
        assert s1.parent is not None and s1.parent.span_id == send.context.span_id
        attrs = s1.attributes or {}
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.destination.name"] == "in"
        assert attrs["messaging.consumer.group.name"] == "s1"
        assert isinstance(attrs["messaging.kafka.offset"], int)
        assert attrs["messaging.destination.partition.id"] in ("0", "1", "2")
        if a.id in dead:
            assert attrs["processor.outcome"] == "dead_lettered"
            assert attrs["processor.dead_letter.reason"] == "invalid"
            assert s1.status.status_code is StatusCode.ERROR
            assert [e.name for e in s1.events] == ["dead_letter"]
            continue
        assert attrs["processor.outcome"] == "passed"
        s2 = second[a.id]
        assert s2.context is not None
        assert s2.context.trace_id == s1.context.trace_id
        assert s2.parent is not None and s2.parent.span_id == s1.context.span_id
        assert (s2.attributes or {})["messaging.destination.name"] == "mid"
        assert (s2.attributes or {})["processor.outcome"] == "passed"

    # The records carry the context in their headers, never in the artifact.
    outs = read_all(broker, "out", read_committed=True)
    assert len(outs) == len(items) - len(dead)
    for m in outs:
        artifact = CODEC.decode(m.value() or b"")
        trace_id, parent = parent_of(header(m.headers(), "traceparent") or "")
        s2 = second[artifact.id]
        assert s2.context is not None
        assert (trace_id, parent) == (s2.context.trace_id, s2.context.span_id)
        assert artifact.get("seen") is True
    # A dead letter carries the context of the span that dead-lettered it.
    letters = read_all(broker, "dlq", read_committed=True)
    assert len(letters) == len(dead)
    for m in letters:
        s1 = first[CODEC.decode(m.value() or b"").id]
        assert s1.context is not None
        assert parent_of(header(m.headers(), "traceparent") or "") == (
            s1.context.trace_id, s1.context.span_id)

    if kind == "batch":
        calls = [s for s in finished if s.name == "s1 handle"]
        assert calls, "a batch handler's call has a span"
        linked = [link.context.span_id for s in calls for link in s.links]
        assert sorted(linked) == sorted(s.context.span_id for s in first.values()
                                        if s.context)  # each record's span, once
        for s in calls:
            assert (s.attributes or {})["messaging.batch.message_count"] == len(s.links)


@pytest.mark.parametrize("kind", KINDS)
def test_fan_out_and_routed_outputs_carry_child_contexts(
        spans: tuple[OtelTracer, InMemorySpanExporter], kind: str) -> None:
    tracer, exporter = spans
    broker = make_broker(extra=("audit",))
    items = artifacts(9)
    feed_traced(broker, tracer, items)

    def route(a: Artifact) -> Outcome:
        seq = int(a.get("seq", 0))
        if seq % 3 == 0:
            return None
        if seq % 3 == 1:
            return [a, a.with_payload(b"copy")]
        return Routed("audit", a)

    stage = Stage(options(**stage_options("s1", kind), outputs={"audit": "audit"}), broker,
                  handler_of(kind, route), tracer=tracer)  # type: ignore[arg-type]
    stage.run(idle_timeout=0.5)
    first = by_name(exporter.get_finished_spans(), "s1 process")
    outs = read_all(broker, "out") + read_all(broker, "audit")
    assert len(outs) == 3 * 2 + 3
    for m in outs:
        a = CODEC.decode(m.value() or b"")
        span = first[a.id]
        assert span.context is not None
        assert parent_of(header(m.headers(), "traceparent") or "") == (
            span.context.trace_id, span.context.span_id)
    outcomes = {int(a.get("seq", 0)) % 3: (first[a.id].attributes or {})
                for a in items}
    assert outcomes[0]["processor.outcome"] == "dropped"
    assert outcomes[1]["processor.outcome"] == "passed"
    assert outcomes[1]["processor.outputs"] == 2
    assert outcomes[2]["processor.outcome"] == "passed"


@pytest.mark.parametrize("kind", KINDS)
def test_retries_are_recorded(spans: tuple[OtelTracer, InMemorySpanExporter],
                              kind: str) -> None:
    tracer, exporter = spans
    broker = make_broker(partitions=1)
    items = artifacts(3)
    feed_traced(broker, tracer, items)
    failed: set[str] = set()

    def flaky(a: Artifact) -> Outcome:
        if a.get("seq") == 1 and a.id not in failed:
            failed.add(a.id)
            raise RetryableError("once")
        return a

    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
    stage = Stage(options(**stage_options("s1", kind), retry=retry), broker,
                  handler_of(kind, flaky), tracer=tracer)  # type: ignore[arg-type]
    stage.run(idle_timeout=0.5)
    finished = [s for s in exporter.get_finished_spans() if s.name == "s1 process"]
    flaky_id = items[1].id
    final = [s for s in finished if (s.attributes or {}).get("messaging.message.id") == flaky_id
             and (s.attributes or {}).get("processor.outcome") == "passed"]
    assert len(final) == 1
    assert (final[0].attributes or {})["processor.retries"] == 1
    assert len(read_all(broker, "out")) == 3


@pytest.mark.parametrize("kind", ["sync", "threads", "async"])
def test_json_logs_carry_the_record_span(spans: tuple[OtelTracer, InMemorySpanExporter],
                                         kind: str) -> None:
    tracer, exporter = spans
    broker = make_broker(partitions=1)
    items = artifacts(3)
    feed_traced(broker, tracer, items)
    formatter = JsonFormatter()
    lines: dict[str, dict[str, object]] = {}

    def logging_handler(a: Artifact) -> Outcome:
        record = logging.LogRecord("h", logging.INFO, __file__, 1, "handled", (), None)
        lines[a.id] = json.loads(formatter.format(record))
        return a

    stage = Stage(options(**stage_options("s1", kind)), broker,
                  handler_of(kind, logging_handler), tracer=tracer)  # type: ignore[arg-type]
    stage.run(idle_timeout=0.5)
    first = by_name(exporter.get_finished_spans(), "s1 process")
    for a in items:
        context = first[a.id].context
        assert context is not None
        assert lines[a.id]["trace_id"] == f"{context.trace_id:032x}"
        assert lines[a.id]["span_id"] == f"{context.span_id:016x}"
    # Outside a span, no ids.
    record = logging.LogRecord("h", logging.INFO, __file__, 1, "idle", (), None)
    assert "trace_id" not in json.loads(formatter.format(record))


def test_a_record_without_context_starts_a_trace_and_baggage_passes_on(
        spans: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    broker = make_broker(partitions=1)
    producer = broker.producer()
    producer.produce("in", CODEC.encode(artifacts(1)[0]), b"k", [("baggage", b"tenant=acme")])
    producer.produce("in", CODEC.encode(artifacts(2)[1]), b"k", None)
    producer.flush()
    Stage(options(), broker, lambda a: a.with_meta(x=1), tracer=tracer).run(idle_timeout=0.5)
    finished = [s for s in exporter.get_finished_spans() if s.name == "s1 process"]
    assert len(finished) == 2 and all(s.parent is None for s in finished)
    outs = read_all(broker, "out")
    assert header(outs[0].headers(), "baggage") == "tenant=acme"
    assert header(outs[1].headers(), "baggage") is None
    assert all(header(m.headers(), "traceparent") for m in outs)
    # The schema header the codec writes is kept beside the context.
    assert without_trace_headers(outs[0].headers()) == [
        (k, v) for k, v in outs[0].headers() or [] if k not in ("traceparent", "baggage")]


def test_dlq_replay_links_to_the_original_trace(
        spans: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    broker = make_broker(partitions=1)
    items = artifacts(4)
    feed_traced(broker, tracer, items)

    def reject_odd(a: Artifact) -> Outcome:
        if int(a.get("seq", 0)) % 2:
            raise InvalidArtifact("odd")
        return a

    Stage(options(), broker, reject_odd, tracer=tracer).run(idle_timeout=0.5)
    first = by_name(exporter.get_finished_spans(), "s1 process")
    result = replay(broker, "dlq", "in", group="replayer", idle_timeout=0.3, timeout=20,
                    tracer=tracer)
    assert result.copied == 2
    sends = [s for s in exporter.get_finished_spans()
             if s.name == "send in" and s.links]
    assert len(sends) == 2
    dead_spans = {first[a.id].context.span_id for a in items
                  if int(a.get("seq", 0)) % 2}
    assert {s.links[0].context.span_id for s in sends} == dead_spans
    for s in sends:
        assert s.parent is None and s.context is not None
        assert s.context.trace_id != s.links[0].context.trace_id  # a new trace, linked
    replayed = [m for m in read_all(broker, "in") if header(m.headers(), "replay.from")]
    assert {parent_of(header(m.headers(), "traceparent") or "")[1] for m in replayed} == {
        s.context.span_id for s in sends if s.context}


def test_settings_and_the_null_tracer() -> None:
    assert make_tracer(TracingSettings()) is NULL_TRACER
    assert NULL_TRACER.stage("s", "g") is None and NULL_TRACER.publisher() is None
    env = {"PROCESSOR_TRACING": "otlp", "PROCESSOR_OTLP_ENDPOINT": "http://127.0.0.1:1",
           "PROCESSOR_OTLP_PROTOCOL": "http/protobuf", "PROCESSOR_TRACE_SAMPLE_RATIO": "0.25"}
    assert TracingSettings.from_env(env) == TracingSettings(
        "otlp", "http://127.0.0.1:1", "http/protobuf", 0.25)
    assert TracingSettings.from_env({}).tracing == "off"
    assert TracingSettings.from_env({}, enable=True).tracing == "otlp"
    setup = StageSetup(options(), tracing="otlp", trace_sample_ratio=0.5)
    assert TracingSettings.of(setup) == TracingSettings("otlp", None, "grpc", 0.5)

    from processor.ops.settings import FIELDS

    assert FIELDS["tracing"].default == "off"
    assert FIELDS["otlp_protocol"].default == "grpc"
    assert FIELDS["trace_sample_ratio"].default == 1.0


def test_sampling_follows_the_parent(spans: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    """A record whose context says "not sampled" is not recorded, but its outputs still
    carry the trace on (parent-based sampling)."""
    tracer, exporter = spans
    broker = make_broker(partitions=1)
    producer = broker.producer()
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    producer.produce("in", CODEC.encode(artifacts(1)[0]), b"k",
                     [("traceparent", unsampled.encode())])
    producer.flush()
    Stage(options(), broker, lambda a: a, tracer=tracer).run(idle_timeout=0.5)
    assert not [s for s in exporter.get_finished_spans() if s.name == "s1 process"]
    out = read_all(broker, "out")
    traceparent = header(out[0].headers(), "traceparent") or ""
    assert traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert traceparent.endswith("-00")


def test_dead_letters_of_untraced_stages_are_unchanged() -> None:
    """`DeadLetters` only annotates a traced record; a plain one goes out as before."""
    broker = make_broker(partitions=1)
    msg: list[Message] = []
    producer = broker.producer()
    producer.produce("in", b"x", b"k", [("a", b"1")])
    producer.flush()
    msg = read_all(broker, "in")
    from processor.runtime.stats import StageStats
    from tests.unit.stage_support import RecordingMetrics

    letters = DeadLetters("s", "dlq", broker.producer(), StageStats(started=0.0),
                          RecordingMetrics())
    assert letters.send(msg[0], "decode", ValueError("bad"))
    letters.producer.flush()
    [dead] = read_all(broker, "dlq")
    assert header(dead.headers(), "a") == "1"
    assert header(dead.headers(), "traceparent") is None


def test_tracing_off_loads_no_opentelemetry() -> None:
    """With tracing off (the default), building and running a stage imports nothing of
    OpenTelemetry: not the SDK, not even the API."""
    code = textwrap.dedent("""
        import sys
        from processor.backends.memory import MemoryBroker
        from processor.core.artifact import Artifact
        from processor.core.options import StageOptions
        from processor.ops.logs import configure_logging
        from processor.runtime.build import StageSetup, build_stage
        from processor.ops.metrics import NullMetrics
        from processor.serde.codec import Codec

        configure_logging("json", "INFO")
        broker = MemoryBroker()
        admin = broker.admin()
        for t in ("in", "out", "dlq"):
            admin.create_topic(t, partitions=1)
        producer = broker.producer()
        for i in range(10):
            producer.produce("in", Codec().encode(Artifact.new(f"p{i}")), b"k")
        producer.produce("in", b"not an artifact", b"k")
        producer.flush()
        options = StageOptions(name="s", input_topic="in", output_topic="out", group="g",
                               dlq_topic="dlq", poll_timeout=0.0)
        stage = build_stage(StageSetup(options), broker, handler=lambda a: a,
                            metrics=NullMetrics())
        assert stage.tracing is None
        stats = stage.run(idle_timeout=0.3)
        assert stats.consumed == 11 and stats.dead_lettered == 1, stats
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print(loaded)
        assert "opentelemetry.sdk" not in sys.modules
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_build_stage_makes_the_tracer_from_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`tracing: otlp` in the settings gives the stage an OpenTelemetry tracer."""
    import processor.ops.tracing as tracing

    made: list[TracingSettings] = []

    def fake(settings: TracingSettings, service: str = "processor") -> OtelTracer:
        made.append(settings)
        provider = TracerProvider()
        return OtelTracer(provider)

    monkeypatch.setattr(tracing.OtelTracer, "otlp", staticmethod(fake))
    broker = make_broker(partitions=1)
    stage = build_stage(StageSetup(options(), tracing="otlp",
                                   otlp_endpoint="http://127.0.0.1:4317"),
                        broker, handler=lambda a: a)
    assert stage.tracing is not None
    assert made == [TracingSettings("otlp", "http://127.0.0.1:4317", "grpc", 1.0)]
    stage.close()
