"""The dashboard's pages with figures (docs/contract.md section 8): the overview, a unit's
week and its chart. The session, the scope and the error pages are bot/http/dashboard/
frame.py's; the figures come from view.py; this module reads parameters, formats, renders.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.app import Services
from bot.http.dashboard import view
from bot.http.dashboard.cells import COLUMNS, cells_of
from bot.http.dashboard.frame import RoutesWithFigures
from bot.http.dashboard.query import DEFAULT_SPAN_WEEKS, MAX_SPAN_WEEKS, choice_param, week_param
from bot.http.dashboard.session import SECURITY_HEADERS, Viewer
from handlers.comment_themes import THEME_NAMES
from handlers.dashboard_text import (
    date_text,
    duration_text,
    item_name,
    item_text,
    moment_text,
    page_text,
    percent,
    signed,
    too_few_text,
)
from handlers.digest import Week
from handlers.digest_text import factor_name
from handlers.questionnaire import FACTORS
from handlers.redaction import mask_phones

UNIT_PATH = "/dashboard/units/{code}"
SORTABLE = tuple(view.SORTS)
DIRECTIONS = ("asc", "desc")
# Numbers read best largest first; the unit column, in the tree's order.
_FIRST_DIRECTION = {"unit": "asc", "rank": "asc"}


def unit_link(home: str, code: str, week: Week) -> str:
    return f"{home}/units/{code}?week={week.label}"


def _week_dates(week: Week, locale: str) -> str:
    sunday = week.monday.fromordinal(week.monday.toordinal() + 6)
    return page_text(
        "week_dates", locale, week=week.label, first=date_text(week.monday), last=date_text(sunday)
    )


def _labels(locale: str) -> dict[str, str]:
    return {column: page_text(f"col.{column}", locale) for column in ("unit", *dict(COLUMNS))}


class DashboardPages(RoutesWithFigures):
    """The routes of the pages with figures, over one template environment."""

    def _week_links(self, base: str, week: Week, extra: str = "") -> tuple[str, str | None]:
        previous = f"{base}?week={week.previous().label}{extra}"
        following = week.following()
        last = self.last_week()
        return previous, (f"{base}?week={following.label}{extra}" if following <= last else None)

    def _export_context(self, week: Week, unit: str | None) -> dict[str, Any]:
        return {
            "export_from": week.back(DEFAULT_SPAN_WEEKS)[0].label,
            "export_to": week.label,
            "export_unit": unit,
            "max_span": MAX_SPAN_WEEKS,
        }

    # --- GET /dashboard ----------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._overview)

    async def _overview(self, request: web.Request, viewer: Viewer, locale: str) -> web.Response:
        query = request.query
        week = week_param(query, "week", self.last_week())
        sort = choice_param(query, "sort", SORTABLE, "unit")
        direction = choice_param(query, "dir", DIRECTIONS, _FIRST_DIRECTION.get(sort, "desc"))
        scope, scope_name = await self.scope_unit(viewer, query.get("unit") or None)
        data = await view.overview(self.services, scope, week, sort, direction == "desc")
        labels = _labels(locale)
        unit_extra = f"&unit={scope}" if scope != viewer.scope_code else ""

        def sort_link(column: str) -> str:
            if column == sort:
                flipped = "asc" if direction == "desc" else "desc"
                return f"{self.home}?week={week.label}&sort={column}&dir={flipped}{unit_extra}"
            first = _FIRST_DIRECTION.get(column, "desc")
            return f"{self.home}?week={week.label}&sort={column}&dir={first}{unit_extra}"

        header = [
            {
                "label": labels["unit"],
                "link": sort_link("unit"),
                "current": sort == "unit",
                "numeric": False,
            }
        ] + [
            {
                "label": labels[column],
                "link": sort_link(column) if column in view.SORTS else None,
                "current": column == sort,
                "numeric": True,
            }
            for column, _ in COLUMNS
        ]
        overall = data.overall
        rows = [
            {
                "code": overall["unit_code"],
                "name": f"{page_text('overall', locale)}: {overall['unit_name']}",
                "link": unit_link(self.home, overall["unit_code"], week),
                "css": "overall",
                "cells": list(cells_of(overall, locale).values()),
            }
        ] + [
            {
                "code": row.body["unit_code"],
                "name": row.body["unit_name"],
                "link": unit_link(self.home, row.body["unit_code"], week),
                # Indented by depth in the tree's order only: sorted, the tree is gone.
                "css": f"depth-{min(row.depth, 5)}" if sort == "unit" else "",
                "cells": list(cells_of(row.body, locale).values()),
            }
            for row in data.rows
        ]
        falls = [self._fall(fall, week, locale) for fall in data.falls]
        dips = [self._fall(dip, week, locale) for dip in data.dips]
        previous_link, next_link = self._week_links(
            self.home,
            week,
            (f"&sort={sort}&dir={direction}" if sort != "unit" else "") + unit_extra,
        )
        return self.html(
            request,
            viewer,
            locale,
            "overview.html.j2",
            scope_name=scope_name,
            week=week,
            week_dates=_week_dates(week, locale),
            previous_link=previous_link,
            next_link=next_link,
            sort=sort,
            direction=direction,
            sortable=[{"key": key, "label": labels[key]} for key in SORTABLE],
            header=header,
            labels=labels,
            rows=rows,
            falls=falls,
            dips=dips,
            **self._export_context(week, unit_extra and scope),
        )

    def _fall(self, fall: view.Fall, week: Week, locale: str) -> dict[str, Any]:
        body = fall.body
        reasons = []
        if fall.weakest_factor is not None:
            name, value = fall.weakest_factor
            reasons.append(
                page_text(
                    "fall_factor",
                    locale,
                    factor=factor_name(name, locale),
                    value=percent(value, locale),
                )
            )
        item = fall.lowest_item
        # On a form with one question per factor, the lowest item is the weakest factor:
        # said once.
        repeated = (
            item is not None
            and fall.weakest_factor is not None
            and item["question_id"] == item["factor"] == fall.weakest_factor[0]
        )
        if item is not None and not repeated:
            reasons.append(
                page_text(
                    "fall_item",
                    locale,
                    item=item_name(item["question_id"], item["factor"], locale),
                    rate=percent(item["rate"], locale),
                )
            )
        change = body["change"] or 0.0
        return {
            "code": body["unit_code"],
            "link": unit_link(self.home, body["unit_code"], week),
            "line": page_text(
                "fall_line",
                locale,
                name=body["unit_name"],
                index=percent(body["sipas_index"], locale),
                change=signed(change, locale),
            ),
            "reasons": reasons,
        }

    # --- GET /dashboard/units/{code} ---------------------------------------------------

    async def unit(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._unit)

    async def _unit(self, request: web.Request, viewer: Viewer, locale: str) -> web.Response:
        code, scope_name = await self.scope_unit(viewer, request.match_info["code"])
        week = week_param(request.query, "week", self.last_week())
        data = await view.unit_page(
            self.services,
            code,
            week,
            viewer_scope=viewer.scope_code,
            # Per-officer figures: the head's own unit only, as in the head's digest.
            with_officers=viewer.head_of == code,
        )
        tz = self.services.settings.timezone
        body = data.body
        labels = _labels(locale)
        previous_link, next_link = self._week_links(f"{self.home}/units/{code}", week)
        factors = [
            {
                "key": name,
                "name": factor_name(name, locale),
                "this": _percent_or_few(body["factors"][name], locale),
                "raw": "" if body["factors"][name] is None else str(body["factors"][name]),
                "last": _percent_or_few(data.previous_factors[name], locale),
            }
            for name in FACTORS
        ]
        lowest = [
            {
                "name": item_name(item["question_id"], item["factor"], locale),
                "text": item_text(item["question_id"], locale),
                "rate": page_text(
                    "item_rate",
                    locale,
                    rate=percent(item["rate"], locale),
                    answered=item["answered"],
                ),
            }
            for item in body["lowest_items"]
        ]
        masked = page_text("phone_masked", locale)
        comments = [
            {
                "when": moment_text(comment.at, tz),
                "unit": None if comment.unit_code == code else comment.unit_name,
                "text": mask_phones(comment.text, masked),
            }
            for comment in data.comments
        ]
        complaints = [
            {
                "ref": complaint.ref,
                "head": page_text(
                    "escalation_head",
                    locale,
                    ref=complaint.ref,
                    case_code=complaint.case_code,
                    unit=complaint.origin_name,
                ),
                "state": page_text(
                    "escalation_state",
                    locale,
                    status=_known_text("status", complaint.status, locale),
                    level=complaint.level,
                    holder=complaint.holder_name,
                ),
                "steps": [
                    {
                        "kind": step.kind,
                        "kind_text": _known_text("event", step.kind, locale),
                        "level": step.level,
                        "unit": step.unit_name or "—",
                        "when": moment_text(step.at, tz),
                        "took": "—" if step.took is None else duration_text(step.took, locale),
                    }
                    for step in complaint.steps
                ],
            }
            for complaint in data.complaints
        ]
        officers = None
        if data.officers is not None:
            officers = [
                {
                    "name": officer["officer"],
                    "index": _percent_or_few(officer["sipas_index"], locale),
                    "responses": officer["responses"],
                }
                for officer in data.officers
            ]
        children = [
            {
                "name": child["unit_name"],
                "link": unit_link(self.home, child["unit_code"], week),
                "index": _percent_or_few(child["sipas_index"], locale),
            }
            for child in data.children
        ]
        parent = (
            None
            if data.parent is None
            else {"name": data.parent[1], "link": unit_link(self.home, data.parent[0], week)}
        )
        summary = [cell for cell in cells_of(body, locale).values() if cell.column != "rank"]
        themes = [
            {"name": THEME_NAMES[name][locale] if name in THEME_NAMES else name, "count": count}
            for name, count in body["comment_themes"].items()
        ]
        return self.html(
            request,
            viewer,
            locale,
            "unit.html.j2",
            scope_name=scope_name,
            unit_code=code,
            unit_name=body["unit_name"],
            has_children=data.has_children,
            week=week,
            week_dates=_week_dates(week, locale),
            previous_link=previous_link,
            next_link=next_link,
            overview_link=f"{self.home}?week={week.label}",
            parent=parent,
            summary=summary,
            labels=labels,
            factors=factors,
            lowest=lowest,
            chart_link=f"{self.home}/units/{code}/chart.png?week={week.label}&lang={locale}",
            chart_alt=page_text("chart_alt", locale, name=body["unit_name"], week=week.label),
            themes=themes,
            comments=comments,
            comments_total=data.comments_total,
            comments_more=data.comments_total - len(comments),
            complaints=complaints,
            complaints_total=data.complaints_total,
            complaints_more=data.complaints_total - len(complaints),
            officers=officers,
            min_responses=self.services.settings.digest_min_responses,
            children=children,
            **self._export_context(week, code),
        )

    # --- GET /dashboard/units/{code}/chart.png -----------------------------------------

    async def chart(self, request: web.Request) -> web.StreamResponse:
        return await self.guarded(request, self._chart)

    async def _chart(self, request: web.Request, viewer: Viewer, locale: str) -> web.Response:
        code, _ = await self.scope_unit(viewer, request.match_info["code"])
        week = week_param(request.query, "week", self.last_week())
        png = await view.unit_chart(self.services, code, week, locale)
        return web.Response(body=png, content_type="image/png", headers=SECURITY_HEADERS)


def _percent_or_few(value: float | None, locale: str) -> str:
    return too_few_text(locale) if value is None else percent(value, locale)


def _known_text(prefix: str, name: str, locale: str) -> str:
    """The catalogue's name of a status or an event kind; a kind added later shows as is
    rather than failing the page."""
    try:
        return page_text(f"{prefix}.{name}", locale)
    except KeyError:
        return name


def page_routes(services: Services) -> list[web.RouteDef]:
    pages = DashboardPages(services)
    return [
        web.get("/dashboard", pages.overview, allow_head=False),
        web.get(UNIT_PATH, pages.unit, allow_head=False),
        web.get(UNIT_PATH + "/chart.png", pages.chart, allow_head=False),
    ]


__all__ = ["DashboardPages", "page_routes"]
