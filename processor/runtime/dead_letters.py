"""Dead-letter records: the input bytes, untouched, with headers that say why.

A record goes to the dead-letter topic when it cannot be decoded, its writer schema cannot
be resolved into the stage's (unknown, or incompatible), its checksum does not match, a
handler declared it invalid, a security policy refused it (signature, approvals, a sealed
payload that does not open), its retries ran out, a handler failed and the error policy is
"dead-letter", or an output made from it is larger than its topic accepts. Nothing is lost:
the value and key are the input's own (a tombstone stays a tombstone), so the record can be
replayed once the cause is fixed (`processor dlq replay`). With tracing on, the headers
carry the context of the record's span (`processor.ops.tracing`), which records the
reason.

`DeadLetterLimit` stops a stage whose input is broken wholesale: when more than a share
of the records consumed within a window were dead-lettered, the stage stops with a
message saying so, rather than quietly moving a whole topic aside.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

from processor.backends.abstract import Headers, Message, Producer
from processor.ops.metrics import Metrics
from processor.ops.tracing import TracedMessage
from processor.runtime.stats import StageStats

logger = logging.getLogger(__name__)

HEADER_PREFIX: Final = "dlq."
H_REASON: Final = "dlq.reason"
H_ERROR_CLASS: Final = "dlq.error.class"
H_ERROR_MESSAGE: Final = "dlq.error.message"
H_STAGE: Final = "dlq.stage"
H_TOPIC: Final = "dlq.original.topic"
H_PARTITION: Final = "dlq.original.partition"
H_OFFSET: Final = "dlq.original.offset"
H_ATTEMPTS: Final = "dlq.attempts"
H_TIMESTAMP: Final = "dlq.timestamp"

MAX_MESSAGE_BYTES: Final = 2048


class Reason:
    """Why a record was dead-lettered; also the `reason` label of the metric."""

    DECODE: Final = "decode"
    SCHEMA: Final = "schema"
    CHECKSUM: Final = "checksum"
    INVALID: Final = "invalid"
    RETRIES_EXHAUSTED: Final = "retries-exhausted"
    HANDLER_ERROR: Final = "handler-error"
    TOO_LARGE: Final = "too-large"
    """An output made from the record is larger than its topic (`max.message.bytes`) or
    the producer (`message.max.bytes`) accepts."""
    SIGNATURE: Final = "signature"
    """A security policy refused the artifact: unsigned, a signature that does not verify
    (forged or tampered), an unknown or retired key, or too few approvals
    (docs/security.md)."""
    SEALED: Final = "sealed"
    """A sealed payload the stage's opening key cannot open."""
    HOPS: Final = "hops"
    """The record went round its ring `max_hops` times already (`runtime/ring.py`)."""

    @staticmethod
    def of_security(error: BaseException) -> str:
        """The reason a `SecurityError` stands for (`signature` unless it names one)."""
        reason = getattr(error, "reason", None)
        return reason if isinstance(reason, str) else Reason.SIGNATURE


def dead_letter_headers(
    message: Message,
    *,
    stage: str,
    reason: str,
    error: BaseException,
    attempts: int = 1,
) -> Headers:
    """The input's headers (without earlier dead-letter headers) plus ours."""
    text = str(error) or type(error).__name__
    encoded = text.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
    original = [(k, v) for k, v in (message.headers() or []) if not k.startswith(HEADER_PREFIX)]
    original.extend(
        [
            (H_REASON, reason.encode()),
            (H_ERROR_CLASS, f"{type(error).__module__}.{type(error).__qualname__}".encode()),
            (H_ERROR_MESSAGE, encoded),
            (H_STAGE, stage.encode()),
            (H_TOPIC, message.topic().encode()),
            (H_PARTITION, str(message.partition()).encode()),
            (H_OFFSET, str(message.offset()).encode()),
            (H_ATTEMPTS, str(attempts).encode()),
            (H_TIMESTAMP, str(time.time_ns() // 1_000_000).encode()),
        ]
    )
    return original


class DeadLetters:
    """A stage's dead-letter topic: `send()` writes a record there, counts it in the
    stage's totals and metrics, and logs it."""

    def __init__(self, stage: str, topic: str | None, producer: Producer, stats: StageStats,
                 metrics: Metrics) -> None:
        self.stage = stage
        self.topic = topic
        self.producer = producer
        self.stats = stats
        self.metrics = metrics

    def send(self, message: Message, reason: str, error: BaseException,
             attempts: int = 1) -> bool:
        """Dead-letter `message`; False (and nothing sent) when there is no topic."""
        topic = self.topic
        if topic is None:
            return False
        value = message.value()
        headers = dead_letter_headers(message, stage=self.stage, reason=reason, error=error,
                                      attempts=attempts)
        self.producer.produce(topic, value, message.key(), headers)
        if type(message) is TracedMessage:  # its span records why (processor.ops.tracing)
            message.dead_lettered(reason, error, topic)
        stats = self.stats
        stats.dead_lettered += 1
        stats.dead_letter_reasons[reason] = stats.dead_letter_reasons.get(reason, 0) + 1
        self.metrics.dead_lettered(reason, 1)
        self.metrics.produced(topic, 1, len(value or b""))
        logger.warning("stage %s: dead-lettered %s[%s]@%s (%s): %s", self.stage,
                       message.topic(), message.partition(), message.offset(), reason, error)
        return True


def header_dict(headers: Headers | None) -> dict[str, str]:
    """Headers as text, for reading a dead-letter record (later values win)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}


class DeadLetterLimit:
    """At most `max_share` of the records consumed within `window` seconds may be
    dead-lettered; `check()` answers the message to stop with once more were.

    A share of 1 (the default) never stops a stage. The share is judged only once at
    least `min_records` records were consumed in the window, so that a few bad records
    at start do not read as 100 %. The totals are sampled once per batch; the baseline
    is the newest sample at least `window` seconds old (or the start), kept at a
    granularity of 1/64 of the window, so memory stays bounded.
    """

    GRANULARITY: Final = 64

    def __init__(self, stage: str, max_share: float, window: float, min_records: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage = stage
        self.max_share = max_share
        self.window = window
        self.min_records = min_records
        self.clock = clock
        self._samples: deque[tuple[float, int, int]] = deque([(clock(), 0, 0)])

    @property
    def enabled(self) -> bool:
        return self.max_share < 1.0

    def check(self, consumed: int, dead_lettered: int,
              reasons: Mapping[str, int] | None = None) -> str | None:
        """Record the stage's running totals; the reason to stop, or None."""
        if not self.enabled:
            return None
        now = self.clock()
        samples = self._samples
        if now - samples[-1][0] >= self.window / self.GRANULARITY:
            samples.append((now, consumed, dead_lettered))
        horizon = now - self.window
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        since, consumed0, dead0 = samples[0]
        seen = consumed - consumed0
        bad = dead_lettered - dead0
        if seen < self.min_records or bad <= self.max_share * seen:
            return None
        by_reason = ", ".join(f"{r}: {n}" for r, n in sorted(
            (reasons or {}).items(), key=lambda item: -item[1]))
        return (
            f"stage {self.stage}: {bad} of the last {seen} records "
            f"({bad / seen:.0%}) were dead-lettered within {now - since:.0f}s, over the "
            f"limit of {self.max_share:.0%} (dlq_max_share, over dlq_window="
            f"{self.window:g}s); the input looks broken wholesale, so the stage stops "
            f"instead of moving it all aside (dead-lettered so far by reason: "
            f"{by_reason or 'none'})")
