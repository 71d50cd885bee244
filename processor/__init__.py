"""processor: a Kafka-backed distributed stream processor for Avro-encoded artifacts.

What a handler author and an in-process user need is re-exported here:

* the `Artifact` value type and its vocabularies `MediaType`, `Role`, `Scope`, `State`;
* handler outcomes: `Routed` (an artifact for a named output), the `Handler` and `Outcome`
  types, `chain` to compose handlers and `@handler` to register one by name;
* keyed state: `@stateful` handlers get the `KeyState` of their record's key
  (docs/state.md);
* the errors a handler raises (`InvalidArtifact`, `RetryableError`) and their base,
  `ProcessorError`;
* the seed's in-process streams: `Buffer` (one handler, bounded, full duplex) and
  `Pipeline` (buffers chained).

Everything else is imported from its layer (`processor.runtime`, `processor.backends`,
...; see docs/architecture.md).
"""

from processor.core.artifact import Artifact, MediaType, Role, Scope, State
from processor.core.errors import (
    InvalidArtifact,
    ProcessorError,
    RetryableError,
)
from processor.core.handlers import Handler, Outcome, Routed, chain, handler
from processor.core.state import KeyState, stateful
from processor.inproc.buffer import Buffer
from processor.inproc.pipeline import Pipeline

__all__ = [
    "Artifact",
    "Buffer",
    "Handler",
    "InvalidArtifact",
    "KeyState",
    "MediaType",
    "Outcome",
    "Pipeline",
    "ProcessorError",
    "RetryableError",
    "Role",
    "Routed",
    "Scope",
    "State",
    "chain",
    "handler",
    "stateful",
]

__version__ = "0.1.0"
