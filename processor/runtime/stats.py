"""The running totals of one stage (`Stage.stats`), and how a batch reaches the metrics.

The hot loop counts in plain local ints; once per batch it adds them to `StageStats` and
hands them to `report_batch`, which makes the few metric calls a batch needs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from processor.ops.metrics import Metrics


@dataclass
class StageStats:
    """Running totals of one stage; every consumed record ends up in exactly one bucket:
    `consumed == passed + dropped + dead_lettered` (plus records waiting for a retry)."""

    consumed: int = 0
    """Input records taken (a record handled again after a retry counts once)."""
    produced: int = 0
    """Output records (a fan-out produces several per input); dead letters not included."""
    passed: int = 0
    """Inputs that produced at least one output."""
    dropped: int = 0
    dead_lettered: int = 0
    retried: int = 0
    """Handler attempts that raised `RetryableError` and were scheduled again."""
    failed: int = 0
    """Handler calls that raised an unexpected error (before the error policy)."""
    commits: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def accounted(self) -> int:
        return self.passed + self.dropped + self.dead_lettered

    def rate(self, now: float | None = None) -> float:
        elapsed = (now if now is not None else time.monotonic()) - self.started
        return self.consumed / elapsed if elapsed > 0 else 0.0


def report_batch(
    metrics: Metrics, consumed: int, bytes_in: int, produced: int, bytes_out: int,
    dropped: int, default_topic: str | None, routed: Mapping[str, Sequence[int]],
    handler_times: Sequence[float], e2e: Sequence[float],
) -> None:
    """Push the counts of one batch to `metrics`: outputs to topics other than the
    default one (`routed`: topic -> (records, bytes), included in `produced` and
    `bytes_out`) under their own topic, every sampled latency."""
    if consumed:
        metrics.consumed(consumed, bytes_in)
    for topic, (n, size) in routed.items():
        metrics.produced(topic, n, size)
        produced -= n
        bytes_out -= size
    if produced and default_topic is not None:
        metrics.produced(default_topic, produced, bytes_out)
    if dropped:
        metrics.dropped(dropped)
    for seconds in handler_times:
        metrics.handler_latency(seconds)
    for seconds in e2e:
        metrics.end_to_end_latency(max(0.0, seconds))
