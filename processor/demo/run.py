"""The demo: validate -> transform -> enrich, three stages chained on the in-memory broker.

The handlers are in `processor.demo.handlers`; this module generates orders, runs the
three stages over them and prints what became of every record.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from processor.backends.abstract import Broker
from processor.core.artifact import Artifact, MediaType, Role
from processor.core.options import StageOptions
from processor.ops.metrics import NullMetrics
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.stage import Stage
from processor.serde.codec import Codec
from processor.serde.jsonform import artifact_to_json

CURRENCIES = ("eur", "usd", "gbp", "chf")


@dataclass(frozen=True)
class StageSpec:
    name: str
    handler_name: str


STAGES = (StageSpec("validate", "validate"), StageSpec("transform", "transform"),
          StageSpec("enrich", "enrich"))


def generate(count: int, seed: int = 7, bad_every: int = 50) -> Iterator[bytes | Artifact]:
    """`count` orders; every `bad_every`-th is bad in one of several ways."""
    rng = random.Random(seed)
    for i in range(count):
        if bad_every and i % bad_every == bad_every - 1:
            kind = (i // bad_every) % 4
            if kind == 0:
                yield b"\x00garbage that is not avro"
            elif kind == 1:
                # A checksum that does not match the payload: flip a bit of the digest
                # (found in the bytes, wherever the schema version puts it).
                tampered = Artifact.new('{"order": "tampered"}')
                good = bytearray(Codec().encode(tampered))
                good[good.index(tampered.checksum)] ^= 0x01
                yield bytes(good)
            elif kind == 2:
                yield Artifact.new("not json at all" if i % 3 else '{"order": "broken"}')
            else:
                yield Artifact.new(json.dumps({"order": f"o{i}", "customer": "c",
                                               "amount": "ten", "currency": "eur"}),
                                   media_type=MediaType.JSON)
            continue
        amount = 0 if i % 97 == 0 else round(rng.uniform(1, 8000), 2)
        order = {"order": f"o{i}", "customer": f"c{rng.randrange(100)}",
                 "amount": amount, "currency": rng.choice(CURRENCIES)}
        yield Artifact.new(json.dumps(order), media_type=MediaType.JSON, role=Role.EVENT,
                           origin="demo-generator", meta={"seq": i})


def read_jsonl(path: Path) -> Iterator[bytes | Artifact]:
    """One artifact per JSON line (the line is the payload); a non-JSON line stays raw
    bytes and so is dead-lettered by the first stage."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                json.loads(line)
            except ValueError:
                yield line
                continue
            yield Artifact.new(line.decode("utf-8"), media_type=MediaType.JSON,
                               origin=path.name, meta={"line": number})


def _topics(count: int) -> list[str]:
    """The chain's topics: the input, then the output of each of the first `count` stages,
    named after what the stage did (the names the compose stack and k8s manifests use)."""
    done = {"validate": "validated", "transform": "transformed", "enrich": "enriched"}
    return ["orders.raw", *[f"orders.{done[s.name]}" for s in STAGES][:count]]


@dataclass
class DemoResult:
    stages: list[Stage]
    fed: int
    output: list[Artifact]
    seconds: float


def run_demo(
    broker: Broker,
    inputs: Sequence[bytes | Artifact],
    *,
    partitions: int = 3,
    out: IO[str] | None = None,
    progress_every: float = 0.5,
) -> DemoResult:
    """Feed `inputs` through the three stages and run them until every record is accounted."""
    codec = Codec()
    admin = broker.admin()
    topics = _topics(len(STAGES))
    for t in topics:
        admin.create_topic(t, partitions=partitions)
    admin.create_topic("orders.dlq", partitions=1)
    stages = [
        build_stage(
            StageSetup(
                StageOptions(name=spec.name, input_topic=topics[i], output_topic=topics[i + 1],
                             group=f"demo-{spec.name}", dlq_topic="orders.dlq",
                             batch_size=500, poll_timeout=0.0, commit_interval=0.2),
                handlers=(spec.handler_name,),
            ),
            broker, codec=codec, metrics=NullMetrics(),
        )
        for i, spec in enumerate(STAGES)
    ]
    producer = broker.producer(client_id="demo-feed")
    start = time.monotonic()
    for n, item in enumerate(inputs):
        value = item if isinstance(item, bytes) else codec.encode(item)
        producer.produce(topics[0], value, key=str(n % 64).encode())
    producer.flush()
    fed = len(inputs)
    for s in stages:
        s.start()
    last_print = 0.0
    deadline = start + 600
    while time.monotonic() < deadline:
        moved = sum(s.run_once() for s in stages)
        expected = fed
        done = True
        for s in stages:
            if s.stats.consumed < expected or s.stats.accounted < s.stats.consumed:
                done = False
                break
            expected = s.stats.produced
        now = time.monotonic()
        if out is not None and (now - last_print >= progress_every or done):
            last_print = now
            parts = "  ".join(f"{s.options.name} {s.stats.consumed:>7,}" for s in stages)
            out.write(f"\r  progress: {parts}  " if out.isatty() else f"  progress: {parts}\n")
            out.flush()
        if done and not moved:
            break
    if out is not None and out.isatty():
        out.write("\n")
    seconds = time.monotonic() - start
    for s in stages:
        s.close()  # final commit; the demo owns the loop
    reader = broker.consumer("demo-reader")
    reader.subscribe([topics[-1]])
    output: list[Artifact] = []
    want = stages[-1].stats.produced
    read_deadline = time.monotonic() + 10
    while len(output) < want and time.monotonic() < read_deadline:
        for msg in reader.consume(1000, 0.05):
            output.append(codec.decode(msg.value() or b""))
    reader.close()
    return DemoResult(stages, fed, output, seconds)


def summary_table(result: DemoResult) -> str:
    head = f"{'stage':<10} {'in':>8} {'out':>8} {'dropped':>8} {'dead-lettered':>14} {'rate/s':>10}"
    lines = [head, "-" * len(head)]
    for s in result.stages:
        st = s.stats
        rate = st.consumed / result.seconds if result.seconds > 0 else 0.0
        lines.append(f"{s.options.name:<10} {st.consumed:>8,} {st.produced:>8,} {st.dropped:>8,} "
                     f"{st.dead_lettered:>14,} {rate:>10,.0f}")
    return "\n".join(lines)


def main_demo(count: int, input_file: Path | None, show: int = 3,
              out: IO[str] = sys.stdout) -> int:
    import logging

    from processor.backends.memory import MemoryBroker

    # Dead letters are expected here and summed up below, not logged one by one.
    for name in ("processor.runtime.stage", "processor.runtime.dead_letters"):
        logging.getLogger(name).setLevel(logging.ERROR)
    inputs = list(read_jsonl(input_file) if input_file else generate(count))
    source = str(input_file) if input_file else f"{len(inputs):,} generated orders"
    out.write(f"processor demo: validate -> transform -> enrich on the in-memory broker\n"
              f"  input: {source} (some deliberately bad)\n")
    result = run_demo(MemoryBroker(), inputs, out=out)
    out.write(summary_table(result) + "\n")
    last = result.stages[-1].stats
    ok = all(s.stats.consumed == s.stats.accounted for s in result.stages)
    out.write(f"\n{result.fed:,} in, {last.produced:,} out of the last stage, "
              f"{sum(s.stats.dead_lettered for s in result.stages):,} dead-lettered, "
              f"{sum(s.stats.dropped for s in result.stages):,} dropped in "
              f"{result.seconds:.2f}s; every record accounted for: {'yes' if ok else 'NO'}\n")
    reasons: dict[str, int] = {}
    for s in result.stages:
        for reason, n in s.stats.dead_letter_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    if reasons:
        out.write("dead-lettered by reason (topic orders.dlq): "
                  + ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items())) + "\n")
    if result.output and show:
        out.write(f"\nfirst {min(show, len(result.output))} output artifacts:\n")
        for artifact in result.output[:show]:
            out.write(artifact_to_json(artifact) + "\n")
    return 0 if ok else 1
