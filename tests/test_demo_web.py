"""The demo's web survey link: a resolved case whose survey is open, found among the sample
cases or resolved for the purpose when they offer none, on both databases."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from sqlalchemy import select

from bot.app import Services, build_services
from bot.config import load_settings
from demo.context import DemoContext
from demo.run import seed_cases, seed_units
from demo.web import FALLBACK_SUFFIX, pick_web_sample
from handlers.web_survey import PageKind, page_opened
from storage.models import Case, Survey, SurveyStatus
from tests.api_support import use_engine
from tests.conftest import engine_for

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


async def demo_services(url: str) -> Services:
    services = build_services(load_settings(database_url="sqlite+aiosqlite:///unused.db"))
    await services.engine.dispose()
    use_engine(services, engine_for(url))
    return services


async def consent_page_of(services: Services, token: str) -> PageKind:
    async with services.sessions.begin() as session:
        page = await page_opened(session, token, NOW, services.policy)
    return page.kind


async def test_a_sample_case_with_an_open_survey_is_picked(migrated_database_url: str) -> None:
    services = await demo_services(migrated_database_url)
    try:
        context = DemoContext(services, random.Random(7), NOW, cases=60)
        await seed_units(context)
        await seed_cases(context)
        await pick_web_sample(context)
        assert context.web_sample is not None
        code, token = context.web_sample
        assert not code.endswith(FALLBACK_SUFFIX)
        async with services.sessions() as session:
            status = await session.scalar(
                select(Survey.status)
                .join(Case, Case.id == Survey.case_id)
                .where(Case.case_code == code)
            )
        assert status == SurveyStatus.SCHEDULED
        assert await consent_page_of(services, token) == PageKind.CONSENT
    finally:
        await services.engine.dispose()


async def test_without_one_a_case_is_resolved_for_it(migrated_database_url: str) -> None:
    services = await demo_services(migrated_database_url)
    try:
        context = DemoContext(services, random.Random(7), NOW, cases=0)
        await seed_units(context)
        await pick_web_sample(context)
        assert context.web_sample is not None
        code, token = context.web_sample
        assert code.endswith(FALLBACK_SUFFIX)
        assert await consent_page_of(services, token) == PageKind.CONSENT
        assert services.links(token)["web"].endswith(f"/s/{token}")
    finally:
        await services.engine.dispose()
