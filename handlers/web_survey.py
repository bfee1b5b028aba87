"""The web survey page's decisions (`links.web`, `/s/<token>`): what a person holding a case's
link sees, and what a form they send changes. The survey's rules are the chat's
(handlers/survey_answers.py); HTTP and HTML are bot/http/web_survey.py's business.

Every form carries a token signed over the step it answers and the survey's current nonce;
each accepted form replaces the nonce, so a forged, replayed or stale form changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.escalations import record_recovery, recovery_open
from handlers.policy import SurveyPolicy
from handlers.questionnaire import LOCALES, load_questionnaire
from handlers.rendering import local_date, minutes_for
from handlers.survey_answers import (
    BACK,
    SKIP,
    TEXT,
    allowed_values,
    answered_all,
    complete_survey,
    open_question,
    record_answer,
)
from handlers.texts import rating_labels, t
from storage.models import (
    AuditEntry,
    Case,
    CaseStatus,
    Channel,
    ContactStatus,
    Escalation,
    EscalationStatus,
    LinkToken,
    Survey,
    SurveyStatus,
)
from storage.repositories import cases as case_repo
from storage.repositories import citizens as citizen_repo
from storage.repositories import escalations as escalation_repo
from storage.repositories import surveys as survey_repo

log = logging.getLogger(__name__)

WEB = Channel.WEB.value
# A survey the web page may still take answers for. `unreachable` is the citizen's chat, not
# the survey: the page reaches them where the chat could not.
ANSWERABLE = frozenset(
    {
        SurveyStatus.SCHEDULED,
        SurveyStatus.INVITED,
        SurveyStatus.IN_PROGRESS,
        SurveyStatus.UNREACHABLE,
    }
)
CONSENT_STEP = "consent"
# The closed loop's rating form: "recovery:<escalation id>".
RECOVERY_STEP = "recovery:"
AGREE = "agree"
DECLINE = "decline"


class PageKind(StrEnum):
    NOT_FOUND = "not_found"
    NOT_DUE = "not_due"
    WITHDRAWN = "withdrawn"
    CONSENT = "consent"
    QUESTION = "question"
    THANKS = "thanks"
    EXPIRED = "expired"
    OPTED_OUT = "opted_out"
    DECLINED = "declined"
    REFUSED = "refused"


class Refusal(StrEnum):
    """Why a form changed nothing."""

    FORGED = "forged"  # not a form this page issued for this survey
    REPLAYED = "replayed"  # issued, but already sent (or superseded by a later one)
    STALE = "stale"  # for a question that is no longer the open one
    COMPLETED = "completed"  # the survey is finished
    INVALID = "invalid"  # a choice the question does not offer


@dataclass(frozen=True)
class CaseHeader:
    case_code: str
    procedure_name: str
    unit_name: str
    resolved_on: str  # dd/mm/yyyy, local time; empty while not resolved
    question_count: int
    minutes: int


@dataclass(frozen=True)
class Option:
    value: str
    label: str
    chosen: bool = False  # the answer given before (after going back)


@dataclass(frozen=True)
class QuestionView:
    prompt: str
    kind: str
    number: int  # 1-based
    total: int
    options: tuple[Option, ...]  # ratings or yes/no, in order
    skip: Option | None
    back: Option | None
    text: str = ""  # the comment given before, to edit
    problem: str | None = None  # text key of a hint shown above the form


@dataclass(frozen=True)
class RecoveryView:
    """The closed loop's question under the head's note: how was the complaint handled (1-5)."""

    step: str
    csrf: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class WebPage:
    kind: PageKind
    locale: str
    header: CaseHeader | None = None
    question: QuestionView | None = None
    step: str | None = None
    csrf: str | None = None
    # Thanks page: the unit whose head got the complaint, whether the citizen hears back in a
    # chat (else they come back to this page), and what the head wrote once it was handled.
    escalated_to: str | None = None
    follow_up_in_chat: bool = False
    outcomes: tuple[str, ...] = ()
    # A citizen with no chat rates the handling here (as `escalations.recovery_pressed` in
    # chat); `recovered` once they have, and the form is not shown again.
    recovery: RecoveryView | None = None
    recovered: bool = False
    refusal: Refusal | None = None


@dataclass(frozen=True)
class WebForm:
    """What a form sends: the step it answers, its token, the button pressed, any text."""

    step: str
    csrf: str
    choice: str
    text: str = ""


@dataclass(frozen=True)
class FormOutcome:
    """`page` to show at once (a refusal, a hint, the declined page); None when the form was
    accepted and the current page should be shown again (a redirect)."""

    page: WebPage | None
    changed: bool


def survey_link(public_url: str) -> Callable[[str], str]:
    """`links.web`: a case's survey page under SIPAS_PUBLIC_URL, given its link token."""
    base = public_url.rstrip("/")

    def build(token: str) -> str:
        return f"{base}/s/{token}"

    return build


def page_locale(
    requested: str | None, survey: Survey | None, case: Case | None, default: str
) -> str:
    """The language asked for (?lang=), else the survey's, else the citizen's, else the default."""
    if requested in LOCALES:
        return str(requested)
    if survey is not None and survey.locale in LOCALES:
        return survey.locale
    if case is not None and case.citizen is not None and case.citizen.locale in LOCALES:
        return case.citizen.locale
    return default


def new_nonce() -> str:
    return secrets.token_urlsafe(12)


def _signature(token: str, survey: Survey, step: str, nonce: str) -> str:
    # Keyed by the link token and the survey's reference (never shown on the web): a token
    # for one survey or step is worthless for another.
    key = hashlib.sha256(f"sipas-web:{token}:{survey.ref}".encode()).digest()
    message = f"{survey.id}:{step}:{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def form_token(token: str, survey: Survey, step: str) -> str:
    assert survey.web_nonce is not None
    return f"{survey.web_nonce}.{_signature(token, survey, step, survey.web_nonce)}"


def _signed(token: str, survey: Survey, form: WebForm) -> bool:
    nonce, _, signature = form.csrf.partition(".")
    expected = _signature(token, survey, form.step, nonce)
    return bool(nonce) and hmac.compare_digest(signature.encode(), expected.encode())


def _web_owned(survey: Survey) -> bool:
    return survey.channel == WEB and survey.status == SurveyStatus.IN_PROGRESS


def current_step(survey: Survey) -> str:
    return str(survey.position) if _web_owned(survey) else CONSENT_STEP


def _header(case: Case, policy: SurveyPolicy, survey: Survey | None) -> CaseHeader:
    questionnaire = load_questionnaire(survey.questionnaire if survey else policy.questionnaire)
    return CaseHeader(
        case_code=case.case_code,
        procedure_name=case.procedure.name,
        unit_name=case.unit.name,
        resolved_on=local_date(case.resolved_at, policy.timezone),
        question_count=len(questionnaire),
        minutes=minutes_for(questionnaire),
    )


async def _thanks_page(
    session: AsyncSession,
    token: str,
    survey: Survey,
    case: Case,
    locale: str,
    header: CaseHeader,
) -> WebPage:
    opened = await _escalations_of(session, survey, case)
    if not opened:
        return WebPage(PageKind.THANKS, locale, header)
    contacts = await citizen_repo.contacts_of(session, case.citizen_id) if case.citizen_id else []
    in_chat = any(c.status == ContactStatus.ACTIVE for c in contacts)
    recovery: RecoveryView | None = None
    rateable = next((e for e in opened if recovery_open(e)), None)
    if not in_chat and rateable is not None:
        if survey.web_nonce is None:
            survey.web_nonce = new_nonce()
        step = f"{RECOVERY_STEP}{rateable.id}"
        labels = rating_labels(locale)
        recovery = RecoveryView(
            step=step,
            csrf=form_token(token, survey, step),
            options=tuple(Option(str(n), label) for n, label in enumerate(labels, start=1)),
        )
    return WebPage(
        PageKind.THANKS,
        locale,
        header,
        escalated_to=case.unit.name,
        follow_up_in_chat=in_chat,
        outcomes=tuple(
            e.resolution_note
            for e in opened
            if e.status == EscalationStatus.RESOLVED and e.resolution_note
        ),
        recovery=recovery,
        recovered=recovery is None and any(e.recovery_at is not None for e in opened),
    )


async def _escalations_of(session: AsyncSession, survey: Survey, case: Case) -> list[Escalation]:
    """The escalations the survey opened, oldest first."""
    rows = await case_repo.escalations_of(session, case.id)
    return [e for e, _ in rows if e.survey_id == survey.id]


async def _closed_page(
    session: AsyncSession,
    token: str,
    link: LinkToken,
    case: Case,
    survey: Survey | None,
    now: datetime,
    locale: str,
    header: CaseHeader,
) -> WebPage | None:
    """The page of a survey that takes no answers (not due, finished, expired, opted out)."""
    if survey is None:
        kind = PageKind.WITHDRAWN if case.status == CaseStatus.WITHDRAWN else PageKind.NOT_DUE
        return WebPage(kind, locale, header)
    if survey.status == SurveyStatus.COMPLETED:
        return await _thanks_page(session, token, survey, case, locale, header)
    citizen = case.citizen
    if survey.status == SurveyStatus.OPTED_OUT or (
        citizen is not None and (citizen.opted_out_at is not None or citizen.erased_at is not None)
    ):
        return WebPage(PageKind.OPTED_OUT, locale, header)
    expired = (survey.expires_at is not None and survey.expires_at <= now) or (
        link.expires_at <= now
    )
    if survey.status not in ANSWERABLE or expired:
        return WebPage(PageKind.EXPIRED, locale, header)
    return None


def _options(survey: Survey, locale: str, chosen: str | None) -> list[Option]:
    question = open_question(survey)
    options = []
    for value in allowed_values(survey, question):
        if value.isdigit():
            label = rating_labels(locale)[int(value) - 1]
        elif value in {"y", "n"}:
            label = t("choice.yes" if value == "y" else "choice.no", locale)
        elif value in {SKIP, BACK}:
            label = t(f"choice.{value}", locale)
        else:
            continue
        options.append(Option(value, label, chosen=value == chosen))
    return options


async def _question_page(
    session: AsyncSession,
    token: str,
    survey: Survey,
    locale: str,
    header: CaseHeader,
    *,
    problem: str | None = None,
) -> WebPage:
    question = open_question(survey)
    given = await survey_repo.answer_for(session, survey.id, question.id)
    chosen: str | None = None
    text = ""
    if given is not None:
        if given.skipped:
            chosen = SKIP
        elif given.value_int is not None:
            chosen = str(given.value_int)
        elif question.kind == "yes_no" and given.value_text in {"yes", "no"}:
            chosen = "y" if given.value_text == "yes" else "n"
        elif given.value_text:
            text = given.value_text
    options = _options(survey, locale, chosen)
    view = QuestionView(
        prompt=question.prompt(locale),
        kind=question.kind,
        number=survey.position + 1,
        total=len(load_questionnaire(survey.questionnaire)),
        options=tuple(o for o in options if o.value not in {SKIP, BACK}),
        skip=next((o for o in options if o.value == SKIP), None),
        back=next((o for o in options if o.value == BACK), None),
        text=text,
        problem=problem,
    )
    step = current_step(survey)
    return WebPage(
        PageKind.QUESTION,
        locale,
        header,
        question=view,
        step=step,
        csrf=form_token(token, survey, step),
    )


async def _open_page(
    session: AsyncSession, token: str, survey: Survey, locale: str, header: CaseHeader
) -> WebPage:
    if survey.web_nonce is None:
        survey.web_nonce = new_nonce()
    if _web_owned(survey):
        return await _question_page(session, token, survey, locale, header)
    return WebPage(
        PageKind.CONSENT,
        locale,
        header,
        step=CONSENT_STEP,
        csrf=form_token(token, survey, CONSENT_STEP),
    )


async def page_opened(
    session: AsyncSession,
    token: str,
    now: datetime,
    policy: SurveyPolicy,
    requested_locale: str | None = None,
) -> WebPage:
    """`GET /s/<token>`: consent first, then the open question; or why there is nothing to
    answer. May store the survey's first form nonce."""
    link = await case_repo.link_token(session, token)
    case = await case_repo.get_case_by_id(session, link.case_id) if link else None
    if link is None or case is None:
        return WebPage(
            PageKind.NOT_FOUND, page_locale(requested_locale, None, None, policy.default_locale)
        )
    survey = await _survey_for_update(session, case.id)
    locale = page_locale(requested_locale, survey, case, policy.default_locale)
    header = _header(case, policy, survey)
    closed = await _closed_page(session, token, link, case, survey, now, locale, header)
    if closed is not None or survey is None:
        return closed or WebPage(PageKind.NOT_DUE, locale, header)
    return await _open_page(session, token, survey, locale, header)


async def _survey_for_update(session: AsyncSession, case_id: int) -> Survey | None:
    survey = await case_repo.survey_for_case(session, case_id)
    if survey is None:
        return None
    # Locked (PostgreSQL) so that a form, a chat answer and a sweep on the same survey take turns.
    return await survey_repo.by_ref(session, survey.ref, for_update=True)


async def form_posted(
    session: AsyncSession,
    token: str,
    form: WebForm,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
    requested_locale: str | None = None,
) -> FormOutcome:
    """`POST /s/<token>`: consent, an answer, skip or back; the same rules as in chat.

    `channels`: the chat channels configured to reach unit heads (for the escalations a
    completed survey opens).
    """
    link = await case_repo.link_token(session, token)
    case = await case_repo.get_case_by_id(session, link.case_id) if link else None
    if link is None or case is None:
        locale = page_locale(requested_locale, None, None, policy.default_locale)
        return FormOutcome(WebPage(PageKind.NOT_FOUND, locale), changed=False)
    survey = await _survey_for_update(session, case.id)
    locale = page_locale(requested_locale, survey, case, policy.default_locale)
    header = _header(case, policy, survey)

    def refused(why: Refusal) -> FormOutcome:
        log.warning("web survey form refused (%s)", why.value)
        return FormOutcome(WebPage(PageKind.REFUSED, locale, header, refusal=why), changed=False)

    if survey is None or not _signed(token, survey, form):
        return refused(Refusal.FORGED)
    if form.step.startswith(RECOVERY_STEP):
        why = await _recovery_posted(session, survey, case, form, now, policy, channels)
        if why is not None:
            return refused(why)
        survey.web_nonce = new_nonce()
        return FormOutcome(None, changed=True)
    if survey.status == SurveyStatus.COMPLETED:
        return refused(Refusal.COMPLETED)
    closed = await _closed_page(session, token, link, case, survey, now, locale, header)
    if closed is not None:
        return FormOutcome(closed, changed=False)
    if form.step != current_step(survey):
        return refused(Refusal.STALE)
    nonce = form.csrf.partition(".")[0]
    if survey.web_nonce is None or not hmac.compare_digest(
        nonce.encode(), survey.web_nonce.encode()
    ):
        return refused(Refusal.REPLAYED)

    if form.step == CONSENT_STEP:
        if form.choice == DECLINE:
            return FormOutcome(WebPage(PageKind.DECLINED, locale, header), changed=False)
        if form.choice != AGREE:
            return refused(Refusal.INVALID)
        _consented(session, survey, now, locale)
    else:
        question = open_question(survey)
        if form.choice not in allowed_values(survey, question):
            return refused(Refusal.INVALID)
        value, text = form.choice, form.text.strip()
        if value == TEXT and not text:
            if question.required:
                page = await _question_page(
                    session, token, survey, locale, header, problem="web.text_required"
                )
                return FormOutcome(page, changed=False)
            value = SKIP
        await record_answer(session, survey, value, now, text=text if value == TEXT else None)
        survey.locale = locale
        if answered_all(survey):
            opened = await complete_survey(session, survey, now, policy, channels)
            log.info("web survey %s completed; %d escalation(s) opened", survey.id, len(opened))
    survey.web_nonce = new_nonce()
    return FormOutcome(None, changed=True)


async def _recovery_posted(
    session: AsyncSession,
    survey: Survey,
    case: Case,
    form: WebForm,
    now: datetime,
    policy: SurveyPolicy,
    channels: Sequence[str],
) -> Refusal | None:
    """The rating under the head's note, through the chat's rules (`record_recovery`): a low
    one reopens the complaint one level up. None when taken, else why it changed nothing."""
    if survey.status != SurveyStatus.COMPLETED:
        return Refusal.STALE
    nonce = form.csrf.partition(".")[0]
    if survey.web_nonce is None or not hmac.compare_digest(
        nonce.encode(), survey.web_nonce.encode()
    ):
        return Refusal.REPLAYED
    wanted = form.step.removeprefix(RECOVERY_STEP)
    opened = await _escalations_of(session, survey, case)
    found = next((e for e in opened if str(e.id) == wanted), None)
    if found is None:
        return Refusal.FORGED
    escalation = await escalation_repo.by_ref(session, found.ref, for_update=True)
    assert escalation is not None
    if not recovery_open(escalation):
        return Refusal.STALE
    if form.choice not in {"1", "2", "3", "4", "5"}:
        return Refusal.INVALID
    taken = await record_recovery(
        session, escalation, case, int(form.choice), now, policy, channels, actor=WEB
    )
    assert taken
    log.info("web survey %s: recovery rating %s", survey.id, form.choice)
    return None


def _consented(session: AsyncSession, survey: Survey, now: datetime, locale: str) -> None:
    """The web takes the survey: from its start, or where the chat left it."""
    taken_from = survey.channel
    if survey.status != SurveyStatus.IN_PROGRESS:
        survey.position = 0
        survey.started_at = now
    survey.status = SurveyStatus.IN_PROGRESS
    survey.channel = WEB
    survey.address = None
    # Shown the survey counts as asked (the digest's invitations), as a chat invitation does.
    survey.invited_at = survey.invited_at or now
    survey.locale = locale
    # The record of consent (Nghị định 13/2023/NĐ-CP): when, for which survey, on the web.
    session.add(
        AuditEntry(
            at=now,
            actor=WEB,
            action="consent",
            entity="survey",
            entity_id=str(survey.id),
            detail={"taken_from": taken_from},
        )
    )
    log.info("web survey %s: consent given", survey.id)
