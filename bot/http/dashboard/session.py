"""Who is looking at a dashboard page, and the pieces every dashboard page shares: the
session of the request's cookie (`viewer_of`), the CSRF check of a posted form (`csrf_ok`),
the page shown without a session (`signin_page`), the Jinja2 environment of
bot/templates/dashboard, the page's language, and the security headers.

The decisions about links and sessions are handlers/dashboard_access.py's; this module only
reads the request and renders.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from bot.app import Services
from bot.http.keys import SERVICES
from bot.http.templating import template_environment
from handlers.dashboard_access import LINK_TTL, SESSION_TTL, session_found
from handlers.texts import t

log = logging.getLogger(__name__)

COOKIE = "sipas_dashboard"
LANG_COOKIE = "sipas_dashboard_lang"
LOCALES = ("vi", "en")
LANG_COOKIE_SECONDS = 365 * 24 * 3600
CSRF_FIELD = "csrf"

# No script, no frames, nothing sent to other sites (a sign-in link carries its token in the
# URL, so no Referer either). Images from the service itself (the dashboard's charts).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# Errors that mean "the database cannot be reached now" (as bot/http/api.py reads them).
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError)


@dataclass(frozen=True)
class Viewer:
    """The signed-in official of a request."""

    session_id: int  # dashboard_sessions.id
    actor: str  # who, for the audit log: "cli", "head:HN-LB", "recipient:3"
    scope_code: str  # the scope's unit code: that unit and every unit below it
    head_of: str | None  # the unit code this person heads (per-officer figures there only)
    csrf_token: str  # put in every form as a hidden field named "csrf"
    expires_at: datetime


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def base_path(services: Services) -> str:
    """The dashboard's path as the browser sees it: under SIPAS_PUBLIC_URL's own path, if any
    (a reverse proxy serving the service at https://host/sipas/ strips the prefix)."""
    prefix = urlsplit(services.settings.public_url).path.rstrip("/")
    return f"{prefix}/dashboard"


def secure_cookies(services: Services) -> bool:
    return services.settings.public_url.startswith("https://")


async def viewer_of(request: web.Request) -> Viewer | None:
    """The valid, unexpired, unrevoked session of the request's cookie, else None."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    services = services_of(request)
    async with services.sessions() as session:
        live = await session_found(session, token, services.clock.now())
    if live is None:
        return None
    return Viewer(
        session_id=live.id,
        actor=live.actor,
        scope_code=live.scope_code,
        head_of=live.head_of,
        csrf_token=live.csrf_token,
        expires_at=live.expires_at,
    )


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _trusted_origins(request: web.Request) -> set[str]:
    """The public URL's origin, and the one the request itself was sent to (the same unless
    a proxy is in between); a cross-site form's Origin is neither."""
    trusted = {_origin(services_of(request).settings.public_url), _origin(str(request.url))}
    return {origin for origin in trusted if origin is not None}


def csrf_ok(request: web.Request, viewer: Viewer, form: Mapping[str, Any]) -> bool:
    """The posted "csrf" field equals the session's token (constant time), and the Origin
    (else the Referer), when the browser sends one, is ours."""
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not hmac.compare_digest(
        given.encode(), viewer.csrf_token.encode()
    ):
        return False
    origin = request.headers.get("Origin")
    if origin is not None:
        # "null" (a sandboxed frame, a privacy setting) is never ours.
        return origin.lower() in _trusted_origins(request)
    referer = request.headers.get("Referer")
    if referer:
        return _origin(referer) in _trusted_origins(request)
    return True


def page_locale(request: web.Request) -> str:
    """The page's language, "vi" (default) or "en": the request's `?lang=`, then the
    language cookie, then SIPAS_LOCALE."""
    for chosen in (request.query.get("lang"), request.cookies.get(LANG_COOKIE)):
        if chosen in LOCALES:
            return chosen
    default = services_of(request).settings.locale
    return default if default in LOCALES else LOCALES[0]


@cache
def dashboard_environment() -> Environment:
    """The shared Jinja2 environment of bot/templates/dashboard (autoescaped, strict)."""
    environment = template_environment("dashboard")
    environment.filters["css_string"] = css_string
    return environment


def css_string(text: str) -> Markup:
    """`text` for inside a double-quoted CSS string in a <style> block. The block is raw text
    to the browser (HTML escapes would show as they are), so CSS escapes: hex for anything
    that could end the string or the block."""
    escaped = "".join(
        f"\\{ord(char):x} " if char in '"\\<>&\n\r' or ord(char) < 32 else char for char in text
    )
    return Markup(escaped)  # escaped above for its CSS context


def _language_links(request: web.Request) -> dict[str, str]:
    """The same page in each language: the query kept, `lang` replaced (relative links)."""
    query = [(key, value) for key, value in request.query.items() if key != "lang"]
    return {locale: "?" + urlencode([*query, ("lang", locale)]) for locale in LOCALES}


def render_page(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    viewer: Viewer | None = None,
    **context: Any,
) -> web.Response:
    """A dashboard template rendered in the page's language, with what base.html.j2 needs:
    `locale`, `t`, `viewer`, `home` (the dashboard's path), `language_links`."""
    locale = page_locale(request)

    def text(key: str, **params: object) -> str:
        return t(key, locale, **params)

    html = (
        dashboard_environment()
        .get_template(template)
        .render(
            {
                "locale": locale,
                "t": text,
                "viewer": viewer,
                "home": base_path(services_of(request)),
                "language_links": _language_links(request),
                **context,
            }
        )
    )
    return html_response(request, html, status)


def html_response(request: web.Request, html: str, status: int = 200) -> web.Response:
    response = web.Response(
        text=html,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )
    remember_locale(request, response)
    return response


def remember_locale(request: web.Request, response: web.StreamResponse) -> None:
    """A language chosen with `?lang=` stays chosen on the dashboard's other pages."""
    chosen = request.query.get("lang")
    if chosen not in LOCALES or request.cookies.get(LANG_COOKIE) == chosen:
        return
    services = services_of(request)
    response.set_cookie(
        LANG_COOKIE,
        chosen,
        max_age=LANG_COOKIE_SECONDS,
        path=base_path(services),
        httponly=True,
        samesite="Lax",
        secure=secure_cookies(services),
    )


def _limits() -> dict[str, int]:
    """The figures the texts about links quote (a link's minutes, a session's hours)."""
    return {
        "minutes": int(LINK_TTL.total_seconds() // 60),
        "hours": int(SESSION_TTL.total_seconds() // 3600),
    }


def message_page(
    request: web.Request,
    title_key: str,
    text_keys: list[str],
    *,
    status: int,
    how_to: bool = True,
    back: bool = False,
    viewer: Viewer | None = None,
    params: Mapping[str, object] | None = None,
) -> web.Response:
    """A page that only says something, and then how to get a sign-in link (`how_to`) or a
    link back to the dashboard (`back`)."""
    locale = page_locale(request)
    limits = _limits()
    return render_page(
        request,
        "signin.html.j2",
        status=status,
        viewer=viewer,
        title=t(title_key, locale),
        texts=[t(key, locale, **limits, **(params or {})) for key in text_keys],
        how_to=how_to,
        back=back,
        **limits,
    )


async def signin_page(request: web.Request, status: int = 401) -> web.Response:
    """The page shown with no session: how to get a link (no password form, no figures)."""
    response = message_page(
        request, "dashboard.signin_title", ["dashboard.signin_lead"], status=status
    )
    if COOKIE in request.cookies:
        # The cookie's session has ended (expired, revoked): the browser need not keep it.
        services = services_of(request)
        response.del_cookie(
            COOKIE,
            path=base_path(services),
            secure=secure_cookies(services),
            httponly=True,
            samesite="Lax",
        )
    return response


Page = Callable[[web.Request], Awaitable[web.StreamResponse]]
ViewerPage = Callable[[web.Request, Viewer], Awaitable[web.StreamResponse]]


def guarded(page: Page) -> Page:
    """The one place where a dashboard page's failures become a human page (never JSON, never
    a traceback): 503 with Retry-After while the database is unreachable, else 500."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await page(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            unreachable = isinstance(exc, _UNREACHABLE) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            )
            if unreachable:
                log.warning("database unreachable during %s %s", request.method, request.path)
            else:
                log.exception("unexpected error in %s %s", request.method, request.path)
            response = message_page(
                request,
                "dashboard.error_title",
                ["dashboard.error"],
                status=503 if unreachable else 500,
                how_to=False,
            )
            if unreachable:
                response.headers["Retry-After"] = "5"
            return response

    return run


def signed_in_only(page: ViewerPage) -> Page:
    """A page for a signed-in viewer; without a session, `signin_page` answers instead."""

    async def run(request: web.Request) -> web.StreamResponse:
        viewer = await viewer_of(request)
        if viewer is None:
            return await signin_page(request)
        return await page(request, viewer)

    return guarded(run)
