"""Every Prometheus metric of the processor, declared in this one module.

Names follow the Prometheus conventions: the `processor_` prefix, `_total` on counters,
base units in the name (`_seconds`, `_bytes`). Labels:

* `stage`: the stage's name (`StageOptions.name`);
* `topic`: the topic a record was read from or written to;
* `partition`: only where a per-partition value is what an operator needs (consumer lag);
* `reason` (dead-lettered): one of `DLQ_REASONS`; (paused partitions): one of
  `PAUSE_REASONS`;
* `kind` (rebalances): one of `REBALANCE_KINDS`.

What a stage reports is the `Metrics` protocol. `StageMetrics` reports it to Prometheus;
`NullMetrics`, the stage's default, reports nothing, so the loop never asks whether it
has metrics.

The hot path
------------
A stage handles on the order of 100,000 records per second, so it never touches a metric
per record. `StageMetrics` resolves the labelled children once and offers bulk methods the
stage calls once per *batch* (`consumed(n, nbytes)`, `produced(topic, n, nbytes)`...).
Latency histograms are *sampled*: the stage times the handler and the end-to-end latency
of one record in `LATENCY_SAMPLE_EVERY` (16), collects the samples of a batch and
observes every one of them after the batch, which keeps the distribution while cutting
the cost by that factor; counts of records are never sampled.

Exemplars
---------
With tracing on (`processor.ops.tracing`), a stage's latency observations carry an
exemplar, the `trace_id` and `span_id` of the sampled record they timed
(`StageMetrics.with_exemplars`); `/metrics` shows them when the scraper asks for
OpenMetrics. An untraced stage's `StageMetrics` observes as before.

Several worker processes
------------------------
Worker processes of one stage must show one consistent view on one `/metrics` endpoint.
prometheus_client's multiprocess mode does this: each process writes its values to
memory-mapped files in a shared directory and the parent's endpoint adds them up. The
parent calls `enable_multiprocess(dir)` *before* it starts workers (the directory is
then inherited through the `PROMETHEUS_MULTIPROC_DIR` environment variable, and forked
workers inherit the switched value class); `registry_for_exposition()` then returns a
registry that aggregates every worker. Gauges declare how they combine: per-process
amounts that add up (in-flight records, paused partitions) use `livesum`; values that
are the same wherever they are measured (consumer lag, round-trip times) use `livemax`.
"live" modes drop the values of workers that exited once `worker_exited(pid)` is called.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    values,
)
from prometheus_client import multiprocess as prom_multiprocess

logger = logging.getLogger(__name__)

Exemplar = dict[str, str]
"""The labels of an exemplar: those of a trace, `trace_id` and `span_id` (hex)."""

LATENCY_SAMPLE_EVERY: Final = 16
"""The stage observes latency histograms for one record in this many."""

DLQ_REASONS: Final = ("decode", "schema", "checksum", "invalid", "retries-exhausted",
                      "handler-error", "too-large", "signature", "sealed", "hops")
"""The `reason` label values of `processor_dead_lettered_total`
(see `processor.runtime.dead_letters.Reason`)."""

REBALANCE_KINDS: Final = ("assign", "revoke", "lost")
"""The `kind` label values of `processor_rebalances_total`."""

PAUSE_RETRY: Final = "retry"
PAUSE_BACKPRESSURE: Final = "backpressure"
PAUSE_REASONS: Final = (PAUSE_RETRY, PAUSE_BACKPRESSURE)
"""The `reason` label values of `processor_paused_partitions`: a partition is paused
while one of its records waits for a retry, or while the producer has too much output
unacknowledged."""

LIBRDKAFKA_STATS_INTERVAL_MS: Final = 15_000
"""`statistics.interval.ms` of a Kafka stage's clients unless the settings name one."""

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""The registry every metric of this module lives in."""

_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_END_TO_END_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
_COMMIT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000)

_ST: Final = ("stage",)
_ST_TOPIC: Final = ("stage", "topic")

# --- records -----------------------------------------------------------------------------

CONSUMED: Final = Counter(
    "processor_consumed_total", "Records taken from the input topic.",
    _ST_TOPIC, registry=REGISTRY,
)
CONSUMED_BYTES: Final = Counter(
    "processor_consumed_bytes_total", "Bytes of record values taken from the input topic.",
    _ST_TOPIC, registry=REGISTRY,
)
PRODUCED: Final = Counter(
    "processor_produced_total", "Records produced to an output or dead-letter topic.",
    _ST_TOPIC, registry=REGISTRY,
)
PRODUCED_BYTES: Final = Counter(
    "processor_produced_bytes_total", "Bytes of record values produced.",
    _ST_TOPIC, registry=REGISTRY,
)
DROPPED: Final = Counter(
    "processor_dropped_total", "Input records a handler dropped (returned None).",
    _ST_TOPIC, registry=REGISTRY,
)
DEAD_LETTERED: Final = Counter(
    "processor_dead_lettered_total",
    "Input records sent to the dead-letter topic, by reason "
    "(decode, checksum, invalid, retries-exhausted, handler-error).",
    ("stage", "topic", "reason"), registry=REGISTRY,
)
RETRIED: Final = Counter(
    "processor_retried_total", "Handler attempts retried after a RetryableError.",
    _ST_TOPIC, registry=REGISTRY,
)
FAILED: Final = Counter(
    "processor_failed_total",
    "Records whose handling failed with an unexpected error (before the error policy).",
    _ST_TOPIC, registry=REGISTRY,
)

# --- latencies and sizes -----------------------------------------------------------------

HANDLER_LATENCY: Final = Histogram(
    "processor_handler_latency_seconds",
    f"Seconds the handler chain took for one record (sampled 1 in {LATENCY_SAMPLE_EVERY}).",
    _ST, buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
END_TO_END_LATENCY: Final = Histogram(
    "processor_end_to_end_latency_seconds",
    "Seconds from an input record's timestamp to the production of its result "
    f"(sampled 1 in {LATENCY_SAMPLE_EVERY}).",
    _ST, buckets=_END_TO_END_BUCKETS, registry=REGISTRY,
)
BATCH_SIZE: Final = Histogram(
    "processor_batch_size_records", "Records taken from the consumer in one call.",
    _ST_TOPIC, buckets=_BATCH_BUCKETS, registry=REGISTRY,
)
COMMIT_LATENCY: Final = Histogram(
    "processor_commit_latency_seconds",
    "Seconds one commit took (flush of the producer plus the offset commit).",
    _ST, buckets=_COMMIT_BUCKETS, registry=REGISTRY,
)
TRANSACTION_LATENCY: Final = Histogram(
    "processor_transaction_latency_seconds",
    "Seconds one transaction commit took (exactly-once stages).",
    _ST, buckets=_COMMIT_BUCKETS, registry=REGISTRY,
)

# --- state -------------------------------------------------------------------------------

IN_FLIGHT: Final = Gauge(
    "processor_in_flight_artifacts",
    "Records produced whose input offsets are not committed yet.",
    _ST, multiprocess_mode="livesum", registry=REGISTRY,
)
PAUSED_PARTITIONS: Final = Gauge(
    "processor_paused_partitions",
    "Assigned input partitions paused, by reason: retry (a record of the partition waits "
    "for its retry) or backpressure (too much output unacknowledged).",
    ("stage", "topic", "reason"), multiprocess_mode="livesum", registry=REGISTRY,
)
ASSIGNED_PARTITIONS: Final = Gauge(
    "processor_assigned_partitions", "Input partitions assigned to the stage.",
    _ST_TOPIC, multiprocess_mode="livesum", registry=REGISTRY,
)
CONSUMER_LAG: Final = Gauge(
    "processor_consumer_lag",
    "Records not read yet: the partition's high watermark minus the stage's position.",
    ("stage", "topic", "partition"), multiprocess_mode="livemax", registry=REGISTRY,
)
REBALANCES: Final = Counter(
    "processor_rebalances_total", "Partition assignment changes, by kind (assign, revoke, lost).",
    ("stage", "kind"), registry=REGISTRY,
)
STATE_ENTRIES: Final = Gauge(
    "processor_state_entries",
    "Entries in the state store of an input partition (keyed state and dedup marks; "
    "docs/state.md).",
    ("stage", "topic", "partition"), multiprocess_mode="livesum", registry=REGISTRY,
)
STATE_RECOVERY_REMAINING: Final = Gauge(
    "processor_state_recovery_remaining_records",
    "Changelog records still to read before a partition's state store is recovered "
    "(0 once it is).",
    ("stage", "topic", "partition"), multiprocess_mode="livemax", registry=REGISTRY,
)
STATE_RECOVERED: Final = Counter(
    "processor_state_recovered_records_total",
    "Changelog records read by state store recoveries.",
    _ST, registry=REGISTRY,
)
STATE_RECOVERY_SECONDS: Final = Histogram(
    "processor_state_recovery_seconds",
    "Seconds one partition's state store took to catch up with its changelog.",
    _ST, buckets=_COMMIT_BUCKETS, registry=REGISTRY,
)
STAGE_INFO: Final = Gauge(
    "processor_stage_info", "Always 1; the labels describe the running stage.",
    ("stage", "input_topic", "output_topic", "guarantee"),
    multiprocess_mode="livemax", registry=REGISTRY,
)

# --- librdkafka statistics (statistics.interval.ms) -------------------------------------

RDKAFKA_BROKER_RTT: Final = Gauge(
    "processor_librdkafka_broker_rtt_seconds",
    "Average broker round-trip time over the last statistics interval (librdkafka).",
    ("stage", "client_type", "broker"), multiprocess_mode="livemax", registry=REGISTRY,
)
RDKAFKA_BROKER_RTT_P99: Final = Gauge(
    "processor_librdkafka_broker_rtt_p99_seconds",
    "99th percentile broker round-trip time over the last statistics interval (librdkafka).",
    ("stage", "client_type", "broker"), multiprocess_mode="livemax", registry=REGISTRY,
)
RDKAFKA_PRODUCER_QUEUE: Final = Gauge(
    "processor_librdkafka_producer_queue_messages",
    "Messages waiting in the producer's queues (librdkafka msg_cnt).",
    _ST, multiprocess_mode="livesum", registry=REGISTRY,
)
RDKAFKA_PRODUCER_QUEUE_BYTES: Final = Gauge(
    "processor_librdkafka_producer_queue_bytes",
    "Bytes of messages waiting in the producer's queues (librdkafka msg_size).",
    _ST, multiprocess_mode="livesum", registry=REGISTRY,
)
RDKAFKA_REPLY_QUEUE: Final = Gauge(
    "processor_librdkafka_reply_queue_ops",
    "Operations (callbacks, events) waiting to be served by poll (librdkafka replyq).",
    ("stage", "client_type"), multiprocess_mode="livesum", registry=REGISTRY,
)
RDKAFKA_STATS_ERRORS: Final = Counter(
    "processor_librdkafka_stats_errors_total",
    "librdkafka statistics documents that could not be parsed.",
    _ST, registry=REGISTRY,
)

if os.environ.get(MULTIPROC_ENV) is None:
    # Process and platform metrics describe one process; with several workers they would
    # describe only the parent, so they are registered only in single-process mode.
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)


def metric_names() -> frozenset[str]:
    """The names of every metric family of `REGISTRY`, with the sample suffixes
    (`_total`, `_bucket`, `_sum`, `_count`, `_created`) a query may use."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return frozenset(names)


class Metrics(Protocol):
    """What a stage reports. Every method is called once per batch or per event, never
    per record; latency methods take one sampled observation each."""

    def batch(self, n: int) -> None:
        """One consume call returned `n` records."""
    def consumed(self, n: int, nbytes: int) -> None:
        """`n` records (`nbytes` bytes of values) taken from the input topic."""
    def produced(self, topic: str, n: int, nbytes: int) -> None:
        """`n` records written to `topic` (an output or the dead-letter topic)."""
    def dropped(self, n: int) -> None: ...
    def dead_lettered(self, reason: str, n: int) -> None: ...
    def retried(self, n: int) -> None: ...
    def failed(self, n: int) -> None: ...
    def handler_latency(self, seconds: float) -> None: ...
    def end_to_end_latency(self, seconds: float) -> None: ...
    def commit_latency(self, seconds: float) -> None: ...
    def transaction_latency(self, seconds: float) -> None: ...
    def in_flight(self, n: int) -> None: ...
    def paused(self, reason: str, n: int) -> None:
        """`n` assigned partitions are paused for `reason` (one of `PAUSE_REASONS`)."""
    def assigned(self, n: int) -> None: ...
    def lag(self, partition: int, value: int) -> None: ...
    def forget_partitions(self, partitions: list[int]) -> None: ...
    def rebalance(self, kind: str, n: int = 1) -> None: ...


@runtime_checkable
class StateMetrics(Protocol):
    """What a stateful stage reports of its stores (`processor.runtime.stateful`); a
    `Metrics` without these methods reports nothing of them."""

    def state_entries(self, topic: str, partition: int, entries: int) -> None: ...
    def state_recovery(self, topic: str, partition: int, remaining: int, read: int) -> None: ...
    def state_recovered(self, seconds: float) -> None: ...


class NullMetrics:
    """The `Metrics` that report nothing: the default of a stage built without metrics
    (the demo, most tests)."""

    def batch(self, n: int) -> None:
        pass

    def consumed(self, n: int, nbytes: int) -> None:
        pass

    def produced(self, topic: str, n: int, nbytes: int) -> None:
        pass

    def dropped(self, n: int) -> None:
        pass

    def dead_lettered(self, reason: str, n: int) -> None:
        pass

    def retried(self, n: int) -> None:
        pass

    def failed(self, n: int) -> None:
        pass

    def handler_latency(self, seconds: float) -> None:
        pass

    def end_to_end_latency(self, seconds: float) -> None:
        pass

    def commit_latency(self, seconds: float) -> None:
        pass

    def transaction_latency(self, seconds: float) -> None:
        pass

    def in_flight(self, n: int) -> None:
        pass

    def paused(self, reason: str, n: int) -> None:
        pass

    def assigned(self, n: int) -> None:
        pass

    def lag(self, partition: int, value: int) -> None:
        pass

    def forget_partitions(self, partitions: list[int]) -> None:
        pass

    def rebalance(self, kind: str, n: int = 1) -> None:
        pass


class StageMetrics:
    """The `Metrics` of one stage in Prometheus, with label children resolved once.

    Every method is meant to be called once per batch (or per event), not per record:
    `consumed(len(batch), total_bytes)`. Latency methods take one sampled observation;
    the stage samples one record in `LATENCY_SAMPLE_EVERY`.
    """

    def __init__(
        self,
        stage_name: str,
        input_topic: str,
        output_topic: str | None,
        guarantee: str = "at-least-once",
        extra_topics: Sequence[str] = (),
    ) -> None:
        self.stage = stage_name
        self.input_topic = input_topic
        self.output_topic = output_topic
        st = stage_name
        self._consumed = CONSUMED.labels(st, input_topic)
        self._consumed_bytes = CONSUMED_BYTES.labels(st, input_topic)
        self._dropped = DROPPED.labels(st, input_topic)
        self._retried = RETRIED.labels(st, input_topic)
        self._failed = FAILED.labels(st, input_topic)
        self._dead = {r: DEAD_LETTERED.labels(st, input_topic, r) for r in DLQ_REASONS}
        self._handler_latency = HANDLER_LATENCY.labels(st)
        self._e2e_latency = END_TO_END_LATENCY.labels(st)
        self._batch = BATCH_SIZE.labels(st, input_topic)
        self._commit_latency = COMMIT_LATENCY.labels(st)
        self._transaction_latency = TRANSACTION_LATENCY.labels(st)
        self._in_flight = IN_FLIGHT.labels(st)
        self._paused = {r: PAUSED_PARTITIONS.labels(st, input_topic, r) for r in PAUSE_REASONS}
        self._assigned = ASSIGNED_PARTITIONS.labels(st, input_topic)
        self._rebalances = {k: REBALANCES.labels(st, k) for k in REBALANCE_KINDS}
        self._produced: dict[str, tuple[Counter, Counter]] = {}
        self._lag: dict[int, Gauge] = {}
        for topic in (output_topic, *extra_topics):
            if topic:
                self._produced_children(topic)
        STAGE_INFO.labels(st, input_topic, output_topic or "", guarantee).set(1)

    def _produced_children(self, topic: str) -> tuple[Counter, Counter]:
        children = self._produced.get(topic)
        if children is None:
            children = (
                PRODUCED.labels(self.stage, topic), PRODUCED_BYTES.labels(self.stage, topic)
            )
            self._produced[topic] = children
        return children

    # --- counts (per batch) ----------------------------------------------------------

    def consumed(self, n: int, nbytes: int) -> None:
        self._consumed.inc(n)
        self._consumed_bytes.inc(nbytes)

    def produced(self, topic: str, n: int, nbytes: int) -> None:
        records, size = self._produced_children(topic)
        records.inc(n)
        size.inc(nbytes)

    def dropped(self, n: int) -> None:
        self._dropped.inc(n)

    def dead_lettered(self, reason: str, n: int) -> None:
        child = self._dead.get(reason)
        if child is None:
            # An unknown reason still counts; it gets its own series.
            child = DEAD_LETTERED.labels(self.stage, self.input_topic, reason)
            self._dead[reason] = child
        child.inc(n)

    def retried(self, n: int) -> None:
        self._retried.inc(n)

    def failed(self, n: int) -> None:
        self._failed.inc(n)

    def batch(self, n: int) -> None:
        self._batch.observe(n)

    # --- latencies (sampled observations) --------------------------------------------

    def handler_latency(self, seconds: float) -> None:
        self._handler_latency.observe(seconds)

    def end_to_end_latency(self, seconds: float) -> None:
        self._e2e_latency.observe(seconds)

    def with_exemplars(self, exemplar: Callable[[], Exemplar | None]) -> StageMetrics:
        """These metrics, their latency observations carrying `exemplar()` (the labels of
        the traced record they timed: `trace_id`, `span_id`; None: no exemplar). Only a
        traced stage uses it (`processor.ops.tracing`), so the untraced stage's
        observations stay as they are."""
        traced = ExemplarStageMetrics.__new__(ExemplarStageMetrics)
        traced.__dict__.update(self.__dict__)  # the same children
        traced.exemplar = exemplar
        return traced

    def commit_latency(self, seconds: float) -> None:
        self._commit_latency.observe(seconds)

    def transaction_latency(self, seconds: float) -> None:
        self._transaction_latency.observe(seconds)

    # --- state -----------------------------------------------------------------------

    def in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def paused(self, reason: str, n: int) -> None:
        child = self._paused.get(reason)
        if child is None:
            raise ValueError(f"unknown pause reason {reason!r}; use one of "
                             f"{', '.join(PAUSE_REASONS)}")
        child.set(n)

    def assigned(self, n: int) -> None:
        self._assigned.set(n)

    def lag(self, partition: int, value: int) -> None:
        child = self._lag.get(partition)
        if child is None:
            child = CONSUMER_LAG.labels(self.stage, self.input_topic, str(partition))
            self._lag[partition] = child
        child.set(value)

    def forget_partitions(self, partitions: list[int]) -> None:
        """Call on revocation: the lag of partitions this process no longer reads is 0
        here, so that `livemax` across workers shows the owner's value only."""
        for p in partitions:
            child = self._lag.get(p)
            if child is not None:
                child.set(0)

    def rebalance(self, kind: str, n: int = 1) -> None:
        child = self._rebalances.get(kind)
        if child is None:
            child = REBALANCES.labels(self.stage, kind)
            self._rebalances[kind] = child
        child.inc(n)


    # --- state stores (docs/state.md) -------------------------------------------------

    def state_entries(self, topic: str, partition: int, entries: int) -> None:
        STATE_ENTRIES.labels(self.stage, topic, str(partition)).set(entries)

    def state_recovery(self, topic: str, partition: int, remaining: int, read: int) -> None:
        STATE_RECOVERY_REMAINING.labels(self.stage, topic, str(partition)).set(remaining)
        if read:
            STATE_RECOVERED.labels(self.stage).inc(read)

    def state_recovered(self, seconds: float) -> None:
        STATE_RECOVERY_SECONDS.labels(self.stage).observe(seconds)


class ExemplarStageMetrics(StageMetrics):
    """`StageMetrics` whose handler and end-to-end latency observations carry an exemplar
    (`StageMetrics.with_exemplars`): the trace of a record they timed, shown where a
    scrape asks for OpenMetrics (`Accept: application/openmetrics-text`); the plain text
    format has no exemplars. Multiprocess mode keeps none (prometheus_client stores no
    exemplar in its files)."""

    exemplar: Callable[[], Exemplar | None]

    def handler_latency(self, seconds: float) -> None:
        self._handler_latency.observe(seconds, self.exemplar())

    def end_to_end_latency(self, seconds: float) -> None:
        self._e2e_latency.observe(seconds, self.exemplar())


# --- librdkafka statistics -------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def record_librdkafka_stats(stage: str, json_str: str) -> None:
    """Record the key figures of one librdkafka statistics document.

    `librdkafka_stats_callback(stage)` is this function as a client's `stats_cb`;
    `processor.runtime.build.build_stage` hooks it to both clients of a Kafka stage,
    with `statistics.interval.ms` set. Recorded:
    per-broker round-trip time (average and p99, librdkafka reports microseconds) and,
    for producers, the queue length in messages and bytes; for every client the reply
    queue. A document that does not parse is counted and logged, never raised: the
    callback runs inside librdkafka's poll.
    """
    try:
        stats = json.loads(json_str)
        if not isinstance(stats, dict):
            raise ValueError("the statistics document is not a JSON object")
    except ValueError as exc:
        RDKAFKA_STATS_ERRORS.labels(stage).inc()
        logger.warning("stage %s: unreadable librdkafka statistics: %s", stage, exc)
        return
    client_type = str(stats.get("type") or "unknown")
    if client_type == "producer":
        msg_cnt = _number(stats.get("msg_cnt"))
        if msg_cnt is not None:
            RDKAFKA_PRODUCER_QUEUE.labels(stage).set(msg_cnt)
        msg_size = _number(stats.get("msg_size"))
        if msg_size is not None:
            RDKAFKA_PRODUCER_QUEUE_BYTES.labels(stage).set(msg_size)
    replyq = _number(stats.get("replyq"))
    if replyq is not None:
        RDKAFKA_REPLY_QUEUE.labels(stage, client_type).set(replyq)
    brokers = stats.get("brokers")
    if not isinstance(brokers, Mapping):
        return
    for broker_name, broker in brokers.items():
        if not isinstance(broker, Mapping):
            continue
        if broker.get("nodeid", 0) == -1 or str(broker_name).startswith("GroupCoordinator"):
            # Bootstrap and logical coordinator entries duplicate real brokers.
            continue
        rtt = broker.get("rtt")
        if not isinstance(rtt, Mapping) or not rtt.get("cnt"):
            continue
        name = str(broker.get("name") or broker_name)
        avg = _number(rtt.get("avg"))
        if avg is not None:
            RDKAFKA_BROKER_RTT.labels(stage, client_type, name).set(avg / 1e6)
        p99 = _number(rtt.get("p99"))
        if p99 is not None:
            RDKAFKA_BROKER_RTT_P99.labels(stage, client_type, name).set(p99 / 1e6)


def librdkafka_stats_callback(stage: str) -> Callable[[str], None]:
    """A `stats_cb` for the clients of `stage`: `record_librdkafka_stats(stage, json_str)`."""
    return partial(record_librdkafka_stats, stage)


# --- multiprocess mode -----------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """The shared directory of multiprocess mode, or None in single-process mode."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def enable_multiprocess(directory: str | os.PathLike[str]) -> Path:
    """Switch this process (and the workers it starts afterwards) to multiprocess mode.

    Call it in the parent before any worker starts and before any labelled metric is
    used. The directory is created, emptied of the files of a previous run, and exported
    as `PROMETHEUS_MULTIPROC_DIR` so that spawned workers inherit it; forked workers
    inherit the switched value class.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client chooses its value class when it is imported; metric children
    # created from now on store their values in files under `path`.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, ProcessCollector | PlatformCollector):
            REGISTRY.unregister(collector)
    logger.info("metrics: multiprocess mode, directory %s", path)
    return path


def worker_exited(pid: int) -> None:
    """Tell multiprocess mode that worker `pid` is gone: its `live*` gauges stop counting."""
    directory = multiprocess_dir()
    if directory is not None:
        prom_multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def cleanup_multiprocess(directory: str | os.PathLike[str]) -> None:
    """Remove the directory of multiprocess mode (the parent calls it at shutdown)."""
    shutil.rmtree(directory, ignore_errors=True)


def registry_for_exposition() -> CollectorRegistry:
    """The registry `/metrics` serves: `REGISTRY`, or in multiprocess mode a registry
    that adds up the values every process wrote to the shared directory."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=str(directory)
    )
    return registry
