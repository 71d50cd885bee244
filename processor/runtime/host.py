"""What a stage's parts may use of the stage: the one interface between the loop
(`processor.runtime.stage`) and the parts that work on its state, the concurrent record
path (`processor.runtime.concurrent`) and the too-large recovery
(`processor.runtime.oversize`).

The parts depend on this protocol, not on `Stage`: no import cycle inside the runtime
(an import-linter contract holds it), and what they may touch is written down here.
Commit positions are the ledger's alone (`processor.runtime.ledger`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from processor.backends.abstract import Consumer, Message, Producer, TopicPartition
from processor.core.options import StageOptions
from processor.ops.health import HealthState
from processor.ops.metrics import Metrics
from processor.ops.tracing import StageTracing
from processor.runtime.commit import CommitStrategy
from processor.runtime.emit import Emitter
from processor.runtime.flow import Backpressure
from processor.runtime.ledger import OffsetLedger
from processor.runtime.retry import RetryHolder, RetryLog
from processor.runtime.stats import StageStats
from processor.serde.wire import WireCodec


class StageHost(Protocol):
    """The stage as its parts see it."""

    options: StageOptions
    codec: WireCodec
    consumer: Consumer
    producer: Producer
    commits: CommitStrategy
    ledger: OffsetLedger
    retries: RetryHolder
    retry_log: RetryLog
    backpressure: Backpressure
    stats: StageStats
    metrics: Metrics
    health: HealthState
    clock: Callable[[], float]
    eos: bool
    """Exactly-once."""
    outputs: dict[str, str | None]
    """Output name -> topic."""
    assigned: set[TopicPartition]
    sample: int
    """Records counted toward the latency sample (one in `LATENCY_SAMPLE_EVERY`)."""
    last_commit: float
    emitter: Emitter
    """Writes the outputs of fan-out and routed outcomes (`runtime/emit.py`)."""
    tracing: StageTracing | None
    """The stage's spans (`processor.ops.tracing`); None when tracing is off."""

    @property
    def concurrent_calls(self) -> bool:
        """Whether the handler runs through the concurrent path."""
        ...

    def handle_now(self, messages: Sequence[Message]) -> None:
        """Handle `messages` to the end before returning, on the stage's record path
        (the calls of a concurrent handler waited for)."""
        ...

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        ...

    def process(self, messages: Sequence[Message], previous_attempts: int = 0) -> None:
        """Handle `messages` on the loop's own record path."""
        ...

    def dead_letter(self, msg: Message, reason: str, error: BaseException,
                    attempts: int = 1) -> None: ...

    def handler_failed(self, msg: Message, error: Exception) -> None:
        """The error policy decides: dead-letter, or stop (`StageFailed`)."""
        ...

    def fence(self, msg: Message) -> None:
        """`msg` failed: no commit of its partition may pass it."""
        ...

    def fail(self, error: BaseException) -> None:
        """A fatal error: nothing more is committed past the fences."""
        ...

    def rewind(self) -> None:
        """Seek back to where the uncommitted work began (`commits.rewind_to`)."""
        ...
