"""Stage policies: frozen values with named presets, each bound declared once.

`StageOptions` is everything a stage needs to know besides its backend and handlers;
`RetryPolicy` is its backoff for `RetryableError`. Both are pydantic dataclasses: every
field carries its type, bounds and help text in one `Field`, the values are validated once
when built (a bad one raises `pydantic.ValidationError`), and the result is a plain frozen
dataclass that the stage reads as attributes and that pickles to `--processes` workers.

`processor.ops.settings` derives the YAML keys, `PROCESSOR_*` variables and CLI flags of
these fields from the same declarations, so a bound is never written twice.
"""

from __future__ import annotations

import copyreg
import random
from collections.abc import Callable, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticKnownError


def read_only(mapping: Mapping[str, object]) -> MappingProxyType[str, object]:
    return MappingProxyType(dict(mapping))


def _pickle_mapping_proxy(
    proxy: MappingProxyType[str, object],
) -> tuple[Callable[[Mapping[str, object]], MappingProxyType[str, object]], tuple[object, ...]]:
    return read_only, (dict(proxy),)


# Options hold read-only mappings and cross to `--processes` workers by pickle.
copyreg.pickle(MappingProxyType, _pickle_mapping_proxy)


def _no_bool_int(value: object) -> object:
    if isinstance(value, bool):  # YAML `true` is not a count
        raise PydanticKnownError("int_type")
    return value


def _no_bool_float(value: object) -> object:
    if isinstance(value, bool):
        raise PydanticKnownError("float_type")
    return value


Count = Annotated[int, BeforeValidator(_no_bool_int)]
"""An integer setting; a boolean is refused rather than read as 0 or 1."""
Number = Annotated[float, BeforeValidator(_no_bool_float)]
"""A float setting (seconds, factors); a boolean is refused."""
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A topic, group or stage name: surrounding blanks dropped, never empty."""
ReadOnly = AfterValidator(read_only)

Guarantee = Literal["at-least-once", "exactly-once"]
ErrorPolicy = Literal["dead-letter", "fail"]
HandlerMode = Literal["auto", "sync", "async", "threads"]
Order = Literal["key", "partition"]

AT_LEAST_ONCE: Final[Guarantee] = "at-least-once"
EXACTLY_ONCE: Final[Guarantee] = "exactly-once"
GUARANTEES: Final = (AT_LEAST_ONCE, EXACTLY_ONCE)
ERROR_POLICIES: Final = ("dead-letter", "fail")

_FROZEN: Final = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True, config=_FROZEN)
class RetryPolicy:
    """Exponential backoff with jitter for `RetryableError`.

    Attempt n (1-based) waits `min(max_backoff, initial_backoff * multiplier**(n-1))`,
    spread by +/- `jitter` (a fraction). After `max_attempts` attempts the artifact goes
    to the dead-letter topic.
    """

    max_attempts: Annotated[Count, Field(ge=1, description="attempts before dead-lettering")] = 5
    initial_backoff: Annotated[
        Number, Field(ge=0, description="seconds to wait after the first failure")] = 0.1
    max_backoff: Annotated[Number, Field(ge=0, description="longest wait in seconds")] = 10.0
    multiplier: Annotated[Number, Field(ge=1, description="backoff growth per attempt")] = 2.0
    jitter: Annotated[
        Number, Field(ge=0, le=1, description="random spread of a wait, a fraction")] = 0.2

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


@dataclass(frozen=True, slots=True, config=_FROZEN)
class StageOptions:
    """What a stage does, apart from its handlers and its backend.

    `json_schema_extra` carries what the command line needs beyond the type: the metavar
    of a flag.
    """

    name: Annotated[Name, Field(
        description="stage name used in metrics and logs (default: the group)")]
    input_topic: Annotated[Name, Field(
        description="topic the stage reads; several, comma-separated, are read together "
                    "(fan-in; order is kept per partition of each)",
        json_schema_extra={"metavar": "TOPIC[,TOPIC]"})]
    output_topic: Annotated[Name | None, Field(
        description="topic the stage writes (none: a sink stage)",
        json_schema_extra={"metavar": "TOPIC"})]
    group: Annotated[Name, Field(
        description="consumer group; replicas sharing it share the partitions")]
    dlq_topic: Annotated[Name | None, Field(
        description="dead-letter topic (none: a record that must be dead-lettered stops "
                    "the stage, uncommitted)", json_schema_extra={"metavar": "TOPIC"})] = None
    outputs: Annotated[Mapping[str, Name], ReadOnly, Field(
        description="named outputs a handler routes to with Routed(name, artifact) -> topic",
        json_schema_extra={"flag": "output", "metavar": "NAME=TOPIC"})] = field(
        default_factory=lambda: MappingProxyType({}))
    guarantee: Annotated[Guarantee, Field(description="delivery guarantee")] = AT_LEAST_ONCE
    batch_size: Annotated[Count, Field(
        ge=1, description="most records taken from the consumer in one call",
        json_schema_extra={"metavar": "N"})] = 2000
    poll_timeout: Annotated[Number, Field(
        ge=0, description="seconds one consume call waits for a first record",
        json_schema_extra={"metavar": "SECONDS"})] = 0.1
    commit_interval: Annotated[Number, Field(
        gt=0, description="seconds between commits (a flush plus a commit, or a transaction)",
        json_schema_extra={"metavar": "SECONDS"})] = 1.0
    max_in_flight: Annotated[Count, Field(
        ge=1, description="records produced but not committed before an early commit",
        json_schema_extra={"metavar": "N"})] = 50_000
    max_in_flight_bytes: Annotated[Count, Field(
        ge=1, description="bytes produced but not committed before an early commit; "
        "output unacknowledged past this pauses the input (default 64 MiB, far below "
        "the producer's own queue)", json_schema_extra={"metavar": "BYTES"})] = 64 * 1024 * 1024
    retry: Annotated[RetryPolicy, Field(description="backoff for RetryableError")] = DEFAULT_RETRY
    error_policy: Annotated[ErrorPolicy, Field(
        description="what an unexpected handler exception does: dead-letter the input, "
                    "or stop")] = "dead-letter"
    handler_timeout: Annotated[Number | None, Field(
        gt=0, description="seconds one handler call may take before the record is retried "
                          "or dead-lettered by the retry policy (none: no deadline)",
        json_schema_extra={"metavar": "SECONDS"})] = None
    dlq_max_share: Annotated[Number, Field(
        ge=0, le=1, description="stop the stage when more than this share of the records "
        "consumed within dlq_window was dead-lettered (1: never stop)",
        json_schema_extra={"metavar": "SHARE"})] = 1.0
    dlq_window: Annotated[Number, Field(
        gt=0, description="seconds over which dlq_max_share is judged",
        json_schema_extra={"metavar": "SECONDS"})] = 60.0
    dlq_min_records: Annotated[Count, Field(
        ge=1, description="records consumed within dlq_window before dlq_max_share is "
        "judged", json_schema_extra={"metavar": "N"})] = 100
    shutdown_timeout: Annotated[Number, Field(
        gt=0, description="seconds a shutdown may take to drain and commit",
        json_schema_extra={"metavar": "SECONDS"})] = 30.0
    handler_mode: Annotated[HandlerMode, Field(
        description="how the handler runs: auto (an async def handler on an event loop, "
                    "any other in the loop's thread), sync, async, or threads (a blocking "
                    "handler on max_concurrency threads)")] = "auto"
    max_concurrency: Annotated[Count, Field(
        ge=1, le=100_000, description="async or threaded handlers: calls in flight at "
        "once (threads: the number of threads); batch handlers: batches in flight",
        json_schema_extra={"metavar": "N"})] = 100
    order: Annotated[Order, Field(
        description="concurrent handlers: outputs leave in input order per key, or per "
                    "partition (exactly-once always keeps partition order)")] = "key"
    handler_batch_size: Annotated[Count, Field(
        ge=1, description="batch handlers: most records in one call",
        json_schema_extra={"metavar": "N"})] = 500
    handler_batch_wait: Annotated[Number, Field(
        ge=0, description="batch handlers: seconds a batch waits to fill before the call",
        json_schema_extra={"metavar": "SECONDS"})] = 0.05
    drain_timeout: Annotated[Number, Field(
        gt=0, description="concurrent handlers: seconds calls in flight get to finish on a "
        "revocation or a shutdown; later ones are cancelled and their records read again",
        json_schema_extra={"metavar": "SECONDS"})] = 10.0
    transactional_id: Annotated[Name | None, Field(
        description="exactly-once: this instance's transactional id (default: derived from "
                    "the name)", json_schema_extra={"metavar": "ID"})] = None
    max_hops: Annotated[int | None, Field(
        ge=1, description="a stage that closes a ring (a feedback loop): how many times a "
        "record may pass it; each output carries the count in the header processor.hops, "
        "and a record past it is dead-lettered (reason hops)",
        json_schema_extra={"metavar": "N"})] = None

    state_dir: Annotated[Name | None, Field(
        description="stateful stages: folder of the persistent state stores (RocksDB, one "
        "per input partition); none: stores in memory, rebuilt from the changelog on every "
        "assignment (docs/state.md)", json_schema_extra={"metavar": "DIR"})] = None
    state_ttl: Annotated[Number | None, Field(
        gt=0, description="stateful stages: seconds a state entry lives after its last "
        "write (none: for ever)", json_schema_extra={"metavar": "SECONDS"})] = None
    dedup_window: Annotated[Number | None, Field(
        gt=0, description="drop an artifact whose id was seen in its partition within this "
        "many seconds (kept in the state store; docs/state.md)",
        json_schema_extra={"metavar": "SECONDS"})] = None

    def __post_init__(self) -> None:
        if clash := topic_clash(self.input_topic, self.output_topic, self.dlq_topic):
            raise ValueError(clash)

    @property
    def input_topics(self) -> tuple[str, ...]:
        """The topics the stage reads: `input_topic`, split at its commas (a Kafka topic
        name has none)."""
        return input_topics(self.input_topic)


def input_topics(input_topic: str) -> tuple[str, ...]:
    """`input_topic` split at its commas, blanks dropped."""
    return tuple(t.strip() for t in input_topic.split(","))


def topic_clash(input_topic: object, output_topic: object, dlq_topic: object) -> str | None:
    """The rules across fields of `StageOptions`: a stage must not write its output or
    its dead letters where it reads, and its input topics are named once each, none
    empty."""
    if not isinstance(input_topic, str):
        return None
    inputs = input_topics(input_topic)
    if "" in inputs:
        return "input_topic: an empty topic name between commas"
    if len(set(inputs)) < len(inputs):
        return "input_topic: a topic named twice"
    if {output_topic, dlq_topic} & set(inputs):
        return "input_topic must differ from output_topic and dlq_topic"
    return None
