"""The officials' dashboard (docs/contract.md section 8) on the service's aiohttp server:
server-rendered pages for heads and officials, signed in with one-time links.

`session.py` says who is looking (and renders the shared pieces), `access.py` signs in and
out; the pages of figures build on both.
"""

from __future__ import annotations

from aiohttp import web

from bot.app import Services
from bot.http.dashboard.access import access_routes
from bot.http.dashboard.exports import export_routes
from bot.http.dashboard.pages import page_routes


def dashboard_routes(services: Services) -> list[web.RouteDef]:
    """Every dashboard route, for `create_web_app` (bot/http/api.py)."""
    return [
        *access_routes(services),
        *page_routes(services),
        *export_routes(services),
    ]
