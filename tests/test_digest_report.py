"""The weekly report computed by the database, on SQLite and PostgreSQL alike: each test states
the answers and checks the figures against values computed by hand, so both backends are held
to the same numbers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from handlers.digest import Week, build_report
from storage.db import SessionFactory
from storage.models import Apology, Escalation, EscalationEvent, EscalationStatus, Unit
from storage.repositories.reports import begin_reading, units
from tests.digest_support import add_case, add_invitation, add_response, load_tree

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
W47 = Week(2026, 47)
# Wednesday of week 47, 10:00 in Hà Nội.
MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)
MID_W46 = MID_W47 - timedelta(days=7)


async def report(sessions: SessionFactory, unit: str | None = None, *, minimum: int = 1) -> Any:
    async with sessions() as session:
        return (await build_report(session, W47, HANOI, minimum, unit)).as_json()


def unit_of(body: dict[str, Any], code: str) -> dict[str, Any]:
    return next(u for u in body["units"] if u["unit_code"] == code)


async def test_an_empty_week_has_zeros_and_no_index(sessions: SessionFactory) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
    body = await report(sessions, minimum=5)
    assert body["week"] == "2026-W47"
    assert body["timezone"] == "Asia/Ho_Chi_Minh"
    assert [u["unit_code"] for u in body["units"]] == ["HN", "HN-BD", "HN-LB", "HN-LB-BD"]
    for figures in [body["overall"], *body["units"]]:
        assert figures["responses"] == 0
        assert figures["surveys_sent"] == 0
        assert figures["response_rate"] is None
        assert figures["sipas_index"] is None
        assert set(figures["factors"].values()) == {None}
        assert figures["too_few_responses"] is True
        assert figures["trend"] is None


async def test_below_the_minimum_no_figure_is_shown(sessions: SessionFactory) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
        for _ in range(4):
            await add_response(session, "HN-LB", MID_W47, (5, 5, 5, 5, 5))
        await add_invitation(session, "HN-LB", MID_W47)
    lb = unit_of(await report(sessions, minimum=5), "HN-LB")
    assert lb["responses"] == 4 and lb["surveys_sent"] == 5
    assert lb["response_rate"] == 0.8
    assert lb["sipas_index"] is None
    assert lb["factors"] == dict.fromkeys(lb["factors"])
    assert lb["confidence_interval"] is None and lb["lowest_items"] == []

    async with sessions.begin() as session:
        await add_response(session, "HN-LB", MID_W47, (5, 4, 2, 1, 3))
    lb = unit_of(await report(sessions, minimum=5), "HN-LB")
    assert lb["too_few_responses"] is False
    assert lb["factors"] == {
        "access": 100.0,
        "procedure": 100.0,
        "civil_servant": 80.0,
        "result": 80.0,
        "feedback_handling": 80.0,
    }
    assert lb["sipas_index"] == 88.0
    assert lb["mean_scores"]["result"] == 4.2  # (4*5 + 1)/5
    assert [i["question_id"] for i in lb["lowest_items"]] == [
        "civil_servant",
        "feedback_handling",
        "result",
    ]
    # Wilson of 0.88 over 5: centre 0.7149, half-width 0.2705.
    assert lb["confidence_interval"] == {"low": 44.4, "high": 98.5}


async def test_a_response_late_on_sunday_counts_in_that_local_week(
    sessions: SessionFactory,
) -> None:
    sunday_2330 = datetime(2026, 11, 22, 16, 30, tzinfo=UTC)
    monday_0010 = datetime(2026, 11, 22, 17, 10, tzinfo=UTC)
    monday_0000 = datetime(2026, 11, 15, 17, 0, tzinfo=UTC)  # the first instant of week 47
    async with sessions.begin() as session:
        await load_tree(session)
        await add_response(session, "HN-BD", sunday_2330, (5, 5, 5, 5, 5))
        await add_response(session, "HN-BD", monday_0000, (1, 1, 1, 1, 1))
        await add_response(session, "HN-BD", monday_0010, (4, 4, 4, 4, 4))
    bd = unit_of(await report(sessions), "HN-BD")
    assert bd["responses"] == 2
    assert bd["sipas_index"] == 50.0
    async with sessions() as session:
        next_week = (await build_report(session, W47.following(), HANOI, 1)).as_json()
    assert unit_of(next_week, "HN-BD")["responses"] == 1


async def test_a_scope_rolls_up_every_unit_below_it_across_three_levels(
    sessions: SessionFactory,
) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
        await add_response(session, "HN", MID_W47, (5, 5, 5, 5, 5))
        await add_response(session, "HN-LB", MID_W47, (5, 5, 5, 5, 1))
        await add_response(session, "HN-LB-BD", MID_W47, (1, 1, 1, 1, None))
        await add_response(session, "HN-LB-BD", MID_W47, (4, 4, 2, 2, None))
        await add_response(session, "HN-BD", MID_W47, (2, 2, 2, 2, 2))
    lb_scope = await report(sessions, "HN-LB")
    assert [u["unit_code"] for u in lb_scope["units"]] == ["HN-LB", "HN-LB-BD"]
    overall = lb_scope["overall"]
    assert overall["unit_code"] == "HN-LB" and overall["responses"] == 3
    # Pooled over the three responses: access 2/3, procedure 2/3, civil_servant 1/3,
    # result 1/3, feedback_handling 0/1.
    assert overall["factors"] == {
        "access": 66.7,
        "procedure": 66.7,
        "civil_servant": 33.3,
        "result": 33.3,
        "feedback_handling": 0.0,
    }
    assert overall["sipas_index"] == 40.0
    assert unit_of(lb_scope, "HN-LB-BD")["sipas_index"] == 25.0  # 50, 50, 0, 0; no feedback

    city = await report(sessions)
    assert city["scope"] is None
    assert city["overall"]["unit_code"] == "HN"
    assert city["overall"]["responses"] == 5
    # access 3/5, procedure 3/5, civil_servant 2/5, result 2/5, feedback 1/3.
    assert city["overall"]["sipas_index"] == 46.7  # (60+60+40+40+33.33)/5
    assert (await report(sessions, "HN"))["overall"] == city["overall"]
    # Siblings: HN-LB (80) and HN-BD (0) under HN; HN-LB-BD is alone under HN-LB.
    assert unit_of(city, "HN-LB")["rank"] == {"position": 1, "of": 2}
    assert unit_of(city, "HN-BD")["rank"] == {"position": 2, "of": 2}
    assert unit_of(city, "HN-LB-BD")["rank"] is None


async def test_the_change_from_last_week_is_marked_both_ways_and_only_beyond_noise(
    sessions: SessionFactory,
) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
        for _ in range(10):
            await add_response(session, "HN-LB", MID_W46, (5, 5, 5, 5, 5))
            await add_response(session, "HN-LB", MID_W47, (2, 2, 2, 2, 2))
            await add_response(session, "HN-BD", MID_W46, (2, 2, 2, 2, 2))
            await add_response(session, "HN-BD", MID_W47, (5, 5, 5, 5, 5))
            await add_response(session, "HN-LB-BD", MID_W46, (5, 5, 5, 5, 4))
            await add_response(session, "HN-LB-BD", MID_W47, (5, 5, 5, 4, 5))
        await add_response(session, "HN-LB-BD", MID_W47, (5, 5, 2, 2, 5))
    body = await report(sessions, minimum=5)
    lb, bd, ward = (unit_of(body, code) for code in ("HN-LB", "HN-BD", "HN-LB-BD"))
    assert (lb["previous_sipas_index"], lb["sipas_index"], lb["trend"]) == (100.0, 0.0, "down")
    assert (bd["previous_sipas_index"], bd["sipas_index"], bd["trend"]) == (0.0, 100.0, "up")
    assert ward["trend"] == "same" and ward["change"] == -3.6  # 100 -> 96.4 over 11


async def test_complaints_apologies_and_the_qd766_rates(sessions: SessionFactory) -> None:
    end = W47.end(HANOI)
    async with sessions.begin() as session:
        await load_tree(session)
        surveys = [await add_response(session, "HN-LB", MID_W47, (5, 5, 5, 5, 5)) for _ in range(4)]
        unit_id = await session.scalar(select(Unit.id).where(Unit.code == "HN-LB"))

        def escalation(index: int, **fields: Any) -> Escalation:
            values: dict[str, Any] = {
                "ref": f"e{index}",
                "case_id": surveys[index].case_id,
                "reason": "low_rating",
                "severity": "high",
                "unit_id": unit_id,
                "origin_unit_id": unit_id,
                "opened_at": MID_W47 - timedelta(days=1),
                "resolve_due_at": MID_W47 + timedelta(days=1),
                "ack_due_at": MID_W47,
            }
            values.update(fields)
            return Escalation(**values)

        resolved = {
            "status": EscalationStatus.RESOLVED,
            "acknowledged_at": MID_W47 - timedelta(hours=20),
        }
        session.add_all(
            [
                # On time, and the citizen was satisfied after "you said, we did".
                escalation(
                    0, **resolved, resolved_at=MID_W47, recovery_rating=5, recovery_at=MID_W47
                ),
                # Resolved after its SLA.
                escalation(1, **resolved, resolved_at=MID_W47 + timedelta(days=2)),
                # On time, but the citizen is still unsatisfied.
                escalation(
                    2, **resolved, resolved_at=MID_W47, recovery_rating=1, recovery_at=MID_W47
                ),
                # Never acknowledged, past its acknowledgement SLA at the end of the week.
                escalation(
                    3,
                    acknowledged_at=None,
                    ack_due_at=end - timedelta(hours=1),
                    resolve_due_at=end + timedelta(days=9),
                ),
            ]
        )
        await session.flush()
        first = await session.scalar(select(Escalation).where(Escalation.ref == "e0"))
        assert first is not None
        session.add(
            EscalationEvent(
                escalation_id=first.id, kind="skipped", level=1, unit_id=unit_id, at=MID_W47
            )
        )
        session.add(
            EscalationEvent(
                escalation_id=first.id, kind="unrouted", level=2, unit_id=unit_id, at=MID_W47
            )
        )
        late = await add_case(
            session,
            "HN-LB",
            received_at=MID_W47 - timedelta(days=10),
            due_at=MID_W47 - timedelta(days=3),
            resolved_at=MID_W47,
        )
        session.add(
            Apology(
                case_id=late.id,
                unit_id=unit_id,
                kind="late_resolution",
                old_due_at=late.due_at,
                new_due_at=MID_W47,
                created_at=MID_W47,
            )
        )
    lb = unit_of(await report(sessions), "HN-LB")
    assert lb["escalations"] == {
        "opened": 4,
        "open_now": 1,
        "sla_breaches": 1,
        "median_hours_to_acknowledge": 4.0,  # opened a day before, acknowledged 20 h before
        "recovery_rate": 50.0,
    }
    assert lb["qd766"] == {
        "complaints_resolved_on_time": 66.7,
        "complaints_not_unsatisfied_or_overdue": 33.3,
        "cases_not_unsatisfied_complained_or_overdue": 0.0,  # all four have a complaint
    }
    assert lb["heads_unreachable"] == 2
    assert lb["cases_overdue"] == 1 and lb["apologies_sent"] == 1


async def test_informal_payments_and_comment_themes_are_counted_never_quoted(
    sessions: SessionFactory,
) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
        await add_response(
            session,
            "HN-BD",
            MID_W47,
            (2, 2, 2, 2, 2),
            informal_payment=True,
            comment="Cán bộ Nguyễn Văn X đòi tiền bồi dưỡng, phải chờ lâu",
        )
        await add_response(session, "HN-BD", MID_W47, (3, 3, 3, 3, 3), comment="Chờ đợi quá lâu")
        await add_response(session, "HN-BD", MID_W47, (5, 5, 5, 5, 5), comment="Rất tốt")
    body = await report(sessions)
    bd = unit_of(body, "HN-BD")
    assert bd["informal_payment_reports"] == 1
    assert bd["comment_themes"] == {"waiting": 2, "fees": 1, "informal_payment": 1}
    assert body["overall"]["comment_themes"] == bd["comment_themes"]
    assert "Nguyễn" not in str(body)


async def test_officers_are_shown_only_to_their_heads_and_above_the_minimum(
    sessions: SessionFactory,
) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
        for _ in range(5):
            await add_response(session, "HN-LB", MID_W47, (5, 5, 5, 5, 5), officer_code="CB-1")
        for _ in range(2):
            await add_response(session, "HN-LB", MID_W47, (1, 1, 1, 1, 1), officer_code="CB-2")
    async with sessions() as session:
        head = (await build_report(session, W47, HANOI, 5, "HN-LB", with_officers=True)).as_json()
        plain = (await build_report(session, W47, HANOI, 5, "HN-LB")).as_json()
    assert unit_of(head, "HN-LB")["officers"] == [
        {"officer": "Cán bộ CB-1", "responses": 5, "sipas_index": 100.0}
    ]
    assert "officers" not in unit_of(plain, "HN-LB")
    assert "officers" not in head["overall"]


async def test_a_report_being_read_does_not_hold_up_writers(sessions: SessionFactory) -> None:
    async with sessions.begin() as session:
        await load_tree(session)
    async with sessions() as reader:
        await begin_reading(reader)
        assert len(await units(reader)) == 4  # the reader's transaction is open
        async with asyncio.timeout(3), sessions.begin() as writer:
            writer.add(Unit(code="HN-NEW", name="UBND phường mới"))
    async with sessions() as session:
        assert len(await units(session)) == 5
