"""A stage with several input topics (fan-in: `input_topic: a,b`), on both backends: every
record of every input comes out once, in order per partition of each input, and the
group's committed offsets reach the end of each input topic, under both guarantees and
for a synchronous and an async handler."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.core.options import StageOptions
from tests.conformance.helpers import wait_for
from tests.conformance.test_concurrent_stage import (
    CODEC,
    DEADLINE,
    all_committed,
    read_output,
    running,
    stage_options,
)

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def _load(broker: Broker, topic: str, n: int, tag: str) -> None:
    producer = broker.producer()
    for i in range(n):
        producer.produce(topic, CODEC.encode(Artifact.new(b"x", meta={"src": tag, "seq": i})),
                         b"k%d" % (i % 5))
    assert producer.flush(30) == 0
    producer.close()


def _sync(artifact: Artifact) -> Outcome:
    return artifact.with_meta("seen", True)


async def _async(artifact: Artifact) -> Outcome:
    return artifact.with_meta("seen", True)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stage_reads_several_input_topics(
        broker: Broker, backend_name: str, new_topic: NewTopic, unique_name: Name,
        guarantee: str, kind: str) -> None:
    first, second, sink = new_topic(2), new_topic(1), new_topic(2)
    _load(broker, first, 60, "a")
    _load(broker, second, 40, "b")
    group = unique_name("fan-in")
    options: StageOptions = stage_options(f"{first}, {second}", sink, group,
                                          guarantee=guarantee)
    assert options.input_topics == (first, second)
    with running(broker, options, _sync if kind == "sync" else _async):
        for topic, n in ((first, 60), (second, 40)):
            wait_for(all_committed(broker, group, topic, n), timeout=DEADLINE,
                     what=f"the offsets of {topic} to be committed")
    out = read_output(broker, sink, 100, unique_name("reader"), backend_name)
    seen: dict[tuple[str, bytes | None], list[int]] = defaultdict(list)
    for message in out:
        artifact = CODEC.decode(message.value() or b"")
        assert artifact.get("seen") is True
        seen[(str(artifact.get("src")), message.key())].append(int(artifact.get("seq", -1)))
    for tag, n in (("a", 60), ("b", 40)):
        got = sorted(s for (src, _), seqs in seen.items() if src == tag for s in seqs)
        assert got == list(range(n)), f"input {tag}: {got}"
    for (src, key), seqs in seen.items():  # a key stays on one partition of its input
        assert seqs == sorted(seqs), f"{src} {key!r} out of order: {seqs}"


def test_input_topics_are_named_once_and_never_written() -> None:
    with pytest.raises(ValueError, match="named twice"):
        StageOptions(name="s", input_topic="a,a", output_topic="o", group="g")
    with pytest.raises(ValueError, match="empty topic name"):
        StageOptions(name="s", input_topic="a,,b", output_topic="o", group="g")
    with pytest.raises(ValueError, match="must differ"):
        StageOptions(name="s", input_topic="a,o", output_topic="o", group="g")
