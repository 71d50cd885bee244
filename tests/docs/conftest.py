"""The count of blocks run, written and skipped per doc, in the test summary."""

from __future__ import annotations

import pytest

from tests.docs.runner import Outcome

PROPERTY = "doc-blocks"
"""The user property of a doc's test: a dict of its counts (see `counts`)."""

_SEEN: list[tuple[str, dict[str, object]]] = []


def counts(doc: str, outcome: Outcome, seconds: float) -> tuple[str, dict[str, object]]:
    """The user property a doc's test records."""
    return PROPERTY, {"doc": doc, "run": outcome.run, "written": outcome.written,
                      "text": outcome.text, "skipped": list(outcome.skipped),
                      "seconds": round(seconds, 1)}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == PROPERTY and isinstance(value, dict):
            _SEEN.append((report.outcome, value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SEEN:
        return
    write = terminalreporter.write_line
    terminalreporter.section("doc blocks")
    for outcome, value in _SEEN:
        skipped = value["skipped"]
        assert isinstance(skipped, list)
        write(f"{value['doc']}: {value['run']} run, {value['written']} written as files, "
              f"{len(skipped)} skipped, {value['text']} text ({outcome}, "
              f"{value['seconds']}s)")
        for where, reason in skipped:
            write(f"    skipped {where}: {reason}")
