"""The running totals of one stage (`Stage.stats`): plain ints, summed once per batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


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
