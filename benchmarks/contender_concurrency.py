"""This project's stage with a concurrent handler: the rows of `bench.py` that compare a
synchronous handler with async, threaded and batch ones, in one process, at-least-once.

* `io-sync`: a handler that blocks 5 ms per record (`time.sleep(0.005)`, a lookup's
  latency) in the loop, one record at a time;
* `io-threads`: the same blocking handler on `--concurrency` threads;
* `io-async`: `await asyncio.sleep(0.005)`, `--concurrency` calls in flight;
* `cpu-batch`: the CPU-bound shared transform as a batch handler (a list of artifacts
  in, one outcome per artifact out), against the per-record `project-alo` row.

Each handler ends with the shared transform, so that the harness checks the output as
for every row. Runs until SIGTERM (the stage drains, commits and closes), then writes
its report, which includes how many handler and end-to-end latency observations the
stage's Prometheus metrics hold (`latency_metrics`): whether the stage reports those
latencies at all in this handler mode.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import project_handler
import workload

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.core.handlers import AnyHandler, BatchOutcome
from processor.core.options import HandlerMode, StageOptions
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.contracts import stage_codec

IO_SECONDS = 0.005
"""The latency of one I/O-bound call."""

transform = project_handler.transform


def io_blocking(artifact: Artifact) -> Artifact:
    time.sleep(IO_SECONDS)
    return transform(artifact)


async def io_async(artifact: Artifact) -> Artifact:
    await asyncio.sleep(IO_SECONDS)
    return transform(artifact)


def cpu_batch(artifacts: list[Artifact]) -> list[BatchOutcome]:
    return [transform(a) for a in artifacts]


MODES: dict[str, tuple[AnyHandler, HandlerMode]] = {
    "io-sync": (io_blocking, "sync"),
    "io-threads": (io_blocking, "threads"),
    "io-async": (io_async, "async"),
    "cpu-batch": (cpu_batch, "auto"),
}


LATENCY_METRICS = {"handler": "processor_handler_latency_seconds",
                   "end_to_end": "processor_end_to_end_latency_seconds"}
"""The stage's latency histograms, by the name the report gives them."""


def latency_metrics(stage_name: str) -> dict[str, Any]:
    """Observations of each of `LATENCY_METRICS` for `stage_name` in the process's
    Prometheus registry, or {"error": why} where it cannot be read."""
    try:
        from processor.ops.metrics import REGISTRY
    except ImportError as exc:
        return {"error": f"no metrics registry: {exc}"}
    families = {family.name: family for family in REGISTRY.collect()}
    out: dict[str, Any] = {}
    for key, name in LATENCY_METRICS.items():
        family = families.get(name)
        if family is None:
            return {"error": f"no metric {name}"}
        out[key] = int(sum(sample.value for sample in family.samples
                           if sample.name == f"{name}_count"
                           and sample.labels.get("stage") == stage_name))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()

    handler, handler_mode = MODES[args.mode]
    options = StageOptions(
        name="bench", input_topic=args.input, output_topic=args.output, group=args.group,
        batch_size=workload.BATCH_SIZE, commit_interval=workload.COMMIT_INTERVAL,
        handler_mode=handler_mode, max_concurrency=args.concurrency,
        # A batch as large as a consume call, and no wait beyond it.
        handler_batch_size=workload.BATCH_SIZE, handler_batch_wait=0.0,
    )
    setup = StageSetup(options, bootstrap_servers=args.bootstrap_servers)
    broker = KafkaBroker(args.bootstrap_servers)
    stage = build_stage(
        setup, broker, handler=handler,
        codec=stage_codec(SimpleNamespace(schema_registry_url=None), options),
        consumer_settings=workload.CONSUMER_SETTINGS,
        producer_settings=workload.PRODUCER_SETTINGS,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stage.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stage.run()
    workload.write_result(
        args.result,
        contender=f"project-{args.mode}",
        first_consumed=project_handler.FIRST_CALL[0] if project_handler.FIRST_CALL else None,
        consumed=stage.stats.consumed, produced=stage.stats.produced,
        bad=stage.stats.dead_lettered + stage.stats.failed, commits=stage.stats.commits,
        restarts=[], versions=workload.client_versions(),
        latency_metrics=latency_metrics(options.name),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
