"""Dead-letter records: the input bytes, untouched, with headers that say why.

A record goes to the dead-letter topic when it cannot be decoded, its writer schema cannot
be resolved into the stage's (unknown, or incompatible), its checksum does not
match, a handler declared it invalid, its retries ran out, or a handler failed and the
error policy is "dead-letter". Nothing is lost: the value and key are the input's own, so
the record can be replayed once the cause is fixed.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from processor.backends.abstract import Headers, Message, Producer
from processor.ops.metrics import Metrics
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
        value = message.value() or b""
        headers = dead_letter_headers(message, stage=self.stage, reason=reason, error=error,
                                      attempts=attempts)
        self.producer.produce(topic, value, message.key(), headers)
        stats = self.stats
        stats.dead_lettered += 1
        stats.dead_letter_reasons[reason] = stats.dead_letter_reasons.get(reason, 0) + 1
        self.metrics.dead_lettered(reason, 1)
        self.metrics.produced(topic, 1, len(value))
        logger.warning("stage %s: dead-lettered %s[%s]@%s (%s): %s", self.stage,
                       message.topic(), message.partition(), message.offset(), reason, error)
        return True


def header_dict(headers: Headers | None) -> dict[str, str]:
    """Headers as text, for reading a dead-letter record (later values win)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or [])}
