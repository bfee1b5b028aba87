"""How a request reaches the services: the aiohttp application holds them under this key (set
in bot/http/api.py's `create_web_app`; read by every route, the dashboard's included)."""

from __future__ import annotations

from aiohttp import web

from bot.app import Services

SERVICES = web.AppKey("services", Services)
