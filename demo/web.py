"""The demo's web survey: a resolved sample case whose citizen has not answered yet, so that a
newcomer can open its web link (`links.web`, bot/http/web_survey.py) in a browser and answer it."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from demo import data as demo_data
from demo.digest import HISTORY_PREFIX
from handlers.intake import case_posted
from handlers.intake_schema import parse_case
from storage.models import Case, Citizen, LinkToken, Survey, SurveyStatus

if TYPE_CHECKING:
    from demo.context import DemoContext

# The link must still work a good while after the demo starts.
MARGIN = timedelta(days=1)
FALLBACK_SUFFIX = "-9002"  # the printed curl's case ends in -9001


async def pick_web_sample(context: DemoContext) -> None:
    """The most recently resolved sample case with an open survey, of a citizen who reads the
    service's language (a few sample citizens chose English: the newcomer's first page should
    not depend on the day's draw); one is resolved now for the purpose when the sample has
    none (a handful of cases, or an old database)."""
    services = context.services
    margin = context.now + MARGIN
    query = (
        select(Case.case_code, LinkToken.token)
        .join(Survey, Survey.case_id == Case.id)
        .join(LinkToken, LinkToken.case_id == Case.id)
        .join(Citizen, Citizen.id == Case.citizen_id)
        .where(
            Citizen.locale == services.settings.locale,
            Survey.status == SurveyStatus.SCHEDULED,
            Survey.expires_at > margin,
            LinkToken.expires_at > margin,
            ~Case.case_code.startswith(HISTORY_PREFIX),
        )
        .order_by(Case.resolved_at.desc(), Case.id)
        .limit(1)
    )
    async with services.sessions() as session:
        row = (await session.execute(query)).first()
    if row is not None:
        context.web_sample = (row[0], row[1])
        return
    body = demo_data.new_case(context.now)
    body["case_code"] = str(body["case_code"]).removesuffix("-9001") + FALLBACK_SUFFIX
    body.update(status="resolved", resolved_at=body["received_at"])
    async with services.sessions.begin() as session:
        result = await case_posted(session, parse_case(body), context.now, services.policy)
        token = await session.scalar(
            select(LinkToken.token).where(LinkToken.case_id == result.case.id)
        )
    context.web_sample = (str(body["case_code"]), token) if token else None
