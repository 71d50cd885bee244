"""In-process chains of buffers: the seed's `workflow.NewPipeline` and its feedback loop.

`Pipeline(b1, b2, b3)` is written at `b1` and read at `b3`. One pump thread per link moves
every item from a stage to the next, in order, so the pipeline is full duplex: a writer
and a reader can use it at the same time, and a full stage holds the pump (and so, in
turn, the writer) back. Give inner buffers no `write_timeout`, or a pump may stop with
`BufferFull`.

Closing propagates: `close()` closes the first stage; each pump, on reaching the end of
its source, closes the next stage, so `read()` returns every item and then `b""`.

When a pump fails (a handler of a later stage raised), the pipeline stops taking input:
the stages up to the failing one are closed and what they still hold is dropped; the items
the failing stage had already processed flow on to the end and are still read; then
`read()` raises the handler's error, unchanged, as does any later `write()`.

`Feedback(forward, backward)` reads from `forward` and writes everything it reads into
`backward` as well.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Protocol

from processor.core.errors import BufferClosed

logger = logging.getLogger(__name__)


class Stream(Protocol):
    """What a pipeline chains: a `Buffer`, a `Pipeline`, a `Feedback` or a lookalike."""

    def write(self, data: bytes) -> int: ...

    def read(self, timeout: float | None = None) -> bytes: ...

    def close(self) -> None: ...


class Pipeline:
    """Stages chained in order: write to the first, read from the last."""

    def __init__(self, *stages: Stream) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = stages
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._pumps = [
            threading.Thread(
                target=self._pump,
                args=(stages[i], stages[i + 1], i),
                name=f"pipeline-pump-{i}",
                daemon=True,
            )
            for i in range(len(stages) - 1)
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, source: Stream, target: Stream, link: int) -> None:
        try:
            while True:
                data = source.read()
                if not data:
                    target.close()
                    return
                target.write(data)
        except BufferClosed:
            # The pipeline was aborted under us (or failed elsewhere): nothing to report.
            logger.debug("pipeline pump %d stopped: its target is closed", link)
        except Exception as exc:
            with self._failure_lock:
                if self._failure is None:
                    self._failure = exc
            logger.warning("pipeline stopped: stage %d raised %r", link + 1, exc)
            # Stop the stages up to the failed one; what got past it drains to the end.
            for stage in self.stages[: link + 1]:
                stage.close()
            target.close()

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the pipeline, if one did."""
        return self._failure

    def write(self, data: bytes) -> int:
        """Write into the first stage (blocking while it is full)."""
        if self._failure is not None:
            raise self._failure
        try:
            return self.stages[0].write(data)
        except BufferClosed:
            if self._failure is not None:
                raise self._failure from None
            raise

    def read(self, timeout: float | None = None) -> bytes:
        """The next item out of the last stage; `b""` at the end of the stream."""
        data = self.stages[-1].read(timeout)
        if not data and self._failure is not None:
            raise self._failure
        return data

    def close(self) -> None:
        """End the input: items already written still come out, then end of stream."""
        self.stages[0].close()

    def abort(self) -> None:
        """Close every stage at once: writers and pumps stop; queued items stay readable."""
        for stage in self.stages:
            stage.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the pumps to finish; True when all did within `timeout` seconds."""
        for pump in self._pumps:
            pump.join(timeout)
        return not any(pump.is_alive() for pump in self._pumps)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.stages))})"


class Feedback:
    """Reads from `forward`; everything read is also written into `backward`.

    Writes go to `forward`. At the end of `forward`'s stream, `backward` is closed too, so
    its reader sees the end as well. Someone must read `backward`, or it fills up and
    `read()` blocks (or raises `BufferFull`, when it has a `write_timeout`).
    """

    def __init__(self, forward: Stream, backward: Stream) -> None:
        self.forward = forward
        self.backward = backward

    def write(self, data: bytes) -> int:
        return self.forward.write(data)

    def read(self, timeout: float | None = None) -> bytes:
        data = self.forward.read(timeout)
        if data:
            self.backward.write(data)
        else:
            self.backward.close()
        return data

    def close(self) -> None:
        self.forward.close()

    def __enter__(self) -> Feedback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        self.backward.close()
