"""Metrics, librdkafka statistics, multiprocess aggregation and the HTTP endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processor.ops import metrics
from processor.ops.health import HealthState, MetricsServer
from processor.ops.metrics import REGISTRY, StageMetrics, record_librdkafka_stats


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def stage_name() -> str:
    return f"st-{uuid.uuid4().hex[:8]}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- names -------------------------------------------------------------------------------


KNOWN_LABELS = frozenset({
    "stage", "topic", "partition", "reason", "kind", "input_topic", "output_topic",
    "guarantee", "client_type", "broker",
})
RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


def naming_problems(registry: CollectorRegistry) -> list[str]:
    """What breaks the naming conventions of `processor.ops.metrics` among the processor's
    families of `registry`. (prometheus_client itself strips `_total` from a counter's
    family name and adds it to its samples, so that is not checked here.)"""
    problems = []
    for family in registry.collect():
        name = family.name
        if not name.startswith("processor_"):
            continue
        if not family.documentation.strip():
            problems.append(f"{name}: no help text")
        if name.endswith(RESERVED_SUFFIXES):
            problems.append(f"{name}: ends with a suffix Prometheus reserves")
        if "latency" in name and (family.type != "histogram" or not name.endswith("_seconds")):
            problems.append(f"{name}: a latency is a histogram in seconds")
        if "seconds" in name and not name.endswith("_seconds"):
            problems.append(f"{name}: the unit comes last")
        if "bytes" in name and not name.endswith("_bytes"):
            problems.append(f"{name}: the unit comes last")
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        unknown = labels - KNOWN_LABELS
        if unknown:
            problems.append(f"{name}: unknown labels {sorted(unknown)}")
    return problems


def test_every_metric_follows_the_naming_conventions() -> None:
    st = stage_name()
    m = StageMetrics(st, "in", "out")  # label children, so that labels are seen
    m.lag(0, 1)
    record_librdkafka_stats(st, json.dumps(LIBRDKAFKA_STATS))
    assert naming_problems(REGISTRY) == []


def test_the_naming_check_finds_what_breaks_the_conventions() -> None:
    bad = CollectorRegistry()
    Gauge("processor_things_total", "Things.", registry=bad)
    Gauge("processor_wait_latency", "A latency as a gauge.", registry=bad)
    Counter("processor_read_bytes_seconds", "Units in the wrong order.", registry=bad)
    Gauge("processor_mood", "", registry=bad)
    Gauge("processor_load", "Load.", ["host"], registry=bad).labels("a").set(1)
    problems = "\n".join(naming_problems(bad))
    assert "processor_things_total: ends with a suffix" in problems
    assert "processor_wait_latency: a latency is a histogram" in problems
    assert "processor_read_bytes_seconds: the unit comes last" in problems
    assert "processor_mood: no help text" in problems
    assert "processor_load: unknown labels ['host']" in problems


def test_metric_names_lists_query_names() -> None:
    names = metrics.metric_names()
    for expected in (
        "processor_consumed_total", "processor_produced_total", "processor_dropped_total",
        "processor_dead_lettered_total", "processor_retried_total", "processor_failed_total",
        "processor_consumed_bytes_total", "processor_produced_bytes_total",
        "processor_handler_latency_seconds_bucket", "processor_end_to_end_latency_seconds_count",
        "processor_batch_size_records_bucket", "processor_in_flight_artifacts",
        "processor_paused_partitions", "processor_consumer_lag", "processor_rebalances_total",
        "processor_commit_latency_seconds_sum", "processor_transaction_latency_seconds_bucket",
        "processor_librdkafka_broker_rtt_seconds", "processor_librdkafka_producer_queue_messages",
        "processor_librdkafka_producer_queue_bytes",
    ):
        assert expected in names, expected
    assert "processor_nonexistent_total" not in names


# --- the stage facade --------------------------------------------------------------------


def test_stage_metrics_counts_per_batch() -> None:
    st = stage_name()
    m = StageMetrics(st, "in", "out")
    m.consumed(100, 5000)
    m.consumed(20, 1000)
    m.produced("out", 90, 4500)
    m.produced("dlq", 3, 150)
    m.dropped(7)
    m.retried(2)
    m.failed(1)
    m.dead_lettered("decode", 2)
    m.dead_lettered("retries-exhausted", 1)
    assert value("processor_consumed_total", stage=st, topic="in") == 120
    assert value("processor_consumed_bytes_total", stage=st, topic="in") == 6000
    assert value("processor_produced_total", stage=st, topic="out") == 90
    assert value("processor_produced_bytes_total", stage=st, topic="out") == 4500
    assert value("processor_produced_total", stage=st, topic="dlq") == 3
    assert value("processor_dropped_total", stage=st, topic="in") == 7
    assert value("processor_retried_total", stage=st, topic="in") == 2
    assert value("processor_failed_total", stage=st, topic="in") == 1
    assert value("processor_dead_lettered_total", stage=st, topic="in", reason="decode") == 2
    assert value("processor_dead_lettered_total", stage=st, topic="in",
                 reason="retries-exhausted") == 1


def test_series_exist_at_zero_from_the_start() -> None:
    """Dashboards and rate() need the series before the first event."""
    st = stage_name()
    StageMetrics(st, "in", "out")
    assert value("processor_consumed_total", stage=st, topic="in") == 0
    assert value("processor_produced_total", stage=st, topic="out") == 0
    for reason in metrics.DLQ_REASONS:
        assert value("processor_dead_lettered_total", stage=st, topic="in", reason=reason) == 0
    for kind in metrics.REBALANCE_KINDS:
        assert value("processor_rebalances_total", stage=st, kind=kind) == 0
    assert value("processor_stage_info", stage=st, input_topic="in", output_topic="out",
                 guarantee="at-least-once") == 1


def test_histograms_and_gauges() -> None:
    st = stage_name()
    m = StageMetrics(st, "in", None)
    m.batch(500)
    m.batch(3)
    m.handler_latency(0.002)
    m.end_to_end_latency(1.5)
    m.commit_latency(0.02)
    m.transaction_latency(0.2)
    m.in_flight(42)
    m.paused("retry", 2)
    m.paused("backpressure", 1)
    m.assigned(3)
    m.rebalance("assign", 1)
    m.rebalance("lost")
    assert value("processor_batch_size_records_count", stage=st, topic="in") == 2
    assert value("processor_batch_size_records_sum", stage=st, topic="in") == 503
    assert value("processor_batch_size_records_bucket", stage=st, topic="in", le="5.0") == 1
    assert value("processor_handler_latency_seconds_bucket", stage=st, le="0.0025") == 1
    assert value("processor_handler_latency_seconds_bucket", stage=st, le="0.001") == 0
    assert value("processor_end_to_end_latency_seconds_sum", stage=st) == 1.5
    assert value("processor_commit_latency_seconds_count", stage=st) == 1
    assert value("processor_transaction_latency_seconds_count", stage=st) == 1
    assert value("processor_in_flight_artifacts", stage=st) == 42
    assert value("processor_paused_partitions", stage=st, topic="in", reason="retry") == 2
    assert value("processor_paused_partitions", stage=st, topic="in",
                 reason="backpressure") == 1
    with pytest.raises(ValueError, match="unknown pause reason"):
        m.paused("tired", 1)
    assert value("processor_assigned_partitions", stage=st, topic="in") == 3
    assert value("processor_rebalances_total", stage=st, kind="assign") == 1
    assert value("processor_rebalances_total", stage=st, kind="lost") == 1


def test_lag_per_partition_and_forgetting() -> None:
    st = stage_name()
    m = StageMetrics(st, "in", "out")
    m.lag(0, 10)
    m.lag(1, 0)
    m.lag(0, 4)
    assert value("processor_consumer_lag", stage=st, topic="in", partition="0") == 4
    assert value("processor_consumer_lag", stage=st, topic="in", partition="1") == 0
    m.forget_partitions([0])
    assert value("processor_consumer_lag", stage=st, topic="in", partition="0") == 0


def test_unknown_dead_letter_reason_still_counts() -> None:
    st = stage_name()
    m = StageMetrics(st, "in", "out")
    m.dead_lettered("something-new", 3)
    assert value("processor_dead_lettered_total", stage=st, topic="in",
                 reason="something-new") == 3


# --- librdkafka statistics ---------------------------------------------------------------


LIBRDKAFKA_STATS = {
    "name": "rdkafka#producer-1", "type": "producer", "ts": 1, "time": 1,
    "replyq": 3, "msg_cnt": 17, "msg_size": 2048, "msg_max": 100000,
    "brokers": {
        "127.0.0.1:9092/1": {
            "name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP",
            "rtt": {"min": 100, "max": 9000, "avg": 1500, "p99": 8000, "cnt": 12},
        },
        "127.0.0.1:9092/bootstrap": {
            "name": "127.0.0.1:9092/bootstrap", "nodeid": -1, "state": "UP",
            "rtt": {"avg": 999999, "p99": 999999, "cnt": 2},
        },
        "127.0.0.1:9093/2": {
            "name": "127.0.0.1:9093/2", "nodeid": 2, "state": "INIT",
            "rtt": {"avg": 0, "p99": 0, "cnt": 0},
        },
    },
}


def test_librdkafka_stats_are_recorded() -> None:
    st = stage_name()
    record_librdkafka_stats(st, json.dumps(LIBRDKAFKA_STATS))
    assert value("processor_librdkafka_producer_queue_messages", stage=st) == 17
    assert value("processor_librdkafka_producer_queue_bytes", stage=st) == 2048
    assert value("processor_librdkafka_reply_queue_ops", stage=st, client_type="producer") == 3
    broker = {"stage": st, "client_type": "producer", "broker": "127.0.0.1:9092/1"}
    assert value("processor_librdkafka_broker_rtt_seconds", **broker) == pytest.approx(0.0015)
    assert value("processor_librdkafka_broker_rtt_p99_seconds", **broker) == pytest.approx(0.008)
    # the bootstrap entry and a broker without samples are skipped
    assert value("processor_librdkafka_broker_rtt_seconds", stage=st, client_type="producer",
                 broker="127.0.0.1:9092/bootstrap") is None
    assert value("processor_librdkafka_broker_rtt_seconds", stage=st, client_type="producer",
                 broker="127.0.0.1:9093/2") is None


def test_librdkafka_consumer_stats_do_not_touch_producer_queue() -> None:
    st = stage_name()
    stats = dict(LIBRDKAFKA_STATS, type="consumer", name="rdkafka#consumer-2")
    record_librdkafka_stats(st, json.dumps(stats))
    assert value("processor_librdkafka_producer_queue_messages", stage=st) is None
    assert value("processor_librdkafka_broker_rtt_seconds", stage=st, client_type="consumer",
                 broker="127.0.0.1:9092/1") == pytest.approx(0.0015)


def test_unreadable_librdkafka_stats_are_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    st = stage_name()
    record_librdkafka_stats(st, "{not json")
    record_librdkafka_stats(st, "[1, 2]")
    assert value("processor_librdkafka_stats_errors_total", stage=st) == 2
    assert "unreadable librdkafka statistics" in caplog.text


# --- multiprocess mode -------------------------------------------------------------------


WORKER = textwrap.dedent("""
    import sys
    from processor.ops.metrics import StageMetrics
    m = StageMetrics("mp", "in", "out")
    n = int(sys.argv[1])
    m.consumed(n, n * 10)
    m.in_flight(n)
    m.lag(int(sys.argv[2]), n * 100)
""")

PARENT = textwrap.dedent("""
    import os, subprocess, sys
    from prometheus_client import generate_latest
    from processor.ops import metrics
    metrics.enable_multiprocess(sys.argv[1])
    for n, partition in ((3, 0), (4, 1)):
        subprocess.run([sys.executable, "-c", sys.argv[2], str(n), str(partition)], check=True)
    sys.stdout.write(generate_latest(metrics.registry_for_exposition()).decode())
""")


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    """Two worker processes write; the parent's exposition adds them up. Run in a fresh
    interpreter, since multiprocess mode switches prometheus_client's global value class."""
    result = subprocess.run(
        [sys.executable, "-c", PARENT, str(tmp_path / "mp"), WORKER],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(result.stdout)
        for s in family.samples
    }
    assert samples[("processor_consumed_total", (("stage", "mp"), ("topic", "in")))] == 7
    assert samples[("processor_consumed_bytes_total", (("stage", "mp"), ("topic", "in")))] == 70
    # livesum over workers; both exited without being marked dead, so both count
    assert samples[("processor_in_flight_artifacts", (("stage", "mp"),))] == 7
    lag = {k[1]: v for k, v in samples.items() if k[0] == "processor_consumer_lag"}
    assert lag[(("partition", "0"), ("stage", "mp"), ("topic", "in"))] == 300
    assert lag[(("partition", "1"), ("stage", "mp"), ("topic", "in"))] == 400
    # single-process collectors are off in multiprocess mode
    assert "process_cpu_seconds_total" not in result.stdout


# --- health ------------------------------------------------------------------------------


def test_health_goes_stuck_without_beats() -> None:
    clock = FakeClock()
    health = HealthState(clock=clock, stuck_after=30.0)
    assert health.is_healthy()
    clock.now += 29.0
    assert health.is_healthy()
    clock.now += 2.0
    assert not health.is_healthy()
    assert "31.0s" in health.health_reason()
    health.beat()
    assert health.is_healthy()


def test_readiness_needs_assignment_and_broker() -> None:
    health = HealthState(clock=FakeClock())
    assert not health.is_ready()
    assert health.ready_reason() == "not ready: no partitions assigned, broker not reachable"
    health.set_assigned(2)
    assert not health.is_ready()
    health.set_broker_ok(True)
    assert health.is_ready()
    health.set_assigned(0)
    assert not health.is_ready()


@pytest.fixture
def served() -> tuple[MetricsServer, HealthState, FakeClock, CollectorRegistry]:
    clock = FakeClock()
    health = HealthState(clock=clock, stuck_after=30.0)
    registry = CollectorRegistry()
    Counter("demo_things", "Things.", registry=registry).inc(5)
    return MetricsServer(health, "127.0.0.1", 0, registry=registry), health, clock, registry


def test_endpoints(served: tuple[MetricsServer, HealthState, FakeClock, CollectorRegistry]
                   ) -> None:
    server, health, clock, _registry = served
    with server:
        assert server.port != 0
        base = f"http://127.0.0.1:{server.port}"
        status, body = get(base + "/metrics")
        assert status == 200
        assert "demo_things_total 5.0" in body
        assert get(base + "/healthz") == (200, "ok\n")
        status, body = get(base + "/readyz")
        assert status == 503 and "no partitions assigned" in body
        health.set_assigned(1)
        health.set_broker_ok(True)
        assert get(base + "/readyz") == (200, "ready\n")
        clock.now += 31.0
        status, body = get(base + "/healthz")
        assert status == 503 and body.startswith("stuck")
        health.beat()
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/nothing-here")[0] == 404


def test_default_registry_is_the_metrics_module() -> None:
    st = stage_name()
    StageMetrics(st, "in", "out").consumed(9, 90)
    with MetricsServer(HealthState(), "127.0.0.1", 0) as server:
        status, body = get(server.url + "/metrics")
    assert status == 200
    assert f'processor_consumed_total{{stage="{st}",topic="in"}} 9.0' in body
    assert generate_latest(REGISTRY)  # exposition of the module registry works on its own


def test_stop_frees_the_port() -> None:
    server = MetricsServer(HealthState(), "127.0.0.1", 0)
    server.start()
    port = server.port
    server.stop()
    server.stop()  # idempotent
    again = MetricsServer(HealthState(), "127.0.0.1", port)
    again.start()
    again.stop()
