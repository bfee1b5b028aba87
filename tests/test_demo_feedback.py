"""The demo's citizens have answered: completed surveys, complaints, some already handled."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.config import load_settings
from bot.demo import DEMO_DATABASE, run_demo
from handlers.case_view import case_view_by_code
from storage.db import create_engine, create_session_factory
from storage.models import Case, Escalation, EscalationStatus, Survey, SurveyStatus


async def test_demo_seeds_answered_surveys_and_complaints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    await run_demo(load_settings(), serve=False, cases=120, out=out)
    assert "answered by citizens" in out.getvalue()

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / DEMO_DATABASE}")
    sessions = create_session_factory(engine)
    try:
        async with sessions() as session:
            completed = await session.scalar(
                select(func.count()).where(Survey.status == SurveyStatus.COMPLETED)
            )
            statuses = set((await session.execute(select(Escalation.status))).scalars().all())
            escalated = await session.scalar(
                select(Case.case_code)
                .join(Escalation, Escalation.case_id == Case.id)
                .where(Escalation.status == EscalationStatus.RESOLVED)
                .limit(1)
            )
            assert escalated is not None
            view = await case_view_by_code(session, escalated, lambda _token: {})
    finally:
        await engine.dispose()
    assert completed is not None and completed > 20
    assert statuses >= {EscalationStatus.OPEN, EscalationStatus.RESOLVED}
    assert view["survey"]["status"] == "completed"
    assert len(view["survey"]["answers"]) >= 5
    handled = next(item for item in view["escalations"] if item["status"] == "resolved")
    kinds = [event["kind"] for event in handled["events"]]
    assert kinds[0] == "opened" and kinds[-1] == "resolved"
