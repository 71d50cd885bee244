"""`processor lag` output, and its answer when no broker listens."""

from __future__ import annotations

import socket
import time

import pytest

from processor.cli.main import main
from processor.ops.lag import LagRow, format_table


def test_lag_rows() -> None:
    assert LagRow("t", 0, committed=10, low=0, end=25).lag == 15
    assert LagRow("t", 0, committed=30, low=0, end=25).lag == 0  # never negative
    assert LagRow("t", 0, committed=None, low=5, end=25).lag == 20  # from the oldest record


def test_table() -> None:
    rows = [LagRow("orders", 1, 1300, 0, 1300), LagRow("orders", 0, 1200, 0, 1250),
            LagRow("orders", 2, None, 100, 160)]
    assert format_table(rows) == (
        "topic   partition  committed  end offset  lag\n"
        "orders          0       1200        1250   50\n"
        "orders          1       1300        1300    0\n"
        "orders          2          -         160   60\n"
        "total                                     110\n"
    )


def test_unreachable_broker_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    began = time.monotonic()
    code = main(["lag", "--bootstrap-servers", f"127.0.0.1:{port}", "--group", "g",
                 "--timeout", "1.5"])
    assert code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"processor lag: error: cannot reach the broker at 127.0.0.1:{port} within 1.5s")
    assert err.count("\n") == 1
    assert time.monotonic() - began < 10


def test_lag_needs_bootstrap_servers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROCESSOR_BOOTSTRAP_SERVERS", raising=False)
    assert main(["lag", "--group", "g"]) == 1
    assert capsys.readouterr().err == (
        "processor lag: error: --bootstrap-servers is required (or set "
        "PROCESSOR_BOOTSTRAP_SERVERS); `processor broker` starts a local Kafka\n")
