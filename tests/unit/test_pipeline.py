"""Pipelines of buffers and the feedback loop."""

from __future__ import annotations

import threading

import pytest

from processor.core.artifact import Artifact
from processor.core.errors import BufferClosed, RetryableError
from processor.core.handlers import Handler, Outcome
from processor.inproc.buffer import Buffer
from processor.inproc.pipeline import Feedback, Pipeline
from processor.serde.codec import decode, encode
from tests.watched import watch

JOIN = 10.0


def append(suffix: bytes) -> Handler:
    def handle(a: Artifact) -> Artifact:
        return a.with_payload(a.payload + suffix)

    return handle


def item(i: int) -> bytes:
    return encode(Artifact.new(f"{i}:", meta={"seq": i}, id=str(i), timestamp=i))


def drain(stream: Pipeline | Feedback | Buffer) -> list[Artifact]:
    return [decode(data) for data in iter(stream.read, b"")]


def three(capacity: int = 64) -> Pipeline:
    return Pipeline(
        Buffer(append(b"a"), capacity),
        Buffer(append(b"b"), capacity),
        Buffer(append(b"c"), capacity),
    )


def test_three_buffers_in_order() -> None:
    pipeline = three()
    for i in range(50):
        pipeline.write(item(i))
    pipeline.close()
    out = drain(pipeline)
    assert [a.text() for a in out] == [f"{i}:abc" for i in range(50)]
    assert pipeline.join(JOIN)
    assert pipeline.read() == b""


def test_full_duplex_with_small_buffers_keeps_order() -> None:
    count = 2_000
    pipeline = three(capacity=4)
    inputs = [item(i) for i in range(count)]

    def produce() -> None:
        for data in inputs:
            pipeline.write(data)
        pipeline.close()

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    out = drain(pipeline)
    writer.join(JOIN)
    assert [a.get("seq", -1) for a in out] == list(range(count))
    assert all(a.payload.endswith(b"abc") for a in out)


def test_a_dropping_stage_in_the_middle() -> None:
    def evens(a: Artifact) -> Outcome:
        return a if a.get("seq", 1) % 2 == 0 else None

    with Pipeline(Buffer(append(b"a")), Buffer(evens), Buffer(append(b"c"))) as pipeline:
        for i in range(10):
            pipeline.write(item(i))
    assert [a.text() for a in drain(pipeline)] == [f"{i}:ac" for i in range(0, 10, 2)]


def test_a_single_stage_pipeline() -> None:
    with Pipeline(Buffer(append(b"!"))) as pipeline:
        pipeline.write(item(1))
    assert [a.text() for a in drain(pipeline)] == ["1:!"]


def test_a_failing_stage_stops_the_pipeline_with_its_error() -> None:
    error = RetryableError("service down")

    def fail_on_three(a: Artifact) -> Artifact:
        if a.get("seq", 0) == 3:
            raise error
        return a

    pipeline = Pipeline(Buffer(append(b"a")), Buffer(fail_on_three), Buffer(append(b"c")))
    for i in range(5):
        try:
            pipeline.write(item(i))
        except RetryableError:
            break  # the pipeline may already have stopped
    got: list[int] = []
    with pytest.raises(RetryableError) as caught:
        while True:
            data = pipeline.read(timeout=JOIN)
            got.append(decode(data).get("seq", -1))
    assert caught.value is error
    assert got == [0, 1, 2]
    assert pipeline.failure is error
    with pytest.raises(RetryableError):
        pipeline.write(item(9))
    assert pipeline.join(JOIN)


def test_abort_stops_everything_at_once() -> None:
    first, middle, last = (Buffer(append(suffix), 1) for suffix in (b"a", b"b", b"c"))
    _, last_full = watch(last)
    pipeline = Pipeline(first, middle, last)
    pipeline.write(item(1))
    pipeline.write(item(2))
    assert last_full.waiting.wait(JOIN)  # a pump holds item 2, blocked on the full last stage
    pipeline.abort()
    assert pipeline.join(JOIN)  # the blocked pump was woken and stopped
    assert [a.text() for a in drain(pipeline)] == ["1:abc"]  # what was queued stays readable
    assert pipeline.failure is None
    with pytest.raises(BufferClosed):
        pipeline.write(item(3))


def test_a_pipeline_needs_a_stage() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline()


def test_pipelines_nest() -> None:
    inner = Pipeline(Buffer(append(b"b")), Buffer(append(b"c")))
    with Pipeline(Buffer(append(b"a")), inner) as outer:
        outer.write(item(1))
    assert [a.text() for a in drain(outer)] == ["1:abc"]


# --- feedback --------------------------------------------------------------------------------


def test_feedback_writes_everything_read_forward_backward() -> None:
    backward = Buffer(append(b"<"), capacity=100)
    loop = Feedback(three(), backward)
    for i in range(5):
        loop.write(item(i))
    loop.close()
    forward = drain(loop)
    assert [a.text() for a in forward] == [f"{i}:abc" for i in range(5)]
    # The end of the forward stream closed the backward buffer too.
    assert [a.text() for a in drain(backward)] == [f"{i}:abc<" for i in range(5)]


def test_feedback_into_the_head_of_a_loop_recirculates() -> None:
    """The seed's loop: what comes out is fed back in, until a stage stops it."""
    head = Buffer(lambda a: a if a.get("seq", 0) < 3 else None, capacity=8)
    pipeline = Pipeline(head, Buffer(lambda a: a.with_meta("seq", a.get("seq", 0) + 1)))
    loop = Feedback(pipeline, head)
    loop.write(item(0))
    seen = [decode(loop.read(timeout=JOIN)).get("seq", -1) for _ in range(3)]
    assert seen == [1, 2, 3]
    pipeline.abort()


def test_feedback_exit_closes_both_sides() -> None:
    forward, backward = Buffer(append(b"f")), Buffer(append(b"b"))
    backward_readable, _ = watch(backward)
    reader_done: list[bytes] = []

    def read_backward() -> None:
        reader_done.append(backward.read())

    thread = threading.Thread(target=read_backward, daemon=True)
    thread.start()
    assert backward_readable.waiting.wait(JOIN)  # the backward reader is blocked
    with Feedback(forward, backward):
        pass
    thread.join(JOIN)
    assert reader_done == [b""]  # woken by the close, with the end of the stream
    assert forward.closed and backward.closed
