"""The seed's Buffer: one handler around a stream of artifacts, bounded and full duplex.

`write(data)` decodes an encoded artifact, runs the handler on it synchronously (a handler
error propagates unchanged and nothing is queued), encodes what the handler returned and
queues it. `read()` returns the next queued encoding, blocking until there is one, and
`b""` once the buffer is closed and drained (end of stream).

Outcomes, as `processor.core.handlers.outcomes` normalises them:

* the same artifact object: queued as the original bytes, not encoded again;
* another artifact: encoded and queued;
* `None`: dropped, nothing is queued;
* a list: each part queued, in order (fan-out);
* `Routed(output, artifact)`: a buffer has one output, so the artifact is queued like any
  other; `read_routed()` gives the output name back to a reader that cares.

Backpressure: the queue holds at most `capacity` items. A write first waits for room for
one item (before decoding and running the handler, so a write refused for lack of room has
no side effects), then waits until the whole outcome fits and queues it at once: a
fan-out is never split, and a reader never sees part of one. A fan-out larger than
`capacity` waits until the buffer is empty and is then queued whole, going over the bound
for that once. Waiting ends after `write_timeout` seconds (None: no limit) with
`BufferFull`, or with `BufferClosed` when the buffer is closed meanwhile.

One writer thread and one reader thread may use a buffer at the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Final

from processor.core.artifact import Artifact
from processor.core.errors import BufferClosed, BufferEmpty, BufferFull, EmptyInput
from processor.core.handlers import DEFAULT_OUTPUT, Handler, Outcome, Routed, outcomes
from processor.serde.codec import Codec, default_codec

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY: Final = 64


class Buffer:
    """A bounded FIFO of processed artifacts around one handler."""

    def __init__(
        self,
        handler: Handler,
        capacity: int = DEFAULT_CAPACITY,
        codec: Codec | None = None,
        write_timeout: float | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"a buffer's capacity must be at least 1, not {capacity}")
        if write_timeout is not None and write_timeout < 0:
            raise ValueError(f"write_timeout must be None or >= 0, not {write_timeout}")
        self.handler = handler
        self.capacity = capacity
        self.codec = codec if codec is not None else default_codec
        self.write_timeout = write_timeout
        self._items: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False

    # --- writing ---------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Decode `data`, run the handler, queue the results; returns `len(data)`."""
        if not data:
            raise EmptyInput("empty input")
        deadline = self._deadline()
        self._wait_for_room(1, deadline)
        artifact = self.codec.decode(data)
        self._put(self._encode(artifact, self.handler(artifact), data), deadline)
        return len(data)

    def write_artifact(self, artifact: Artifact) -> None:
        """Run the handler on `artifact` and queue the results (no decoding)."""
        deadline = self._deadline()
        self._wait_for_room(1, deadline)
        self._put(self._encode(artifact, self.handler(artifact), None), deadline)

    def _encode(
        self, artifact: Artifact, result: Outcome, original: bytes | None
    ) -> list[tuple[str, bytes]]:
        if result is artifact and original is not None:
            return [(DEFAULT_OUTPUT, bytes(original))]
        encode = self.codec.encode
        return [(output, encode(item)) for output, item in outcomes(result)]

    def _deadline(self) -> float | None:
        timeout = self.write_timeout
        return None if timeout is None else time.monotonic() + timeout

    def _wait_for_room(self, count: int, deadline: float | None) -> None:
        """Wait, holding no lock on return, until `count` items fit (see the module doc)."""
        with self._lock:
            self._wait_locked(count, deadline)

    def _wait_locked(self, count: int, deadline: float | None) -> None:
        while True:
            if self._closed:
                raise BufferClosed("write to a closed buffer")
            queued = len(self._items)
            if queued + count <= self.capacity or queued == 0:
                return
            if deadline is None:
                self._not_full.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BufferFull(
                    f"buffer full: {queued} of {self.capacity} queued, no room for "
                    f"{count} more within {self.write_timeout}s"
                )
            self._not_full.wait(remaining)

    def _put(self, items: list[tuple[str, bytes]], deadline: float | None) -> None:
        if not items:
            return
        with self._lock:
            self._wait_locked(len(items), deadline)
            self._items.extend(items)
            self._not_empty.notify()

    # --- reading ---------------------------------------------------------------------

    def read_routed(self, timeout: float | None = None) -> tuple[str, bytes]:
        """The next item as `(output, encoded bytes)`; `("", b"")` at end of stream.

        Blocks until an item is there; with a `timeout` (seconds), raises `BufferEmpty`
        when none came in time.
        """
        with self._lock:
            if not self._items:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._items:
                    if self._closed:
                        return DEFAULT_OUTPUT, b""
                    if deadline is None:
                        self._not_empty.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BufferEmpty(f"no artifact to read within {timeout}s")
                    self._not_empty.wait(remaining)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def read(self, timeout: float | None = None) -> bytes:
        """The next processed artifact's encoding; `b""` once closed and drained (EOF)."""
        return self.read_routed(timeout)[1]

    def read_artifact(self, timeout: float | None = None) -> Artifact | None:
        """The next processed artifact, decoded; None at end of stream."""
        data = self.read(timeout)
        return self.codec.decode(data) if data else None

    def read_all_routed(self, timeout: float | None = None) -> Iterator[Routed]:
        """`Routed(output, artifact)` for every item until end of stream."""
        while True:
            output, data = self.read_routed(timeout)
            if not data:
                return
            yield Routed(output, self.codec.decode(data))

    def __iter__(self) -> Iterator[Artifact]:
        """The processed artifacts until end of stream (blocking between them)."""
        while True:
            artifact = self.read_artifact()
            if artifact is None:
                return
            yield artifact

    # --- state -----------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further writes; readers drain what is queued, then get end of stream.

        Wakes every blocked reader and writer; a writer waiting for room gets
        `BufferClosed`. Closing twice is harmless.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        logger.debug("buffer closed with %d items queued", len(self._items))

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """The number of items queued and not read yet."""
        return len(self._items)

    def __enter__(self) -> Buffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Buffer({state}, {len(self._items)}/{self.capacity} queued)"
