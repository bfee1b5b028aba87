"""`sipas-bot demo`: the newcomer's path. A local database with sample units and weeks of
sample cases, an API token, the real server running, and instructions to try it.

Seeding is a list of steps, one per concern (`seed_steps`); later features add theirs
(surveys answered, escalations, a digest on disk) without touching the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import shlex
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import aliased

from bot.config import Settings
from bot.serve import run_until_stopped
from bot.startup import masked_url, open_services
from demo import data as demo_data
from demo.context import DemoContext, StoryCase
from handlers.errors import DomainError
from handlers.intake import case_posted
from handlers.intake_schema import parse_case
from handlers.units import UnitsFile, load_units
from storage.models import (
    Answer,
    Case,
    Escalation,
    EscalationStatus,
    LinkToken,
    Survey,
    SurveyStatus,
    Unit,
)

log = logging.getLogger(__name__)

DEMO_DIR = Path("sipas-demo")
DEMO_DATABASE = DEMO_DIR / "sipas.db"
# SIPAS_DATABASE_URL's default file (docs/contract.md section 2).
DEFAULT_DATABASE = Path("sipas.db")
SEED = 2026


SeedStep = Callable[[DemoContext], Awaitable[None]]


async def seed_units(context: DemoContext) -> None:
    """UBND thành phố Hà Nội and the units below it, each with a head (fake chat ids)."""
    parsed = UnitsFile.model_validate(demo_data.units_file())
    async with context.services.sessions.begin() as session:
        await load_units(session, parsed)
    context.summary.append(
        f"Units:     {len(parsed.units)}, UBND thành phố Hà Nội and below it "
        f"(quận, huyện, sở, phường, xã), heads with made-up Telegram chat ids"
    )


async def seed_cases(context: DemoContext) -> None:
    """Sample cases through the real intake, as the one-stop system would have posted them."""
    services = context.services
    bodies = demo_data.sample_cases(context.rng, context.now, context.cases)
    statuses: Counter[str] = Counter()
    skipped = 0
    async with services.sessions.begin() as session:
        for body in bodies:
            try:
                async with session.begin_nested():
                    await case_posted(
                        session,
                        parse_case(body),
                        context.now,
                        services.policy,
                        # The sample heads have Telegram chat ids: complaints reach them (as
                        # queued messages, sent only when a Telegram token is configured).
                        channels=["telegram"],
                    )
            except DomainError:
                # Only when an existing database (SIPAS_DATABASE_URL) already holds that code.
                skipped += 1
                continue
            statuses[str(body["status"])] += 1
    detail = ", ".join(f"{count} {status}" for status, count in statuses.most_common())
    context.summary.append(
        f"Cases:     {sum(statuses.values())} over the last {demo_data.WEEKS} weeks ({detail})"
        + (f"; {skipped} skipped (already in the database)" if skipped else "")
    )


async def pick_sample(context: DemoContext) -> None:
    """A case still being processed, whose citizen link a newcomer can open in Telegram."""
    query = (
        select(Case.case_code, LinkToken.token)
        .join(LinkToken, LinkToken.case_id == Case.id)
        .where(Case.status == "received")
        .order_by(Case.id)
        .limit(1)
    )
    async with context.services.sessions() as session:
        row = (await session.execute(query)).first()
    context.sample = (row[0], row[1]) if row else None


async def pick_story(context: DemoContext) -> None:
    """The case a newcomer should open first: a citizen answered and complained (preferably
    with a comment), and the unit head acknowledged and handled it, with a note."""
    comment = aliased(Answer)
    query = (
        select(Case.case_code, Unit.name, Escalation.reason, Escalation.resolution_note)
        .join(Escalation, Escalation.case_id == Case.id)
        .join(Unit, Unit.id == Escalation.unit_id)
        .join(Survey, Survey.case_id == Case.id)
        .outerjoin(
            comment,
            (comment.survey_id == Survey.id)
            & (comment.question_id == "comment")
            & comment.value_text.is_not(None),
        )
        .where(
            Survey.status == SurveyStatus.COMPLETED,
            Escalation.status == EscalationStatus.RESOLVED,
            Escalation.resolution_note.is_not(None),
        )
        .order_by(comment.id.is_(None), Escalation.resolved_at.desc(), Case.id)
        .limit(1)
    )
    async with context.services.sessions() as session:
        row = (await session.execute(query)).first()
    if row is not None:
        context.story = StoryCase(row[0], row[1], row[2], row[3] or "")


async def mint_dashboard_link(context: DemoContext) -> None:
    """A sign-in link to the city's dashboard, ready in the banner (as `dashboard link HN`)."""
    from bot.cli.dashboard import dashboard_link

    lines = await dashboard_link(context.services, demo_data.UNITS[0].code)
    context.dashboard_link = lines[0]


def seed_steps() -> list[SeedStep]:
    """Every seeding step, in order; add new concerns here."""
    from demo.digest import seed_digest_weeks, write_demo_digest
    from demo.feedback import seed_feedback
    from demo.web import pick_web_sample

    return [
        seed_units,
        seed_cases,
        seed_feedback,
        seed_digest_weeks,
        pick_sample,
        pick_story,
        pick_web_sample,
        write_demo_digest,
        mint_dashboard_link,
    ]


@dataclass(frozen=True)
class DemoSetup:
    settings: Settings
    token: str | None  # generated for this run, so it may be printed
    fresh_file: Path | None  # the local SQLite file recreated for this run


def demo_settings(settings: Settings) -> DemoSetup:
    """The demo's own database and token, unless the environment chose them."""
    overrides: dict[str, object] = {}
    fresh_file = None
    if "database_url" not in settings.model_fields_set:
        fresh_file = DEMO_DATABASE.resolve()
        overrides["database_url"] = f"sqlite+aiosqlite:///{fresh_file}"
    token = None
    if not settings.api_tokens:
        token = secrets.token_urlsafe(24)
        overrides["api_tokens"] = [SecretStr(token)]
    if "public_url" not in settings.model_fields_set:
        # Links handed to citizens should point at this demo server, whatever its port.
        host = _browser_host(settings.http_host)
        overrides["public_url"] = f"http://{host}:{settings.http_port}"
    # A copy of the given settings (values already typed), not a re-read of the environment:
    # settings built in code, as in tests, must keep their token, port and channels.
    return DemoSetup(settings.model_copy(update=overrides), token, fresh_file)


def recreate(database: Path) -> None:
    """Removes the previous demo database (and SQLite's side files) so each run starts fresh."""
    database.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


async def run_demo(
    settings: Settings,
    *,
    serve: bool,
    cases: int = demo_data.CASES,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Seeds, prints how to try it, and (unless `serve` is False) runs the server."""
    out = out or sys.stdout
    setup = demo_settings(settings)
    if setup.fresh_file is not None:
        recreate(setup.fresh_file)
    services = await open_services(setup.settings)
    context = DemoContext(services, random.Random(SEED), services.clock.now(), cases)
    try:
        with _quiet_handlers():
            for step in seed_steps():
                await step(context)
    except BaseException:
        await services.engine.dispose()
        raise
    base_url = f"http://{_browser_host(setup.settings.http_host)}:{setup.settings.http_port}"
    if not serve:
        await services.engine.dispose()
        print(instructions(setup, context, base_url, serving=False), file=out, flush=True)
        return

    def ready(address: str) -> None:
        print(instructions(setup, context, address, serving=True), file=out, flush=True)

    await run_until_stopped(services, on_listening=ready, stop=stop)


@contextlib.contextmanager
def _quiet_handlers() -> Iterator[None]:
    """Seeding replays hundreds of cases through the real handlers, which log each apology
    with no chat and each critical complaint; in the demo that is noise before the banner."""
    handlers_log = logging.getLogger("handlers")
    level = handlers_log.level
    handlers_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        handlers_log.setLevel(level)


def _browser_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def instructions(setup: DemoSetup, context: DemoContext, base_url: str, *, serving: bool) -> str:
    """What a newcomer reads: where everything is and commands ready to paste."""
    settings = setup.settings
    if setup.token is not None:
        auth = shlex.quote(f"Authorization: Bearer {setup.token}")
        token_line = f"API token: {setup.token}  (generated for this run; set SIPAS_API_TOKENS)"
    else:
        # The operator chose the tokens; print a shell expansion, never their value.
        auth = '"Authorization: Bearer ${SIPAS_API_TOKENS%%,*}"'
        token_line = "API token: the first of your SIPAS_API_TOKENS"
    if setup.fresh_file is not None:
        where = f"{setup.fresh_file}  (SQLite, recreated fresh on every `sipas-bot demo`)"
    else:
        where = f"{masked_url(settings.database_url)}  (from SIPAS_DATABASE_URL, not wiped)"
    case = demo_data.new_case(context.now)
    code = str(case["case_code"])
    body = json.dumps(case, ensure_ascii=False)
    lines = [
        "",
        "sipas-bot demo: sample data is ready.",
        "",
        f"  Database:  {where}",
        *(f"  {line}" for line in context.summary),
        f"  {token_line}",
        "",
    ]
    if context.story is not None:
        story = context.story
        lines += [
            f"Open this case first: {story.case_code}. Its citizen answered the survey and "
            f"complained ({story.reason}); the head of {story.unit_name} acknowledged it and "
            f"handled it with the note «{story.note}». The case view shows the answers and "
            "every step of the escalation:",
            f"  curl -sS -H {auth} {base_url}/api/v1/cases/{story.case_code}",
            "",
        ]
    if serving:
        lines += [f"The server is running at {base_url}. Try it from another terminal:", ""]
    else:
        env = _serve_env(setup)
        lines += [
            "The server is not running (--no-serve). Start it on this database with:",
            f"  {env}sipas-bot serve",
            "then try it:",
            "",
        ]
    lines += [
        "Post a case, as the one-stop system (một cửa điện tử) does:",
        f"  curl -sS -X POST {base_url}/api/v1/cases \\",
        f"    -H {auth} \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d {shlex.quote(body)}",
        "",
        "View it (status, citizen links, survey, escalations):",
        f"  curl -sS -H {auth} {base_url}/api/v1/cases/{code}",
        "",
        *_qr_lines(auth, base_url, code),
        "",
        *_web_lines(context, serving=serving),
        *_dashboard_lines(setup, context, serving=serving),
        f"Health:   {base_url}/healthz",
        f"Metrics:  {base_url}/metrics",
        f"API docs: {base_url}/api/v1/openapi.json",
        "",
        _channel_line(settings, context.services.channels.get("telegram")),
    ]
    telegram_link = _sample_link(context) if serving else None
    if telegram_link is not None and context.sample is not None:
        lines += [
            "",
            f"Play the citizen of case {context.sample[0]}: open this link in Telegram,",
            "agree, then resolve the case with the API and answer the survey:",
            f"  {telegram_link}",
        ]
    if serving:
        lines += ["", "Press Ctrl+C to stop."]
    return "\n".join(lines)


def _qr_lines(auth: str, base_url: str, code: str) -> list[str]:
    """The QR code opens the case's web survey page (or a chat, see SIPAS_QR_TARGET)."""
    return [
        "QR code for the citizen's receipt (it opens the case's web survey page):",
        f"  curl -sS --fail -H {auth} -o receipt-qr.png {base_url}/api/v1/cases/{code}/qr.png",
    ]


def _web_lines(context: DemoContext, *, serving: bool) -> list[str]:
    """The web survey link of a resolved sample case: the newcomer plays its citizen."""
    if context.web_sample is None:
        return []
    code, token = context.web_sample
    link = context.services.links(token).get("web")
    if link is None:
        return []
    when = "" if serving else " (once the server runs)"
    return [
        f"Play a citizen on the web survey page{when}: case {code} is resolved",
        "and its survey not answered yet. Open this link in a browser (a phone's too), agree",
        "and answer; a low rating or a complaint goes to the head of the case's unit:",
        f"  {link}",
        "",
    ]


def _dashboard_lines(setup: DemoSetup, context: DemoContext, *, serving: bool) -> list[str]:
    """The officials' way in: a link ready now, and the command that prints a new one."""
    if context.dashboard_link is None:
        return []
    city = demo_data.UNITS[0]
    district = next(unit for unit in demo_data.UNITS if unit.parent == city.code)
    # `dashboard link` finds the demo's database by itself when SIPAS_DATABASE_URL is unset
    # and there is no ./sipas.db (bot/cli/main.py); otherwise it needs the URL.
    env = _database_env(setup) if DEFAULT_DATABASE.exists() else ""
    when = "" if serving else " (once the server runs)"
    return [
        f"The officials' dashboard{when}: last week's figures of every unit, which fell and why,",
        "complaints and comments, the quarter's workbook. Sign in as an official of the city",
        "(this link works once, within 15 minutes):",
        f"  {context.dashboard_link}",
        "A new link at any time, from another terminal in this folder (with "
        f"{district.code}, a district's",
        "view: that district and its communes only):",
        f"  {env}sipas-bot dashboard link {city.code}",
        "",
    ]


def _sample_link(context: DemoContext) -> str | None:
    """The sample case's Telegram deep link, once the channel knows the bot's name."""
    if context.sample is None:
        return None
    return context.services.links(context.sample[1]).get("telegram")


def _database_env(setup: DemoSetup) -> str:
    """The demo's database for a command in another terminal (none: the operator's own)."""
    if setup.fresh_file is None:
        return ""
    return f"SIPAS_DATABASE_URL={shlex.quote(setup.settings.database_url)} "


def _serve_env(setup: DemoSetup) -> str:
    parts = [_database_env(setup)]
    if setup.token is not None:
        parts.append(f"SIPAS_API_TOKENS={shlex.quote(setup.token)} ")
    return "".join(parts)


def _channel_line(settings: Settings, state: str | None) -> str:
    if settings.telegram_token is not None and state == "unreachable":
        line = (
            "Telegram: enabled (SIPAS_TELEGRAM_TOKEN) but the Bot API cannot be reached yet; "
            "it is retried in the background, and messages wait until it answers."
        )
        if not settings.telegram_bot_username:
            line += (
                " Citizen links and QR codes need the bot's name: set "
                "SIPAS_TELEGRAM_BOT_USERNAME to have them at once."
            )
        return line
    if settings.telegram_token is not None:
        return "Telegram: enabled (SIPAS_TELEGRAM_TOKEN); citizens open the links above."
    if settings.zalo_token is not None:
        return "Zalo: enabled (SIPAS_ZALO_TOKEN); citizens send the link's token to the bot."
    return (
        "Chat channels: none configured. Set SIPAS_TELEGRAM_TOKEN (from @BotFather) or "
        "SIPAS_ZALO_TOKEN (Zalo Bot Platform) to survey citizens in chat; the web page above "
        "works without either. The sample citizens have no chat ids, so nobody is messaged."
    )
