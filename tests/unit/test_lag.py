"""`processor lag` output, and its answer when no broker listens."""

from __future__ import annotations

import io
import socket
import time

from processor.ops.lag import LagRow, format_table, main_lag


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


def test_unreachable_broker_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()
    code = main_lag(f"127.0.0.1:{port}", "g", None, out=out, err=err, timeout=1.5)
    assert code == 1
    assert out.getvalue() == ""
    message = err.getvalue()
    assert message.startswith(f"processor lag: cannot reach the broker at 127.0.0.1:{port}")
    assert message.count("\n") == 1
    assert time.monotonic() - began < 10
