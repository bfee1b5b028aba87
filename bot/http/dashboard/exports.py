"""`GET /dashboard/export.xlsx` and `export.csv`: the scope's figures over a span of weeks
(bot/http/dashboard/export_files.py), each download written to the audit log first."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from bot.app import Services
from bot.http.dashboard.export_files import export_csv, export_rows, export_xlsx
from bot.http.dashboard.frame import RoutesWithFigures
from bot.http.dashboard.query import span_params, weeks_between
from bot.http.dashboard.session import SECURITY_HEADERS, Viewer
from storage.models import AuditEntry

__all__ = ["export_routes"]

_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class DashboardExports(RoutesWithFigures):
    """The two downloads; the same rows, as a workbook or as CSV."""

    async def export_xlsx(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._export_xlsx)

    async def export_csv(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._export_csv)

    async def _export_xlsx(self, request: web.Request, viewer: Viewer, locale: str) -> web.Response:
        return await self._export(request, viewer, "xlsx")

    async def _export_csv(self, request: web.Request, viewer: Viewer, locale: str) -> web.Response:
        return await self._export(request, viewer, "csv")

    async def _export(self, request: web.Request, viewer: Viewer, fmt: str) -> web.Response:
        query = request.query
        scope, _ = await self.scope_unit(viewer, query.get("unit") or None)
        start, end = span_params(query, self.last_week())
        rows = await export_rows(self.services, scope, weeks_between(start, end))
        if fmt == "xlsx":
            title = f"SIPAS {start.label}–{end.label}: {scope}"
            body = await asyncio.to_thread(export_xlsx, rows, title)
            content_type = XLSX
        else:
            body = export_csv(rows)
            content_type = "text/csv"
        # Who took which figures, committed before the file leaves.
        async with self.services.sessions.begin() as session:
            session.add(
                AuditEntry(
                    at=self.services.clock.now(),
                    actor=viewer.actor,
                    action="dashboard.export",
                    entity="unit",
                    entity_id=scope,
                    detail={"format": fmt, "from": start.label, "to": end.label},
                )
            )
        safe_scope = _FILENAME_UNSAFE.sub("-", scope)
        filename = f"sipas-{safe_scope}-{start.label}-{end.label}.{fmt}"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'}
        charset = "utf-8" if fmt == "csv" else None
        return web.Response(body=body, content_type=content_type, charset=charset, headers=headers)


def export_routes(services: Services) -> list[web.RouteDef]:
    exports = DashboardExports(services)
    return [
        web.get("/dashboard/export.xlsx", exports.export_xlsx, allow_head=False),
        web.get("/dashboard/export.csv", exports.export_csv, allow_head=False),
    ]
