"""Quiet hours: when an invitation or a reminder may go out (local time)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from handlers.policy import QuietHours, SurveyPolicy

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
NIGHT = QuietHours(time(21, 0), time(7, 0))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=HANOI).astimezone(UTC)


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        (at(23, 20, 59), at(23, 20, 59)),  # before the window
        (at(23, 21, 0), at(24, 7, 0)),  # its first minute: the next morning
        (at(23, 23, 45), at(24, 7, 0)),
        (at(24, 0, 10), at(24, 7, 0)),  # after midnight: the same morning
        (at(24, 6, 59), at(24, 7, 0)),
        (at(24, 7, 0), at(24, 7, 0)),  # the window's end is allowed
    ],
)
def test_a_window_across_midnight(moment: datetime, allowed: datetime) -> None:
    assert NIGHT.next_allowed(moment, HANOI) == allowed


def test_a_window_within_a_day() -> None:
    lunch = QuietHours(time(11, 30), time(13, 30))
    assert lunch.next_allowed(at(23, 12, 0), HANOI) == at(23, 13, 30)
    assert lunch.next_allowed(at(23, 14, 0), HANOI) == at(23, 14, 0)


def test_without_quiet_hours_everything_goes_at_once() -> None:
    assert SurveyPolicy(quiet_hours=None).sendable_at(at(23, 23)) == at(23, 23)
    assert SurveyPolicy().sendable_at(at(23, 23)) == at(24, 7)
