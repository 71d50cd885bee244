"""`build_stage`: the one way to assemble a `Stage` from its settings.

The worker runner (`processor run`), the demo, the benchmark and the tests all build
their stages here, so every stage gets the same parts:

* the broker: the one given (the caller names the backend: `processor run` a
  `KafkaBroker` on `bootstrap_servers` with the `kafka` settings, the demo and the unit
  tests a `MemoryBroker`; the runtime imports no concrete backend);
* the handler: the `handlers` references resolved through the handler registry (or a
  handler given ready-made, for tests and embedding), with the security settings'
  policies around it (`processor.security.policy`; the built-in handlers `sign`,
  `verify`, `seal` and `open` bound to the stage's keys);
* the metrics: `StageMetrics` in Prometheus, labelled with the stage's name, topics and
  guarantee (or the `Metrics` given, for example `NullMetrics`);
* the health state the `/healthz` and `/readyz` probes read;
* the tracer: none (`NULL_TRACER`) unless the settings say `tracing: otlp`, then spans
  exported over OTLP (`processor.ops.tracing`; or the `Tracer` given);
* the codec: the schema and the registry of the settings (`processor.runtime.contracts`);
* on Kafka, the librdkafka statistics: `statistics.interval.ms` (unless the settings
  name one) and a `stats_cb` feeding `processor.ops.metrics.record_librdkafka_stats`,
  on both the consumer and the producer.

The settings are anything with the attributes of `StageSettings`: the configuration of
`processor run` (`processor.ops.settings.StageConfig`), or a `StageSetup` built in code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from processor.backends.abstract import Broker
from processor.core.errors import ConfigError
from processor.core.handlers import AnyHandler
from processor.core.options import StageOptions
from processor.ops.health import HealthState
from processor.ops.metrics import (
    LIBRDKAFKA_STATS_INTERVAL_MS,
    Metrics,
    StageMetrics,
    librdkafka_stats_callback,
)
from processor.ops.tracing import OtlpProtocol, Tracer, TracingMode, TracingSettings, make_tracer
from processor.runtime.contracts import stage_codec
from processor.runtime.stage import Stage
from processor.runtime.stateful import ensure_changelogs, is_stateful
from processor.security.handlers import bound_chain
from processor.security.policy import Keyring, SecurityConfig, secure
from processor.serde.codec import Codec
from processor.serde.wire import WireCodec

STATS_INTERVAL_KEY = "statistics.interval.ms"
logger = logging.getLogger(__name__)


class StageSettings(Protocol):
    """What `build_stage` reads of a configuration."""

    @property
    def options(self) -> StageOptions: ...
    @property
    def bootstrap_servers(self) -> str | None: ...
    @property
    def kafka(self) -> Mapping[str, object]: ...
    @property
    def handlers(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class StageSetup:
    """`StageSettings` built in code (the demo, the benchmark, tests): the options, and
    optionally handler references, a Kafka cluster and its librdkafka settings, and the
    security settings (keys and policies)."""

    options: StageOptions
    handlers: Sequence[str] = ()
    bootstrap_servers: str | None = None
    kafka: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    security: SecurityConfig | None = None
    tracing: TracingMode = "off"
    otlp_endpoint: str | None = None
    otlp_protocol: OtlpProtocol = "grpc"
    trace_sample_ratio: float = 1.0
    create_topics: bool = False
    """Create a stateful stage's changelog topics when missing (`processor run` has the
    setting of that name; its other topics are `ensure_topics`')."""
    topic_replication: int | None = None


def build_stage(
    settings: StageSettings,
    broker: Broker,
    *,
    handler: AnyHandler | None = None,
    transactional_id: str | None = None,
    metrics: Metrics | None = None,
    health: HealthState | None = None,
    codec: WireCodec | Codec | None = None,
    clock: Callable[[], float] = time.monotonic,
    consumer_settings: Mapping[str, object] | None = None,
    producer_settings: Mapping[str, object] | None = None,
    tracer: Tracer | None = None,
) -> Stage:
    """A ready `Stage` for `settings` (see the module documentation for its parts).

    `broker` is the stage's (`processor.runtime.runner` makes it from the settings'
    `bootstrap_servers` and `kafka`); `handler` replaces the registry lookup of
    `settings.handlers`; `transactional_id` replaces the
    options' one (the runner claims one per process); `metrics` defaults to the
    stage's Prometheus metrics and `health` to a new `HealthState`.
    `consumer_settings`/`producer_settings` are librdkafka settings for one client only
    (on top of the broker's own `kafka` settings). `tracer` replaces the one the
    settings' `tracing` makes.
    """
    options = settings.options
    if transactional_id is not None:
        options = replace(options, transactional_id=transactional_id)
    # Security (docs/security.md): keys read now, so a bad key file stops the stage here;
    # the built-in handlers sign/verify/seal/open bound to them; the policies around the
    # chain. Settings without a `security` attribute have none.
    security: SecurityConfig | None = getattr(settings, "security", None)
    keyring = Keyring.load(security) if security is not None and security.active else None
    if handler is None:
        if not settings.handlers:
            raise ConfigError("handlers: at least one --handler MODULE:FUNCTION is required")
        handler = bound_chain(settings.handlers, keyring)
    handler = secure(handler, keyring)
    if is_stateful(handler, options):
        # The state's changelog topics (docs/state.md): created with the stage's other
        # topics under --create-topics, checked otherwise.
        ensure_changelogs(broker, options, create=bool(getattr(settings, "create_topics", False)),
                          replication=getattr(settings, "topic_replication", None))
    if metrics is None:
        metrics = StageMetrics(options.name, options.input_topic, options.output_topic,
                               options.guarantee, extra_topics=_produced_topics(options))
    if codec is None:
        codec = stage_codec(settings, options)
    if tracer is None:
        tracer = make_tracer(TracingSettings.of(settings), service=options.name)
    consumer = dict(consumer_settings or {})
    producer = dict(producer_settings or {})
    if broker.client_statistics:
        _connect_statistics(options.name, broker, consumer)
        _connect_statistics(options.name, broker, producer)
    return Stage(
        options, broker, handler, codec=codec, metrics=metrics,
        health=health if health is not None else HealthState(clock=clock), clock=clock,
        consumer_settings=consumer, producer_settings=producer, tracer=tracer,
    )


def _produced_topics(options: StageOptions) -> list[str]:
    """The topics a stage writes to besides its output topic: their series exist from
    the start (at zero), as dashboards and `rate()` need."""
    return [t for t in (*options.outputs.values(), options.dlq_topic) if t]


def _connect_statistics(stage: str, broker: Broker, client: dict[str, object]) -> None:
    """Hook librdkafka's statistics of one client to the stage's metrics, unless the
    settings switch them off (`statistics.interval.ms: 0`) or bring their own callback."""
    interval = client.get(STATS_INTERVAL_KEY, broker.settings.get(STATS_INTERVAL_KEY))
    if interval is None:
        client[STATS_INTERVAL_KEY] = LIBRDKAFKA_STATS_INTERVAL_MS
    elif str(interval).strip() in ("0", ""):
        return
    if "stats_cb" not in client and "stats_cb" not in broker.settings:
        client["stats_cb"] = librdkafka_stats_callback(stage)


def stage_topics(options: StageOptions) -> list[str]:
    """Every topic a stage reads or writes: input, output, named outputs, dead letters."""
    wanted = [*options.input_topics, options.output_topic, *options.outputs.values(),
              options.dlq_topic]
    return list(dict.fromkeys(t for t in wanted if t is not None))


def check_topics(broker: Broker, options: StageOptions) -> None:
    """Raise ConfigError naming every topic of the stage that does not exist."""
    ensure_topics(broker, options, create=False)


def _hidden_hint(broker: Broker, options: StageOptions, missing: Sequence[str]) -> str:
    """On a cluster clients authenticate to, the ACLs that would show `missing`: Kafka
    hides a topic from a principal that may neither read nor write it."""
    protocol = str(broker.settings.get("security.protocol", "")).strip().upper()
    if protocol in ("", "PLAINTEXT"):
        return ""
    grants = [f"{'READ' if topic in options.input_topics else 'WRITE'} on topic {topic}"
              for topic in missing]
    return (f", or this client's principal may not see them (grant it {', '.join(grants)}; "
            "`processor acls show` lists what a stage needs)")


def ensure_topics(broker: Broker, options: StageOptions, *, create: bool,
                  partitions: int | None = None, replication: int | None = None) -> list[str]:
    """Check that the stage's topics exist; with `create`, create the missing ones
    (`partitions`, `replication`: None takes the cluster's defaults) and return them.
    Without `create`, a missing topic raises ConfigError naming every one."""
    admin = broker.admin()
    try:
        existing = admin.list_topics()
        missing = [t for t in stage_topics(options) if t not in existing]
        if missing and not create:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist on {broker.name}"
                f"{_hidden_hint(broker, options, missing)}; create them "
                "first (processor topics create), or let the stage create them "
                "(--create-topics)")
        for topic in missing:
            admin.create_topic(topic, partitions=partitions, replication=replication)
            logger.info("created topic %s on %s", topic, broker.name)
    finally:
        admin.close()
    return missing
