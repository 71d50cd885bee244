"""Records of unsampled traces get no span (`StageTracing.unsampled`): a stage tracing a
share of its records decides by the sampler's own rule, hands an unsampled decision on in
the `traceparent` it writes, and keeps every sampled trace whole across stages, on every
handler path."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from processor.backends.abstract import Broker, Headers
from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact
from processor.core.handlers import BatchOutcome, Outcome
from processor.ops.tracing import OtelTracer, UnsampledMessage
from processor.runtime.stage import Stage
from tests.unit.stage_support import CODEC, artifacts, feed, make_broker, options, read_all

KINDS = ("sync", "async", "threads", "batch")
COUNT = 400


def tracer_of(ratio: float) -> tuple[OtelTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer.sampling(ratio)
    tracer.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer, exporter


@pytest.fixture
def quarter() -> Iterator[tuple[OtelTracer, InMemorySpanExporter]]:
    tracer, exporter = tracer_of(0.25)
    yield tracer, exporter
    tracer.provider.shutdown()


def traceparent(headers: Headers | None) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the record's `traceparent`."""
    [value] = [v for k, v in headers or [] if k == "traceparent"]
    _version, trace_id, parent, flags = value.decode().split("-")
    return trace_id, parent, flags


def handler_of(kind: str, fn: Callable[[Artifact], Outcome]) -> object:
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


def two_stages(broker: Broker, tracer: OtelTracer, kind: str,
               first: Callable[[Artifact], Outcome]) -> tuple[Stage, Stage]:
    mode = {"sync": "sync", "async": "async", "threads": "threads", "batch": "sync"}[kind]
    common = dict(handler_mode=mode, handler_batch_size=8, handler_batch_wait=0.0,
                  max_concurrency=4)
    s1 = Stage(options(name="s1", group="s1", output_topic="mid", **common), broker,
               handler_of(kind, first), tracer=tracer)  # type: ignore[arg-type]
    s1.run(idle_timeout=0.5)
    s2 = Stage(options(name="s2", group="s2", input_topic="mid", dlq_topic=None, **common),
               broker, handler_of(kind, lambda a: a.with_meta(seen=True)),  # type: ignore[arg-type]
               tracer=tracer)
    s2.run(idle_timeout=0.5)
    return s1, s2


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def reject_every_tenth(a: Artifact) -> Outcome:
    if int(a.get("seq", 0)) % 10 == 0:
        raise InvalidArtifact("seq divisible by ten")
    return a


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_traces_are_whole_and_the_rest_carry_the_decision(
        quarter: tuple[OtelTracer, InMemorySpanExporter], kind: str) -> None:
    tracer, exporter = quarter
    broker = make_broker(partitions=2, extra=("mid",))
    feed(broker, [CODEC.encode(a) for a in artifacts(COUNT)])
    s1, s2 = two_stages(broker, tracer, kind, reject_every_tenth)
    assert s1.stats.consumed == COUNT and s1.stats.dead_lettered == COUNT // 10
    assert s2.stats.passed == COUNT - COUNT // 10

    finished = exporter.get_finished_spans()
    first = {hex_ids(s)[0]: s for s in finished if s.name == "s1 process"}
    second = {hex_ids(s)[0]: s for s in finished if s.name == "s2 process"}
    # About a quarter sampled (binomial: mean 100, sd about 9), by the sampler's rule.
    assert 50 <= len(first) <= 160, len(first)
    bound = TraceIdRatioBased.get_bound_for_rate(0.25)
    assert all(int(t, 16) & 0xFFFFFFFFFFFFFFFF < bound for t in first)
    # Whole: every sampled record's trace goes on into the second stage (but the dead
    # letters), and the second stage samples no trace of its own.
    dead = {t for t, s in first.items() if s.attributes
            and s.attributes.get("processor.outcome") == "dead_lettered"}
    assert set(second) == set(first) - dead
    for trace_id, span in second.items():
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == hex_ids(first[trace_id])[1]
    # Every output carries its trace on: the sampled ones with the span's context, the
    # others flagged "not sampled", each a trace of its own.
    mid = read_all(broker, "mid")
    out = read_all(broker, "out")
    assert len(out) == len(mid) == COUNT - COUNT // 10
    unsampled = [traceparent(m.headers()) for m in mid if traceparent(m.headers())[2] == "00"]
    assert len(unsampled) == len(mid) - len(set(first) - dead)
    assert len({t for t, _, _ in unsampled}) == len(unsampled)
    assert not {t for t, _, _ in unsampled} & set(first)
    for m in out:
        trace_id, _parent, flags = traceparent(m.headers())
        assert bool(int(flags, 16) & 1) == (trace_id in second)  # the sampled flag
    dlq = read_all(broker, "dlq")
    assert len(dlq) == COUNT // 10
    for m in dlq:
        trace_id, _parent, flags = traceparent(m.headers())
        assert bool(int(flags, 16) & 1) == (trace_id in first)


def test_an_unsampled_context_passes_through_unchanged() -> None:
    """A record that comes with a context "not sampled" gets no span; its outputs carry
    that same context on."""
    tracer, exporter = tracer_of(1.0)
    broker = make_broker(partitions=1)
    value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    producer = broker.producer()
    for a in artifacts(5):
        producer.produce("in", CODEC.encode(a), b"k",
                         [("traceparent", value.encode()), ("baggage", b"tenant=7")])
    producer.flush()
    Stage(options(), broker, lambda a: a.with_meta(seen=True), tracer=tracer).run(
        idle_timeout=0.5)
    assert not exporter.get_finished_spans()
    for m in read_all(broker, "out"):
        headers = dict(m.headers() or [])
        assert headers["traceparent"] == value.encode()
        assert headers["baggage"] == b"tenant=7"


def test_nothing_sampled_no_span_and_no_handler_span() -> None:
    """Sampling nothing: no span at all, not even a handler's own (they start in a context
    not sampled); each output starts a trace of its own, flagged "not sampled"."""
    tracer, exporter = tracer_of(0.0)
    inner = tracer.provider.get_tracer("handler")

    def handler(a: Artifact) -> Outcome:
        with inner.start_as_current_span("lookup"):
            return a.with_meta(seen=True)

    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(20)])
    stage = Stage(options(), broker, handler, tracer=tracer)
    stage.run(idle_timeout=0.5)
    assert stage.stats.passed == 20
    assert not exporter.get_finished_spans()
    parents = [traceparent(m.headers()) for m in read_all(broker, "out")]
    assert len({t for t, _, _ in parents}) == 20 and {f for _, _, f in parents} == {"00"}


def test_a_handler_span_is_sampled_with_its_record() -> None:
    """A handler's own spans follow their record's decision: a child of the record's span
    when it is sampled, not recorded when it is not (never a trace of their own)."""
    tracer, exporter = tracer_of(0.5)
    inner = tracer.provider.get_tracer("handler")

    def handler(a: Artifact) -> Outcome:
        with inner.start_as_current_span("lookup"):
            return a

    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(100)])
    Stage(options(), broker, handler, tracer=tracer).run(idle_timeout=0.5)
    finished = exporter.get_finished_spans()
    records = {int(hex_ids(s)[1], 16): s for s in finished
               if s.name == "s1 process"}
    lookups = [s for s in finished if s.name == "lookup"]
    assert 0 < len(records) < 100
    assert len(lookups) == len(records)
    assert all(s.parent is not None and s.parent.span_id in records for s in lookups)


def test_unsampled_messages_are_the_same_records() -> None:
    tracer, _ = tracer_of(0.0)
    tracing = tracer.stage("s", "g")
    assert tracing is not None
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(artifacts(1)[0])])
    [msg] = read_all(broker, "in")
    plain = tracing.unsampled(msg)
    assert isinstance(plain, UnsampledMessage)
    assert (plain.topic(), plain.partition(), plain.offset(), plain.key(), plain.value(),
            plain.timestamp()) == (msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                   msg.value(), msg.timestamp())
    assert traceparent(plain.headers())[2] == "00"
    assert tracing.unsampled(plain) is plain  # a decision once made is kept
    # A tracer whose sampler is not known gives every record its span.
    from opentelemetry.sdk.trace import TracerProvider

    unknown = OtelTracer(TracerProvider()).stage("s", "g")
    assert unknown is not None and unknown.unsampled(msg) is None
