"""How fast the dispatcher may call a platform, on an injected monotonic clock.

Pacing counts the starts of calls to the platform: at most `global_rate` in any window of one
second (a sliding log, plus a minimum gap so a window's sends are spread, not bunched), and
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
    """At most `count` starts in any `window` seconds, and at least `gap` seconds apart.

    A sliding log rather than a token bucket: a bucket of rate r and burst b lets b + r
    starts into one second, which is how a bucket "at 30 a second" sent 33.
    """

    def __init__(self, count: int, window: float, gap: float) -> None:
        self._count = count
        self._window = window
        self._gap = gap
        self._starts: deque[float] = deque()

    @property
    def count(self) -> int:
        """Starts allowed in any window."""
        return self._count

    def ready_at(self, now: float, cost: int = 1) -> float:
        """The earliest moment `cost` starts may be taken (now, when that is allowed)."""
        starts = self._starts
        while starts and starts[0] <= now - self._window:
            starts.popleft()
        at = now
        if starts:
            at = max(at, starts[-1] + self._gap)
        excess = len(starts) + min(cost, self._count) - self._count
        if excess > 0:
            at = max(at, starts[excess - 1] + self._window)
        return at

    def take(self, now: float, cost: int = 1) -> None:
        self._starts.extend([now] * cost)

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


# The least gap between two starts, as a share of the even spacing (window / count). At half,
# a backlog went out as 30 sends in the first half of each window and none in the second: a
# reply or a fresh invitation arriving then waited up to half a second for a turn. Just under
# one, the sends are spread out evenly and a send that started late (a busy event loop) can
# still be caught up.
_GAP_SHARE = 0.9


def global_pace(rate: float, margin: float) -> Pace:
    """`rate` a second in any window, e.g. 30 in any 1.03 s at rate 30 and a 3 % margin."""
    count = max(1, math.floor(rate))
    window = count / rate * (1 + margin)
    return Pace(count, window, gap=window / count * _GAP_SHARE)
