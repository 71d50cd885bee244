"""Tracing: OpenTelemetry spans across stages, with the W3C trace context in record headers.

A stage is handed a `Tracer`, as it is handed its `Metrics`. `NULL_TRACER`, the default,
traces nothing and imports nothing of OpenTelemetry: with tracing off the stage's record
path pays one check per batch (`Stage.tracing is None`). `OtelTracer` (the settings
`tracing: otlp`, or a `TracerProvider` given in code) is the real one; this module imports
the OpenTelemetry API and SDK only when one is made.

What a traced stage does (docs/operations.md, "Tracing"):

* The context travels in the record's Kafka headers, `traceparent`, `tracestate` and
  `baggage` (W3C Trace Context and Baggage), never in the artifact: its fields are covered
  by the checksum and the signatures.
* Each consumed record gets one span, kind CONSUMER, named `<stage> process`, a child of
  the context in its headers (a new trace when there is none). Its attributes follow the
  OpenTelemetry messaging conventions (`messaging.system`, `messaging.destination.name`,
  `messaging.destination.partition.id`, `messaging.kafka.offset`,
  `messaging.consumer.group.name`, `messaging.message.id`: the artifact's id) plus the
  stage's outcome: `processor.outcome` (`passed`, `dropped`, `dead_lettered`; `failed`
  when the record stopped the stage), `processor.dead_letter.reason`,
  `processor.retries`, `processor.outputs`.
* The record is handed on as a `TracedMessage`: the same record, its headers carrying the
  span's context instead of the incoming one. Every output, routed output and dead letter
  made from it copies those headers, so the next stage's span is a child of this one.
* A dead letter adds the event `dead_letter` (reason, error) to the span and sets its
  status to error.
* A batch handler's call gets one span, `<stage> handle`, linked to the span of each
  sampled record in the batch.
* A record whose trace is not sampled gets no span (nothing of it would be exported):
  with a tracer made from settings (`OtelTracer.otlp`), the stage reads the sampling
  decision off the record's `traceparent` (its flags), or decides a new trace itself with
  the sampler's probability, handing a sampled one's span an id the sampler's own rule
  samples (`TraceIdRatioBased`: the id's low 64 bits under the ratio's bound); an
  unsampled record without a context goes on with a
  `traceparent` of the new trace flagged "not sampled" added to its headers (set in place
  on a confluent-kafka record, else an `UnsampledMessage`), so the next stages drop it
  too, and one with a context goes on as it came.
  Such records are handled in runs, as an untraced stage handles a batch, in a context
  whose span is not sampled (a handler's own spans are not sampled either). That keeps a
  stage tracing 1% of its records about as fast as one that traces none.
* The stage's latency observations (`processor_handler_latency_seconds`,
  `processor_end_to_end_latency_seconds`) carry an exemplar, the `trace_id` and `span_id`
  of the sampled record they timed (`StageTracing.exemplars`), which `/metrics` shows to
  a scraper asking for OpenMetrics.
* `processor produce --trace` starts traces (a PRODUCER span `send <topic>` per record);
  `processor dlq replay` starts one per replayed record, linked to the context found in
  the dead letter's headers.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast, get_args

from processor.backends.abstract import Headers, Message, MessageView
from processor.ops.metrics import Exemplar, Metrics, StageMetrics

if TYPE_CHECKING:  # pragma: no cover - types only; the modules load when a tracer is made
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import Span

TracingMode = Literal["off", "otlp"]
OtlpProtocol = Literal["grpc", "http/protobuf"]
TRACING_MODES: Final[tuple[str, ...]] = get_args(TracingMode)
OTLP_PROTOCOLS: Final[tuple[str, ...]] = get_args(OtlpProtocol)

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
BAGGAGE: Final = "baggage"
TRACE_HEADERS: Final = frozenset((TRACEPARENT, TRACESTATE, BAGGAGE))
"""The record headers the trace context travels in."""

INSTRUMENTATION: Final = "processor"

# Span attributes: the OpenTelemetry messaging conventions, then the stage's own.
MESSAGING_SYSTEM: Final = "messaging.system"
DESTINATION: Final = "messaging.destination.name"
PARTITION: Final = "messaging.destination.partition.id"
OFFSET: Final = "messaging.kafka.offset"
CONSUMER_GROUP: Final = "messaging.consumer.group.name"
MESSAGE_ID: Final = "messaging.message.id"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
BATCH_COUNT: Final = "messaging.batch.message_count"
OUTCOME: Final = "processor.outcome"
DEAD_LETTER_REASON: Final = "processor.dead_letter.reason"
RETRIES: Final = "processor.retries"
OUTPUTS: Final = "processor.outputs"
STAGE: Final = "processor.stage"

PASSED: Final = "passed"
DROPPED: Final = "dropped"
DEAD_LETTERED: Final = "dead_lettered"
FAILED: Final = "failed"
DEAD_LETTER_EVENT: Final = "dead_letter"
RETRY_EVENT: Final = "retry"

ENV_PREFIX: Final = "PROCESSOR_"


# --- settings ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TracingSettings:
    """The tracing settings (`processor.ops.settings`: `tracing`, `otlp_endpoint`,
    `otlp_protocol`, `trace_sample_ratio`)."""

    tracing: TracingMode = "off"
    otlp_endpoint: str | None = None
    """None: the exporter's own default (`OTEL_EXPORTER_OTLP_ENDPOINT`, else
    localhost:4317 for gRPC, localhost:4318 for HTTP)."""
    otlp_protocol: OtlpProtocol = "grpc"
    trace_sample_ratio: float = 1.0
    """Parent-based: a record whose incoming context is sampled (or not) follows it; a
    new trace is sampled with this probability."""

    @property
    def enabled(self) -> bool:
        return self.tracing != "off"

    @classmethod
    def of(cls, settings: object) -> TracingSettings:
        """The tracing settings of a configuration (defaults for what it lacks)."""
        default = cls()
        return cls(**{f.name: getattr(settings, f.name, getattr(default, f.name))
                      for f in dataclasses.fields(cls)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 enable: bool = False) -> TracingSettings:
        """The settings from `PROCESSOR_TRACING`, `PROCESSOR_OTLP_ENDPOINT`,
        `PROCESSOR_OTLP_PROTOCOL` and `PROCESSOR_TRACE_SAMPLE_RATIO` (for the commands
        that read no stage configuration: `produce`, `dlq replay`); `enable` (their
        `--trace`) turns tracing on whatever `PROCESSOR_TRACING` says."""
        env = os.environ if environ is None else environ
        default = cls()
        mode = "otlp" if enable else env.get(ENV_PREFIX + "TRACING", "off").strip().lower()
        protocol = env.get(ENV_PREFIX + "OTLP_PROTOCOL", default.otlp_protocol).strip()
        ratio = env.get(ENV_PREFIX + "TRACE_SAMPLE_RATIO")
        return cls(
            tracing="otlp" if mode == "otlp" else "off",
            otlp_endpoint=env.get(ENV_PREFIX + "OTLP_ENDPOINT") or None,
            otlp_protocol="http/protobuf" if protocol == "http/protobuf" else "grpc",
            trace_sample_ratio=float(ratio) if ratio else default.trace_sample_ratio,
        )


# --- the interface the runtime sees ------------------------------------------------------


class Counts(Protocol):
    """The running totals a traced record's outcome is read from (`StageStats`)."""

    passed: int
    dropped: int
    dead_lettered: int
    produced: int
    retried: int


class Tracer(Protocol):
    """What a stage is handed: `stage()` answers the stage's tracing, or None (off)."""

    def stage(self, name: str, group: str) -> StageTracing | None: ...

    def publisher(self) -> Publisher | None:
        """Spans for records written outside a stage (`produce`, `dlq replay`)."""
        ...

    def flush(self, timeout: float) -> None: ...


class NullTracer:
    """Traces nothing; the default. Imports nothing of OpenTelemetry."""

    def stage(self, name: str, group: str) -> StageTracing | None:
        return None

    def publisher(self) -> Publisher | None:
        return None

    def flush(self, timeout: float) -> None:
        pass


NULL_TRACER: Final = NullTracer()


def make_tracer(settings: TracingSettings, service: str = INSTRUMENTATION) -> Tracer:
    """The tracer of `settings`: `NULL_TRACER` when tracing is off, else an `OtelTracer`
    exporting OTLP (`service` is the resource's `service.name` unless the environment's
    `OTEL_SERVICE_NAME` names one)."""
    if not settings.enabled:
        return NULL_TRACER
    return OtelTracer.otlp(settings, service)


# --- the W3C context in Kafka headers ----------------------------------------------------


class _HeaderGetter:
    """Reads a context from Kafka headers (a list of (key, bytes); keys matched without
    regard to case, as W3C header names are)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found = [(v or b"").decode("latin-1") for k, v in carrier if k.lower() == key]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


def without_trace_headers(headers: Iterable[tuple[str, bytes]] | None) -> Headers:
    """`headers` without the trace context ones."""
    return [(k, v) for k, v in headers or () if k.lower() not in TRACE_HEADERS]


class _Propagation:
    """The W3C trace context and baggage propagators, extracting from and injecting into
    Kafka headers."""

    def __init__(self) -> None:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.propagator = CompositePropagator(
            [TraceContextTextMapPropagator(), W3CBaggagePropagator()])
        self.getter = _HeaderGetter()

    def extract(self, headers: Headers | None) -> Context:
        # `_HeaderGetter` has the shape of OpenTelemetry's `Getter` (not imported here).
        return self.propagator.extract(headers or [], getter=cast(Any, self.getter))

    def inject(self, headers: Headers | None, context: Context) -> Headers:
        """`headers` with the trace headers replaced by those of `context`."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=context)
        out = without_trace_headers(headers)
        out.extend((k, v.encode("latin-1")) for k, v in carrier.items())
        return out


# --- a record in a traced stage ----------------------------------------------------------


class TracedMessage(MessageView):
    """A consumed record with its span: the same record, whose headers carry the span's
    context (so everything made from it continues the trace)."""

    __slots__ = ("context", "owner", "span")

    def __init__(self, msg: Message, span: Span, context: Context, headers: Headers,
                 owner: StageTracing) -> None:
        super().__init__(msg, headers)
        self.span = span
        self.context = context
        self.owner = owner

    def dead_lettered(self, reason: str, error: BaseException, topic: str) -> None:
        """Record on the span that the record went to the dead-letter topic."""
        self.owner.dead_lettered(self, reason, error, topic)


def original(msg: Message) -> Message:
    """The consumed record behind `msg` (itself unless it is a `TracedMessage`)."""
    return msg.msg if type(msg) is TracedMessage else msg


class UnsampledMessage(MessageView):
    """A consumed record starting a trace that is not sampled: the same record, its
    headers carrying that trace's context (flagged "not sampled"), so that everything
    made from it, in this stage and the next, drops the trace too. It has no span."""

    __slots__ = ()


_UNSAMPLED_PARENT: Final = re.compile(
    rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")
"""A valid version-00 `traceparent` whose flags say "not sampled"."""
_IDS_AT_ONCE: Final = 4096
"""Ids of unsampled traces drawn from the system's random source at once."""


def _settable_types() -> frozenset[type]:
    """The consumed record types with `set_headers` (confluent-kafka's, if loaded)."""
    kafka = sys.modules.get("confluent_kafka")
    message = getattr(kafka, "Message", None)
    return frozenset((message,)) if isinstance(message, type) else frozenset()


class _HandedIds:
    """The provider's id generator (`OtelTracer.otlp`): random ids, as the SDK's own, but
    for a new trace whose id a stage drew itself to decide its sampling without a span
    (`StageTracing.unsampled`) and then handed over for the span it starts."""

    def __init__(self) -> None:
        self._handed = threading.local()

    def hand(self, trace_id: int) -> None:
        """The next trace id this thread asks for is `trace_id`."""
        self._handed.trace_id = trace_id

    def generate_span_id(self) -> int:
        return random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        handed: int = getattr(self._handed, "trace_id", 0)
        if handed:
            self._handed.trace_id = 0
            return handed
        return random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


class StageTracing:
    """The spans of one stage (see the module documentation). Made by `OtelTracer.stage`."""

    def __init__(self, tracer: OtelTracer, name: str, group: str) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        self.owner = tracer
        self.name = name
        self.group = group
        self.tracer = tracer.provider.get_tracer(INSTRUMENTATION)
        self.propagation = tracer.propagation
        self.span_name = f"{name} process"
        self._attach = otel_context.attach
        self._detach = otel_context.detach
        self._in_context = trace.set_span_in_context
        self._current_span = trace.get_current_span
        self._link = Link
        self._consumer = SpanKind.CONSUMER
        self._internal = SpanKind.INTERNAL
        self._error = Status(StatusCode.ERROR, "dead-lettered")
        self._status = Status
        self._error_code = StatusCode.ERROR
        self.contexts: dict[int, Context] = {}
        """id(artifact) -> its record's context, while its handler call may run (the
        concurrent path: the handler sees artifacts, not records)."""
        self.spans: dict[int, Span] = {}
        self.span_now: Span | None = None
        """The span of the record being handled (`run`): the one a handler on the loop's
        own path names the artifact on, and latency exemplars come from."""
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        self.quiet_context: Context = self._in_context(NonRecordingSpan(SpanContext(
            random.getrandbits(128) or 1, random.getrandbits(64) or 1, is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT))))
        """Current while records of unsampled traces are handled (`quietly`): a span not
        sampled, so that a handler's own spans are not sampled either."""
        self.ids = tracer.ids
        self._settable = _settable_types()
        self.ratio = -1.0 if tracer.sample_ratio is None else tracer.sample_ratio
        self._draw = random.random
        self._pool = b""
        """Random hex digits the ids of unsampled traces are cut from (48 a record)."""
        self._at = 0
        self._sampled_id = 0
        """The id of the sampled new trace `unsampled` decided on last, for its span."""
        """Record types whose headers can be set in place (confluent-kafka's `Message`):
        an unsampled record of those keeps its type, with the new trace's context."""
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self.bound = (-1 if tracer.sample_ratio is None
                      else TraceIdRatioBased.get_bound_for_rate(tracer.sample_ratio))
        """The sampler's bound on a new trace id's low 64 bits (`TraceIdRatioBased`);
        -1: the sampler is not known, every record gets its span (`start`)."""

    # --- records of unsampled traces ---

    def unsampled(self, msg: Message) -> Message | None:
        """`msg` as it goes on when its trace is not sampled (no span: nothing of it would
        be exported), or None when it needs its span (`start`): its trace is sampled, or
        the sampler or its context are not the usual ones."""
        bound = self.bound
        if bound < 0:
            return None
        headers = msg.headers()
        if headers:
            for key, value in headers:
                name = key.lower()
                if name == TRACEPARENT:
                    # Parent-based sampling: the record follows its context's decision.
                    if value is not None and _UNSAMPLED_PARENT.fullmatch(value):
                        return msg
                    self._sampled_id = 0
                    return None
                if name in TRACE_HEADERS:
                    self._sampled_id = 0
                    return None  # baggage or tracestate without a parent: the SDK's way
        if self._draw() < self.ratio:
            # Sampled. Its span (`start`) gets an id the sampler's own rule samples (the
            # low 64 bits under the bound), drawn uniformly among those.
            self._sampled_id = (((random.getrandbits(64) or 1) << 64)
                                | random.randrange(max(bound, 1)))
            return None
        # Not sampled: a new trace id and a parent id (no span has it), both random.
        at = self._at
        pool = self._pool
        if at >= len(pool):
            pool = self._pool = os.urandom(24 * _IDS_AT_ONCE).hex().encode()
            at = 0
        self._at = at + 48
        parent = b"00-" + pool[at:at + 32] + b"-" + pool[at + 32:at + 48] + b"-00"
        carried = [*headers, (TRACEPARENT, parent)] if headers else [(TRACEPARENT, parent)]
        if type(msg) in self._settable:
            msg.set_headers(carried)  # type: ignore[attr-defined]
            return msg
        return UnsampledMessage(msg, carried)

    def quietly(self, call: Callable[[], object]) -> None:
        """Run `call`, which handles records of unsampled traces, with a context whose
        span is not sampled current."""
        token = self._attach(self.quiet_context)
        try:
            call()
        finally:
            self._detach(token)

    # --- a record's span ---

    def start(self, msg: Message, retries: int = 0) -> TracedMessage:
        """Start the span of `msg` (a child of the context in its headers)."""
        msg = original(msg)
        headers = msg.headers()
        parent = self.propagation.extract(headers)
        attributes: dict[str, str | int] = {
            MESSAGING_SYSTEM: "kafka",
            DESTINATION: msg.topic(),
            PARTITION: str(msg.partition()),
            OFFSET: msg.offset(),
            CONSUMER_GROUP: self.group,
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
            STAGE: self.name,
        }
        if retries:
            attributes[RETRIES] = retries
        if self._sampled_id:
            if self.ids is not None:
                self.ids.hand(self._sampled_id)  # the id a new trace is sampled with
            self._sampled_id = 0
        span = self.tracer.start_span(self.span_name, context=parent, kind=self._consumer,
                                      attributes=attributes)
        context = self._in_context(span, parent)  # keeps the incoming baggage
        return TracedMessage(msg, span, context, self.propagation.inject(headers, context),
                             self)

    def start_all(self, messages: Sequence[Message]) -> list[Message]:
        """Each of `messages` as `unsampled` hands it on, else with its span."""
        out: list[Message] = []
        unsampled = self.unsampled
        start = self.start
        for m in messages:
            plain = unsampled(m)
            out.append(start(m) if plain is None else plain)
        return out

    def run(self, tm: TracedMessage, counts: Counts, call: Callable[[], object],
            retries: int = 0) -> None:
        """Run `call` (which handles `tm` to its end) with the span current, then end the
        span with the outcome the change of `counts` tells."""
        before = self.snapshot(counts)
        token = self._attach(tm.context)
        self.span_now = tm.span
        try:
            call()
        except BaseException as exc:
            self.failed(tm, exc)
            raise
        finally:
            self.span_now = None
            self._detach(token)
        self.settle(tm, before, counts, retries)

    def snapshot(self, counts: Counts) -> tuple[int, int, int, int, int]:
        return (counts.passed, counts.dropped, counts.dead_lettered, counts.produced,
                counts.retried)

    def settle(self, tm: TracedMessage, before: tuple[int, int, int, int, int],
               counts: Counts, retries: int = 0) -> None:
        """End the span of `tm` with the outcome read from how `counts` moved."""
        passed, dropped, dead, produced, retried = before
        span = tm.span
        if retries:
            span.set_attribute(RETRIES, retries)
        if counts.passed > passed:
            span.set_attribute(OUTCOME, PASSED)
            span.set_attribute(OUTPUTS, counts.produced - produced)
        elif counts.dropped > dropped:
            span.set_attribute(OUTCOME, DROPPED)
        elif counts.dead_lettered > dead:
            span.set_attribute(OUTCOME, DEAD_LETTERED)
        elif counts.retried > retried:
            span.add_event(RETRY_EVENT, {RETRIES: retries + 1})
        span.end()

    def failed(self, tm: TracedMessage, error: BaseException) -> None:
        """The record stopped the stage (or a fatal error cut its handling short)."""
        span = tm.span
        span.set_attribute(OUTCOME, FAILED)
        span.record_exception(error)
        span.set_status(self._status(self._error_code, f"{type(error).__name__}: {error}"))
        span.end()

    def cancelled(self, tms: Iterable[Message]) -> None:
        """Records dropped in flight (revoked, or their transaction aborted): their spans
        end without an outcome; the records are read again."""
        for tm in tms:
            if type(tm) is TracedMessage:
                tm.span.add_event("cancelled")
                tm.span.end()

    def dead_lettered(self, tm: TracedMessage, reason: str, error: BaseException,
                      topic: str) -> None:
        span = tm.span
        span.set_attribute(OUTCOME, DEAD_LETTERED)
        span.set_attribute(DEAD_LETTER_REASON, reason)
        span.add_event(DEAD_LETTER_EVENT, {
            DEAD_LETTER_REASON: reason,
            "messaging.destination.name": topic,
            "exception.type": f"{type(error).__module__}.{type(error).__qualname__}",
            "exception.message": str(error) or type(error).__name__,
        })
        span.set_status(self._status(self._error_code, f"dead-lettered: {reason}"))

    # --- the handler's side ---

    def identified(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """The loop's own path: `handler`, naming the artifact on its record's span."""

        def traced(artifact: Any) -> Any:
            span = self.span_now
            if span is not None:
                span.set_attribute(MESSAGE_ID, artifact.id)
            return handler(artifact)

        return traced

    def bind(self, tm: Message, artifact: Any) -> None:
        """The concurrent path: `artifact` decoded from `tm`, about to be handed to the
        handler (which finds its record's context by it)."""
        if type(tm) is TracedMessage:
            tm.span.set_attribute(MESSAGE_ID, artifact.id)
            self.contexts[id(artifact)] = tm.context
            self.spans[id(artifact)] = tm.span

    def unbind(self, artifact: Any) -> None:
        self.contexts.pop(id(artifact), None)
        self.spans.pop(id(artifact), None)

    def handler(self, fn: Callable[..., Any], *, batch: bool,
                is_async: bool) -> Callable[..., Any]:
        """`fn` for the executor: a call for one record runs in its record's context (a
        record of an unsampled trace in one not sampled); a batch handler's call runs in
        a span of its own, linked to the span of each sampled record (none sampled: no
        span, in a context not sampled)."""
        contexts = self.contexts
        spans = self.spans
        attach = self._attach
        detach = self._detach
        tracer = self.tracer
        link = self._link
        kind = self._internal
        name = f"{self.name} handle"
        quiet = self.quiet_context

        def links(artifacts: Sequence[Any]) -> list[Any]:
            found = (spans.get(id(a)) for a in artifacts)
            contexts = (s.get_span_context() for s in found if s is not None)
            return [link(c) for c in contexts if c.trace_flags.sampled]

        if batch and is_async:
            async def traced_batch_async(artifacts: list[Any]) -> Any:
                linked = links(artifacts)
                if not linked:
                    token = attach(quiet)
                    try:
                        return await cast_awaitable(fn(artifacts))
                    finally:
                        detach(token)
                with tracer.start_as_current_span(
                        name, kind=kind, links=linked,
                        attributes={BATCH_COUNT: len(artifacts), STAGE: self.name}):
                    return await fn(artifacts)

            return traced_batch_async
        if batch:
            def traced_batch(artifacts: list[Any]) -> Any:
                linked = links(artifacts)
                if not linked:
                    token = attach(quiet)
                    try:
                        return fn(artifacts)
                    finally:
                        detach(token)
                with tracer.start_as_current_span(
                        name, kind=kind, links=linked,
                        attributes={BATCH_COUNT: len(artifacts), STAGE: self.name}):
                    return fn(artifacts)

            return traced_batch
        if is_async:
            async def traced_async(artifact: Any) -> Any:
                token = attach(contexts.get(id(artifact), quiet))
                try:
                    return await cast_awaitable(fn(artifact))
                finally:
                    detach(token)

            return traced_async

        def traced(artifact: Any) -> Any:
            token = attach(contexts.get(id(artifact), quiet))
            try:
                return fn(artifact)
            finally:
                detach(token)

        return traced

    def flush(self, timeout: float) -> None:
        self.owner.flush(timeout)

    # --- exemplars ---

    def exemplar(self) -> Exemplar | None:
        """The exemplar labels of the span of the record being handled (`trace_id`,
        `span_id`; `run` makes it current), or None when there is none or it is not
        sampled (its trace is not exported)."""
        span = self.span_now
        if span is None:  # a record without a span (its trace not sampled)
            return None
        context = span.get_span_context()
        if not context.trace_flags.sampled:
            return None
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    def exemplars(self, metrics: Metrics) -> Metrics:
        """`metrics`, whose latency observations carry the exemplar of the record they
        timed: a stage observes them at the end of each record's handling, while its span
        is current. Metrics other than `StageMetrics` (none, a test's) are left as they
        are."""
        if isinstance(metrics, StageMetrics):
            return metrics.with_exemplars(self.exemplar)
        return metrics


def cast_awaitable(value: object) -> Awaitable[Any]:
    return value  # type: ignore[return-value]


class Publisher:
    """PRODUCER spans for records written outside a stage: `processor produce` starts a
    trace per record; `processor dlq replay` starts one linked to the dead letter's."""

    def __init__(self, tracer: OtelTracer) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind

        self.tracer = tracer.provider.get_tracer(INSTRUMENTATION)
        self.propagation = tracer.propagation
        self._in_context = trace.set_span_in_context
        self._kind = SpanKind.PRODUCER
        self._link = Link
        self._get_span = trace.get_current_span

    def send(self, topic: str, headers: Headers | None, *, message_id: str | None = None,
             link_from: Headers | None = None,
             attributes: Mapping[str, str | int] | None = None) -> Headers:
        """One `send <topic>` span (a new trace); the headers to write with the record,
        carrying its context. `link_from`: headers whose context the span links to."""
        links = []
        if link_from:
            linked = self._get_span(self.propagation.extract(link_from)).get_span_context()
            if linked.is_valid:
                links.append(self._link(linked))
        attrs: dict[str, str | int] = {MESSAGING_SYSTEM: "kafka", DESTINATION: topic,
                                       OPERATION_TYPE: "send", OPERATION_NAME: "send"}
        if message_id is not None:
            attrs[MESSAGE_ID] = message_id
        attrs.update(attributes or {})
        from opentelemetry.context import Context

        span = self.tracer.start_span(f"send {topic}", context=Context(), kind=self._kind,
                                      attributes=attrs, links=links)
        try:
            return self.propagation.inject(headers, self._in_context(span))
        finally:
            span.end()


class OtelTracer:
    """The OpenTelemetry tracer: spans from a `TracerProvider` (the SDK's), exported as
    its span processors say. `OtelTracer.otlp(settings)` builds one exporting OTLP."""

    def __init__(self, provider: TracerProvider, *, sample_ratio: float | None = None,
                 ids: _HandedIds | None = None) -> None:
        self.provider = provider
        self.propagation = _Propagation()
        self.sample_ratio = sample_ratio
        """The ratio of the provider's sampler, parent-based `TraceIdRatioBased`, when it
        is known to be that (then records of unsampled traces get no span); None: every
        record gets its span, whatever the sampler decides."""
        self.ids = ids

    @classmethod
    def sampling(cls, ratio: float, resource: Resource | None = None) -> OtelTracer:
        """A tracer whose provider samples `ratio` of new traces, parent-based (a record
        with a context follows its decision): records of unsampled traces get no span.
        Its spans go nowhere until a span processor is added to its `provider`."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        ids = _HandedIds()
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)),
                                  resource=resource, id_generator=cast("IdGenerator", ids))
        return cls(provider, sample_ratio=ratio, ids=ids)

    @classmethod
    def otlp(cls, settings: TracingSettings, service: str = INSTRUMENTATION) -> OtelTracer:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service})
        tracer = cls.sampling(settings.trace_sample_ratio, resource)
        tracer.provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        _install_global(tracer.provider)
        return tracer

    def stage(self, name: str, group: str) -> StageTracing | None:
        return StageTracing(self, name, group)

    def publisher(self) -> Publisher | None:
        return Publisher(self)

    def flush(self, timeout: float) -> None:
        """Export the spans ended so far (waiting up to `timeout` seconds)."""
        self.provider.force_flush(max(1, int(timeout * 1000)))


def _exporter(settings: TracingSettings) -> Any:
    endpoint = settings.otlp_endpoint
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        if endpoint is not None:
            endpoint = endpoint.rstrip("/")
            if "://" not in endpoint:
                endpoint = "http://" + endpoint
            if endpoint.count("/") < 3:  # no path: the standard one
                endpoint += "/v1/traces"
        return HttpExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    insecure = None
    if endpoint is not None:
        insecure = not endpoint.startswith("https://")
        endpoint = endpoint.split("://", 1)[-1]
    return GrpcExporter(endpoint=endpoint, insecure=insecure)


_global_installed = False


def _install_global(provider: TracerProvider) -> None:
    """The first tracer made from settings becomes the global provider, so that spans a
    handler starts (`opentelemetry.trace.get_tracer(...)`) are exported too."""
    global _global_installed
    if not _global_installed:
        from opentelemetry import trace

        _global_installed = True
        trace.set_tracer_provider(provider)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span current in this thread or task, or None
    (also when that span is not sampled: its trace is not exported). Free when nothing
    imported OpenTelemetry (tracing off): no span can be current."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
