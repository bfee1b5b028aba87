"""Tests for handlers.working_time (SLA working-time arithmetic)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.working_time import (
    AlwaysCalendar,
    VietnamCalendar,
    WorkingCalendar,
    make_calendar,
)

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
WORKDAY = timedelta(hours=9)


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HCM)


@pytest.fixture
def cal() -> VietnamCalendar:
    return VietnamCalendar(HCM)


def assert_utc(value: datetime) -> None:
    assert value.tzinfo is UTC


# --- examples -----------------------------------------------------------------------------


def test_weekend_skipped(cal: VietnamCalendar) -> None:
    # Friday 2026-03-13 16:00 + 2h: 1h on Friday, 1h on Monday.
    end = cal.add(vn(2026, 3, 13, 16), timedelta(hours=2))
    assert end == vn(2026, 3, 16, 9)
    assert_utc(end)
    assert not cal.is_working_day(date(2026, 3, 14))
    assert not cal.is_working_day(date(2026, 3, 15))
    assert cal.elapsed(vn(2026, 3, 13, 16), vn(2026, 3, 16, 9)) == timedelta(hours=2)
    assert cal.elapsed(vn(2026, 3, 14, 9), vn(2026, 3, 15, 16)) == timedelta(0)


def test_evening_start_rolls_to_next_morning(cal: VietnamCalendar) -> None:
    assert cal.add(vn(2026, 3, 10, 19, 30), timedelta(hours=1)) == vn(2026, 3, 11, 9)
    assert cal.add(vn(2026, 3, 10, 17), timedelta(minutes=15)) == vn(2026, 3, 11, 8, 15)
    # Early morning counts from 08:00 the same day.
    assert cal.add(vn(2026, 3, 10, 6), timedelta(minutes=30)) == vn(2026, 3, 10, 8, 30)
    # A zero duration returns the next working moment.
    assert cal.add(vn(2026, 3, 14, 10), timedelta(0)) == vn(2026, 3, 16, 8)
    assert cal.elapsed(vn(2026, 3, 10, 19), vn(2026, 3, 11, 8)) == timedelta(0)


def test_ending_at_close_is_the_same_day(cal: VietnamCalendar) -> None:
    assert cal.add(vn(2026, 3, 9, 8), timedelta(hours=9)) == vn(2026, 3, 9, 17)
    assert cal.add(vn(2026, 3, 9, 8), timedelta(hours=9, minutes=1)) == vn(2026, 3, 10, 8, 1)


def test_tet_2026_does_not_count(cal: VietnamCalendar) -> None:
    # holidays gives Mon 16 – Fri 20 February 2026 (Lunar New Year's Eve … fourth day);
    # with the weekends around it the desk is closed 14–22 February.
    for offset in range(9):
        assert not cal.is_working_day(date(2026, 2, 14) + timedelta(days=offset))
    assert cal.is_working_day(date(2026, 2, 13))
    assert cal.is_working_day(date(2026, 2, 23))
    assert cal.add(vn(2026, 2, 13, 16), timedelta(hours=2)) == vn(2026, 2, 23, 9)
    assert cal.add(vn(2026, 2, 13, 10), timedelta(days=1)) == vn(2026, 2, 23, 10)
    assert cal.elapsed(vn(2026, 2, 13, 17), vn(2026, 2, 23, 8)) == timedelta(0)


def test_tet_2027_does_not_count(cal: VietnamCalendar) -> None:
    # holidays gives Thu 4 – Wed 10 February 2027 (29th of the last month … fifth day).
    assert cal.is_working_day(date(2027, 2, 3))
    for offset in range(7):
        assert not cal.is_working_day(date(2027, 2, 4) + timedelta(days=offset))
    assert cal.add(vn(2027, 2, 3, 16), timedelta(hours=2)) == vn(2027, 2, 11, 9)


def test_makeup_saturday_counts() -> None:
    cal = VietnamCalendar(HCM, makeup_days=[date(2026, 3, 14)])
    assert cal.is_working_day(date(2026, 3, 14))
    assert not cal.is_working_day(date(2026, 3, 15))
    assert cal.add(vn(2026, 3, 13, 16), timedelta(hours=2)) == vn(2026, 3, 14, 9)
    assert cal.elapsed(vn(2026, 3, 13, 17), vn(2026, 3, 16, 8)) == WORKDAY


def test_government_swap_known_to_holidays(cal: VietnamCalendar) -> None:
    # 2026: Saturday 22 August is worked in exchange for Monday 31 August off,
    # followed by National Day (1–2 September).
    assert cal.is_working_day(date(2026, 8, 22))
    assert cal.add(vn(2026, 8, 21, 16), timedelta(hours=2)) == vn(2026, 8, 22, 9)
    for day in (date(2026, 8, 31), date(2026, 9, 1), date(2026, 9, 2)):
        assert not cal.is_working_day(day)
    assert cal.add(vn(2026, 8, 28, 16), timedelta(hours=2)) == vn(2026, 9, 3, 9)


def test_extra_day_off_skipped() -> None:
    cal = VietnamCalendar(HCM, extra_days_off=[date(2026, 3, 16)])
    assert not cal.is_working_day(date(2026, 3, 16))
    assert cal.add(vn(2026, 3, 13, 16), timedelta(hours=2)) == vn(2026, 3, 17, 9)
    assert cal.add(vn(2026, 3, 13, 10), timedelta(days=1)) == vn(2026, 3, 17, 10)


def test_configured_days_override_holiday_data() -> None:
    cal = VietnamCalendar(HCM, makeup_days=[date(2026, 2, 20)], extra_days_off=[date(2026, 8, 22)])
    assert cal.is_working_day(date(2026, 2, 20))
    assert not cal.is_working_day(date(2026, 8, 22))


def test_eight_hours_from_friday_afternoon(cal: VietnamCalendar) -> None:
    # Friday 15:00–17:00 is 2h, Monday 08:00–14:00 is the remaining 6h.
    start = vn(2026, 3, 13, 15)
    end = cal.add(start, timedelta(hours=8))
    assert end == vn(2026, 3, 16, 14)
    assert end == datetime(2026, 3, 16, 7, tzinfo=UTC)
    assert cal.elapsed(start, end) == timedelta(hours=8)


def test_ten_days_from_a_monday(cal: VietnamCalendar) -> None:
    # Ten working days on from Monday 09:30 is the Monday two weeks later at 09:30.
    start = vn(2026, 3, 2, 9, 30)
    end = cal.add(start, timedelta(days=10))
    assert end == vn(2026, 3, 16, 9, 30)
    assert cal.elapsed(start, end) == 10 * WORKDAY
    # Across Hùng Kings (Mon 27 Apr observed), Reunification and Labour Day (30 Apr, 1 May).
    assert cal.add(vn(2026, 4, 20, 10), timedelta(days=10)) == vn(2026, 5, 7, 10)
    # A start outside working hours rolls first, then counts whole days.
    assert cal.add(vn(2026, 3, 2, 18), timedelta(days=1)) == vn(2026, 3, 4, 8)
    assert cal.add(vn(2026, 3, 13, 16, 30), timedelta(days=1)) == vn(2026, 3, 16, 16, 30)


def test_mixed_duration_counts_working_hours(cal: VietnamCalendar) -> None:
    # 1 day 2 hours is not a whole number of days: 26 working hours.
    assert cal.add(vn(2026, 3, 2, 8), timedelta(days=1, hours=2)) == vn(2026, 3, 4, 16)
    # 24h is indistinguishable from 1d and therefore means one working day.
    assert cal.add(vn(2026, 3, 2, 8), timedelta(hours=24)) == vn(2026, 3, 3, 8)
    assert cal.add(vn(2026, 3, 2, 8), timedelta(hours=23)) == vn(2026, 3, 4, 13)


def test_whole_year_2026(cal: VietnamCalendar) -> None:
    # 261 weekdays - 13 weekday holidays/days-off + Saturday 22 August = 249 working days.
    start, end = vn(2026, 1, 1), vn(2027, 1, 1)
    assert cal.elapsed(start, end) == 249 * WORKDAY
    assert cal.add(start, 249 * WORKDAY) == vn(2026, 12, 31, 17)
    assert cal.add(start, timedelta(days=249)) == vn(2027, 1, 4, 8)


def test_always_calendar_is_plain() -> None:
    cal = AlwaysCalendar()
    start = vn(2026, 3, 14, 22)  # Saturday night
    end = cal.add(start, timedelta(hours=8))
    assert end == start + timedelta(hours=8)
    assert_utc(end)
    assert cal.add(start, timedelta(days=10)) == start + timedelta(days=10)
    assert cal.elapsed(start, vn(2026, 3, 16, 1)) == timedelta(hours=27)
    assert cal.elapsed(vn(2026, 3, 16, 1), start) == timedelta(0)


@pytest.mark.parametrize("calendar", [VietnamCalendar(HCM), AlwaysCalendar()])
def test_naive_datetime_rejected(calendar: WorkingCalendar) -> None:
    naive = datetime(2026, 3, 13, 15)
    aware = vn(2026, 3, 13, 15)
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.add(naive, timedelta(hours=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.elapsed(naive, aware)
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.elapsed(aware, naive)


@pytest.mark.parametrize("calendar", [VietnamCalendar(HCM), AlwaysCalendar()])
def test_negative_duration_rejected(calendar: WorkingCalendar) -> None:
    with pytest.raises(ValueError, match="negative"):
        calendar.add(vn(2026, 3, 13, 15), timedelta(minutes=-1))


def test_other_timezone_inputs_give_utc_outputs(cal: VietnamCalendar) -> None:
    # Friday 09:00 in Berlin (CET, UTC+1) is Friday 15:00 in Hanoi.
    start = datetime(2026, 3, 13, 9, tzinfo=ZoneInfo("Europe/Berlin"))
    end = cal.add(start, timedelta(hours=8))
    assert_utc(end)
    assert end == datetime(2026, 3, 16, 7, tzinfo=UTC)
    # 20:00 Thursday at UTC-5 is 08:00 Friday in Hanoi.
    start = datetime(2026, 3, 12, 20, tzinfo=timezone(timedelta(hours=-5)))
    end = cal.add(start, timedelta(hours=1))
    assert_utc(end)
    assert end == datetime(2026, 3, 13, 2, tzinfo=UTC)
    assert cal.elapsed(start, datetime(2026, 3, 13, 2, tzinfo=UTC)) == timedelta(hours=1)
    always_end = AlwaysCalendar().add(start, timedelta(hours=1))
    assert_utc(always_end)
    assert always_end == datetime(2026, 3, 13, 2, tzinfo=UTC)


def test_make_calendar() -> None:
    vn_cal = make_calendar("vn", HCM, makeup_days=[date(2026, 3, 14)])
    assert isinstance(vn_cal, VietnamCalendar)
    assert vn_cal.is_working_day(date(2026, 3, 14))
    assert isinstance(make_calendar("always", HCM), AlwaysCalendar)
    assert isinstance(make_calendar(" VN ", HCM), VietnamCalendar)
    assert isinstance(vn_cal, WorkingCalendar)


def test_make_calendar_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="accepted values: 'vn', 'always'") as info:
        make_calendar("x", HCM)
    assert "'x'" in str(info.value)


def test_invalid_configuration_rejected() -> None:
    with pytest.raises(ValueError, match="both"):
        VietnamCalendar(HCM, makeup_days=[date(2026, 3, 14)], extra_days_off=[date(2026, 3, 14)])
    with pytest.raises(ValueError, match="before"):
        VietnamCalendar(HCM, day_start=time(17), day_end=time(8))


def test_custom_hours() -> None:
    cal = VietnamCalendar(HCM, day_start=time(7, 30), day_end=time(16, 30))
    # Friday 15:00–16:30 is 1.5h; the remaining 6.5h from 07:30 end at 14:00.
    assert cal.add(vn(2026, 3, 13, 15), timedelta(hours=8)) == vn(2026, 3, 16, 14)


# --- properties ---------------------------------------------------------------------------

VN_CAL = VietnamCalendar(HCM)
ZONES = [HCM, UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")]
PROPERTY_SETTINGS = settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.filter_too_much]
)

any_start = st.datetimes(
    min_value=datetime(2025, 1, 1),
    max_value=datetime(2028, 12, 31),
    timezones=st.sampled_from(ZONES),
    allow_imaginary=False,
)


@st.composite
def working_moments(draw: st.DrawFn) -> datetime:
    day = draw(
        st.dates(min_value=date(2025, 1, 1), max_value=date(2028, 12, 31)).filter(
            VN_CAL.is_working_day
        )
    )
    offset = draw(st.timedeltas(min_value=timedelta(0), max_value=WORKDAY - timedelta.resolution))
    return datetime.combine(day, time(8), tzinfo=HCM) + offset


sub_day = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1) - timedelta.resolution)
hour_durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)).filter(
    lambda d: d < timedelta(days=1) or d % timedelta(days=1) != timedelta(0)
)
whole_days = st.integers(min_value=1, max_value=60).map(lambda n: timedelta(days=n))


@PROPERTY_SETTINGS
@given(start=working_moments(), duration=sub_day)
def test_elapsed_inverts_add_for_sub_day_durations(start: datetime, duration: timedelta) -> None:
    assert VN_CAL.elapsed(start, VN_CAL.add(start, duration)) == duration


@PROPERTY_SETTINGS
@given(start=any_start, duration=hour_durations)
def test_elapsed_inverts_add_for_any_start(start: datetime, duration: timedelta) -> None:
    assert VN_CAL.elapsed(start, VN_CAL.add(start, duration)) == duration


@PROPERTY_SETTINGS
@given(start=working_moments(), duration=whole_days)
def test_whole_days_are_nine_working_hours(start: datetime, duration: timedelta) -> None:
    end = VN_CAL.add(start, duration)
    assert VN_CAL.elapsed(start, end) == duration.days * WORKDAY
    assert end.astimezone(HCM).time() == start.astimezone(HCM).time()


@PROPERTY_SETTINGS
@given(start=any_start, a=hour_durations, b=hour_durations)
def test_add_is_monotonic_in_working_hours(start: datetime, a: timedelta, b: timedelta) -> None:
    low, high = sorted((a, b))
    assert VN_CAL.add(start, low) <= VN_CAL.add(start, high)


@PROPERTY_SETTINGS
@given(start=any_start, a=whole_days, b=whole_days)
def test_add_is_monotonic_in_working_days(start: datetime, a: timedelta, b: timedelta) -> None:
    low, high = sorted((a, b))
    assert VN_CAL.add(start, low) <= VN_CAL.add(start, high)


@PROPERTY_SETTINGS
@given(start=any_start, duration=st.one_of(hour_durations, whole_days))
def test_result_is_a_working_moment(start: datetime, duration: timedelta) -> None:
    end = VN_CAL.add(start, duration)
    assert_utc(end)
    assert end >= start
    local = end.astimezone(HCM)
    assert VN_CAL.is_working_day(local.date())
    assert time(8) <= local.time() <= time(17)


@PROPERTY_SETTINGS
@given(a=any_start, b=any_start, c=any_start)
def test_elapsed_is_additive(a: datetime, b: datetime, c: datetime) -> None:
    first, middle, last = sorted((a, b, c))
    total = VN_CAL.elapsed(first, last)
    assert total == VN_CAL.elapsed(first, middle) + VN_CAL.elapsed(middle, last)
    assert VN_CAL.elapsed(last, first) == timedelta(0)
    assert total <= last - first
