"""From confluent-kafka's errors to the processor's (`processor.core.errors`).

`raise_kafka` sorts a `KafkaException` by librdkafka's error code and flags:

* authentication refused or TLS failed -> `AuthenticationFailed`; an operation the
  authorizer denied (a missing ACL) -> `NotAuthorized`, naming the ACL to grant, and the
  group or transactional id refused when the client says (`names`: librdkafka does not);
* fenced (another producer took the transactional id over) -> `ProducerFenced`;
* any error of a transactional call, or one whose `txn_requires_abort()` is set ->
  `TransactionError` (abort and re-process; a fatal one means a new producer);
* unknown topic or partition -> `UnknownTopic`; a group that moved on (rebalance,
  stale member) -> `RebalanceInProgress`; `OFFSET_OUT_OF_RANGE` -> `OffsetOutOfRange`;
* no broker reachable -> `BrokerUnavailable`; anything else -> `BackendError`.

`SETTLING` lists what a cluster answers for a moment after a topic is created or a
leader moved: callers retry those for a while instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final, NoReturn, TypeAlias

from confluent_kafka import KafkaError, KafkaException

from processor.core.errors import (
    AuthenticationFailed,
    BackendError,
    BrokerUnavailable,
    NotAuthorized,
    OffsetOutOfRange,
    ProducerFenced,
    RebalanceInProgress,
    TransactionError,
    UnknownTopic,
)

logger = logging.getLogger(__name__)

FENCED_CODES: Final = frozenset({
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
})
AUTHENTICATION_CODES: Final = frozenset({
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
    KafkaError.ILLEGAL_SASL_STATE,
    KafkaError._SSL,
})
"""The client could not authenticate: librdkafka retries these forever, yet a retry
with the same credentials and certificates cannot succeed."""
AUTHORIZATION_CODES: Final = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "the topic (READ to consume, WRITE to produce)",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "the consumer group (READ)",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "the transactional id (WRITE)",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "the cluster (IDEMPOTENT_WRITE, or the "
                                             "operation's own)",
}
"""Authorizer denials, each with the ACL that is missing."""
UNKNOWN_TOPIC_CODES: Final = frozenset({
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
})
REBALANCE_CODES: Final = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
    KafkaError._ASSIGNMENT_LOST,
})
UNAVAILABLE_CODES: Final = frozenset({
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError.BROKER_NOT_AVAILABLE,
})
# Answers a partition gives for a moment after its topic was created or its leader moved.
SETTLING: Final = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
})


def error_of(exc: KafkaException) -> KafkaError | None:
    """The `KafkaError` a `KafkaException` carries, if it carries one."""
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def is_denied(error: KafkaError | None) -> bool:
    """Whether `error` is an authentication or authorization failure (never retried)."""
    return error is not None and (error.code() in AUTHENTICATION_CODES
                                  or error.code() in AUTHORIZATION_CODES)


Names: TypeAlias = Mapping[int, str]
"""An authorization error code -> the resource a client was refused, which librdkafka's
message does not name (`GROUP_AUTHORIZATION_FAILED` -> `group validate`)."""


def denied(error: KafkaError, what: str, names: Names | None = None
           ) -> AuthenticationFailed | NotAuthorized:
    """The error for an authentication or authorization failure `error` of `what`,
    in one line that says what to check or which ACL to grant, naming the resource when
    `names` knows it."""
    code = error.code()
    if names and code in names:
        what = f"{what} ({names[code]})"
    if code in AUTHORIZATION_CODES:
        return NotAuthorized(
            f"{what}: not authorized ({error.name()}: {error.str()}); grant this client's "
            f"principal an ACL on {AUTHORIZATION_CODES[code]}")
    if code == KafkaError._SSL:
        return AuthenticationFailed(
            f"{what}: TLS handshake failed ({error.str()}); check ssl.ca.location (the CA "
            "that signed the broker's certificate) and the broker's host name")
    return AuthenticationFailed(
        f"{what}: authentication failed ({error.str()}); check sasl.mechanism, "
        "sasl.username and sasl.password")


def raise_kafka(exc: KafkaException, what: str, *, transactional: bool = False,
                fatal_hint: KafkaError | None = None, names: Names | None = None) -> NoReturn:
    """Raise the `processor.core.errors` exception for a KafkaException of operation `what`.

    `transactional` marks a call of the transactions API; `fatal_hint` is the fatal error
    the client reported through its error callback, which explains a bare `_FATAL`;
    `names` the resources the client uses, named in an authorization failure (`denied`).
    """
    error = error_of(exc)
    if error is None:
        raise BackendError(f"{what}: {exc}") from exc
    code = error.code()
    text = f"{what}: {error.str()} ({error.name()})"
    if code == KafkaError._FATAL and fatal_hint is not None:
        if is_denied(fatal_hint):
            raise denied(fatal_hint, what, names) from exc
        code = fatal_hint.code()
        text = f"{text}; cause: {fatal_hint.str()}"
    if is_denied(error):
        raise denied(error, what, names) from exc
    if code in FENCED_CODES or (error.fatal() and "fenced" in error.str().lower()):
        raise ProducerFenced(
            f"{text}: another producer with the same transactional id took over; "
            "this one must stop") from exc
    if transactional or error.txn_requires_abort():
        qualifier = (" (fatal: close this producer and create a new one)" if error.fatal()
                     else " (abort the transaction)" if error.txn_requires_abort() else "")
        raise TransactionError(text + qualifier) from exc
    if code in UNKNOWN_TOPIC_CODES:
        raise UnknownTopic(text) from exc
    if code in REBALANCE_CODES:
        raise RebalanceInProgress(text) from exc
    if code == KafkaError.OFFSET_OUT_OF_RANGE:
        raise OffsetOutOfRange(text) from exc
    if code in UNAVAILABLE_CODES:
        raise BrokerUnavailable(text) from exc
    raise BackendError(text) from exc


class ErrorLog:
    """error_cb of a client: logs librdkafka's error events, remembers the fatal one and
    the first authentication or authorization failure (`denied`).

    confluent-kafka raises librdkafka's fatal error from the poll() that serves it rather
    than passing it here; the producer stores it in `fatal` then (`KafkaProducer._serve`).

    A user's own `error_cb` setting is chained: it is called after the log line.
    """

    def __init__(self, client: str, chained: object = None, *, quiet: bool = False,
                 names: Names | None = None) -> None:
        """`quiet`: log nothing (the caller turns what it remembers into an error);
        `names`: the resources the client uses, for its authorization errors (`denied`)."""
        self.client = client
        self.names: Names = dict(names or {})
        self.quiet = quiet
        self.fatal: KafkaError | None = None
        self.denied: KafkaError | None = None
        self._chained = chained if callable(chained) else None

    def __call__(self, error: KafkaError) -> None:
        if is_denied(error) and self.denied is None:
            self.denied = error
        if error.fatal():
            self.fatal = error
        if self.quiet:
            pass
        elif error.fatal():
            logger.error("%s: fatal Kafka error: %s", self.client, error.str())
        elif error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            logger.warning("%s: %s", self.client, error.str())
        else:
            logger.info("%s: Kafka error event: %s", self.client, error.str())
        if self._chained is not None:
            self._chained(error)
