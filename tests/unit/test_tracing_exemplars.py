"""Exemplars: with tracing on, a stage's latency histograms carry the trace of a sampled
record, which `/metrics` shows to a scraper asking for OpenMetrics; untraced, none; the
plain text format is unchanged."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_plain
from prometheus_client.samples import Sample

from processor.core.options import StageOptions
from processor.ops.health import HealthState, MetricsServer
from processor.ops.metrics import (
    LATENCY_SAMPLE_EVERY,
    REGISTRY,
    ExemplarStageMetrics,
    NullMetrics,
    StageMetrics,
)
from processor.ops.tracing import OtelTracer
from processor.runtime.stage import Stage
from tests.unit.stage_support import CODEC, artifacts, feed, make_broker, options

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
LATENCIES = ("processor_handler_latency_seconds", "processor_end_to_end_latency_seconds")
COUNT = LATENCY_SAMPLE_EVERY * 8


@pytest.fixture
def spans() -> Iterator[tuple[OtelTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracer(provider), exporter
    provider.shutdown()


def scrape(accept: str | None = None) -> tuple[str, str]:
    """(content type, body) of `/metrics`, asked for with `accept`."""
    with MetricsServer(HealthState(), registry=REGISTRY) as server:
        request = urllib.request.Request(server.url + "/metrics")
        if accept is not None:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.headers["Content-Type"], response.read().decode()


def latency_buckets(text: str, stage: str) -> list[Sample]:
    """The bucket samples of the stage's latency histograms, in OpenMetrics."""
    found = []
    for family in parse_openmetrics(text):  # type: ignore[no-untyped-call]
        if family.name in LATENCIES:
            found += [s for s in family.samples
                      if s.name.endswith("_bucket") and s.labels.get("stage") == stage]
    return found


def run_stage(name: str, tracer: OtelTracer | None) -> Stage:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(COUNT)])
    opts: StageOptions = options(name=name, group=name)
    stage = Stage(opts, broker, lambda a: a.with_meta(seen=True),
                  metrics=StageMetrics(name, "in", "out"), tracer=tracer)
    stats = stage.run(max_records=COUNT, idle_timeout=0.5)
    assert stats.passed == COUNT
    return stage


@pytest.mark.parametrize("handler_mode", ["sync", "async"])
def test_a_traced_stage_shows_exemplars_of_its_spans(
        spans: tuple[OtelTracer, InMemorySpanExporter], handler_mode: str) -> None:
    tracer, exporter = spans
    name = f"exemplars-{handler_mode}"
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(COUNT)])
    if handler_mode == "async":
        async def handler(a: object) -> object:
            return a
    else:
        def handler(a: object) -> object:  # type: ignore[misc]
            return a
    stage = Stage(options(name=name, group=name, handler_mode=handler_mode,
                          max_concurrency=4), broker, handler,  # type: ignore[arg-type]
                  metrics=StageMetrics(name, "in", "out"), tracer=tracer)
    assert isinstance(stage.metrics, ExemplarStageMetrics)
    assert stage.run(max_records=COUNT, idle_timeout=0.5).passed == COUNT

    ids = {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
           for s in exporter.get_finished_spans()
           if s.name == f"{name} process" and s.context is not None}
    assert len(ids) == COUNT
    content_type, text = scrape(OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text")
    buckets = latency_buckets(text, name)
    for family in LATENCIES:
        seen = [s.exemplar for s in buckets if s.name == family + "_bucket" and s.exemplar]
        assert seen, f"no exemplar on {family}"
        for exemplar in seen:
            assert (exemplar.labels["trace_id"], exemplar.labels["span_id"]) in ids
            assert exemplar.value >= 0


def test_an_untraced_stage_shows_no_exemplars() -> None:
    stage = run_stage("exemplars-off", None)
    assert type(stage.metrics) is StageMetrics  # observed as ever
    buckets = latency_buckets(scrape(OPENMETRICS_ACCEPT)[1], "exemplars-off")
    assert sum(s.value for s in buckets if s.labels["le"] == "+Inf") > 0
    assert not [s for s in buckets if s.exemplar]


def test_an_unsampled_record_gives_no_exemplar() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    run_stage("exemplars-unsampled", OtelTracer(provider))
    buckets = latency_buckets(scrape(OPENMETRICS_ACCEPT)[1], "exemplars-unsampled")
    assert sum(s.value for s in buckets if s.labels["le"] == "+Inf") > 0
    assert not [s for s in buckets if s.exemplar]


def test_the_plain_text_format_is_unchanged(
        spans: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    """Without an Accept header asking for OpenMetrics, `/metrics` serves the plain
    format (no exemplars in it), which parses as before."""
    tracer, _ = spans
    run_stage("exemplars-plain", tracer)
    for accept in (None, "text/plain", "*/*"):
        content_type, text = scrape(accept)
        assert content_type.startswith("text/plain")
        assert "trace_id" not in text
        families = {f.name: f for f in parse_plain(text)}
        handler = families["processor_handler_latency_seconds"]
        count = [s for s in handler.samples if s.name.endswith("_count")
                 and s.labels.get("stage") == "exemplars-plain"]
        assert count and count[0].value == COUNT // LATENCY_SAMPLE_EVERY


def test_other_metrics_are_left_as_they_are(
        spans: tuple[OtelTracer, InMemorySpanExporter]) -> None:
    tracer, _ = spans
    tracing = tracer.stage("s", "g")
    assert tracing is not None
    metrics = NullMetrics()
    assert tracing.exemplars(metrics) is metrics
    assert tracing.exemplar() is None  # no span is current
