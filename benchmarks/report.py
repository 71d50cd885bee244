"""The results: one table (text and Markdown), the targets, JSON and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latency import RISE_FACTOR, RISE_SLACK_MS, Capacity, LatencyRow

MB = 1_000_000

DEFINITIONS = (
    "x raw-sha256: the row's throughput as a fraction of the raw-sha256 loop's (consume, one "
    "SHA-256 over a payload's length, produce the same bytes, commit), the bound of a stage "
    "that verifies the checksum of what it passes on: the throughput targets are set "
    "against it. x raw: as a fraction of the raw loop's (no hash, no Avro), the physical "
    "limit of a Python stage on this client, shown for information. x ceiling: as a fraction "
    "of the hand-written confluent-kafka + fastavro loop's.",
    "baseline rows: the project's stage at a fixed commit (today's code, `--baseline`), "
    "installed from a temporary git worktree into an environment of its own (codec compiled "
    "as the project builds it), run by that commit's own contender script over the same "
    "input in the same run; new/baseline is the working tree's row over its baseline row.",
    "throughput: N input artifacts / (last output's broker append time - the contender's "
    "first consumed record); MB/s counts the input bytes.",
    "latency (p50/p99): not measured for the rows that pass the input through unchanged "
    "(raw, pass-through: their outputs carry no transform stamp); per output record, its "
    "broker append time (output topics use LogAppendTime) minus the wall-clock stamp the "
    "transform put in it: the time from a "
    "record being handled to its output being stored by the broker (client batching, "
    "produce queue, network, append). The input is a pre-loaded backlog, so time spent "
    "waiting in the backlog is not latency and is left out. For exactly-once the output "
    "becomes visible to read_committed readers only at the transaction commit (up to one "
    "commit interval later); that wait is not in this figure.",
    "peak RSS: the largest VmHWM of any one process of the contender, read from /proc "
    "while it runs; for 2 processes the sum over the whole process tree (the runner's "
    "parent included) follows the slash.",
)


@dataclass
class Row:
    key: str
    label: str
    processes: int
    ok: bool = False
    note: str = ""
    count: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    mb_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_bytes: int = 0
    total_rss_bytes: int = 0
    duplicates: int = 0
    invalid: int = 0
    missing: int = 0
    commit_lag_s: float | None = None
    """From the last output appended to the harness seeing every input offset committed."""
    ratio: float | None = None
    """Rate as a fraction of the ceiling's."""
    raw_ratio: float | None = None
    """Rate as a fraction of the raw loop's (consume, produce the same bytes, commit)."""
    sha_ratio: float | None = None
    """Rate as a fraction of the raw-sha256 loop's (the raw loop plus one SHA-256 per
    record): what the throughput targets are set against."""
    targets: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    name: str
    row: str
    measured: float | None
    required: float
    unit: str
    higher_is_better: bool = True
    note: str = ""
    short: str = ""
    holds: bool | None = None
    """For a check rather than a ratio: whether it holds (then `shown` says what was seen
    and `expected` what is required)."""
    shown: str = ""
    expected: str = ""

    @property
    def is_check(self) -> bool:
        return bool(self.expected)

    @property
    def verdict(self) -> str:
        if self.is_check:
            return "n/a" if self.holds is None else "PASS" if self.holds else "FAIL"
        if self.measured is None:
            return "n/a"
        ok = (self.measured >= self.required if self.higher_is_better
              else self.measured <= self.required if self.unit == "x"
              else self.measured < self.required)
        return "PASS" if ok else "FAIL"

    def measured_text(self) -> str:
        if self.is_check:
            return self.shown or "-"
        return "-" if self.measured is None else f"{self.measured:.2f}{self.unit}"

    def required_text(self) -> str:
        if self.is_check:
            return self.expected
        sign = ">=" if self.higher_is_better else "<=" if self.unit == "x" else "<"
        return f"{sign} {self.required:g}{self.unit}"

    def text(self) -> str:
        if self.is_check:
            extra = f" ({self.note})" if self.note else ""
            return (f"{self.name}: {self.shown or 'n/a'} (required: {self.expected}) "
                    f"{self.verdict}{extra}")
        if self.measured is None:
            return f"{self.name}: n/a{f' ({self.note})' if self.note else ''}"
        sign = ">=" if self.higher_is_better else "<=" if self.unit == "x" else "<"
        value = f"{self.measured:.2f}{self.unit}"
        extra = f" ({self.note})" if self.note else ""
        return f"{self.name}: {value} ({sign} {self.required:g}{self.unit}) {self.verdict}{extra}"


def _rate(rows: Mapping[str, Row], key: str) -> float | None:
    row = rows.get(key)
    return row.rate if row is not None and row.ok and row.rate > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _latency_row(latency_rows: Sequence[LatencyRow], key: str, load: float | None
                 ) -> LatencyRow | None:
    """The row of `key` at fraction `load` of its capacity, or at the fixed rate (None)."""
    for row in latency_rows:
        if row.key == key and (row.fixed if load is None else
                               (not row.fixed and row.load == load)):
            return row
    return None


def _p99_at(latency_rows: Sequence[LatencyRow], key: str, load: float | None
            ) -> float | None:
    row = _latency_row(latency_rows, key, load)
    return row.p99_ms if row is not None and row.ok and row.p99_ms is not None else None


NO_SLOWER = 0.95
"""New/baseline throughput required of the working tree's rows: no slower than the baseline
measured in the same run, with a 5% allowance for run-to-run noise on the shared 2-core
machine."""


TRACING_COST = 0.95
"""Throughput required of a stage tracing with 1% of traces sampled, against the same
stage with tracing off (`project-trace-1` / `project-alo`, same run)."""


def trend_text(row: LatencyRow) -> str:
    """p99 of the first and the last third of a latency row, and whether it rose."""
    if row.p99_first_ms is None:
        return "-"
    last = "none read back" if row.p99_last_ms is None else f"{row.p99_last_ms:,.0f}"
    return (f"{row.p99_first_ms:,.0f} -> {last} ms, "
            f"{'rising' if row.rising else 'not rising'}")


def baseline_targets(rows: Mapping[str, Row]) -> list[Target]:
    """The working tree's stage against the same stage at the baseline commit."""
    out = []
    for new, old, what in (("project-passthrough", "baseline-passthrough", "pass-through"),
                           ("project-alo", "baseline-alo", "one metadata change")):
        if new not in rows and old not in rows:
            continue
        ratio = _ratio(_rate(rows, new), _rate(rows, old))
        missing = [k for k in (new, old) if k not in rows]
        note = "no slower, within 5% noise" + (f"; {' and '.join(missing)} not run"
                                               if missing else "")
        target = Target(f"{what}: new vs baseline (today's code, same run)", new, ratio,
                        NO_SLOWER, "x", short=f"new/baseline>={NO_SLOWER:g}x", note=note)
        if ratio is not None:
            rows[old].targets.append(f"new/baseline {ratio:.2f}x")
        out.append(target)
    return out


def compute_targets(rows: Mapping[str, Row], count: int,
                    latency_rows: Sequence[LatencyRow] = ()) -> list[Target]:
    ceiling = _rate(rows, "ceiling")
    raw = _rate(rows, "raw")
    sha = _rate(rows, "raw-sha256")
    passthrough = _rate(rows, "project-passthrough")
    alo = _rate(rows, "project-alo")
    eos = _rate(rows, "project-eos")
    two = _rate(rows, "project-alo-2p")
    quix = _rate(rows, "quix")
    framed = _rate(rows, "project-alo-registry")
    traced = _rate(rows, "project-trace-1")
    traced_all = _ratio(_rate(rows, "project-trace-100"), alo)
    if traced_all is not None:
        rows["project-trace-100"].targets.append(
            f"{traced_all:.2f}x tracing off (project-alo), for information")
    ceiling_two = _ratio(_rate(rows, "ceiling-2p"), ceiling)
    if ceiling_two is not None and "ceiling-2p" in rows:
        rows["ceiling-2p"].targets.append(f"{ceiling_two:.2f}x ceiling 1 process")
    def raw_info(rate: float | None) -> str:
        ratio = _ratio(rate, raw)
        return "" if ratio is None else f"{ratio:.2f}x raw, for information"

    targets = [
        Target("pass-through stage vs raw-sha256 loop", "project-passthrough",
               _ratio(passthrough, sha), 0.8, "x", short=">=0.8x raw-sha256",
               note=raw_info(passthrough)),
        Target("ALO 1 process (one metadata change) vs raw-sha256 loop", "project-alo",
               _ratio(alo, sha), 0.5, "x", short=">=0.5x raw-sha256", note=raw_info(alo)),
        *baseline_targets(rows),
        Target("ALO 1 process vs ceiling", "project-alo", _ratio(alo, ceiling), 0.8, "x",
               short=">=0.8x ceiling"),
        Target("ALO 1 process vs Quix Streams", "project-alo", _ratio(alo, quix), 3.0, "x",
               short=">=3x Quix"),
        Target("exactly-once vs ALO", "project-eos", _ratio(eos, alo), 0.9, "x",
               short=">=0.9x ALO"),
        Target("2 processes vs 1 process", "project-alo-2p", _ratio(two, alo), 1.7, "x",
               short=">=1.7x 1 process"),
        Target("registry-framed vs plain ALO", "project-alo-registry", _ratio(framed, alo),
               0.9, "x", short=">=0.9x plain"),
        Target("tracing on, 1% sampled, vs tracing off (ALO)", "project-trace-1",
               _ratio(traced, alo), TRACING_COST, "x",
               short=f">={TRACING_COST:g}x tracing off"),
    ]
    targets += latency_targets(latency_rows)
    stage_rss = [rows[k].peak_rss_bytes / MB for k in ("project-alo", "project-eos")
                 if k in rows and rows[k].ok and rows[k].peak_rss_bytes]
    note = "" if count >= 1_000_000 else f"backlog of {count:,}, target is set for 1,000,000"
    targets.append(Target("peak RSS of a 1-process stage (ALO or EOS)", "project-alo",
                          max(stage_rss) if stage_rss else None, 250.0, " MB",
                          higher_is_better=False, note=note, short="RSS<250MB"))
    for t in targets:
        if t.row in rows:
            rows[t.row].targets.append(f"{t.short} {t.verdict}")
    return targets


def latency_targets(latency_rows: Sequence[LatencyRow]) -> list[Target]:
    """At 80% of its capacity the project's p99 does not rise through the run; at the one
    rate offered to every contender its p99 is at most the lower of Quix Streams' and the
    ceiling's."""
    out: list[Target] = []
    at80 = _latency_row(latency_rows, "project-alo", 0.8)
    if at80 is not None:
        project_p99 = _p99_at(latency_rows, "project-alo", 0.8)
        ceiling_p99 = _p99_at(latency_rows, "ceiling", 0.8)
        # Milliseconds are whole: a 0 ms ceiling p99 is counted as 1 ms.
        ratio = _ratio(project_p99,
                       max(ceiling_p99, 1.0) if ceiling_p99 is not None else None)
        info = "" if ratio is None else f"p99 {ratio:.2f}x the ceiling's at 80%, for information"
        holds = None if at80.rising is None else at80.ok and not at80.rising
        shown = trend_text(at80) + ("" if at80.ok or at80.rising is None
                                    else f"; {at80.note}")
        out.append(Target("p99 at 80% load not rising through the run (first vs last third)",
                          "project-alo", None, 0.0, "", note=info, short="p99@80% steady",
                          holds=holds, shown=shown,
                          expected=f"last third <= {RISE_FACTOR:g}x first + "
                                   f"{RISE_SLACK_MS:g} ms"))
    fixed = _latency_row(latency_rows, "project-alo", None)
    if fixed is not None:
        # A comparator that fell so far behind that not all of its records were read back
        # in time counts with the p99 of those that were: a lower bound of its own.
        others: dict[str, float | None] = {}
        behind = []
        for key in ("quix", "ceiling"):
            row = _latency_row(latency_rows, key, None)
            others[key] = None if row is None else row.p99_ms
            if row is not None and row.p99_ms is not None and not row.ok:
                behind.append(key)
        measured = {k: v for k, v in others.items() if v is not None}
        project_p99 = _p99_at(latency_rows, "project-alo", None)
        best = min(measured.values()) if measured else None
        ratio = _ratio(project_p99, max(best, 1.0) if best is not None else None)
        parts = [f"project {_fmt_ms(project_p99)} ms"] + [
            f"{k} {_fmt_ms(v)} ms" for k, v in measured.items()]
        missing = [k for k, v in others.items() if v is None]
        note = (f"p99 at {fixed.target_rate:,.0f}/s: " + ", ".join(parts)
                + (f"; {' and '.join(missing)} not measured" if missing else "")
                + (f"; {' and '.join(behind)}: not all records read back, a lower bound"
                   if behind else ""))
        out.append(Target(f"p99 at {fixed.target_rate:,.0f}/s vs min(Quix, ceiling) p99 at "
                          "the same rate", "project-alo", ratio, 1.0, "x",
                          higher_is_better=False, note=note, short="p99@rate<=min"))
    return out


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_rss(row: Row) -> str:
    if not row.peak_rss_bytes:
        return "-"
    text = f"{row.peak_rss_bytes / MB:,.0f}"
    if row.processes > 1 and row.total_rss_bytes:
        text += f" / {row.total_rss_bytes / MB:,.0f}"
    return text


HEADERS = ("contender", "artifacts/s", "MB/s", "p50 ms", "p99 ms", "peak RSS MB",
           "x raw-sha256", "x raw", "x ceiling", "targets")


def table_cells(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for row in rows:
        if not row.ok:
            cells.append((row.label, "-", "-", "-", "-", _fmt_rss(row), "-", "-", "-",
                          f"not measured: {row.note}"))
            continue
        cells.append((
            row.label,
            f"{row.rate:,.0f}",
            f"{row.mb_per_s:,.1f}",
            _fmt_ms(row.p50_ms),
            _fmt_ms(row.p99_ms),
            _fmt_rss(row),
            "-" if row.sha_ratio is None else f"{row.sha_ratio:.2f}",
            "-" if row.raw_ratio is None else f"{row.raw_ratio:.2f}",
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            "; ".join(row.targets) or "-",
        ))
    return cells


def _aligned(cells: Sequence[tuple[str, ...]], widths: Sequence[int],
             last_left: bool) -> list[str]:
    """Plain-text lines of `cells`: the first column (and with `last_left` the last one)
    left-aligned, the others right-aligned, each padded to its width."""
    left = (0, len(widths) - 1) if last_left else (0,)
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in cells]


def _markdown(headers: tuple[str, ...], cells: Sequence[tuple[str, ...]],
              last_left: bool) -> list[str]:
    """A Markdown table: numbers right-aligned, the first column (and with `last_left` the
    last one) left-aligned."""
    right = len(headers) - (2 if last_left else 1)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(["---", *["---:"] * right, *(["---"] if last_left else [])]) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return lines


def text_table(rows: Sequence[Row]) -> str:
    cells = [HEADERS, *table_cells(rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = _aligned(cells, widths, last_left=True)
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    return "\n".join(_markdown(HEADERS, table_cells(rows), last_left=True))


LATENCY_HEADERS = ("contender", "load", "target /s", "sent /s", "records", "p50 ms",
                   "p99 ms", "p99.9 ms", "max ms", "p99 1st third", "p99 last third",
                   "p99 rising")
CAPACITY_HEADERS = ("contender", "backlog /s", "offered /s", "beside the open loop /s",
                    "x backlog", "note")


def capacity_cells(caps: Sequence[Capacity]) -> list[tuple[str, ...]]:
    return [(c.label, f"{c.backlog_rate:,.0f}", f"{c.offered:,.0f}",
             f"{c.rate:,.0f}" if c.rate > 0 else "-",
             f"{c.rate / c.backlog_rate:.2f}" if c.rate > 0 and c.backlog_rate else "-",
             c.note or "-") for c in caps]


def latency_cells(rows: Sequence[LatencyRow]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for row in rows:
        if row.p50_ms is None:
            cells.append((row.label, row.load_text, f"{row.target_rate:,.0f}", "-", "-",
                          "-", "-", "-", "-", "-", "-", f"not measured: {row.note}"))
            continue
        received = f"{row.received:,}" + ("" if row.ok else f" of {row.sent:,}")
        rising = "-" if row.rising is None else "yes" if row.rising else "no"
        last = ("none read" if row.p99_last_ms is None and row.p99_first_ms is not None
                else _fmt_ms(row.p99_last_ms))
        cells.append((row.label, row.load_text, f"{row.target_rate:,.0f}",
                      f"{row.sent_rate:,.0f}", received, _fmt_ms(row.p50_ms),
                      _fmt_ms(row.p99_ms), _fmt_ms(row.p999_ms), _fmt_ms(row.max_ms),
                      _fmt_ms(row.p99_first_ms), last, rising))
    return cells


LATENCY_DEFINITION = (
    "latency under load: an open-loop producer sends artifacts at a fixed rate (50% and 80% "
    "of the contender's capacity beside the open loop, above) to a fresh input topic, "
    "each with its `timestamp` field set to the time it is handed to the client; per output "
    "record, latency = broker append time of the output (LogAppendTime) - that timestamp, "
    "queueing included. p99 1st/last third: p99 of the records sent in the first and in "
    f"the last third of the open loop; rising: the last exceeds {RISE_FACTOR:g}x the first "
    f"plus {RISE_SLACK_MS:g} ms (a queue that grows through the run)."
)
FIXED_DEFINITION = (
    "latency at one rate: every contender is offered the same absolute rate (`--latency-rate`) "
    "by the same open loop, one after the other in the same run; figures as above."
)
CAPACITY_DEFINITION = (
    "capacity beside the open loop: the contender's output rate over a few seconds while the "
    "open-loop producer offers it 1.25x its backlog rate (the throughput row above) on the "
    "same cores, once a queue has formed. The backlog rate is measured with the machine to "
    "the contender and the broker; beside a producer the contender gets less CPU, and loads "
    "set from the backlog rate would overload it, so that p99 would measure a growing queue."
)


def latency_text(rows: Sequence[LatencyRow]) -> list[str]:
    cells = [LATENCY_HEADERS, *latency_cells(rows)]
    measured = [LATENCY_HEADERS, *(c for c, r in zip(cells[1:], rows, strict=True)
                                   if r.p50_ms is not None)]
    widths = [max(len(c[i]) for c in measured)
              for i in range(len(LATENCY_HEADERS))]
    widths[-1] = 0  # a row not measured says why in its last cell, unpadded
    return _aligned(cells, widths, last_left=False)


def capacity_text(caps: Sequence[Capacity]) -> list[str]:
    cells = [CAPACITY_HEADERS, *capacity_cells(caps)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(CAPACITY_HEADERS))]
    widths[-1] = 0  # the note, unpadded
    return _aligned(cells, widths, last_left=True)


def capacity_markdown(caps: Sequence[Capacity]) -> list[str]:
    return _markdown(CAPACITY_HEADERS, capacity_cells(caps), last_left=True)


def latency_markdown(rows: Sequence[LatencyRow]) -> list[str]:
    return _markdown(LATENCY_HEADERS, latency_cells(rows), last_left=False)


def conditions_lines(conditions: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {v}" for k, v in conditions.items()]


def checks_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        if not row.ok:
            continue
        commit = "-" if row.commit_lag_s is None else f"{row.commit_lag_s:.2f}s"
        load = row.details.get("load_average")
        load_text = "" if not load else f"; load average {load[0]:.2f} when done"
        lines.append(
            f"{row.label}: {row.count:,} artifacts in {row.seconds:.2f}s; output "
            f"duplicates {row.duplicates}, missing {row.missing}, invalid {row.invalid}; "
            f"all input committed {commit} after the last output{load_text}"
        )
    return lines


def render_text(rows: Sequence[Row], targets: Sequence[Target],
                conditions: Mapping[str, Any], notes: Sequence[str],
                latency_rows: Sequence[LatencyRow] = (),
                capacities: Sequence[Capacity] = ()) -> str:
    out = [text_table(rows)]
    if capacities:
        out += ["", "capacity beside the open loop:", *capacity_text(capacities),
                f"  ({CAPACITY_DEFINITION})"]
    loaded = [r for r in latency_rows if not r.fixed]
    fixed = [r for r in latency_rows if r.fixed]
    if loaded:
        out += ["", "latency under load:", *latency_text(loaded), f"  ({LATENCY_DEFINITION})"]
    if fixed:
        out += ["", f"latency at one rate ({fixed[0].target_rate:,.0f}/s):",
                *latency_text(fixed), f"  ({FIXED_DEFINITION})"]
    out += ["", "targets:"]
    out += [f"  {t.text()}" for t in targets]
    out += ["", "checks:"] + [f"  {c}" for c in checks_lines(rows)]
    out += ["", "definitions:"] + [f"  {d}" for d in DEFINITIONS]
    out += ["", "conditions:"] + [f"  {c}" for c in conditions_lines(conditions)]
    if notes:
        out += ["", "notes:"] + [f"  {n}" for n in notes]
    return "\n".join(out)


def render_markdown(rows: Sequence[Row], targets: Sequence[Target],
                    conditions: Mapping[str, Any], notes: Sequence[str],
                    command: str, latency_rows: Sequence[LatencyRow] = (),
                    capacities: Sequence[Capacity] = ()) -> str:
    out = ["# Benchmark results", "", f"Command: `{command}`", "", markdown_table(rows), ""]
    if capacities:
        out += ["## Capacity beside the open loop", "", *capacity_markdown(capacities), "",
                CAPACITY_DEFINITION, ""]
    loaded = [r for r in latency_rows if not r.fixed]
    fixed = [r for r in latency_rows if r.fixed]
    if loaded:
        out += ["## Latency under load", "", *latency_markdown(loaded), "",
                LATENCY_DEFINITION, ""]
    if fixed:
        out += [f"## Latency at one rate ({fixed[0].target_rate:,.0f}/s)", "",
                *latency_markdown(fixed), "", FIXED_DEFINITION, ""]
    out += ["## Targets", "", "| target | measured | required | verdict |", "|---|---:|---:|---|"]
    for t in targets:
        verdict = t.verdict + (f" ({t.note})" if t.note else "")
        out.append(f"| {t.name} | {t.measured_text()} | {t.required_text()} | {verdict} |")
    out += ["", "## Checks", ""] + [f"- {c}" for c in checks_lines(rows)]
    out += ["", "## Definitions", ""] + [f"- {d}" for d in DEFINITIONS]
    out += ["", "## Conditions", ""] + [f"- {c}" for c in conditions_lines(conditions)]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_json(path: Path, rows: Sequence[Row], targets: Sequence[Target],
               conditions: Mapping[str, Any], notes: Sequence[str],
               latency_rows: Sequence[LatencyRow] = (),
               capacities: Sequence[Capacity] = ()) -> None:
    data = {
        "capacity_beside_the_open_loop": [asdict(c) for c in capacities],
        "latency_under_load": [asdict(r) for r in latency_rows],
        "conditions": dict(conditions),
        "definitions": list(DEFINITIONS),
        "rows": [{k: v for k, v in asdict(r).items()} for r in rows],
        "targets": [{**asdict(t), "verdict": t.verdict} for t in targets],
        "notes": list(notes),
    }
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", "utf-8")


def write_chart(path: Path, rows: Sequence[Row], title: str) -> str | None:
    """A bar chart of throughput (with p99 latency and RSS beside); None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no chart: matplotlib is not available ({exc})"
    measured = [r for r in rows if r.ok]
    if not measured:
        return "no chart: no row was measured"
    short = {"raw": "raw\nbytes", "raw-sha256": "raw +\nSHA-256",
             "project-passthrough": "project\npass-through",
             "baseline-passthrough": "baseline\npass-through",
             "baseline-alo": "baseline\nALO 1p",
             "ceiling": "ceiling", "ceiling-codec": "loop with\nour codec",
             "ceiling-2p": "ceiling\n2p",
             "project-alo": "project\nALO 1p", "project-alo-pure": "project\nALO pure",
             "project-eos": "project\nEOS 1p", "project-alo-2p": "project\nALO 2p",
             "project-alo-registry": "project\nALO registry",
             "project-trace-1": "project\ntraced 1%", "project-trace-100": "project\ntraced 100%",
             "quix": "Quix\nStreams"}
    labels = [short.get(r.key, r.key) for r in measured]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [2, 1, 1]})
    colours = ["#7f7f7f" if r.key in ("ceiling", "raw", "raw-sha256")
               else "#e377c2" if r.key == "quix"
               else "#aec7e8" if r.key.startswith("baseline-") else "#1f77b4"
               for r in measured]
    ax = axes[0]
    bars = ax.bar(labels, [r.rate for r in measured], color=colours)
    for bar, row in zip(bars, measured, strict=True):
        text = f"{row.rate:,.0f}" + ("" if row.sha_ratio is None
                                     else f"\n{row.sha_ratio:.2f}x sha")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("artifacts/s")
    ax.set_title("throughput (x raw-sha256 loop)")
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[1]
    ax.bar(labels, [r.p99_ms or 0 for r in measured], color=colours, alpha=0.5, label="p99")
    ax.bar(labels, [r.p50_ms or 0 for r in measured], color=colours, label="p50")
    ax.set_ylabel("ms")
    ax.set_title("handle -> broker append latency")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=6, labelrotation=90)
    ax = axes[2]
    ax.bar(labels, [r.peak_rss_bytes / MB for r in measured], color=colours)
    ax.axhline(250, color="red", linestyle="--", linewidth=1, label="stage target 250 MB")
    ax.set_ylabel("MB")
    ax.set_title("peak RSS (one process)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=6, labelrotation=90)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
