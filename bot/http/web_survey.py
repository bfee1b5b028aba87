"""The web survey page on the service's aiohttp server: `GET` and `POST /s/<token>`, rendered
with Jinja2 from bot/templates/web, with no JavaScript. The decisions are
handlers/web_survey.py's; this module only translates HTTP and renders.

Every page is a human page, errors included: a browser never gets JSON or a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from jinja2 import Environment
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from bot.app import Services
from bot.http.templating import template_environment
from handlers.texts import t
from handlers.web_survey import (
    FormOutcome,
    PageKind,
    Refusal,
    WebForm,
    WebPage,
    form_posted,
    page_opened,
)

log = logging.getLogger(__name__)

PATH = "/s/{token}"
# The link token's shape (docs/contract.md section 4); anything else is not a link of ours.
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FIELD = 8000  # characters kept of a posted field (a comment is stored up to 4000)

_STATUS = {
    PageKind.NOT_FOUND: 404,
    PageKind.EXPIRED: 410,
    PageKind.REFUSED: 403,
}
_TEMPLATES = {
    PageKind.CONSENT: "consent.html.j2",
    PageKind.QUESTION: "question.html.j2",
}
# The text(s) of each page that only says something.
_MESSAGES: dict[PageKind, tuple[str, ...]] = {
    PageKind.NOT_FOUND: ("start.token_unknown",),
    PageKind.NOT_DUE: ("web.not_due",),
    PageKind.WITHDRAWN: ("web.withdrawn",),
    PageKind.THANKS: ("survey.thanks",),
    PageKind.EXPIRED: ("survey.expired",),
    PageKind.OPTED_OUT: ("web.opted_out",),
    PageKind.DECLINED: ("web.declined",),
}
_REFUSALS = {
    Refusal.FORGED: "web.refused_forged",
    Refusal.REPLAYED: "web.refused_replayed",
    Refusal.STALE: "web.refused_stale",
    Refusal.COMPLETED: "survey.already_completed",
    Refusal.INVALID: "web.refused_invalid",
}
# No script, no frames, nothing sent to other sites (the link token is in the URL).
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# Errors that mean "the database cannot be reached now" (as bot/http/api.py reads them).
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError)


def _environment() -> Environment:
    return template_environment("web")


class WebSurveyPages:
    """The two routes of the page, over one template environment."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.templates = _environment()

    def render(self, page: WebPage, token: str, *, status: int | None = None) -> web.Response:
        locale = page.locale

        def text(key: str, **params: object) -> str:
            return t(key, locale, **params)

        context: dict[str, Any] = {
            "page": page,
            "locale": locale,
            "header": page.header,
            "t": text,
            # Relative, so the page works under a public URL with a path prefix too.
            "action": token,
            "title": None,
            "texts": [],
            "continue_link": None,
        }
        name = _TEMPLATES.get(page.kind, "message.html.j2")
        if page.kind == PageKind.REFUSED:
            assert page.refusal is not None
            context["title"] = text("web.refused_title")
            context["texts"] = [text(_REFUSALS[page.refusal])]
            context["continue_link"] = f"{token}?lang={locale}"
        elif name == "message.html.j2":
            params = _message_params(page)
            context["texts"] = [text(key, **params) for key in _MESSAGES[page.kind]]
            if page.kind == PageKind.THANKS and page.escalated_to:
                # A citizen with a chat hears back there; the others read it here.
                key = (
                    "survey.thanks_escalated" if page.follow_up_in_chat else "web.thanks_escalated"
                )
                context["texts"].append(text(key, unit_name=page.escalated_to))
                for note in page.outcomes:
                    context["texts"].append(
                        text("web.outcome", unit_name=page.escalated_to, note=note)
                    )
                if page.recovered:
                    context["texts"].append(text("escalation.recovery_thanks"))
        html = self.templates.get_template(name).render(context)
        if status is None:
            status = _STATUS.get(page.kind, 200)
            if page.refusal == Refusal.INVALID:
                status = 400
            if page.question is not None and page.question.problem:
                status = 422
        return _html(html, status)

    async def show(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._show)

    async def submit(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._submit)

    async def _show(self, request: web.Request, token: str) -> web.StreamResponse:
        services = self.services
        lang = request.query.get("lang")
        async with services.sessions.begin() as session:
            page = await page_opened(session, token, services.clock.now(), services.policy, lang)
        return self.render(page, token)

    async def _submit(self, request: web.Request, token: str) -> web.StreamResponse:
        services = self.services
        fields = await request.post()
        form = WebForm(
            step=_field(fields, "step"),
            csrf=_field(fields, "csrf"),
            choice=_field(fields, "choice"),
            text=_field(fields, "text"),
        )
        lang = _field(fields, "lang") or None
        async with services.sessions.begin() as session:
            outcome: FormOutcome = await form_posted(
                session,
                token,
                form,
                services.clock.now(),
                services.policy,
                services.invitation_channels,
                lang,
            )
        if outcome.changed:
            services.wake_dispatcher()  # a completed survey may have queued a head's card
        if outcome.page is not None:
            return self.render(outcome.page, token)
        # Post/redirect/get: a reload shows the next page rather than sending the form again.
        location = f"{token}?lang={lang}" if lang in {"vi", "en"} else token
        return web.Response(status=303, headers={"Location": location, **_HEADERS})

    async def _guarded(
        self,
        request: web.Request,
        handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """The one place where the page's failures become a human page."""
        token = request.match_info["token"]
        locale = self.services.policy.default_locale
        if not TOKEN.fullmatch(token):
            return self.render(WebPage(PageKind.NOT_FOUND, locale), token)
        try:
            return await handler(request, token)
        except Exception as exc:
            unreachable = isinstance(exc, _UNREACHABLE) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            )
            if unreachable:
                log.warning("database unreachable during %s of the web survey", request.method)
            else:
                log.exception("unexpected error in %s of the web survey", request.method)
            html = self.templates.get_template("message.html.j2").render(
                page=None,
                locale=locale,
                header=None,
                t=lambda key, **params: t(key, locale, **params),
                action=token,
                title=t("web.error_title", locale),
                texts=[t("error.generic", locale)],
                continue_link=token,
            )
            response = _html(html, 503 if unreachable else 500)
            if unreachable:
                response.headers["Retry-After"] = "5"
            return response


def _message_params(page: WebPage) -> Mapping[str, object]:
    header = page.header
    if header is None:
        return {}
    return {
        "case_code": header.case_code,
        "procedure_name": header.procedure_name,
        "unit_name": header.unit_name,
    }


def _field(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def _html(body: str, status: int) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


def web_survey_routes(services: Services) -> list[web.RouteDef]:
    pages = WebSurveyPages(services)
    return [
        web.get(PATH, pages.show, allow_head=False),
        web.post(PATH, pages.submit),
    ]
