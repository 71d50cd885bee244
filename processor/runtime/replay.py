"""Dead-letter records back into a topic, exactly once; and a summary of a dead-letter topic.

`replay()` is `processor dlq replay`: a transactional copy. It reads the dead-letter
topic as a consumer group, `read_committed`, and per batch produces the chosen records to
the target topic and commits the group's offsets in the same Kafka transaction, so each
record goes back exactly once: a second run with the same group copies only what was
dead-lettered since, and a run that fails half-way leaves its last transaction undone and
the group where the last committed one left it.

A replayed record is the dead-lettered record as it came in: its original value (a
tombstone stays one) and key, and its original headers. The dead-letter headers
(`dlq.*`, see `processor.runtime.dead_letters`) become `replay.*` headers (`dlq.reason`
-> `replay.reason`...), plus `replay.from`, `replay.partition`, `replay.offset` (where it
was in the dead-letter topic) and `replay.at` (milliseconds since the epoch). They are not
`dlq.*` headers, so if the record fails again its new dead letter keeps them: a record's
history of failures and replays accumulates in its headers. With a tracer
(`processor.ops.tracing`), each replayed record starts a new trace, a `send <target>`
span linked to the context in the dead letter's headers (the span of the stage that
dead-lettered it), whose context replaces it in the replayed record's headers.

`inspect()` is `processor dlq inspect`: it reads a dead-letter topic to its end (as a
throwaway group that never commits) and summarises it by reason: how many, the first and
last dead-letter times, the stages and source topics, and a few distinct error messages.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from processor.backends.abstract import Broker, Consumer, Headers, Message, TopicPartition
from processor.core.errors import ProcessorError
from processor.ops.tracing import Tracer
from processor.runtime.dead_letters import (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_REASON,
    H_STAGE,
    H_TIMESTAMP,
    H_TOPIC,
    HEADER_PREFIX,
    header_dict,
)

logger = logging.getLogger(__name__)

REPLAY_PREFIX = "replay."
H_REPLAY_FROM = "replay.from"
H_REPLAY_PARTITION = "replay.partition"
H_REPLAY_OFFSET = "replay.offset"
H_REPLAY_AT = "replay.at"

JOIN_TIMEOUT = 60.0
"""Seconds to wait for the group to assign the topic's partitions."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReplayError(ProcessorError):
    """A replay or an inspection that cannot go on; its message is one line."""


def parse_since(text: str, now: Callable[[], float] = time.time) -> int:
    """`--since`: an ISO-8601 time (UTC unless it says otherwise), or a duration back from
    now (`90s`, `30m`, `2h`, `7d`). Milliseconds since the epoch."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return int((now() - float(match[1]) * _UNITS[match[2]]) * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReplayError(
            f"--since {text!r} is neither a time (2026-11-27T08:00:00) nor a duration "
            "(90s, 30m, 2h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def default_group(source: str, target: str, reason: str | None) -> str:
    """The replay's consumer group (and transactional id) unless one is given."""
    return f"processor-dlq-replay.{source}.{target}" + (f".{reason}" if reason else "")


def replay_headers(message: Message, now_ms: int) -> Headers:
    """The record's original headers, its dead-letter headers as `replay.*`, and where
    it was replayed from."""
    headers: Headers = []
    for key, value in message.headers() or []:
        if key.startswith(HEADER_PREFIX):
            headers.append((REPLAY_PREFIX + key[len(HEADER_PREFIX):], value))
        else:
            headers.append((key, value))
    headers.extend([
        (H_REPLAY_FROM, message.topic().encode()),
        (H_REPLAY_PARTITION, str(message.partition()).encode()),
        (H_REPLAY_OFFSET, str(message.offset()).encode()),
        (H_REPLAY_AT, str(now_ms).encode()),
    ])
    return headers


@dataclass
class ReplayResult:
    """What a replay did: records read, copied back, and passed over by the filters."""

    read: int = 0
    copied: int = 0
    skipped: int = 0
    transactions: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


def _check_topics(broker: Broker, *topics: str) -> None:
    admin = broker.admin()
    try:
        known = admin.list_topics()
    finally:
        admin.close()
    for topic in topics:
        if topic not in known:
            raise ReplayError(f"unknown topic {topic!r}")


def _read_to_end(consumer: Consumer, topic: str, end: dict[TopicPartition, int],
                 batch_size: int, idle_timeout: float, deadline: float
                 ) -> Iterator[list[Message]]:
    """Batches of `topic` until every partition reached its `end` offset (taken at the
    start), or nothing came for `idle_timeout` seconds once the partitions are assigned
    (read_committed stops short of a transaction marker at the end of a partition);
    `deadline` passed, or no assignment within JOIN_TIMEOUT, raises ReplayError."""
    began = last = time.monotonic()
    while time.monotonic() < deadline:
        batch = list(consumer.consume(batch_size, 0.2))
        now = time.monotonic()
        if batch:
            last = now
            yield batch
            continue
        assigned = consumer.assignment()
        if not assigned:  # still joining the group (a broker may delay the first join)
            if now - began > JOIN_TIMEOUT:
                raise ReplayError(f"no partition of {topic} was assigned within "
                                  f"{JOIN_TIMEOUT:g}s; is another member of the group "
                                  "reading it?")
            last = now
            continue
        if all((consumer.position(tp) or 0) >= end.get(tp, 0)
               for tp in assigned) and len(assigned) == len(end):
            return
        if now - last >= idle_timeout:
            return
    raise ReplayError(f"reading {topic} did not finish in time")


def replay(broker: Broker, source: str, target: str, *, group: str | None = None,
           reason: str | None = None, since_ms: int | None = None, batch_size: int = 500,
           idle_timeout: float = 3.0, timeout: float = 600.0,
           clock: Callable[[], float] = time.time, tracer: Tracer | None = None
           ) -> ReplayResult:
    """Copy the dead letters of `source` (those with `reason`, dead-lettered at or after
    `since_ms`) to `target`, exactly once per consumer `group`. Records passed over by
    the filters are committed too: the group will not see them again. `tracer`: each
    replayed record links to its original trace (see the module documentation)."""
    publisher = tracer.publisher() if tracer is not None else None
    if source == target:
        raise ReplayError("--from and --to must be different topics")
    _check_topics(broker, source, target)
    group = group or default_group(source, target, reason)
    admin = broker.admin()
    try:
        end = admin.high_watermarks(source)
    finally:
        admin.close()
    consumer = broker.consumer(group, read_committed=True, auto_offset_reset="earliest",
                               client_id="processor-dlq-replay")
    producer = broker.producer(transactional_id=group, client_id="processor-dlq-replay")
    result = ReplayResult()
    try:
        producer.init_transactions(timeout=min(timeout, 60.0))
        consumer.subscribe([source])
        deadline = time.monotonic() + timeout
        for batch in _read_to_end(consumer, source, end, batch_size, idle_timeout,
                                  deadline):
            producer.begin_transaction()
            offsets: dict[TopicPartition, int] = {}
            copied_before = result.copied
            try:
                now_ms = int(clock() * 1000)
                for msg in batch:
                    offsets[TopicPartition(msg.topic(), msg.partition())] = msg.offset() + 1
                    result.read += 1
                    headers = header_dict(msg.headers())
                    why = headers.get(H_REASON, "")
                    if (reason is not None and why != reason) or (
                            since_ms is not None and _int(headers.get(H_TIMESTAMP)) < since_ms):
                        result.skipped += 1
                        continue
                    out_headers = replay_headers(msg, now_ms)
                    if publisher is not None:
                        out_headers = publisher.send(target, out_headers,
                                                     link_from=msg.headers())
                    producer.produce(target, msg.value(), msg.key(), out_headers)
                    result.copied += 1
                    result.by_reason[why or "(none)"] += 1
                producer.send_offsets_to_transaction(offsets, consumer.group_metadata(),
                                                     timeout=60.0)
                producer.commit_transaction(timeout=60.0)
                result.transactions += 1
            except ProcessorError as exc:
                with contextlib.suppress(ProcessorError):
                    producer.abort_transaction()
                raise ReplayError(
                    f"replay from {source} to {target} stopped: {exc}; its last batch was "
                    f"undone, {copied_before} records were copied before it (run again "
                    "to go on)") from exc
        logger.info("replayed %d of %d records from %s to %s (group %s)", result.copied,
                    result.read, source, target, group)
        if tracer is not None:
            tracer.flush(10.0)
        return result
    finally:
        try:
            consumer.close()
        finally:
            producer.close()


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


@dataclass
class ReasonSummary:
    """The dead letters of one reason."""

    reason: str
    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    stages: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)


@dataclass
class Inspection:
    topic: str
    total: int
    reasons: list[ReasonSummary]


def inspect(broker: Broker, topic: str, *, samples: int = 3, batch_size: int = 2000,
            idle_timeout: float = 3.0, timeout: float = 300.0) -> Inspection:
    """Read `topic` to its end and summarise its dead letters by reason (most first)."""
    _check_topics(broker, topic)
    admin = broker.admin()
    try:
        end = admin.high_watermarks(topic)
    finally:
        admin.close()
    # A throwaway group: it never commits, so it leaves nothing behind once closed.
    consumer = broker.consumer(f"processor-dlq-inspect-{uuid.uuid4().hex[:12]}",
                               read_committed=True, auto_offset_reset="earliest",
                               client_id="processor-dlq-inspect")
    summaries: dict[str, ReasonSummary] = {}
    total = 0
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        for batch in _read_to_end(consumer, topic, end, batch_size, idle_timeout, deadline):
            for msg in batch:
                total += 1
                headers = header_dict(msg.headers())
                why = headers.get(H_REASON) or "(no dlq.reason header)"
                summary = summaries.get(why)
                if summary is None:
                    summary = summaries[why] = ReasonSummary(why)
                summary.count += 1
                at = _int(headers.get(H_TIMESTAMP)) or msg.timestamp()[1]
                summary.first_ms = at if summary.first_ms is None else min(summary.first_ms, at)
                summary.last_ms = at if summary.last_ms is None else max(summary.last_ms, at)
                summary.stages[headers.get(H_STAGE, "?")] += 1
                summary.topics[headers.get(H_TOPIC, "?")] += 1
                error = headers.get(H_ERROR_MESSAGE, "")
                cls = headers.get(H_ERROR_CLASS, "").rsplit(".", 1)[-1]
                sample = f"{cls}: {error}" if cls else error
                if len(summary.samples) < samples and sample not in summary.samples:
                    summary.samples.append(sample)
    finally:
        consumer.close()
    ordered = sorted(summaries.values(), key=lambda s: (-s.count, s.reason))
    return Inspection(topic, total, ordered)

