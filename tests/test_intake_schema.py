"""What the intake schema says of each bad time and code: in the project's words, per field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from handlers.errors import InvalidInput
from handlers.intake_schema import parse_case
from tests.api_support import case_body, delayed_body

ISO = "must be an ISO 8601 date and time, e.g. 2026-11-20T08:05:00+07:00"
NO_OFFSET = "needs a time zone offset, e.g. 2026-11-20T08:05:00+07:00"
NOT_A_TIME = "is not a date and time; write it like 2026-11-20T08:05:00+07:00"


def problems(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidInput) as refused:
        parse_case(body)
    return refused.value.fields


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (2026, ISO),  # would be seconds since 1970 to pydantic
        (1.5, ISO),
        (True, ISO),
        ("20/11/2026 08:05", ISO),
        ("2026-11-20", ISO),  # a date, no time
        ("", ISO),
        (["2026-11-20T08:05:00+07:00"], ISO),
        ("2026-11-20T08:05:00", NO_OFFSET),
        ("2026-11-20 08:05", NO_OFFSET),
        ("2026-13-45T08:05:00+07:00", NOT_A_TIME),
        ("2026-11-20T08:05:00+07:00 trailing", NOT_A_TIME),
    ],
)
def test_a_bad_time_is_named_in_the_projects_words(value: object, said: str) -> None:
    for field in ("received_at", "due_at"):
        body = case_body()
        body[field] = value
        assert problems(body)[field] == said
    body = case_body(status="resolved")
    body["resolved_at"] = value
    assert problems(body)["resolved_at"] == said


def test_a_delays_new_date_is_judged_as_the_other_times() -> None:
    body = delayed_body("D-1")
    body["delay"]["new_due_at"] = "2026-11-28T17:00:00"
    assert problems(body)["delay.new_due_at"] == NO_OFFSET.replace(
        "2026-11-20T08:05", "2026-11-28T17:00"
    )
    body["delay"]["new_due_at"] = 1_764_000_000
    assert problems(body)["delay.new_due_at"] == ISO


def test_times_are_read_with_their_offset_spaces_around_them_ignored() -> None:
    body = case_body(status="resolved")
    body["received_at"] = "  2026-11-20T08:05:00+07:00\n"
    body["due_at"] = "2026-11-25 17:00:00Z"
    body["resolved_at"] = "2026-11-24T10:00:00.250+07:00"
    case = parse_case(body)
    assert case.received_at == datetime(2026, 11, 20, 1, 5, tzinfo=UTC)
    assert case.received_at.utcoffset() == timedelta(hours=7)
    assert case.due_at == datetime(2026, 11, 25, 17, tzinfo=UTC)
    assert case.resolved_at == datetime(
        2026, 11, 24, 10, 0, 0, 250_000, timezone(timedelta(hours=7))
    )


def test_python_callers_may_give_aware_datetimes_but_not_naive_ones() -> None:
    body = case_body()
    body["received_at"] = datetime(2026, 11, 20, 1, 5, tzinfo=UTC)
    assert parse_case(body).received_at == datetime(2026, 11, 20, 1, 5, tzinfo=UTC)
    body["received_at"] = datetime(2026, 11, 20, 1, 5)
    assert problems(body)["received_at"] == NO_OFFSET


@pytest.mark.parametrize("code", [".", "..", " ... "])
def test_a_case_code_of_dots_only_is_refused(code: str) -> None:
    body = case_body()
    body["case_code"] = code
    assert problems(body) == {"case_code": "must not be only dots"}


@pytest.mark.parametrize("code", ["a.b", ".x", "x.", "000.00.12.H26-261122-0001"])
def test_a_case_code_with_dots_and_more_is_taken(code: str) -> None:
    body = case_body()
    body["case_code"] = code
    assert parse_case(body).case_code == code
