"""The demo's citizens have answered: completed surveys, complaints, some already handled."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Services, build_services
from bot.config import load_settings
from bot.jobs.sweeps import escalation_sweep, survey_sweep
from demo.run import DEMO_DATABASE, run_demo
from handlers.case_view import case_view_by_code
from handlers.clock import FakeClock
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


async def test_the_banner_case_shows_answers_and_a_handled_complaint_also_after_the_sweeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    await run_demo(load_settings(), serve=False, cases=120, out=out)
    found = re.search(r"Open this case first: (\S+)\. ", out.getvalue())
    assert found, out.getvalue()
    code = found[1]
    assert f"/api/v1/cases/{code}" in out.getvalue()

    settings = load_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / DEMO_DATABASE}")
    # Ten minutes after the demo started, the sweeps run as the server would run them.
    later = FakeClock(datetime.now(UTC) + timedelta(minutes=10))
    services = build_services(settings, clock=later)
    try:
        before = await view_of(services, code)
        assert await escalation_sweep(services) == 0  # nothing seeded is overdue
        await survey_sweep(services)
        after = await view_of(services, code)
    finally:
        await services.engine.dispose()

    for view in (before, after):
        assert view["survey"]["status"] == "completed"
        assert len(view["survey"]["answers"]) >= 5
        handled = next(item for item in view["escalations"] if item["status"] == "resolved")
        assert handled["note"]
        events = handled["events"]
        assert [event["kind"] for event in events] == ["opened", "sent", "acknowledged", "resolved"]
        assert events[-1]["note"] == handled["note"]
        assert all(event["unit_code"] == handled["unit_code"] for event in events)
        assert all(event["level"] == handled["level"] for event in events)
        assert f"«{handled['note']}»" in out.getvalue()
    assert after["escalations"] == before["escalations"]


async def view_of(services: Services, code: str) -> dict[str, Any]:
    async with services.sessions() as session:
        return await case_view_by_code(session, code, lambda _token: {})
