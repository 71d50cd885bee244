"""Settings of the Kafka clients: the defaults, and the checks of what users set.

`KafkaBroker` builds every client's librdkafka configuration as common defaults, then
the client kind's defaults (`PRODUCER_DEFAULTS`, `CONSUMER_DEFAULTS`), then the user's
settings, then what the backend forces (group id, isolation level, no auto-commit,
callbacks). The user's settings of one client kind only reach that kind (`for_client`).
The few user settings that would break a stage's delivery guarantees, or that
contradict an argument of `consumer()` / `producer()`, raise `ConfigError` here, before
any connection is tried. librdkafka's log lines go through `RDKAFKA_LOGGER`, repeated
ones held back (`RepeatFilter`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Final, Literal

from processor.core.errors import ConfigError


class RepeatFilter(logging.Filter):
    """Lets a line through once per `interval` seconds: librdkafka repeats the same line
    (a broker that refuses connections, say) at every reconnection attempt, several a
    second. Lines alike but for their numbers (ports, milliseconds, counts) count as
    one; the next line let through after a pause says how many were held back."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, re.sub(r"\d+", "N", record.getMessage()))
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._seen[key] = (last, held + 1)
                return False
            if len(self._seen) > 1000:  # a bound, should the lines never repeat
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it, held back)"
        return True


RDKAFKA_LOGGER: Final = logging.getLogger("processor.backends.kafka.librdkafka")
"""librdkafka's own log lines, routed through Python logging instead of stderr (every
client's `logger`), each repeated line let through once a minute (`RepeatFilter`)."""
RDKAFKA_LOGGER.addFilter(RepeatFilter())

AUTO_OFFSET_RESETS: Final = ("earliest", "latest", "error")

#: Defaults of every producer; settings override them unless noted in `check_producer`.
PRODUCER_DEFAULTS: Mapping[str, object] = {
    # No duplicates or reordering when librdkafka retries a batch (implies acks=all and
    # at most 5 requests in flight per partition).
    "enable.idempotence": True,
    "acks": "all",
    # Wait up to 5 ms to fill a batch: far fewer requests for a small latency cost.
    "linger.ms": 5,
    # Up to 1 MiB and 10,000 records per batch (Java's default is 16 KiB).
    "batch.size": 1_048_576,
    "batch.num.messages": 10_000,
    # lz4: cheap on the CPU, and Avro records with repeated field values compress well.
    "compression.type": "lz4",
    # The Java client's partitioner, so that a key lands in the same partition whichever
    # client (Java, Kafka Streams, this one, the in-memory broker) produced it.
    "partitioner": "murmur2_random",
    # Only failures produce delivery reports: successful records cost no callback.
    "delivery.report.only.error": True,
}

#: Defaults of every consumer.
CONSUMER_DEFAULTS: Mapping[str, object] = {
    # The eager protocol: on_assign gets the whole new assignment and on_revoke the whole
    # old one, as with the in-memory broker. "cooperative-sticky" (incremental callbacks,
    # also supported here) measured worse on Kafka 4.1 with librdkafka 2.x: two rounds per
    # rebalance (about 6 s instead of 3 s), and a commit in on_revoke during close() fails
    # with UNKNOWN_MEMBER_ID when a rebalance is pending, so a stopping stage would lose
    # its last commit and re-process those records.
    "partition.assignment.strategy": "range",
    "enable.partition.eof": False,
    # librdkafka stops fetching a partition while its local queue holds queued.min.messages
    # records or queued.max.messages.kbytes, and looks again only after this long (its
    # default is 1000 ms). A stage that handles records more slowly than they are fetched
    # fills that queue at once, so with the default it read in bursts and sat idle in
    # consume() up to a second at a time: on one local broker, a consumer spending 4 us per
    # record reached 114,000 records/s with the default and 221,000/s with 10 ms (1 to
    # 100 ms all gave the same). Re-checking a full queue every 10 ms costs nothing
    # measurable.
    "fetch.queue.backoff.ms": 10,
}

#: Defaults of every client, admin included.
COMMON_DEFAULTS: Mapping[str, object] = {
    "log.connection.close": False,
    # Give up a connection attempt after 10 s (librdkafka's default is 30 s).
    "socket.connection.setup.timeout.ms": 10_000,
}


# Settings of one client kind only. One `kafka:` mapping configures every client of a
# stage or a command, consumers, producers and admin clients alike; librdkafka warns
# ("CONFWARN ... is a producer property and will be ignored by this consumer instance")
# for each setting of the other kind. `for_client` drops those, so `compression.type`
# reaches the producers only and `fetch.min.bytes` the consumers only. From librdkafka's
# CONFIGURATION.md, column C/P (global and topic properties); a key not listed here is
# passed to every client.
PRODUCER_ONLY: Final = frozenset({
    "transactional.id", "transaction.timeout.ms", "enable.idempotence",
    "enable.gapless.guarantee", "queue.buffering.max.messages", "queue.buffering.max.kbytes",
    "queue.buffering.max.ms", "linger.ms", "message.send.max.retries", "retries",
    "queue.buffering.backpressure.threshold", "compression.codec", "compression.type",
    "compression.level", "batch.num.messages", "batch.size", "delivery.report.only.error",
    "dr_cb", "dr_msg_cb", "on_delivery", "sticky.partitioning.linger.ms",
    "request.required.acks", "acks", "request.timeout.ms", "message.timeout.ms",
    "delivery.timeout.ms", "queuing.strategy", "produce.offset.report", "partitioner",
    "partitioner_cb", "msg_order_cmp",
})
CONSUMER_ONLY: Final = frozenset({
    "group.id", "group.instance.id", "partition.assignment.strategy", "session.timeout.ms",
    "heartbeat.interval.ms", "group.protocol.type", "group.protocol", "group.remote.assignor",
    "coordinator.query.interval.ms", "max.poll.interval.ms", "enable.auto.commit",
    "auto.commit.enable", "auto.commit.interval.ms", "enable.auto.offset.store",
    "queued.min.messages", "queued.max.messages.kbytes", "fetch.wait.max.ms",
    "fetch.queue.backoff.ms", "fetch.message.max.bytes", "max.partition.fetch.bytes",
    "fetch.max.bytes", "fetch.min.bytes", "fetch.error.backoff.ms", "offset.store.method",
    "offset.store.path", "offset.store.sync.interval.ms", "isolation.level", "consume_cb",
    "rebalance_cb", "offset_commit_cb", "on_commit", "enable.partition.eof", "check.crcs",
    "auto.offset.reset", "consume.callback.max.messages",
})

ClientKind = Literal["consumer", "producer", "admin"]


def for_client(settings: Mapping[str, object], kind: ClientKind) -> dict[str, object]:
    """`settings` without those of the other client kind (an admin client, a producer
    inside librdkafka, takes neither kind's own)."""
    dropped = {"consumer": PRODUCER_ONLY, "producer": CONSUMER_ONLY,
               "admin": PRODUCER_ONLY | CONSUMER_ONLY}[kind]
    return {k: v for k, v in settings.items() if k not in dropped}


def flag(settings: Mapping[str, object], key: str) -> bool | None:
    """A boolean librdkafka setting (True/"true"/1...), or None when absent."""
    if key not in settings:
        return None
    value = settings[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"kafka setting {key}: expected true or false, got {value!r}")


def check_consumer(settings: Mapping[str, object], group: str, read_committed: bool,
                   auto_offset_reset: str) -> None:
    """Refuse consumer settings that lose records or contradict the arguments."""
    for key in ("enable.auto.commit", "enable.auto.offset.store"):
        if flag(settings, key):
            raise ConfigError(
                f"kafka setting {key}=true is not allowed: offsets are committed only by "
                "the stage, after its outputs are acknowledged (otherwise records can be "
                "lost on a crash); remove the setting")
    level = settings.get("isolation.level")
    if level is not None:
        wanted = "read_committed" if read_committed else "read_uncommitted"
        if str(level) != wanted:
            raise ConfigError(
                f"kafka setting isolation.level={level} conflicts with this consumer's "
                f"read_committed={read_committed} (which means {wanted}); remove the setting "
                "(exactly-once stages read committed records, the others everything)")
    configured_group = settings.get("group.id")
    if configured_group is not None and str(configured_group) != group:
        raise ConfigError(
            f"kafka setting group.id={configured_group} conflicts with the group {group!r} "
            "given to the consumer; remove the setting")
    reset = settings.get("auto.offset.reset")
    if reset is not None and str(reset) != auto_offset_reset:
        raise ConfigError(
            f"kafka setting auto.offset.reset={reset} conflicts with auto_offset_reset="
            f"{auto_offset_reset!r}; remove the setting")
    if auto_offset_reset not in AUTO_OFFSET_RESETS:
        raise ConfigError(
            f"auto_offset_reset must be one of {', '.join(AUTO_OFFSET_RESETS)}; "
            f"got {auto_offset_reset!r}")
    if not group:
        raise ConfigError("a consumer group id is required")


def check_producer(settings: Mapping[str, object], transactional_id: str | None) -> None:
    """Refuse producer settings that weaken idempotence or the transactional id."""
    configured_tid = settings.get("transactional.id")
    if configured_tid is not None and str(configured_tid) != transactional_id:
        raise ConfigError(
            "kafka setting transactional.id is not allowed: pass transactional_id to "
            "producer() (exactly-once stages derive it per worker)")
    idempotence = flag(settings, "enable.idempotence")
    if transactional_id is not None and idempotence is False:
        raise ConfigError(
            "kafka setting enable.idempotence=false is not allowed for a transactional "
            "(exactly-once) producer: transactions need the idempotent producer")
    acks = settings.get("acks", settings.get("request.required.acks"))
    if acks is not None and str(acks) not in ("all", "-1") and idempotence is not False:
        raise ConfigError(
            f"kafka setting acks={acks} needs enable.idempotence=false (an idempotent "
            "producer waits for all in-sync replicas); acks=all is the safe choice")
