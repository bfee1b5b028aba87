"""What every dashboard route with figures shares (the overview, a unit's page, its chart,
the exports): the session first (none: the sign-in page, never a figure), the scope (a unit
outside it, or unknown, answers 404), and one place where failures become a human page
(400/422 naming a bad parameter, 503 while the database is unreachable, 500): a browser never
gets JSON or a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from bot.app import Services
from bot.http.dashboard import view
from bot.http.dashboard.query import BadParameter
from bot.http.dashboard.session import (
    Viewer,
    base_path,
    page_locale,
    render_page,
    signin_page,
    viewer_of,
)
from handlers.dashboard_text import page_text
from handlers.digest import Week

__all__ = ["Handler", "OutOfScope", "RoutesWithFigures"]

log = logging.getLogger(__name__)

_CODE = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError)

Handler = Callable[[web.Request, Viewer, str], Awaitable[web.StreamResponse]]


class OutOfScope(Exception):
    """A unit the session may not see, or that does not exist: both answer 404."""


class RoutesWithFigures:
    """The frame of the routes that show figures; subclasses add the routes."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Links as the browser sees them (under SIPAS_PUBLIC_URL's path, if it has one).
        self.home = base_path(services)

    def last_week(self) -> Week:
        return Week.last(self.services.clock.now(), self.services.settings.timezone)

    def html(
        self,
        request: web.Request,
        viewer: Viewer | None,
        locale: str,
        template: str,
        status: int = 200,
        **context: Any,
    ) -> web.Response:
        def text(key: str, **values: Any) -> str:
            return page_text(key, locale, **values)

        # ACCESS's frame (base.html.j2): its `t` is the chat catalogue's, ours is `pt`.
        response = render_page(request, template, status=status, viewer=viewer, pt=text, **context)
        # Same-origin, not no-referrer: with no-referrer a browser posts the sign-out form
        # with `Origin: null`, which csrf_ok refuses (tests/test_dashboard_browser.py).
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def _problem(
        self, request: web.Request, viewer: Viewer | None, locale: str, status: int, message: str
    ) -> web.Response:
        return self.html(request, viewer, locale, "problem.html.j2", status, message=message)

    async def guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one place where a request gets its session, and failures become a page."""
        locale = page_locale(request)
        viewer: Viewer | None = None
        try:
            viewer = await viewer_of(request)
            if viewer is None:
                return await signin_page(request)
            return await handler(request, viewer, locale)
        except BadParameter as exc:
            message = page_text(exc.key, locale, **exc.values)
            return self._problem(request, viewer, locale, exc.status, message)
        except OutOfScope:
            return self._problem(request, viewer, locale, 404, page_text("not_found", locale))
        except Exception as exc:
            unreachable = isinstance(exc, _UNREACHABLE) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            )
            if unreachable:
                log.warning("database unreachable on %s", request.path)
                key, status = "unavailable", 503
            else:
                log.exception("unexpected error on the dashboard page %s", request.path)
                key, status = "server_error", 500
            response = self._problem(request, viewer, locale, status, page_text(key, locale))
            if unreachable:
                response.headers["Retry-After"] = "5"
            return response

    async def scope_unit(self, viewer: Viewer, code: str | None) -> tuple[str, str]:
        """`code` (the viewer's scope when None) and the name of the viewer's scope; a code
        outside that scope, or unknown, is OutOfScope (404)."""
        tree = await view.scope_tree(self.services)
        scope = tree.by_code.get(viewer.scope_code)
        if scope is None:  # the scope's unit was removed since the sign-in
            raise OutOfScope
        if code is None:
            return scope.code, scope.name
        if not _CODE.fullmatch(code) or not view.in_scope(tree, scope.code, code):
            raise OutOfScope
        return code, scope.name
