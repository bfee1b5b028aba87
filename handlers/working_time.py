"""Working-time arithmetic for escalation SLAs ("8h to acknowledge", "10d to resolve").

Selected by the ``SIPAS_WORKING_CALENDAR`` setting through :func:`make_calendar`:

``always``
    Every hour counts: :class:`AlwaysCalendar` is plain ``start + duration`` arithmetic.

``vn``
    Vietnamese working time (:class:`VietnamCalendar`):

    * working days are Monday–Friday, working hours 08:00–17:00 wall-clock time in the
      calendar's time zone (``day_start``/``day_end`` are configurable), i.e. one working
      day is 9 working hours; the window is half-open, so 17:00 itself is not a working
      moment (work resumes at 08:00 on the next working day);
    * Vietnamese public holidays as known by ``holidays.country_holidays("VN")`` are off,
      including the multi-day Tết (Lunar New Year) break, observed days and the
      compensating days-off the government declares; the Saturdays the government swaps
      into working days for those (the package's ``weekend_workdays``) are working days;
    * ``makeup_days`` (e.g. a Saturday declared a working day) are always working days and
      ``extra_days_off`` are never working days; both override the holiday data, and a
      date may not appear in both lists.

    Holiday data is loaded lazily, one year at a time, and cached.  The ``holidays``
    package has no Vietnamese holidays after 2100, so later years only skip weekends.

Durations on the ``vn`` calendar (what an official means by "10d" and "8h"):

* ``add(start, duration)`` where ``duration`` is a whole number of days (at least one
  day and ``duration % timedelta(days=1) == 0``) counts that many **working days**: the
  result is at the same position on the working clock (same working time into the day,
  i.e. the same wall-clock time) that many working days later.  ``timedelta(days=10)``
  from Monday 09:30 (no holidays in between) is the Monday two weeks later at 09:30.
* Any other duration (under a day, or with a part that is not whole days) is counted in
  **working hours and minutes**: ``timedelta(hours=8)`` from Friday 15:00 is Monday 14:00
  (2h on Friday + 6h on Monday), and ``timedelta(days=1, hours=2)`` is 26 working hours.
  The result is the earliest instant at which that much working time has elapsed, so
  9h from Monday 08:00 is Monday 17:00 (not Tuesday 08:00).
* Because ``timedelta(hours=24) == timedelta(days=1)``, a configured "24h" also means one
  working day.  Consequently ``add`` is monotonic in ``duration`` within each kind (whole
  days; hours and minutes) but not across them: 23h (23 working hours, about 2.6 working
  days) ends later than 1d (one working day).
* ``elapsed(start, end)`` always returns working hours and minutes as a plain
  ``timedelta`` (no day conversion: a full working day is ``timedelta(hours=9)``), and
  ``timedelta(0)`` if ``end <= start``.
* A start outside working hours counts from the next working moment; ``add`` with a zero
  duration therefore returns that next working moment.

Common rules: inputs must be timezone-aware datetimes (any zone; naive ones raise
``ValueError``), results are returned in UTC (``tzinfo=timezone.utc``), negative durations
raise ``ValueError``.  Working time is measured as real elapsed time, so intervals are
computed on UTC instants; long spans are walked a day at a time, never minute by minute.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import MAXYEAR, MINYEAR, UTC, date, datetime, time, timedelta
from typing import Final, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

import holidays

__all__ = [
    "CALENDAR_NAMES",
    "AlwaysCalendar",
    "VietnamCalendar",
    "WorkingCalendar",
    "make_calendar",
]

CALENDAR_NAMES: Final = ("vn", "always")

_ZERO: Final = timedelta(0)
_ONE_DAY: Final = timedelta(days=1)


@runtime_checkable
class WorkingCalendar(Protocol):
    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant at which ``duration`` of working time has elapsed, from ``start``."""
        ...

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Working time between two instants (``timedelta(0)`` if ``end <= start``)."""
        ...


def _to_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _check_duration(duration: timedelta) -> None:
    if not isinstance(duration, timedelta):
        raise TypeError(f"duration must be a timedelta, got {type(duration).__name__}")
    if duration < _ZERO:
        raise ValueError(f"duration must not be negative, got {duration!r}")


class AlwaysCalendar:
    """Every hour counts: plain datetime arithmetic, results in UTC."""

    def add(self, start: datetime, duration: timedelta) -> datetime:
        begin = _to_utc(start, "start")
        _check_duration(duration)
        return begin + duration

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        begin = _to_utc(start, "start")
        finish = _to_utc(end, "end")
        return max(finish - begin, _ZERO)

    def __repr__(self) -> str:
        return "AlwaysCalendar()"


@functools.cache
def _vn_holiday_data(year: int) -> tuple[frozenset[date], frozenset[date]]:
    """(days off, weekend days swapped into working days) known for ``year``."""
    if not MINYEAR <= year <= MAXYEAR:
        return frozenset(), frozenset()
    calendar = holidays.country_holidays("VN", years=year)
    days_off: frozenset[date] = frozenset(calendar.keys())
    # Dates whose day-off was moved to a weekday ("Day off (substituted from ...)"), so
    # they are worked although they fall on a weekend.  May lie in a neighbouring year.
    swapped: frozenset[date] = frozenset(getattr(calendar, "weekend_workdays", ()))
    return days_off, swapped


class VietnamCalendar:
    """Vietnamese working days and hours; see the module docstring for the rules."""

    def __init__(
        self,
        tz: ZoneInfo,
        *,
        makeup_days: Iterable[date] = (),
        extra_days_off: Iterable[date] = (),
        day_start: time = time(8),
        day_end: time = time(17),
    ) -> None:
        if day_start.tzinfo is not None or day_end.tzinfo is not None:
            raise ValueError("day_start and day_end must be naive wall-clock times")
        if not day_start < day_end:
            raise ValueError(f"day_start ({day_start}) must be before day_end ({day_end})")
        self._tz = tz
        self._day_start = day_start
        self._day_end = day_end
        self._makeup_days = frozenset(_as_date(d, "makeup_days") for d in makeup_days)
        self._extra_days_off = frozenset(_as_date(d, "extra_days_off") for d in extra_days_off)
        both = self._makeup_days & self._extra_days_off
        if both:
            listed = ", ".join(d.isoformat() for d in sorted(both))
            raise ValueError(f"dates listed both as makeup_days and extra_days_off: {listed}")

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    def __repr__(self) -> str:
        return (
            f"VietnamCalendar({self._tz.key!r}, day_start={self._day_start}, "
            f"day_end={self._day_end}, makeup_days={len(self._makeup_days)}, "
            f"extra_days_off={len(self._extra_days_off)})"
        )

    def is_working_day(self, day: date) -> bool:
        if isinstance(day, datetime):
            raise TypeError("is_working_day takes a date, not a datetime")
        if day in self._extra_days_off:
            return False
        if day in self._makeup_days:
            return True
        days_off, _ = _vn_holiday_data(day.year)
        if day in days_off:
            return False
        if day.weekday() < 5:
            return True
        return any(day in _vn_holiday_data(y)[1] for y in (day.year - 1, day.year, day.year + 1))

    # -- internals ------------------------------------------------------------------------

    def _window(self, day: date) -> tuple[datetime, datetime] | None:
        """The UTC working interval [open, close) of ``day``, or None if it has none."""
        if not self.is_working_day(day):
            return None
        opens = datetime.combine(day, self._day_start, tzinfo=self._tz).astimezone(UTC)
        closes = datetime.combine(day, self._day_end, tzinfo=self._tz).astimezone(UTC)
        if closes <= opens:  # only possible around an exotic DST jump
            return None
        return opens, closes

    def _next_window(self, day: date) -> tuple[date, datetime, datetime]:
        """The first working day strictly after ``day`` and its working interval."""
        while True:
            day += _ONE_DAY
            window = self._window(day)
            if window is not None:
                return day, window[0], window[1]

    def _roll(self, moment: datetime) -> tuple[date, datetime, datetime, datetime]:
        """(day, open, close, t): ``t`` is the first working moment at or after ``moment``."""
        day = moment.astimezone(self._tz).date()
        window = self._window(day)
        if window is not None and moment < window[1]:
            return day, window[0], window[1], max(moment, window[0])
        day, opens, closes = self._next_window(day)
        return day, opens, closes, opens

    # -- public API -----------------------------------------------------------------------

    def add(self, start: datetime, duration: timedelta) -> datetime:
        begin = _to_utc(start, "start")
        _check_duration(duration)
        day, opens, closes, cursor = self._roll(begin)

        if duration >= _ONE_DAY and duration % _ONE_DAY == _ZERO:
            # Whole working days: same position on the working clock, N working days on.
            position = cursor - opens
            for _ in range(duration // _ONE_DAY):
                day, opens, closes = self._next_window(day)
            return min(opens + position, closes)

        remaining = duration
        while True:
            available = closes - cursor
            if remaining <= available:
                return cursor + remaining
            remaining -= available
            day, cursor, closes = self._next_window(day)

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        begin = _to_utc(start, "start")
        finish = _to_utc(end, "end")
        if finish <= begin:
            return _ZERO
        day = begin.astimezone(self._tz).date()
        last = finish.astimezone(self._tz).date()
        total = _ZERO
        while day <= last:
            window = self._window(day)
            if window is not None:
                low = max(window[0], begin)
                high = min(window[1], finish)
                if high > low:
                    total += high - low
            if day == last:
                break
            day += _ONE_DAY
        return total


def _as_date(value: date, name: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if not isinstance(value, date):
        raise TypeError(f"{name} must contain dates, got {value!r}")
    return value


def make_calendar(
    name: str,
    tz: ZoneInfo,
    *,
    makeup_days: Iterable[date] = (),
    extra_days_off: Iterable[date] = (),
) -> WorkingCalendar:
    """Build the calendar named by ``SIPAS_WORKING_CALENDAR`` ("vn" or "always").

    The name is matched case-insensitively, ignoring surrounding whitespace.  ``tz``,
    ``makeup_days`` and ``extra_days_off`` only matter for "vn".
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "vn":
        return VietnamCalendar(tz, makeup_days=makeup_days, extra_days_off=extra_days_off)
    if key == "always":
        return AlwaysCalendar()
    accepted = ", ".join(repr(n) for n in CALENDAR_NAMES)
    raise ValueError(f"unknown working calendar {name!r}; accepted values: {accepted}")
