"""A ring: the stage that closes a feedback loop counts the loops a record made.

A pipeline may feed a stage's output back into an earlier stage (the seed's `Ring`).
The stage that closes the loop is given `max_hops`. Each record it consumes carries its
count of passes in the header `processor.hops` (absent: 0); every output and dead letter
made from it carries that count plus one, so the next pass sees one more. A record that
arrives having passed `max_hops` times already is not handled: it is dead-lettered with
reason `hops`, so a loop can never spin for ever.

It is two thin wrappers, made only for a stage with `max_hops` (every other stage's
record path is unchanged):

* `RingConsumer` hands out each consumed record as a `RingMessage` whose headers carry
  the next count: outputs and dead letters copy their input's headers, on every
  handler path, so each one carries it;
* `RingCodec` refuses, in the codec's decode, a record whose count is past the maximum
  (`HopsExceeded`, a `DecodeError` whose reason is `hops`), so that it is dead-lettered
  in its turn, in order with the records around it, on every path.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from processor.backends.abstract import Consumer, Headers, Message, MessageView
from processor.core.artifact import Artifact
from processor.core.errors import DecodeError
from processor.serde.wire import Record, WireCodec

HOPS_HEADER: Final = "processor.hops"


class HopsExceeded(DecodeError):
    """A record that went round its ring `max_hops` times already."""

    reason: ClassVar[str] = "hops"


def hops_of(headers: Headers | None) -> int:
    """The count in `headers` (0 when absent or not a number)."""
    for key, value in headers or ():
        if key == HOPS_HEADER and value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class RingMessage(MessageView):
    """A consumed record whose headers carry its count of passes plus one."""

    __slots__ = ("hops",)

    def __init__(self, msg: Message) -> None:
        headers = msg.headers() or []
        self.hops = hops_of(headers) + 1
        super().__init__(msg, [*((k, v) for k, v in headers if k != HOPS_HEADER),
                               (HOPS_HEADER, str(self.hops).encode())])


class RingConsumer:
    """The stage's consumer, handing out `RingMessage`s (everything else delegated)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        return [RingMessage(m) for m in self._consumer.consume(max_messages, timeout)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class RingCodec:
    """The stage's codec, refusing a record past `max_hops` before decoding it
    (everything else delegated)."""

    def __init__(self, codec: WireCodec, max_hops: int) -> None:
        self._codec = codec
        self.max_hops = max_hops
        self.passthrough = codec.passthrough

    def _check(self, headers: Headers | None) -> None:
        hops = hops_of(headers)  # this pass included (`RingMessage`)
        if hops > self.max_hops:
            raise HopsExceeded(f"the record went round its ring {hops - 1} times "
                               f"(max_hops {self.max_hops})")

    def decode(self, value: bytes, headers: Headers | None = None) -> Artifact:
        self._check(headers)
        return self._codec.decode(value, headers)

    def wrap(self, message: Record) -> Artifact:
        self._check(message.headers())
        return self._codec.wrap(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)


def ring_parts(consumer: Consumer, codec: WireCodec,
               max_hops: int) -> tuple[Consumer, WireCodec]:
    """The consumer and codec of a stage that closes a ring."""
    return RingConsumer(consumer), RingCodec(codec, max_hops)  # type: ignore[return-value]
