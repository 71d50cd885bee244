"""The in-memory broker's time: one injectable clock for every time-dependent behaviour.

The broker reads time through a `Clock` only: record timestamps (`Clock.time`), consume
timeouts and the `max.poll.interval.ms` expiry of silent group members
(`Clock.monotonic`). It also blocks only through the clock (`Clock.wait_until`), so a fake
clock decides what a wait means, and a test never waits on the wall clock.

The rule for waits, which every caller in the broker follows:

* A wait is `clock.wait_until(condition, deadline)`, called with the condition's lock
  held; `deadline` is a `monotonic()` value. The wait ends when the condition is
  notified (a produce, a transaction end, a group change, a resume) or when the clock
  reaches `deadline`, and it may end early for no reason. The caller therefore re-reads
  `monotonic()` and re-checks its state after every wait, and never waits for a
  deadline that has passed.

`SystemClock` (the default) waits on the condition for the real remaining time.
`ManualClock` is a fake clock whose time moves only when told:

* `advance(seconds)` moves it and wakes every wait on it, which then re-checks its
  deadline. A wait whose deadline is not reached keeps waiting for a notification.
* With `autojump=True`, a wait does not block at all: the clock jumps to the wait's
  deadline at once (virtual time). This suits a test that drives the broker from one
  thread, where nothing else could end the wait: `consume(10, 5.0)` on an empty topic
  returns at once with the clock 5 seconds later. Do not use it when another thread is
  expected to end the wait (a produce from a second thread): the wait would time out
  first. Use `advance()` there.
* `wait_for_waits(n)` blocks until the clock has seen `n` waits, so a test acts on a
  thread only once it is really waiting (and sees it wait again after a wake-up),
  without sleeping.
* So that a forgotten `advance()` fails a test instead of hanging it, a wait that nobody
  ends within `real_timeout` seconds of real time raises `ClockStalled`.
"""

from __future__ import annotations

import threading
import time
from typing import Final, Protocol


class Clock(Protocol):
    """Time as the in-memory broker sees it."""

    def time(self) -> float:
        """Seconds since the Unix epoch, for record timestamps (as `time.time`)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for deadlines (as `time.monotonic`)."""
        ...

    def wait_until(self, condition: threading.Condition, deadline: float) -> None:
        """Wait on `condition` (its lock held) until notified or `monotonic()` reaches
        `deadline`; may return early, so callers re-check (see the module documentation)."""
        ...


class SystemClock:
    """The real clocks of the `time` module; waits block for real time."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait_until(self, condition: threading.Condition, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            condition.wait(remaining)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Final = SystemClock()


class ClockStalled(RuntimeError):
    """A wait on a `ManualClock` that nothing ended within its real-time limit."""


class ManualClock:
    """A fake clock for tests: its time moves only by `advance()` (or `autojump`).

    `time()` and `monotonic()` both read the same value, `start` plus what was advanced.
    Calling the clock returns `monotonic()`, so the same object can also be handed to
    code that takes a plain `Callable[[], float]` clock (the stage does).
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = False,
                 real_timeout: float = 10.0) -> None:
        if real_timeout <= 0:
            raise ValueError("real_timeout must be positive")
        self._now = start
        self._autojump = autojump
        self._real_timeout = real_timeout
        self._lock = threading.Lock()
        # Conditions with a thread blocked in wait_until(), and how many threads.
        self._blocked: dict[threading.Condition, int] = {}
        self._waits = 0
        self._waits_changed = threading.Condition(self._lock)

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every wait, which re-checks its deadline.

        Call it without holding the broker's lock (as every caller outside the broker
        does): waking a wait takes that lock.
        """
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} seconds)")
        with self._lock:
            self._now += seconds
            waited = list(self._blocked)
        for condition in waited:
            with condition:
                condition.notify_all()

    @property
    def waits(self) -> int:
        """How many waits did not end at once: those that blocked, and with `autojump`
        those that jumped. A consume that waits once per deadline adds one."""
        with self._lock:
            return self._waits

    def wait_for_waits(self, total: int, timeout: float = 10.0) -> None:
        """Block (in real time) until `waits` reaches `total`.

        A test calls it before acting on a thread it expects to wait, so that it acts on
        a thread really blocked on the clock (not one about to block), without sleeping;
        and after waking that thread, to see it wait again rather than return.
        """
        with self._waits_changed:
            if not self._waits_changed.wait_for(lambda: self._waits >= total, timeout):
                raise ClockStalled(
                    f"{total} wait(s) expected within {timeout:g}s of real time, "
                    f"{self._waits} seen")

    def wait_until(self, condition: threading.Condition, deadline: float) -> None:
        with self._lock:
            if self._now >= deadline:
                return
            self._waits += 1
            self._waits_changed.notify_all()
            if self._autojump:
                self._now = deadline
                return
            self._blocked[condition] = self._blocked.get(condition, 0) + 1
        try:
            # advance() notifies under the condition's lock, which this thread holds until
            # wait() releases it: an advance made after the check above is never missed.
            if not condition.wait(self._real_timeout):
                raise ClockStalled(
                    f"a wait for clock time {deadline:g} (now {self._now:g}) was not ended "
                    f"within {self._real_timeout:g}s of real time: advance the clock, or "
                    "produce what the waiting thread waits for")
        finally:
            with self._lock:
                left = self._blocked[condition] - 1
                if left:
                    self._blocked[condition] = left
                else:
                    del self._blocked[condition]

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:g}, autojump={self._autojump})"
