"""`MemoryGuard`: past its limit it stops the stage once."""

from __future__ import annotations

import threading

from processor.runtime.memory_guard import MemoryGuard, resident_mib


def test_resident_memory_is_read() -> None:
    assert 10 < resident_mib() < 100_000


def test_the_guard_stops_once_past_its_limit() -> None:
    stopped = threading.Event()
    calls: list[int] = []

    def stop() -> None:
        calls.append(1)
        stopped.set()

    guard = MemoryGuard(1, stop, interval=0.01).start()  # any process is over 1 MiB
    try:
        assert stopped.wait(5.0)
        assert guard.tripped
    finally:
        guard.close()
    assert calls == [1]


def test_the_guard_stays_quiet_under_its_limit() -> None:
    stopped = threading.Event()
    guard = MemoryGuard(1_000_000, stopped.set, interval=0.01).start()
    try:
        assert not stopped.wait(0.2)
        assert not guard.tripped
    finally:
        guard.close()
