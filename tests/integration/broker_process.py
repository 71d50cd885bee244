"""`processor broker` as a separate process, the way a user starts it: for the tests of
the README's quick start and of the installed wheel."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.procs import stop

BOOTSTRAP = re.compile(r"^127\.0\.0\.1:(\d+)$")
START_TIMEOUT = 180.0
"""Seconds for the broker to print its address (the jars are cached by then)."""


def start_broker(command: Sequence[str], cwd: Path, env: Mapping[str, str],
                 logs: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `command` (a `processor broker`), wait until it prints its bootstrap address
    on stdout, and return the process and the port. Its stdout and stderr go to
    `logs/broker.out` and `logs/broker.err`."""
    out, err = logs / "broker.out", logs / "broker.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=stdout,
                                stderr=stderr, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        first = out.read_text().partition("\n")
        if first[1]:
            match = BOOTSTRAP.match(first[0])
            if match is None:
                stop(proc)
                raise AssertionError(f"processor broker printed {first[0]!r}, not its "
                                     f"address; stderr:\n{err.read_text()[-2000:]}")
            return proc, int(match.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"processor broker printed no address (exit "
                                 f"{proc.returncode}); stderr:\n{err.read_text()[-3000:]}")
        time.sleep(0.1)
