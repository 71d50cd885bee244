"""This project: one `Stage` on `KafkaBroker`, built by `build_stage` as `processor run`
builds a worker (Prometheus stage metrics, health state and librdkafka statistics
included), with the shared transform as its handler. At-least-once or exactly-once.
With `--otlp-endpoint` it traces, as `tracing: otlp` does, exporting over OTLP/gRPC.
Its report has the CPU time the stage's runs took (`cpu_seconds`, every thread).
Runs until SIGTERM (the stage drains, commits and closes), then writes its report.
With `--profile FILE` the whole run is under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import resource
import signal
import sys
from pathlib import Path
from types import FrameType, SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import project_handler
import workload

from processor.backends.kafka import KafkaBroker
from processor.core.errors import RebalanceInProgress
from processor.core.options import StageOptions
from processor.ops.tracing import TracingSettings, make_tracer
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.contracts import stage_codec
from processor.runtime.stage import Stage
from processor.serde import fast


def cpu_seconds() -> float:
    """CPU time of this process so far, user and system, every thread (librdkafka's and
    the span exporter's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--guarantee", choices=("at-least-once", "exactly-once"),
                        default="at-least-once")
    parser.add_argument("--instance", type=int, default=0)
    parser.add_argument("--profile", metavar="FILE")
    parser.add_argument("--handler", default="project_handler:transform",
                        help="the stage's handler (default: %(default)s)")
    parser.add_argument("--schema-registry-url", metavar="URL",
                        help="frame records in the Confluent wire format through this registry")
    parser.add_argument("--otlp-endpoint", metavar="URL",
                        help="trace: export spans over OTLP/gRPC to this endpoint")
    parser.add_argument("--trace-sample-ratio", type=float, default=1.0, metavar="R",
                        help="with --otlp-endpoint: the share of traces sampled "
                        "(default: %(default)s)")
    args = parser.parse_args()

    options = StageOptions(
        name="bench",
        input_topic=args.input,
        output_topic=args.output,
        group=args.group,
        guarantee=args.guarantee,
        batch_size=workload.BATCH_SIZE,
        commit_interval=workload.COMMIT_INTERVAL,
        transactional_id=f"bench-{args.group}-{args.instance}",
    )
    setup = StageSetup(options, handlers=(args.handler,),
                       bootstrap_servers=args.bootstrap_servers)
    if args.otlp_endpoint:
        # As `tracing: otlp` in the settings would (one tracer for every restart).
        setup = dataclasses.replace(setup, tracing="otlp", otlp_endpoint=args.otlp_endpoint,
                                    otlp_protocol="grpc",
                                    trace_sample_ratio=args.trace_sample_ratio)
    tracer = make_tracer(TracingSettings.of(setup), service=options.name)
    broker = KafkaBroker(args.bootstrap_servers)
    stopping = False
    current: list[Stage] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for stage in current:
            stage.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    totals = {"consumed": 0, "produced": 0, "bad": 0, "commits": 0}
    cpu = 0.0
    restarts: list[str] = []
    while True:
        stage = build_stage(
            setup, broker, codec=stage_codec(
                SimpleNamespace(schema_registry_url=args.schema_registry_url), options),
            consumer_settings=workload.CONSUMER_SETTINGS,
            producer_settings=workload.PRODUCER_SETTINGS, tracer=tracer,
        )
        current[:] = [stage]
        crashed = False
        began = cpu_seconds()
        try:
            stage.run()
        except RebalanceInProgress as exc:
            crashed = True
            # The stage stops on a commit that lost a race with a rebalance; a supervisor
            # would start it again, and so does the benchmark (counted and reported).
            restarts.append(str(exc))
            workload.log("project", f"stage stopped ({exc}); starting it again")
        finally:
            cpu += cpu_seconds() - began
            totals["consumed"] += stage.stats.consumed
            totals["produced"] += stage.stats.produced
            totals["bad"] += stage.stats.dead_lettered + stage.stats.failed
            totals["commits"] += stage.stats.commits
        if not crashed or stopping:
            break
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
        text = io.StringIO()
        report = pstats.Stats(profiler, stream=text)
        report.sort_stats("tottime").print_stats(40)
        report.sort_stats("cumulative").print_stats(40)
        Path(args.profile).with_suffix(".txt").write_text(text.getvalue(), "utf-8")

    workload.write_result(
        args.result,
        contender=f"project-{args.guarantee}",
        first_consumed=project_handler.FIRST_CALL[0] if project_handler.FIRST_CALL else None,
        **totals,
        restarts=restarts,
        cpu_seconds=round(cpu, 3),
        versions={**workload.client_versions(), "codec": fast.IMPLEMENTATION},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
