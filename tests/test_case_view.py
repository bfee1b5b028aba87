"""The case view's escalation events name the unit and level they concern, and carry what
the head wrote."""

from __future__ import annotations

from datetime import UTC, datetime

from handlers.case_view import event_view
from storage.models import EscalationEvent

AT = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
LEVELS = {"HN-LB-BD": 1, "HN-LB": 2, "HN": 3}


def event(kind: str, level: int, detail: dict[str, object]) -> EscalationEvent:
    return EscalationEvent(escalation_id=1, kind=kind, level=level, at=AT, detail=detail)


def test_a_head_passed_over_is_named_with_its_own_unit_and_level() -> None:
    skipped = event("skipped", 1, {"unit": "HN-LB", "why": "no_reachable_head"})
    view = event_view(skipped, "HN-LB-BD", LEVELS)
    assert view == {
        "kind": "skipped",
        "level": 2,
        "unit_code": "HN-LB",
        "at": AT.isoformat(),
        "why": "no_reachable_head",
    }


def test_a_resolution_carries_the_heads_note() -> None:
    resolved = event("resolved", 2, {"note": "Đã gọi điện xin lỗi công dân."})
    view = event_view(resolved, "HN-LB", LEVELS)
    assert (view["unit_code"], view["level"]) == ("HN-LB", 2)
    assert view["note"] == "Đã gọi điện xin lỗi công dân."


def test_an_event_without_a_named_unit_keeps_the_holder() -> None:
    view = event_view(event("acknowledged", 1, {}), "HN-LB-BD", LEVELS)
    assert view == {
        "kind": "acknowledged",
        "level": 1,
        "unit_code": "HN-LB-BD",
        "at": AT.isoformat(),
    }
