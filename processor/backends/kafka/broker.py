"""The Kafka broker: the `Broker` factory of confluent-kafka clients.

`KafkaBroker` turns the backend's arguments and the user's librdkafka settings into
each client's configuration (checked by `processor.backends.kafka.settings`), checks
once that the cluster answers, and wraps the clients in `KafkaConsumer`,
`KafkaProducer` and `KafkaAdmin`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from processor.backends.abstract import Broker
from processor.backends.kafka.admin import KafkaAdmin
from processor.backends.kafka.consumer import KafkaConsumer
from processor.backends.kafka.errors import ErrorLog, denied, error_of, is_denied
from processor.backends.kafka.producer import DeliveryLog, KafkaProducer
from processor.backends.kafka.settings import (
    COMMON_DEFAULTS,
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    RDKAFKA_LOGGER,
    ClientKind,
    check_consumer,
    check_producer,
    for_client,
)
from processor.core.errors import BrokerUnavailable, ConfigError

_C = TypeVar("_C")


class KafkaBroker(Broker):
    """Apache Kafka through confluent-kafka.

    `settings` are librdkafka settings passed to every client (for example
    `security.protocol`, `sasl.*`, `statistics.interval.ms`), but those of one client
    kind only (`compression.type`, `fetch.min.bytes`, ...) to that kind only; the few
    that would break the stage's delivery guarantees raise ConfigError, and so does a
    setting librdkafka refuses (a CA file that cannot be read, an unknown key), in one
    line naming it, and where it came from when `origins` says (setting key ->
    "flag --set", ...). Reaching the cluster is checked once, when the first client is
    made: an unreachable cluster raises BrokerUnavailable after `connect_timeout`
    seconds.
    """

    client_statistics = True

    def __init__(self, bootstrap_servers: str, settings: Mapping[str, object] | None = None,
                 *, connect_timeout: float = 10.0,
                 origins: Mapping[str, str] | None = None) -> None:
        if not bootstrap_servers or not bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers is empty: name at least one host:port")
        self.bootstrap_servers = bootstrap_servers
        self.settings: dict[str, object] = dict(settings or {})
        configured = self.settings.pop("bootstrap.servers", None)
        if configured is not None and str(configured) != bootstrap_servers:
            raise ConfigError(
                f"kafka setting bootstrap.servers={configured} conflicts with "
                f"bootstrap_servers={bootstrap_servers!r}")
        self.connect_timeout = connect_timeout
        self.origins = dict(origins or {})
        self._reachable = False

    @property
    def name(self) -> str:
        return f"kafka {self.bootstrap_servers}"

    def _config(self, defaults: Mapping[str, object], settings: Mapping[str, object],
                forced: Mapping[str, object]) -> dict[str, Any]:
        config: dict[str, Any] = {**COMMON_DEFAULTS, **defaults, **settings, **forced}
        config["bootstrap.servers"] = self.bootstrap_servers
        config.setdefault("logger", RDKAFKA_LOGGER)
        return config

    def _merged(self, kind: ClientKind, settings: Mapping[str, object] | None
                ) -> dict[str, object]:
        merged = for_client(self.settings, kind)
        merged.update(settings or {})
        return merged

    def _create(self, factory: Callable[[dict[str, Any]], _C], config: dict[str, Any]) -> _C:
        """`factory(config)`; a setting librdkafka refuses is a one-line ConfigError."""
        try:
            return factory(config)
        except KafkaException as exc:
            error = error_of(exc)
            text = error.str() if error is not None else str(exc)
            raise ConfigError(f"invalid Kafka settings: {text}"
                              f"{self._explain(text, config)}") from None

    def _explain(self, text: str, config: Mapping[str, object]) -> str:
        """Where each setting named in librdkafka's `text` came from, and whether a file
        it names is missing."""
        notes = []
        for key, value in sorted(config.items()):
            if not re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", text):
                continue
            origin = self.origins.get(key)
            missing = key.endswith(".location") and isinstance(value, str) and \
                not os.path.exists(value)
            if origin or missing:
                notes.append(f"{key}{f' from {origin}' if origin else ''}"
                             f"{f': no such file {value}' if missing else ''}")
        return f" ({'; '.join(notes)})" if notes else ""

    def ensure_reachable(self) -> None:
        """Raise BrokerUnavailable unless the cluster answers within `connect_timeout`;
        AuthenticationFailed at once when it refuses the credentials or the TLS
        handshake fails (librdkafka itself would retry those forever)."""
        if self._reachable:
            return
        errors = ErrorLog("connection check", quiet=True)
        config = self._config({}, {k: v for k, v in for_client(self.settings, "admin").items()
                                   if not callable(v)}, {"log_level": 0, "error_cb": errors})
        config.pop("logger", None)
        admin = self._create(AdminClient, config)
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                # In short slices: the error callback, served by poll(), tells a refused
                # login or certificate apart from a broker that does not answer.
                admin.list_topics(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                break
            except KafkaException as exc:
                admin.poll(0)
                error = error_of(exc)
                refused = errors.denied or (error if is_denied(error) else None)
                if refused is not None:
                    raise denied(refused, f"connecting to Kafka at {self.bootstrap_servers}"
                                 ) from None
                if time.monotonic() < deadline:
                    continue
                reason = error.str() if error is not None else str(exc)
                raise BrokerUnavailable(
                    f"Kafka at {self.bootstrap_servers} did not answer within "
                    f"{self.connect_timeout:g}s ({reason}); is the broker running and "
                    "reachable?") from exc
        self._reachable = True

    def consumer(self, group: str, *, read_committed: bool = False,
                 auto_offset_reset: str = "earliest", client_id: str | None = None,
                 settings: Mapping[str, object] | None = None) -> KafkaConsumer:
        merged = self._merged("consumer", settings)
        check_consumer(merged, group, read_committed, auto_offset_reset)
        self.ensure_reachable()
        errors = ErrorLog(f"consumer {client_id or group}", merged.pop("error_cb", None),
                          names={KafkaError.GROUP_AUTHORIZATION_FAILED: f"group {group}"})
        forced: dict[str, object] = {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "error_cb": errors,
        }
        if client_id:
            forced["client.id"] = client_id
        config = self._config(CONSUMER_DEFAULTS, merged, forced)
        client = self._create(ck.Consumer, config)
        strategy = str(config["partition.assignment.strategy"])
        return KafkaConsumer(client, auto_offset_reset, errors, strategy)

    def producer(self, *, transactional_id: str | None = None, client_id: str | None = None,
                 settings: Mapping[str, object] | None = None) -> KafkaProducer:
        merged = self._merged("producer", settings)
        check_producer(merged, transactional_id)
        self.ensure_reachable()
        names = {} if transactional_id is None else {
            KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                f"transactional id {transactional_id}"}
        errors = ErrorLog(f"producer {client_id or transactional_id or ''}".rstrip(),
                          merged.pop("error_cb", None), names=names)
        deliveries = DeliveryLog()
        forced: dict[str, object] = {"error_cb": errors, "on_delivery": deliveries}
        if transactional_id is not None:
            forced["transactional.id"] = transactional_id
        if client_id:
            forced["client.id"] = client_id
        config = self._config(PRODUCER_DEFAULTS, merged, forced)
        client = self._create(ck.Producer, config)
        return KafkaProducer(client, transactional_id is not None, errors, deliveries)

    def admin(self) -> KafkaAdmin:
        self.ensure_reachable()
        config = self._config({}, {k: v for k, v in for_client(self.settings, "admin").items()
                                   if not callable(v)}, {})
        return KafkaAdmin(self._create(AdminClient, config),
                          client_config=config)

