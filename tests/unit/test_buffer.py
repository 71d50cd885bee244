"""The bounded, full-duplex Buffer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from processor.core.artifact import Artifact
from processor.core.errors import BufferClosed, BufferEmpty, BufferFull, EmptyInput, InvalidArtifact
from processor.core.handlers import Outcome, Routed
from processor.inproc.buffer import Buffer
from processor.serde.codec import decode, encode
from tests.watched import watch

JOIN = 10.0


def same(a: Artifact) -> Artifact:
    return a


def upper(a: Artifact) -> Artifact:
    return a.with_payload(a.payload.upper())


def item(i: int) -> bytes:
    return encode(Artifact.new(f"item {i}", meta={"seq": i}, id=f"id-{i}", timestamp=i))


def start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_write_runs_the_handler_and_read_returns_its_encoding() -> None:
    buf = Buffer(upper)
    data = item(1)
    assert buf.write(data) == len(data)
    out = buf.read()
    assert out == encode(decode(data).with_payload(b"ITEM 1"))


def test_fifo_order() -> None:
    buf = Buffer(upper, capacity=100)
    for i in range(100):
        buf.write(item(i))
    assert [decode(buf.read()).get("seq", -1) for _ in range(100)] == list(range(100))


def test_an_unchanged_artifact_passes_its_original_bytes_through() -> None:
    buf = Buffer(same)
    data = item(7)
    buf.write(data)
    assert buf.read() == data


def test_empty_input_is_refused_and_nothing_is_queued() -> None:
    calls: list[Artifact] = []

    def record(a: Artifact) -> Artifact:
        calls.append(a)
        return a

    buf = Buffer(record)
    with pytest.raises(EmptyInput, match=r"^empty input$"):
        buf.write(b"")
    assert len(buf) == 0 and calls == []


def test_handler_error_propagates_unchanged_and_nothing_is_queued() -> None:
    error = InvalidArtifact("no")

    def fail(a: Artifact) -> Artifact:
        raise error

    buf = Buffer(fail)
    with pytest.raises(InvalidArtifact) as caught:
        buf.write(item(1))
    assert caught.value is error
    assert len(buf) == 0
    buf.close()
    assert buf.read() == b""


def test_none_drops_and_a_list_fans_out_in_order() -> None:
    def fan(a: Artifact) -> Outcome:
        n = a.get("seq", 0)
        return None if n == 0 else [a.with_meta("part", p) for p in range(n)]

    buf = Buffer(fan)
    buf.write(item(0))
    assert len(buf) == 0
    buf.write(item(3))
    parts = [decode(buf.read()) for _ in range(3)]
    assert [p.get("part", -1) for p in parts] == [0, 1, 2]
    assert len(buf) == 0


def test_routed_artifacts_are_queued_with_their_output_name() -> None:
    buf = Buffer(lambda a: [Routed("audit", a.with_state("audited")), a])
    data = item(1)
    buf.write(data)
    output, first = buf.read_routed()
    assert output == "audit" and decode(first).state == "audited"
    assert buf.read_routed() == ("", encode(decode(data)))


def test_write_artifact_and_read_artifact() -> None:
    buf = Buffer(upper)
    buf.write_artifact(Artifact.new("x", id="1", timestamp=5))
    got = buf.read_artifact()
    assert got is not None and got.payload == b"X" and got.id == "1"
    buf.close()
    assert buf.read_artifact() is None


def test_read_with_timeout_raises_buffer_empty() -> None:
    buf = Buffer(same)
    started = time.monotonic()
    with pytest.raises(BufferEmpty):
        buf.read(timeout=0.05)
    assert time.monotonic() - started >= 0.05


# --- backpressure ---------------------------------------------------------------------------


def test_a_full_buffer_refuses_after_the_timeout_without_running_the_handler() -> None:
    calls: list[int] = []

    def count(a: Artifact) -> Artifact:
        calls.append(1)
        return a

    buf = Buffer(count, capacity=2, write_timeout=0.05)
    buf.write(item(1))
    buf.write(item(2))
    started = time.monotonic()
    with pytest.raises(BufferFull, match="2 of 2 queued"):
        buf.write(item(3))
    assert time.monotonic() - started >= 0.05
    assert len(calls) == 2 and len(buf) == 2
    assert decode(buf.read()).get("seq", 0) == 1


def test_a_blocked_write_completes_when_a_reader_makes_room() -> None:
    buf = Buffer(same, capacity=1)
    _, not_full = watch(buf)
    buf.write(item(1))
    done = threading.Event()
    writer = start(lambda: done.set() if buf.write(item(2)) else None)
    assert not_full.waiting.wait(JOIN)  # the writer is blocked: the buffer is full
    assert not done.is_set() and len(buf) == 1
    assert decode(buf.read()).get("seq", 0) == 1
    assert done.wait(JOIN)
    writer.join(JOIN)
    assert decode(buf.read()).get("seq", 0) == 2


def test_a_fan_out_is_queued_whole_or_not_at_all() -> None:
    buf = Buffer(lambda a: [a, a.with_state("copy")], capacity=2, write_timeout=0.05)
    buf.write_artifact(Artifact.new("one"))  # two queued, no room
    buf.read()  # one free slot, the fan-out needs two
    with pytest.raises(BufferFull, match="no room for 2 more"):
        buf.write(item(2))
    assert len(buf) == 1


def test_a_fan_out_larger_than_the_capacity_waits_for_an_empty_buffer() -> None:
    def five(a: Artifact) -> Outcome:
        if a.get("seq", 0) == 2:
            not_full.waiting.clear()  # from here on, a wait is the wait to queue these five
        return [a.with_meta("part", p) for p in range(5)]

    buf = Buffer(five, capacity=2)
    _, not_full = watch(buf)
    buf.write(item(1))  # five queued into an empty buffer
    assert len(buf) == 5
    done = threading.Event()
    writer = start(lambda: done.set() if buf.write(item(2)) else None)
    for _ in range(4):
        buf.read()
    # One item still queued: the writer has room for one, runs the handler, and then
    # waits for an empty buffer to queue its five.
    assert not_full.waiting.wait(JOIN)
    assert not done.is_set() and len(buf) == 1
    buf.read()
    assert done.wait(JOIN)
    writer.join(JOIN)
    assert [decode(buf.read()).get("seq", 0) for _ in range(5)] == [2] * 5


# --- close and end of stream ----------------------------------------------------------------


def test_close_drains_then_reads_eof_and_refuses_writes() -> None:
    with Buffer(same) as buf:
        buf.write(item(1))
    assert buf.closed
    assert buf.read() == item(1)
    assert buf.read() == b""
    assert buf.read(timeout=0.01) == b""
    with pytest.raises(BufferClosed):
        buf.write(item(2))
    with pytest.raises(BufferClosed):
        buf.write_artifact(Artifact.new("x"))
    buf.close()  # twice is fine


def test_close_wakes_a_blocked_reader_with_eof() -> None:
    buf = Buffer(same)
    not_empty, _ = watch(buf)
    results: list[bytes] = []
    reader = start(lambda: results.append(buf.read()))
    assert not_empty.waiting.wait(JOIN)  # the reader is blocked: nothing to read
    assert results == []
    buf.close()
    reader.join(JOIN)
    assert results == [b""]


def test_close_wakes_a_blocked_writer_with_buffer_closed() -> None:
    buf = Buffer(same, capacity=1)
    _, not_full = watch(buf)
    buf.write(item(1))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            buf.write(item(2))
        except BufferClosed as exc:
            errors.append(exc)

    writer = start(write)
    assert not_full.waiting.wait(JOIN)  # the writer is blocked: the buffer is full
    assert errors == []
    buf.close()
    writer.join(JOIN)
    assert len(errors) == 1
    assert buf.read() == item(1) and buf.read() == b""


def test_iteration_yields_artifacts_until_eof() -> None:
    buf = Buffer(upper)
    for i in range(3):
        buf.write(item(i))
    buf.close()
    assert [a.text() for a in buf] == ["ITEM 0", "ITEM 1", "ITEM 2"]


def test_read_all_routed() -> None:
    buf = Buffer(lambda a: Routed("side", a))
    buf.write(item(1))
    buf.close()
    assert [(r.output, r.artifact.get("seq", 0)) for r in buf.read_all_routed()] == [("side", 1)]


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Buffer(same, capacity=capacity)


# --- full duplex ---------------------------------------------------------------------------


def test_full_duplex_moves_ten_thousand_artifacts_in_order() -> None:
    count = 10_000
    inputs = [item(i) for i in range(count)]
    buf = Buffer(lambda a: a.with_state("seen"), capacity=16)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for data in inputs:
                buf.write(data)
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)
        finally:
            buf.close()

    writer = start(produce)
    seen = [(a.get("seq", -1), a.state) for a in buf]
    writer.join(JOIN)
    assert errors == []
    assert seen == [(i, "seen") for i in range(count)]
