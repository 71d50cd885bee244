"""Helpers of the fault tests: supervised stage processes and the counts of a run."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from processor.backends.abstract import Broker
from processor.core.artifact import Artifact
from tests.procs import group_caught_up, read_topic, start, stop, wait_for


def stage_args(bootstrap: str, source: str, sink: str, dlq: str, group: str,
               guarantee: str, handler: str = "tests.faults.handlers:slow_hop",
               extra: Sequence[str] = ()) -> list[str]:
    """`processor run` arguments of a fault test's stage (short session timeout)."""
    return ["run", "--bootstrap-servers", bootstrap, "--input-topic", source,
            "--output-topic", sink, "--group", group, "--name", group.split("-")[0],
            "--handler", handler, "--dlq-topic", dlq, "--guarantee", guarantee,
            "--batch-size", "100", "--commit-interval", "0.5", "--shutdown-timeout", "10",
            "--set", "session.timeout.ms=6000", "--set", "heartbeat.interval.ms=500",
            "--log-level", "WARNING", "--metrics-port", "off", *extra]


class Supervised:
    """A stage process restarted whenever it exits, as an orchestrator would; counts
    its restarts. `poll()` does the restarting; call it while waiting."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.args = list(args)
        self.log = log
        self.restarts = 0
        self.exit_codes: list[int] = []
        self.proc: subprocess.Popen[bytes] = start(self.args, log)

    def poll(self) -> None:
        code = self.proc.poll()
        if code is not None:
            self.exit_codes.append(code)
            self.restarts += 1
            time.sleep(1.0)  # an orchestrator's back-off
            self.proc = start(self.args, self.log)

    def stop(self) -> int:
        return stop(self.proc)


def run_until_caught_up(broker: Broker, stages: Sequence[Supervised], groups: Sequence[str],
                        source: str, timeout: float) -> None:
    """Supervise `stages` until every group has committed the whole of `source`."""

    def done() -> bool:
        for stage in stages:
            stage.poll()
        return all(group_caught_up(broker, group, source) for group in groups)

    wait_for(done, timeout, "the stages to catch up", interval=0.5)


@dataclass
class Tally:
    """What went in and came out of one stage under a fault."""

    sent: int
    received: int
    duplicated: int
    lost: int
    dead_lettered: int = 0

    def line(self, what: str) -> str:
        return (f"{what}: sent {self.sent}, received {self.received}, duplicated "
                f"{self.duplicated}, lost {self.lost}, dead-lettered {self.dead_lettered}")


def tally(broker: Broker, sent: Sequence[Artifact], sink: str, dlq: str | None = None,
          dead_expected: int = 0) -> Tally:
    """Read `sink` (and `dlq`) read committed and count against `sent` by artifact id."""
    received = read_topic(broker, sink, len(sent) - dead_expected, timeout=60)
    dead = read_topic(broker, dlq, dead_expected, timeout=20) if dlq and dead_expected else []
    counts = Counter(a.id for a in [*received, *dead])
    lost = len({a.id for a in sent} - counts.keys())
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    return Tally(len(sent), len(received), duplicated, lost, len(dead))


def assert_stage_counts(broker: Broker, sent: Sequence[Artifact], sinks: dict[str, str],
                        stages: Sequence[Supervised], codes: Sequence[int], what: str) -> None:
    """Every stage exited 0 and lost nothing; exactly-once stages also duplicated nothing.

    `sinks` maps each stage's guarantee to its output topic, in the order of `stages`.
    """
    for stage, code in zip(stages, codes, strict=True):
        assert code == 0, stage.log.read_text()[-3000:]
    for (guarantee, sink), stage in zip(sinks.items(), stages, strict=True):
        counted = tally(broker, sent, sink)
        print(counted.line(f"{what} {guarantee} (stage restarts {stage.restarts}, "
                           f"exit codes {stage.exit_codes})"))
        assert counted.lost == 0
        if guarantee == "exactly-once":
            assert counted.duplicated == 0
            assert counted.received == len(sent)
