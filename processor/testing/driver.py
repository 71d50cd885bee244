"""`PipelineDriver`: a whole pipeline file in one process, on the in-memory broker.

The driver reads a pipeline file (`processor.pipeline`), creates its topics on a
`MemoryBroker`, builds every stage with `build_stage` from the stage's effective settings
(the same `StageConfig` that `processor run` would build), and lets a test drive them:

* `feed(topic, records)`: artifacts (encoded as the stage reading the topic reads them)
  or raw bytes (as they are: bad input too);
* `run_until_idle()`: turns every stage's `run_once()`, round-robin on the calling
  thread, until a round consumes nothing; then (by default) commits what every stage has
  finished, so that an exactly-once stage's outputs become visible downstream, and goes
  on until nothing moves; bounded by `max_rounds`;
* `read(topic)`: every record of any topic so far, dead-letter topics included
  (committed records only, as a downstream consumer would see them);
* `advance(seconds)`: moves the clock that the broker and every stage read (a
  `ManualClock`): commit intervals, retry backoffs, `dlq_window`;
* `close()`: closes every stage (drain, final commit) and the driver's own clients.

What differs from production, so that a test is quick and repeatable: the broker lives
in the process; every stage consumes with `poll_timeout` 0 and batch handlers do not wait
to fill a batch (`handler_batch_wait` 0), so nothing waits on the clock; one instance of
each stage runs (`scale` and `processes` are for deployments); metrics go nowhere. The
stages turn in file order on the calling thread. An async, threaded or batch handler runs
on its executor's threads as in production; `run_until_idle` waits (in real time, at most
`timeout` seconds) for its calls in flight.

A handler can be replaced for a test: `PipelineDriver(path, handlers={"enrich": fake})`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, cast

from processor.backends.abstract import Consumer, Producer
from processor.backends.memory import ManualClock, MemoryBroker
from processor.core.artifact import Artifact
from processor.core.errors import ProcessorError
from processor.core.handlers import AnyHandler
from processor.ops.metrics import NullMetrics
from processor.pipeline.load import Pipeline, load_pipeline, parse_pipeline
from processor.runtime.build import build_stage
from processor.runtime.dead_letters import H_ERROR_MESSAGE, H_REASON, H_STAGE
from processor.runtime.stage import Stage
from processor.runtime.stats import StageStats
from processor.serde.codec import Codec
from processor.serde.wire import WireCodec

__all__ = ["DriverError", "PipelineDriver", "Record"]

DEFAULT_MAX_ROUNDS: Final = 100_000
"""Rounds of `run_until_idle` (one `run_once()` of every stage each) before it gives up."""

KeyOf = bytes | str | None | Callable[[int, Artifact | bytes], bytes | str | None]


class DriverError(ProcessorError):
    """The pipeline did not settle (`run_until_idle`), or the driver was misused."""


@dataclass(frozen=True)
class Record:
    """One record of a topic, as the driver read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...]
    codec: WireCodec = field(repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """The (last) value of header `name`, as text; None when absent."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = (value or b"").decode("utf-8", "replace")
        return found

    @property
    def artifact(self) -> Artifact:
        """The record's artifact, decoded as the topic's stages read it (raises the
        codec's `DecodeError` for bytes that are no artifact, as bad input may be)."""
        headers = cast(list[tuple[str, bytes]], list(self.headers)) or None
        return self.codec.decode(self.value, headers)

    @property
    def reason(self) -> str | None:
        """A dead letter's reason (`invalid`, `decode`, `checksum`, ...)."""
        return self.header(H_REASON)

    @property
    def stage(self) -> str | None:
        """The stage that dead-lettered the record."""
        return self.header(H_STAGE)

    @property
    def error(self) -> str | None:
        """A dead letter's error message."""
        return self.header(H_ERROR_MESSAGE)


class PipelineDriver:
    """A pipeline file run in one process on the in-memory broker, driven by a test (see
    the module documentation)."""

    def __init__(
        self,
        pipeline: Pipeline | Path | str,
        *,
        handlers: Mapping[str, AnyHandler] | None = None,
        start: float = 0.0,
    ) -> None:
        self.pipeline = (pipeline if isinstance(pipeline, Pipeline)
                         else load_pipeline(pipeline)).require_valid()
        unknown = sorted(set(handlers or {}) - set(self.pipeline.stages))
        if unknown:
            raise DriverError(f"handlers given for unknown stage(s) {', '.join(unknown)}; "
                              f"stages: {', '.join(self.pipeline.stages)}")
        self.clock = ManualClock(start)
        self.broker = MemoryBroker(self.clock)
        self._closed = False
        self._create_topics()
        self.stages: dict[str, Stage] = {}
        try:
            for name, plan in self.pipeline.stages.items():
                options = dataclasses.replace(plan.options, poll_timeout=0.0,
                                              handler_batch_wait=0.0)
                settings = dataclasses.replace(plan.settings, options=options)
                self.stages[name] = build_stage(
                    settings, self.broker, handler=(handlers or {}).get(name),
                    metrics=NullMetrics(), clock=self.clock)
            for stage in self.stages.values():
                stage.start()
        except BaseException:
            self.close()
            raise
        self._codecs = self._topic_codecs()
        self._producer: Producer = self.broker.producer(client_id="pipeline-driver")
        self._readers: dict[str, Consumer] = {}
        self._read: dict[str, list[Record]] = {}

    @classmethod
    def from_text(cls, text: str, *, source: str = "pipeline.yaml",
                  handlers: Mapping[str, AnyHandler] | None = None) -> PipelineDriver:
        """A driver for the pipeline file's `text`."""
        return cls(parse_pipeline(text, source), handlers=handlers)

    def _create_topics(self) -> None:
        admin = self.broker.admin()
        try:
            for name, spec in self.pipeline.topics.items():
                admin.create_topic(name, partitions=spec.partitions or 1, replication=1,
                                   config={k: str(v).lower() if isinstance(v, bool) else str(v)
                                           for k, v in spec.config.items()})
            existing = admin.list_topics()
            for plan in self.pipeline.stages.values():
                o = plan.options
                for topic in (*o.input_topics, o.output_topic, o.dlq_topic, *o.outputs.values()):
                    if topic is not None and topic not in existing:
                        admin.create_topic(topic, partitions=1, replication=1)
                        existing[topic] = 1
        finally:
            admin.close()

    def _topic_codecs(self) -> dict[str, WireCodec]:
        """topic -> the codec that reads it: its reader's, else a writer's."""
        codecs: dict[str, WireCodec] = {}
        for stage in self.stages.values():
            o = stage.options
            for topic in (o.output_topic, *o.outputs.values()):
                if topic is not None:
                    codecs.setdefault(topic, stage.codec)
        for stage in self.stages.values():
            for topic in stage.options.input_topics:
                codecs[topic] = stage.codec
        return codecs

    def _codec(self, topic: str) -> WireCodec:
        found = self._codecs.get(topic)
        if found is None:
            found = self._codecs[topic] = WireCodec(Codec())
        return found

    # --- feeding and reading --------------------------------------------------------

    def feed(self, topic: str, records: Iterable[Artifact | bytes], *,
             key: KeyOf = None) -> int:
        """Produce `records` to `topic`: an `Artifact` encoded as the topic's reader
        decodes it, bytes as they are. `key`: one key for all, or `key(index, record)`
        (None: no key; the broker spreads keyless records round-robin). Returns how many
        records were produced."""
        self._check_open()
        self._known(topic)
        codec = self._codec(topic)
        count = 0
        for index, item in enumerate(records):
            k = key(index, item) if callable(key) else key
            if isinstance(item, Artifact):
                value, headers = codec.encode(item), codec.headers(None)
            else:
                value, headers = bytes(item), None
            self._producer.produce(topic, value, k.encode() if isinstance(k, str) else k,
                                   headers)
            count += 1
        self._producer.flush()
        return count

    def read(self, topic: str) -> list[Record]:
        """Every record of `topic` so far, committed ones only (a downstream consumer's
        view), in partition then offset order. Dead-letter topics are topics too."""
        self._check_open()
        reader = self._readers.get(topic)
        if reader is None:
            self._known(topic)
            reader = self.broker.consumer(f"pipeline-driver-read-{topic}",
                                          read_committed=True, client_id="pipeline-driver")
            reader.subscribe([topic])
            self._readers[topic] = reader
            self._read[topic] = []
        got = self._read[topic]
        codec = self._codec(topic)
        for _ in range(1000):
            batch = reader.consume(100_000, 0.0)
            for m in batch:
                got.append(Record(m.topic(), m.partition(), m.offset(), m.key(),
                                  m.value() or b"", tuple(m.headers() or ()), codec))
            if not batch and reader.assignment():
                break
        return sorted(got, key=lambda r: (r.partition, r.offset))

    def _known(self, topic: str) -> None:
        admin = self.broker.admin()
        try:
            topics = admin.list_topics()
        finally:
            admin.close()
        if topic not in topics:
            raise DriverError(f"unknown topic {topic!r}: the pipeline's topics are "
                              f"{', '.join(sorted(topics))}")

    def artifacts(self, topic: str) -> list[Artifact]:
        """The artifacts of `topic` so far (`read`, decoded)."""
        return [r.artifact for r in self.read(topic)]

    # --- time and turns -------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock of the broker and of every stage by `seconds`; the stages see it
        at their next turn (`run_until_idle`)."""
        self.clock.advance(seconds)

    def run_until_idle(self, *, max_rounds: int = DEFAULT_MAX_ROUNDS, commit: bool = True,
                       timeout: float = 30.0) -> int:
        """Turn every stage until none has work (see the module documentation); returns
        how many records the stages consumed. A record waiting for its retry's backoff
        waits for `advance()`. `DriverError` when the pipeline has not settled after
        `max_rounds` rounds (a cycle without end, say) or `timeout` seconds of real time
        (a concurrent handler's call that does not return)."""
        self._check_open()
        stages = list(self.stages.values())
        consumed = 0
        rounds = 0
        deadline = time.monotonic() + timeout
        while True:
            moved = sum(stage.run_once() for stage in stages)
            consumed += moved
            busy = any(s.concurrent is not None and s.concurrent.busy for s in stages)
            if not moved and not busy:
                if not (commit and any(s.ledger.marks for s in stages)):
                    return consumed
                for stage in stages:
                    if stage.ledger.marks:
                        stage.commit()
            rounds += 1
            if rounds >= max_rounds:
                raise DriverError(f"the pipeline did not settle in {max_rounds} rounds "
                                  f"({self._progress()}): records going round a cycle?")
            if busy and not moved:
                if time.monotonic() > deadline:
                    raise DriverError(f"handler calls still in flight after {timeout:g}s "
                                      f"({self._progress()})")
                time.sleep(0.0005)  # a concurrent handler's call, on its own thread

    def _progress(self) -> str:
        return ", ".join(f"{name} consumed {s.stats.consumed}"
                         for name, s in self.stages.items())

    def stats(self, stage: str) -> StageStats:
        """The running totals of `stage`: consumed, produced, dropped, dead-lettered."""
        return self.stages[stage].stats

    # --- the end --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DriverError("the driver is closed")

    def close(self) -> None:
        """Close every stage (drain, final commit) and the driver's clients; the first
        error of a stage's close is raised once all are closed."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        for stage in getattr(self, "stages", {}).values():
            try:
                stage.close()
            except BaseException as exc:
                error = error or exc
        for reader in getattr(self, "_readers", {}).values():
            reader.close()
        producer = getattr(self, "_producer", None)
        if producer is not None:
            producer.close()
        if error is not None:
            raise error

    def __enter__(self) -> PipelineDriver:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
