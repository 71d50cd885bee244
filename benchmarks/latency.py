"""Latency under load: an open-loop producer at a fixed fraction of a contender's measured
maximum rate, or at one absolute rate offered to every contender alike (`measure(...,
fixed_rate=R)`), and the end-to-end latency of every record it produced.

The maximum is measured in the same setup first (`capacity`): the contender's output rate
while the open loop offers it more than it can take, on the same cores. Its backlog rate
(the throughput row) is higher, since no producer runs beside it then.

For one contender and one rate: a fresh, empty input topic and output topic (LogAppendTime);
the contender is started on them with a new consumer group; a trickle of warm-up records
shows when it is consuming (its first output); then the producer sends `rate` artifacts a
second for `seconds` seconds on a fixed schedule (open loop: it never waits for the
contender, so a contender that falls behind builds a queue, and that queue is latency).

Each artifact's `timestamp` field is set to the wall-clock time (ms) at which the producer
hands it to the client; every contender leaves that field as it is. Latency of a record =
its output's broker append time (LogAppendTime) - that timestamp: produce -> consume ->
handle -> produce -> stored by the broker, queueing included.

Whether latency rose through the run is told by the p99 of the records sent in the first
and in the last third of the open loop (`thirds`, `rose`): a contender that keeps up has
about the same in both, one that falls behind builds a queue that the last third waits in.

The records are encoded once (fastavro, by the harness) and only their timestamp bytes are
replaced per record, so the producer costs little CPU beside the contender; it still
shares the machine's cores with it and the broker (noted with the results).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import harness
import workload
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from fastavro import parse_schema, schemaless_reader, schemaless_writer

Progress = Callable[[str], None]


# The id is a 36-character UUID: its length is 1 byte (72 zigzag), so the timestamp (a
# zigzag varint) starts at byte 37. Epoch milliseconds from 2004 to 2039 are 6-byte
# varints: the stamps of one run all have the length of the current time's.
_TS_AT = 37


def _varint(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TS_LEN = len(_varint(workload.now_ms()))


@dataclass
class LatencyRow:
    """One contender at one load."""

    key: str
    label: str
    load: float
    target_rate: float
    basis_rate: float = 0.0
    ok: bool = False
    note: str = ""
    sent: int = 0
    sent_rate: float = 0.0
    received: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    fixed: bool = False
    """Offered one absolute rate (the same for every contender), not a fraction of its own
    capacity; `load` is then 0."""
    p99_first_ms: float | None = None
    """p99 of the records sent in the first third of the open loop."""
    p99_last_ms: float | None = None
    """p99 of the records sent in the last third (None: none of them was read back)."""
    rising: bool | None = None
    """Whether p99 rose through the run (`rose`): a queue that grows."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def load_text(self) -> str:
        return "fixed" if self.fixed else f"{self.load:.0%}"


def templates(count: int, size: int) -> list[tuple[bytes, bytes]]:
    """`count` different encoded artifacts of about `size` bytes, each split around its
    timestamp varint (head, tail)."""
    schema = parse_schema(workload.load_schema_json())
    plen = harness.payload_size_for(schema, size)
    out: list[tuple[bytes, bytes]] = []
    for seq in range(count):
        stamp = workload.now_ms()
        payload = os.urandom(plen)
        record = {
            "id": str(uuid.uuid4()), "timestamp": stamp,
            "media_type": "application/octet-stream", "role": "data", "scope": "generic",
            "origin": "bench", "issuer": "", "state": workload.CREATED_STATE,
            "meta": {"seq": seq}, "payload": payload,
            "checksum": hashlib.sha256(payload).digest(), "encrypted_payload": None,
            "encrypted_key": None, "ephemeral_public_key": None, "signature": None,
        }
        sink = BytesIO()
        schemaless_writer(sink, schema, record)
        data = sink.getvalue()
        assert data[_TS_AT:_TS_AT + _TS_LEN] == _varint(stamp)
        out.append((data[:_TS_AT], data[_TS_AT + _TS_LEN:]))
    return out


def open_loop_producer(bootstrap: str) -> Producer:
    """The open loop's producer. It also writes the warm-up records (`measure`), so that
    its connection, the input topic's metadata and its producer id are in place before the
    schedule starts: a new idempotent producer holds its first records back until then
    (a few hundred ms), which put every contender's first second at 350-600 ms."""
    # The contenders' producer settings (linger.ms 5 among them): smaller batches would
    # cost the broker, on the same cores, more than they save.
    return Producer({
        "bootstrap.servers": bootstrap, "log_level": 4, "client.id": "bench-open-loop",
        **workload.PRODUCER_SETTINGS, "queue.buffering.max.messages": 1_000_000,
    })


def open_loop(producer: Producer, topic: str, partitions: int, rate: float, seconds: float,
              pool: Sequence[tuple[bytes, bytes]], progress: Progress) -> tuple[int, float]:
    """Produce `rate` records a second for `seconds` on a fixed schedule, each stamped with
    its produce time; returns (records sent, seconds taken)."""
    produce = producer.produce
    clock = time.time_ns
    total = int(rate * seconds)
    began = time.monotonic()
    sent = 0
    n = len(pool)
    last = began
    while sent < total:
        due = min(total, int((time.monotonic() - began) * rate) + 1)
        while sent < due:
            head, tail = pool[sent % n]
            # Positional arguments only (topic, value, key, partition): a keyword one
            # made each produce() about 0.37 us slower, CPU this loop shares with the
            # contender.
            produce(topic, head + _varint(clock() // 1_000_000) + tail, None,
                    sent % partitions)
            sent += 1
        producer.poll(0)
        now = time.monotonic()
        if now - last >= 5.0:
            last = now
            progress(f"open loop: {sent:,} / {total:,} sent ({sent / (now - began):,.0f}/s)")
        ahead = (sent / rate) - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(min(ahead, 0.001))
    took = time.monotonic() - began
    producer.flush(60)
    return sent, took


def read_latencies(bootstrap: str, topic: str, since_ms: int, expected: int,
                   timeout: float) -> list[tuple[int, int]]:
    """Per output record stamped at or after `since_ms`: (stamp, append time - stamp) in
    ms; reads until `expected` such records were seen or `timeout` seconds passed."""
    schema = parse_schema(workload.load_schema_json())
    ends = harness.end_offsets(bootstrap, topic)
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "log_level": 4, "enable.auto.commit": False,
        "group.id": f"bench-latency-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error() is not None:
                    continue
                ts_type, append_ms = msg.timestamp()
                if ts_type != TIMESTAMP_LOG_APPEND_TIME:
                    continue
                record = cast(dict[str, Any],
                              schemaless_reader(BytesIO(msg.value() or b""), schema, None))
                stamp = record["timestamp"]
                if stamp >= since_ms:
                    out.append((stamp, append_ms - stamp))
    finally:
        consumer.close()
    return out


def _written(probe: harness.Probe, topic: str) -> int:
    """Records in `topic`; 0 while a new topic's partitions are still being led."""
    try:
        return probe.high_watermarks(topic)
    except KafkaException:
        return 0


def _by_second(stamps: Sequence[tuple[int, int]]) -> list[float]:
    """The median latency of the records sent in each second of the open loop: flat when
    the contender keeps up, rising when a queue builds."""
    if not stamps:
        return []
    first = min(stamp for stamp, _ in stamps)
    seconds: dict[int, list[int]] = {}
    for stamp, lat in stamps:
        seconds.setdefault((stamp - first) // 1000, []).append(lat)
    return [percentile(sorted(seconds[s]), 0.5) for s in sorted(seconds)]


def percentile(ordered: Sequence[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))])


RISE_FACTOR = 1.5
RISE_SLACK_MS = 5.0
"""p99 rose through a run when the p99 of the records sent in its last third exceeds
`RISE_FACTOR` x that of its first third plus `RISE_SLACK_MS` (milliseconds are whole, and
a p99 of a few ms moves by a few ms between thirds without any queue forming). A
contender that falls behind builds a queue that grows for the rest of the run: its last
third waits far longer than its first."""


def thirds(stamps: Sequence[tuple[int, int]], began_ms: int, ended_ms: int
           ) -> tuple[float | None, float | None]:
    """p99 of the records sent in the first and in the last third of the open loop's
    window [`began_ms`, `ended_ms`] (stamp, latency pairs); None where none was read."""
    span = max(1, ended_ms - began_ms)
    first = sorted(lat for stamp, lat in stamps if stamp < began_ms + span / 3)
    last = sorted(lat for stamp, lat in stamps if stamp >= began_ms + 2 * span / 3)
    return (percentile(first, 0.99) if first else None,
            percentile(last, 0.99) if last else None)


def rose(first: float | None, last: float | None) -> bool | None:
    """Whether p99 rose from the first to the last third (see `RISE_FACTOR`); a last third
    with nothing read back rose (its records are still queued)."""
    if first is None:
        return None
    if last is None:
        return True
    return last > RISE_FACTOR * first + RISE_SLACK_MS


@dataclass
class Capacity:
    """A contender's output rate while the open loop runs beside it: the rate the loads are
    fractions of. Its throughput row is measured on a pre-loaded backlog, with the machine
    to itself; here the open-loop producer takes its share of the same two cores, so the
    contender handles fewer records a second, and a load set from the backlog rate would
    overload it (every record then waits in a growing queue, and p99 measures that queue)."""

    key: str
    label: str
    backlog_rate: float
    offered: float
    rate: float = 0.0
    note: str = ""


OVERLOAD = 1.25
"""The open loop's rate while a capacity is measured, as a multiple of the backlog rate: more
than the contender can take beside it, so that its input queue grows all the while."""
SETTLE = 3.0
"""Seconds of that load before the capacity window opens (a queue forms)."""


@contextlib.contextmanager
def _running(key: str, tag: str, cmds: Sequence[list[str]], env: dict[str, str], cwd: Path,
             logs: Path, bootstrap: str, input_topic: str, output_topic: str,
             partitions: int, pool: Sequence[tuple[bytes, bytes]]
             ) -> Iterator[tuple[Producer, harness.Probe, str]]:
    """The contender started on the two topics and seen consuming: yields the open loop's
    producer, a watermark probe and "" (or why it did not start); stops it on exit."""
    processes: list[subprocess.Popen[bytes]] = []
    warm = open_loop_producer(bootstrap)
    probe = harness.Probe(bootstrap, f"bench-latency-probe-{uuid.uuid4().hex[:8]}")
    try:
        for i, cmd in enumerate(cmds):
            with open(logs / f"latency-{key}-{tag}-{i}.log", "wb") as fh:
                processes.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                  cwd=cwd, env=env))
        deadline = time.monotonic() + 90
        head, tail = pool[0]
        why = ""
        while _written(probe, output_topic) < partitions:
            if time.monotonic() > deadline:
                why = "the contender produced nothing within 90 s of starting"
                break
            if any(p.poll() is not None for p in processes):
                why = "the contender exited before consuming"
                break
            for part in range(partitions):
                warm.produce(input_topic, head + _varint(workload.now_ms()) + tail,
                             partition=part)
            warm.flush(10)
            time.sleep(0.2)
        if not why:
            time.sleep(1.0)  # the warm-up records drain
        yield warm, probe, why
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        probe.close()


def capacity(key: str, label: str, cmds: Sequence[list[str]], env: dict[str, str],
             cwd: Path, logs: Path, bootstrap: str, input_topic: str, output_topic: str,
             partitions: int, backlog_rate: float, seconds: float,
             pool: Sequence[tuple[bytes, bytes]], progress: Progress) -> Capacity:
    """Start the contender, run the open loop at `OVERLOAD` x `backlog_rate` and count its
    outputs over `seconds` once a queue has formed."""
    cap = Capacity(key, label, backlog_rate, OVERLOAD * backlog_rate)
    with _running(key, "capacity", cmds, env, cwd, logs, bootstrap, input_topic,
                  output_topic, partitions, pool) as (producer, probe, why):
        if why:
            cap.note = why
            return cap
        progress(f"{label}: capacity beside the open loop, offered {cap.offered:,.0f}/s")
        open_loop(producer, input_topic, partitions, cap.offered, SETTLE, pool, progress)
        began, done_before = time.monotonic(), _written(probe, output_topic)
        open_loop(producer, input_topic, partitions, cap.offered, seconds, pool, progress)
        took, done = time.monotonic() - began, _written(probe, output_topic)
        queued = _written(probe, input_topic) - done
    cap.rate = (done - done_before) / took
    if queued < cap.rate * 0.5:
        # Less than half a second of input waiting: it kept up, and the rate is the
        # producer's, not the contender's limit.
        cap.note = (f"kept up with the open loop ({queued:,} records queued at the end): "
                    "the rate is a lower bound")
    progress(f"{label}: {cap.rate:,.0f}/s beside the open loop "
             f"({cap.rate / backlog_rate:.2f}x its backlog rate), {queued:,} queued at the end")
    return cap


def measure(key: str, label: str, cmds: Sequence[list[str]], env: dict[str, str], cwd: Path,
            logs: Path, bootstrap: str, input_topic: str, output_topic: str,
            partitions: int, load: float, max_rate: float, seconds: float,
            pool: Sequence[tuple[bytes, bytes]], progress: Progress,
            fixed_rate: float | None = None) -> LatencyRow:
    """Start the contender (`cmds`, already pointed at the two topics), wait for it to
    consume, run the open loop at `load` x `max_rate` (or at `fixed_rate`, the same for
    every contender), and read the latencies back."""
    if fixed_rate is not None:
        rate, load, tag = fixed_rate, 0.0, "fixed"
        row = LatencyRow(key, label, load, rate, basis_rate=max_rate, fixed=True)
        what = f"{rate:,.0f}/s (one rate for every contender)"
    else:
        rate, tag = load * max_rate, str(int(load * 100))
        row = LatencyRow(key, label, load, rate, basis_rate=max_rate)
        what = f"{load:.0%} of {max_rate:,.0f}/s = {rate:,.0f}/s"
    with _running(key, tag, cmds, env, cwd, logs, bootstrap, input_topic,
                  output_topic, partitions, pool) as (producer, _, why):
        if why:
            row.note = why
            return row
        since = workload.now_ms()
        progress(f"{label}: open loop at {what} for {seconds:.0f}s")
        row.sent, took = open_loop(producer, input_topic, partitions, rate, seconds, pool,
                                   progress)
        ended = since + int(took * 1000)
        row.sent_rate = row.sent / took
        stamps = read_latencies(bootstrap, output_topic, since, row.sent,
                                timeout=max(30.0, seconds))
        latencies = sorted(lat for _, lat in stamps)
    row.received = len(latencies)
    if not latencies:
        row.note = "no output read back"
        return row
    row.details["latency_ms_by_second"] = _by_second(stamps)
    row.p99_first_ms, row.p99_last_ms = thirds(stamps, since, ended)
    row.rising = rose(row.p99_first_ms, row.p99_last_ms)
    row.p50_ms = percentile(latencies, 0.50)
    row.p99_ms = percentile(latencies, 0.99)
    row.p999_ms = percentile(latencies, 0.999)
    row.max_ms = float(latencies[-1])
    row.ok = row.received >= row.sent
    if not row.ok:
        row.note = f"{row.sent - row.received} of {row.sent} records not read back in time"
    trend = ("-" if row.p99_first_ms is None else
             f"{row.p99_first_ms:.0f} -> "
             f"{'-' if row.p99_last_ms is None else f'{row.p99_last_ms:.0f}'} ms")
    progress(f"{label} at {row.load_text}: sent {row.sent:,} at {row.sent_rate:,.0f}/s; "
             f"p50 {row.p50_ms:.0f} ms, p99 {row.p99_ms:.0f} ms, p99.9 {row.p999_ms:.0f} ms; "
             f"p99 first -> last third {trend}{' (rising)' if row.rising else ''}")
    return row
