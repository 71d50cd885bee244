"""`processor pipeline status`: a table of a running pipeline's stages, from their metrics.

The supervisor's state file (`processor.pipeline.supervisor`) names each replica's
metrics URL. Each figure is what the stage's Prometheus metrics say
(`processor.ops.metrics`), summed over the stage's replicas:

* IN, OUT: `processor_consumed_total`; `processor_produced_total` to the stage's outputs
  (its dead-letter topic left out), since each replica started;
* IN/S, OUT/S: their increase between two scrapes, per second (a counter that went back
  counts from 0 again, as Prometheus' `rate` does; a replica started since the last
  scrape has none yet);
* DROPPED, DEAD: `processor_dropped_total` (a handler returned None) and
  `processor_dead_lettered_total`;
* LAG: `processor_consumer_lag`, records on the stage's inputs it has not read yet;
* UP, HEALTH: replicas whose process runs and whose metrics answer; `/healthz` of each;
* RESTARTS: the supervisor's count of restarts after a crash.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from processor.pipeline.supervisor import process_alive

__all__ = ["Sample", "StageStatus", "healthy", "parse_metrics", "scrape", "stage_rows",
           "status_table"]

_CONSUMED: Final = "processor_consumed_total"
_PRODUCED: Final = "processor_produced_total"
_DROPPED: Final = "processor_dropped_total"
_DEAD: Final = "processor_dead_lettered_total"
_LAG: Final = "processor_consumer_lag"

Key = tuple[str, int, int]
"""(stage, replica, pid)."""


@dataclass(frozen=True)
class Sample:
    """One scrape of one replica's `/metrics`, summed over its labels."""

    consumed: float = 0.0
    produced: float = 0.0
    """To the outputs, dead letters not counted."""
    dead_lettered: float = 0.0
    dropped: float = 0.0
    lag: float = 0.0
    at: float = 0.0
    """When it was taken (time.monotonic())."""


def parse_metrics(text: str, dlq_topic: str | None = None, at: float = 0.0) -> Sample:
    """The figures of a Prometheus text exposition (`processor_produced_total` to
    `dlq_topic` left out of `produced`)."""
    sums = {_CONSUMED: 0.0, _PRODUCED: 0.0, _DROPPED: 0.0, _DEAD: 0.0, _LAG: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in sums:
                continue
            if sample.name == _PRODUCED and dlq_topic is not None and sample.labels.get(
                    "topic") == dlq_topic:
                continue
            sums[sample.name] += float(sample.value)
    return Sample(consumed=sums[_CONSUMED], produced=sums[_PRODUCED],
                  dead_lettered=sums[_DEAD], dropped=sums[_DROPPED], lag=sums[_LAG], at=at)


def _get(url: str, timeout: float) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError):
        return None


def scrape(url: str, timeout: float = 2.0, dlq_topic: str | None = None) -> Sample | None:
    """The figures of the `/metrics` at `url`, or None when it does not answer."""
    at = time.monotonic()
    got = _get(url, timeout)
    if got is None or got[0] != 200:
        return None
    try:
        return parse_metrics(got[1], dlq_topic, at)
    except ValueError:
        return None


def healthy(url: str, timeout: float = 2.0) -> bool | None:
    """Whether `/healthz` at `url` answers 200; None when it does not answer."""
    got = _get(url, timeout)
    return None if got is None else got[0] == 200


@dataclass(frozen=True)
class StageStatus:
    """One row of the table."""

    stage: str
    replicas: int
    up: int
    consumed: float
    produced: float
    dropped: float
    dead_lettered: float
    lag: float
    in_rate: float | None
    out_rate: float | None
    health: str
    restarts: int


def _rate(now: Sample, before: Sample | None, attr: str) -> float | None:
    if before is None or now.at <= before.at:
        return None
    current, previous = getattr(now, attr), getattr(before, attr)
    increase = current - previous if current >= previous else current  # a counter reset
    return float(increase) / (now.at - before.at)


def stage_rows(state: Mapping[str, Any], previous: Mapping[Key, Sample] | None = None,
               timeout: float = 2.0) -> tuple[list[StageStatus], dict[Key, Sample]]:
    """A row per stage of the state file `state`, rates against the `previous` samples
    (none on a first call); and the samples taken now, for the next call."""
    previous = previous or {}
    samples: dict[Key, Sample] = {}
    rows = []
    for stage in state.get("stages", []):
        replicas = stage.get("replicas", [])
        up = 0
        health: list[bool | None] = []
        totals = Sample()
        in_rate: float | None = None
        out_rate: float | None = None
        for replica in replicas:
            pid = replica.get("pid")
            if not isinstance(pid, int) or replica.get("state") != "running" or not process_alive(
                    pid):
                continue
            sample = scrape(replica["metrics"], timeout, stage.get("dlq_topic"))
            health.append(healthy(replica["health"], timeout))
            if sample is None:
                continue
            up += 1
            key = (stage["name"], int(replica["index"]), pid)
            samples[key] = sample
            totals = Sample(totals.consumed + sample.consumed,
                            totals.produced + sample.produced,
                            totals.dead_lettered + sample.dead_lettered,
                            totals.dropped + sample.dropped, totals.lag + sample.lag)
            before = previous.get(key)  # none for a replica started since
            rate_in, rate_out = _rate(sample, before, "consumed"), _rate(
                sample, before, "produced")
            if rate_in is not None and rate_out is not None:
                in_rate = (in_rate or 0.0) + rate_in
                out_rate = (out_rate or 0.0) + rate_out
        ok = sum(h is True for h in health)
        text = ("down" if not health or all(h is None for h in health)
                else "ok" if ok == len(replicas) else f"{ok}/{len(replicas)} ok")
        rows.append(StageStatus(
            stage["name"], len(replicas), up, totals.consumed, totals.produced,
            totals.dropped, totals.dead_lettered, totals.lag, in_rate, out_rate, text,
            sum(int(r.get("restarts", 0)) for r in replicas)))
    return rows, samples


def _number(value: float | None, rate: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if rate else f"{value:.0f}"


COLUMNS: Final = ("STAGE", "UP", "IN", "IN/S", "OUT", "OUT/S", "DROPPED", "DEAD", "LAG",
                  "HEALTH", "RESTARTS")


def status_table(rows: Sequence[StageStatus]) -> str:
    """The rows as an aligned table, a header first."""
    cells = [list(COLUMNS)] + [[
        r.stage, f"{r.up}/{r.replicas}", _number(r.consumed), _number(r.in_rate, True),
        _number(r.produced), _number(r.out_rate, True), _number(r.dropped),
        _number(r.dead_lettered), _number(r.lag), r.health, str(r.restarts)]
        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [
            cell.rjust(width) if i not in (0, 9) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True)) if i > 0]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def heading(state: Mapping[str, Any], live: bool) -> str:
    """`pipeline demo: running (supervisor 1234, up 2m05s), .processor/run/demo`."""
    supervisor = state.get("supervisor", {})
    if live:
        since = int(time.time() - float(supervisor.get("started", time.time())))
        what = (f"{state.get('state', 'running')} (supervisor {supervisor.get('pid')}, up "
                f"{since // 60}m{since % 60:02d}s)")
    else:
        code = state.get("exit_code")
        what = "not running" + (f" (stopped, exit status {code})" if code is not None
                                else " (its supervisor is gone)")
    return f"pipeline {state.get('pipeline')}: {what}, {state.get('run_dir')}"
