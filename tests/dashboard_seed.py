"""Seeding for the dashboard tests: a scope of four units over weeks 46 and 47 of 2026 with
enough and too few responses, a unit that fell, comments with phone numbers beside a named
citizen, officers above and below the minimum, and a complaint with its audit trail.

The test clock (conftest's `clock`) is Monday 23/11/2026, so "last week" is 2026-W47.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.app import Services
from handlers.digest import Week
from handlers.units import load_units, parse_units_file
from storage.models import Case, Citizen, Escalation, EscalationEvent, EscalationStatus, Unit
from tests.digest_support import TREE_YAML, add_invitation, add_response

W46, W47 = Week(2026, 46), Week(2026, 47)
MID_W46 = datetime(2026, 11, 11, 3, 0, tzinfo=UTC)
MID_W47 = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)
CITIZEN_NAME = "Trần Văn Minh"
PHONES = ("0912345678", "+84 912 345 678", "091.234.5678")
COMMENTS = (
    f"Chờ lâu quá, cán bộ hẹn gọi lại số {PHONES[0]} mà không gọi.",
    f"Thái độ khó chịu. Liên hệ {PHONES[1]} nếu cần.",
    f"Hướng dẫn không rõ, phải bổ sung nhiều lần; SĐT {PHONES[2]}.",
)
MINIMUM = 5  # SIPAS_DIGEST_MIN_RESPONSES by default


async def seed(services: Services) -> None:
    async with services.sessions.begin() as session:
        await load_units(session, parse_units_file(TREE_YAML))
        # HN-LB: perfect in week 46, poor in week 47 (a fall beyond noise), with comments.
        for _ in range(10):
            await add_response(session, "HN-LB", MID_W46, (5, 5, 5, 5, 5))
        surveys = []
        for index in range(10):
            comment = COMMENTS[index] if index < len(COMMENTS) else None
            officer = "CB-1" if index < 6 else "CB-2"
            surveys.append(
                await add_response(
                    session,
                    "HN-LB",
                    MID_W47 + timedelta(hours=index),
                    (2, 3, 2, 4, 2) if index % 2 else (1, 3, 2, 5, 3),
                    comment=comment,
                    officer_code=officer,
                )
            )
        # A named citizen beside the comments: the page must not show the name.
        citizen = Citizen(name=CITIZEN_NAME, phone=PHONES[0])
        session.add(citizen)
        await session.flush()
        for survey in surveys[:3]:
            case = await session.get(Case, survey.case_id)
            assert case is not None
            case.citizen_id = citizen.id
        # The ward below it: enough, steady.
        for _ in range(6):
            await add_response(session, "HN-LB-BD", MID_W46, (5, 5, 5, 4, 5))
            await add_response(session, "HN-LB-BD", MID_W47, (5, 5, 5, 4, 5))
        # Ba Đình: too few responses, and invitations not answered.
        for _ in range(2):
            await add_response(session, "HN-BD", MID_W47, (1, 1, 1, 1, 1))
            await add_invitation(session, "HN-BD", MID_W47)
        # A complaint about Long Biên: opened, sent, acknowledged, resolved within the week.
        lb = await session.scalar(select(Unit).where(Unit.code == "HN-LB"))
        assert lb is not None
        opened = MID_W47 + timedelta(hours=1)
        escalation = Escalation(
            ref="E-0001",
            case_id=surveys[1].case_id,
            survey_id=surveys[1].id,
            reason="low_rating",
            severity="high",
            level=1,
            unit_id=lb.id,
            origin_unit_id=lb.id,
            status=EscalationStatus.RESOLVED,
            opened_at=opened,
            acknowledged_at=opened + timedelta(hours=3, minutes=20),
            resolved_at=opened + timedelta(days=1, hours=5),
            ack_due_at=opened + timedelta(hours=8),
            resolve_due_at=opened + timedelta(days=3),
        )
        session.add(escalation)
        await session.flush()
        for kind, after in (
            ("opened", timedelta(0)),
            ("sent", timedelta(minutes=1)),
            ("acknowledged", timedelta(hours=3, minutes=20)),
            ("resolved", timedelta(days=1, hours=5)),
        ):
            session.add(
                EscalationEvent(
                    escalation_id=escalation.id,
                    kind=kind,
                    level=1,
                    unit_id=lb.id,
                    actor="telegram:901" if kind in {"acknowledged", "resolved"} else None,
                    at=opened + after,
                )
            )
