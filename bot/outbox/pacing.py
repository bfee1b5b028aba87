"""How fast the dispatcher may call a platform, on an injected monotonic clock.

Pacing counts the starts of calls to the platform: at most `global_rate` in any window of one
second (a sliding log, on an even schedule and with a minimum gap, so that a window's sends
are spread, not bunched: see `Pace`), and
`1 / per_chat_rate` seconds between two calls to one chat. Both are widened by
`pacing_margin` (3 %) so that the jitter between our start and the platform's arrival cannot
put one more message into the platform's one-second window. The dispatcher's monotonic clock
and waits are injected (`PacingClock`); everything about when a row is due (not_before,
backoff, leases) uses the injected wall `clock`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from typing import Protocol


class PacingClock(Protocol):
    """The dispatcher's monotonic time and its waits (tests move a fake one)."""

    def monotonic(self) -> float: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Returns when `event` is set or after `seconds` on this clock, whichever is first."""
        ...


class SystemPacingClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0.0))


class Pace:
    """At most `count` starts in any `window` seconds, at least `gap` seconds apart, and on an
    even schedule of `window / count` a start.

    A sliding log rather than a token bucket: a bucket of rate r and burst b lets b + r
    starts into one second, which is how a bucket "at 30 a second" sent 33. The log alone
    lets a backlog go as fast as `gap` allows until the window is full, then nothing until
    its first start ages out: at half the even spacing, 30 sends went in the first half of
    each 1.03 s and none in the second, and a reply or a fresh invitation arriving then
    waited up to half a second. So starts also follow an even schedule (the "theoretical
    arrival time" of a cell-rate algorithm): each start moves the schedule on by one
    spacing, and a start may come up to one spacing ahead of it. A start the event loop made
    a few milliseconds late does not move the schedule, so the next may come that much
    sooner and the rate is kept; a spacing of lead at most keeps a backlog spread evenly.
    """

    def __init__(self, count: int, window: float, gap: float) -> None:
        self._count = count
        self._window = window
        self._gap = gap
        self._spacing = window / count
        self._starts: deque[float] = deque()
        self._scheduled = float("-inf")  # when the next start is due on the even schedule

    @property
    def count(self) -> int:
        """Starts allowed in any window."""
        return self._count

    def ready_at(self, now: float, cost: int = 1) -> float:
        """The earliest moment `cost` starts may be taken (now, when that is allowed)."""
        starts = self._starts
        while starts and starts[0] <= now - self._window:
            starts.popleft()
        at = max(now, self._scheduled - self._spacing)
        if starts:
            at = max(at, starts[-1] + self._gap)
        excess = len(starts) + min(cost, self._count) - self._count
        if excess > 0:
            at = max(at, starts[excess - 1] + self._window)
        return at

    def take(self, now: float, cost: int = 1) -> None:
        self._starts.extend([now] * cost)
        self._scheduled = max(self._scheduled, now) + self._spacing * cost

    def add_earlier(self, started: float, cost: int = 1) -> None:
        """Counts starts made elsewhere (an earlier sender), in their place in the log."""
        for _ in range(cost):
            bisect.insort(self._starts, started)

    def started_late(self, decided: float, started: float, cost: int = 1) -> None:
        """The send decided at `decided` really started at `started` (the event loop was busy
        in between): count it then, or the next window could take a full share besides it."""
        if started <= decided:
            return
        starts = list(self._starts)
        for _ in range(cost):
            if decided in starts:
                starts.remove(decided)
                bisect.insort(starts, started)
        self._starts = deque(starts)


def global_pace(rate: float, margin: float) -> Pace:
    """`rate` a second in any window, e.g. 30 in any 1.03 s at rate 30 and a 3 % margin."""
    count = max(1, math.floor(rate))
    window = count / rate * (1 + margin)
    return Pace(count, window, gap=window / count / 2)
