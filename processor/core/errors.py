"""The error hierarchy. Every error this package raises derives from `ProcessorError`."""

from __future__ import annotations


class ProcessorError(Exception):
    """Base class of every error raised by this package."""


# --- artifacts and the codec -------------------------------------------------------------


class DecodeError(ProcessorError):
    """Bytes that are not a valid Avro-encoded artifact."""


class ChecksumMismatch(DecodeError):
    """The artifact decoded, but its checksum does not match its payload."""


class EmptyInput(DecodeError):
    """An empty byte string was given where an encoded artifact was expected."""

    def __init__(self, message: str = "empty input") -> None:
        super().__init__(message)


class EncodeError(ProcessorError):
    """An artifact that cannot be encoded: a field of the wrong type for the wire schema."""


class SchemaError(ProcessorError):
    """A writer or reader schema that cannot be used."""


class SecurityError(ProcessorError):
    """A signature that does not verify, or a payload that cannot be decrypted."""


# --- handlers ----------------------------------------------------------------------------


class HandlerError(ProcessorError):
    """Base class of the errors a handler raises on purpose to steer the stage."""


class InvalidArtifact(HandlerError):
    """The artifact is wrong and always will be: it goes to the dead-letter topic."""


class RetryableError(HandlerError):
    """A passing failure (a service down, a timeout): the stage retries with backoff."""


class HandlerNotFound(ProcessorError):
    """A `module:function` reference that does not resolve to a callable."""


# --- buffers -----------------------------------------------------------------------------


class BufferClosed(ProcessorError):
    """A write to a buffer that was closed."""


class BufferFull(ProcessorError):
    """A write that waited for room in a full buffer longer than its timeout."""


class BufferEmpty(ProcessorError):
    """A read that waited for an item in an empty buffer longer than its timeout."""


# --- backends ----------------------------------------------------------------------------


class BackendError(ProcessorError):
    """A failure reported by a broker backend."""


class BrokerUnavailable(BackendError):
    """The broker cannot be reached."""


class UnknownTopic(BackendError):
    """A topic that does not exist."""


class OffsetOutOfRange(BackendError):
    """A seek or fetch outside a partition's offsets."""


class TransactionError(BackendError):
    """A transactional operation failed; the open transaction must be aborted."""


class ProducerFenced(TransactionError):
    """Another producer with the same transactional id took over: this one must stop."""


class DeliveryFailed(BackendError):
    """The broker did not acknowledge a produced record."""


class ProducerQueueFull(BackendError):
    """The producer's local queue was still full at the deadline given to
    `Producer.set_deadline` (the broker slow or away): the record was not queued."""


class AuthenticationFailed(BackendError):
    """The broker refused the client's credentials (SASL), or the TLS handshake failed
    (an untrusted or mismatching certificate): retrying cannot help."""


class NotAuthorized(BackendError):
    """The broker's authorizer denied an operation: the client's principal lacks an ACL."""


class RebalanceInProgress(BackendError):
    """A commit was refused because the group is rebalancing."""


# --- configuration -----------------------------------------------------------------------


class ConfigError(ProcessorError):
    """An invalid configuration value; the message names the field and what is allowed."""
