"""Emit: the outputs of one handled record, produced. Both record paths (the loop's own,
`Stage.process`, and the concurrent one, `runtime/concurrent.py`) write through here
whatever is not one of their two inlined common cases (the artifact passed through
unchanged, one new artifact for the default output): fan-out, routed outputs, and the
errors of a handler that routes where no topic is configured.

An output keeps its input's key; an artifact the handler returned unchanged (the same
object) goes out as its original bytes and headers, any other is encoded with the
writer schema's identity in its headers (`WireCodec.headers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from processor.backends.abstract import Headers, Producer
from processor.core.artifact import Artifact
from processor.core.handlers import DEFAULT_OUTPUT
from processor.runtime.failures import StageFailed
from processor.serde.wire import WireCodec


class Emitter:
    """Produces a record's outputs to their topics (see the module documentation)."""

    __slots__ = ("codec", "default_topic", "name", "outputs", "producer")

    def __init__(self, name: str, codec: WireCodec, producer: Producer,
                 outputs: Mapping[str, str | None]) -> None:
        self.name = name
        self.codec = codec
        self.producer = producer
        self.outputs = outputs
        self.default_topic = outputs[DEFAULT_OUTPUT]

    def no_output(self) -> StageFailed:
        """The error for an artifact returned by a stage with no output topic (a sink)."""
        return StageFailed(f"stage {self.name} has no output topic for an artifact")

    def pairs(self, pairs: Sequence[tuple[str, Artifact]], artifact: Artifact | None,
              value: bytes, key: bytes | None, headers: Headers | None,
              routed: dict[str, list[int]]) -> int:
        """Produce `pairs` (output name, artifact) of the record `value` that decoded
        to `artifact`; count the outputs to topics other than the default one in
        `routed` (topic -> [records, bytes]). Returns the bytes produced."""
        outputs = self.outputs
        produce = self.producer.produce
        codec = self.codec
        passthrough = codec.passthrough
        default_topic = self.default_topic
        total = 0
        for output, out in pairs:
            topic = outputs.get(output)
            if topic is None:
                known = ", ".join(k or "<default>" for k in outputs if outputs[k])
                raise StageFailed(
                    f"stage {self.name}: a handler routed to output "
                    f"{output or '<default>'!r}, which is not configured (known: {known})")
            if out is artifact and passthrough:
                data = value
                produce(topic, data, key, headers)
            else:
                data = codec.encode(out)
                produce(topic, data, key, codec.headers(headers))
            size = len(data)
            total += size
            if topic != default_topic:
                counts = routed.get(topic)
                if counts is None:
                    routed[topic] = [1, size]
                else:
                    counts[0] += 1
                    counts[1] += size
        return total
