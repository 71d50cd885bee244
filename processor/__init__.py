"""processor: a Kafka-backed distributed stream processor for Avro-encoded artifacts.

The public surface most users need is re-exported here: the `Artifact` value type,
the handler outcome types and the `Buffer`.
"""

from processor.core.artifact import Artifact, MediaType, Role, Scope
from processor.core.errors import (
    InvalidArtifact,
    ProcessorError,
    RetryableError,
)

__all__ = [
    "Artifact",
    "InvalidArtifact",
    "MediaType",
    "ProcessorError",
    "RetryableError",
    "Role",
    "Scope",
]

__version__ = "0.1.0"
