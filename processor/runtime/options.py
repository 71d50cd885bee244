"""Stage policies: frozen values with named presets.

`StageOptions` is everything a stage needs to know besides its backend and handlers.
`processor.ops.settings` builds it from a YAML file, the environment and CLI flags.
"""

from __future__ import annotations

import copyreg
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from processor.core.errors import ConfigError


def read_only(mapping: dict[str, object]) -> MappingProxyType[str, object]:
    return MappingProxyType(mapping)


def _pickle_mapping_proxy(
    proxy: MappingProxyType[str, object],
) -> tuple[Callable[[dict[str, object]], MappingProxyType[str, object]], tuple[object, ...]]:
    return read_only, (dict(proxy),)


# Options hold read-only mappings and cross to `--processes` workers by pickle.
copyreg.pickle(MappingProxyType, _pickle_mapping_proxy)

Guarantee = Literal["at-least-once", "exactly-once"]
ErrorPolicy = Literal["dead-letter", "fail"]

AT_LEAST_ONCE: Final[Guarantee] = "at-least-once"
EXACTLY_ONCE: Final[Guarantee] = "exactly-once"
GUARANTEES: Final = (AT_LEAST_ONCE, EXACTLY_ONCE)
ERROR_POLICIES: Final = ("dead-letter", "fail")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for `RetryableError`.

    Attempt n (1-based) waits `min(max_backoff, initial_backoff * multiplier**(n-1))`,
    spread by +/- `jitter` (a fraction). After `max_attempts` attempts the artifact goes
    to the dead-letter topic.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("retry.max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ConfigError("retry backoffs must not be negative")
        if self.multiplier < 1:
            raise ConfigError("retry.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("retry.jitter must be between 0 and 1")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base *= 1.0 + spread
        return max(0.0, min(base, self.max_backoff))


NO_RETRY: Final = RetryPolicy(max_attempts=1)
QUICK_RETRY: Final = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.1)
DEFAULT_RETRY: Final = RetryPolicy()


@dataclass(frozen=True, slots=True)
class StageOptions:
    """What a stage does, apart from its handlers and its backend."""

    name: str
    input_topic: str
    output_topic: str | None
    group: str
    dlq_topic: str | None = None
    outputs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Named outputs a handler can route to (`Routed(name, artifact)`) -> topic."""
    guarantee: Guarantee = AT_LEAST_ONCE
    batch_size: int = 2000
    """Most records taken from the consumer in one call."""
    poll_timeout: float = 0.1
    """Seconds one consume call waits for a first record."""
    commit_interval: float = 1.0
    """Seconds between commits (each is a flush plus a commit, or a transaction)."""
    max_in_flight: int = 50_000
    """Records produced but not yet committed before the stage commits early."""
    retry: RetryPolicy = DEFAULT_RETRY
    error_policy: ErrorPolicy = "dead-letter"
    """What an unexpected handler exception does: dead-letter the input, or stop."""
    shutdown_timeout: float = 30.0
    """Seconds `stop()` may take to drain and commit."""
    transactional_id: str | None = None
    """Exactly-once only: this instance's transactional id (default: derived from name)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("stage name must not be empty")
        if not self.input_topic:
            raise ConfigError("input_topic must not be empty")
        if not self.group:
            raise ConfigError("group must not be empty")
        if self.guarantee not in GUARANTEES:
            raise ConfigError(
                f"guarantee {self.guarantee!r} is not allowed: use one of {', '.join(GUARANTEES)}"
            )
        if self.error_policy not in ERROR_POLICIES:
            raise ConfigError(
                f"error_policy {self.error_policy!r} is not allowed: use one of "
                f"{', '.join(ERROR_POLICIES)}"
            )
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if self.poll_timeout < 0:
            raise ConfigError("poll_timeout must not be negative")
        if self.commit_interval <= 0:
            raise ConfigError("commit_interval must be greater than 0")
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1")
        if self.shutdown_timeout <= 0:
            raise ConfigError("shutdown_timeout must be greater than 0")
        if self.input_topic in (self.output_topic, self.dlq_topic):
            raise ConfigError("input_topic must differ from output_topic and dlq_topic")
        object.__setattr__(self, "outputs", MappingProxyType(dict(self.outputs)))
