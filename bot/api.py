"""The HTTP API of docs/contract.md section 4 (aiohttp): case intake, case view, QR code, health;
the web survey page (bot/web_survey.py) is served by the same application.

Every route answers JSON; domain errors, bad JSON and an unreachable database are mapped to
the contract's error shape in one middleware. A 2xx answer is sent only after the commit.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import segno
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bot.app import Services
from bot.digest_api import weekly_report
from bot.web_survey import web_survey_routes
from handlers.case_view import case_view, case_view_by_code, shown_code
from handlers.errors import Conflict, DomainError, InvalidInput, NotFound
from handlers.intake import IntakeResult, case_posted
from handlers.intake_schema import CaseIn, parse_case, storable_text
from storage.db import ping
from storage.repositories import cases as case_repo

T = TypeVar("T")
log = logging.getLogger(__name__)

SERVICES = web.AppKey("services", Services)
MAX_BATCH = 1000
MAX_BODY_BYTES = 8 * 1024 * 1024
RETRY_AFTER_SECONDS = 5
# Two requests inserting the same new case, procedure, officer or contact at once: the loser's
# transaction fails on the unique key and is run again, and then finds the winner's rows.
RACE_ATTEMPTS = 3

HTTP_REQUESTS = Counter(
    "sipas_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram("sipas_http_request_seconds", "HTTP request duration", ["route"])
CASES_POSTED = Counter("sipas_cases_posted_total", "Cases accepted by intake", ["outcome"])

_STATUS_FOR = {InvalidInput: 422, NotFound: 404, Conflict: 409}
# Errors that mean "the database cannot be reached now", not "the request is wrong".
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int, code: str, message: str, fields: dict[str, str] | None = None
) -> web.Response:
    # `fields` is always there (empty when no field is to blame): docs/contract.md section 4.
    error = {"code": code, "message": message, "fields": dict(fields or {})}
    return web.json_response({"error": error}, status=status)


def domain_error_response(exc: DomainError) -> web.Response:
    status = next((code for kind, code in _STATUS_FOR.items() if isinstance(exc, kind)), 400)
    fields = exc.fields if isinstance(exc, InvalidInput) else None
    return error_response(status, exc.code, exc.message, fields)


def _database_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _UNREACHABLE)


def unavailable_response() -> web.Response:
    response = error_response(
        503, "unavailable", "the database cannot be reached; nothing was stored, try again"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where failures become HTTP answers; nothing unexpected leaks a trace."""
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    started = time.perf_counter()
    try:
        response = await handler(request)
    except DomainError as exc:
        response = domain_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, "http_error", exc.reason)
    except Exception as exc:
        if _database_unreachable(exc):
            log.warning("database unreachable during %s %s: %s", request.method, route, exc)
            response = unavailable_response()
        else:
            log.exception("unexpected error in %s %s", request.method, route)
            response = error_response(500, "internal", "unexpected error; it has been logged")
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens guard /api/v1/*, except the OpenAPI document (it holds no data)."""
    path = request.path
    if path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
        tokens = request.app[SERVICES].settings.api_token_values()
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        valid = scheme.lower() == "bearer" and any(
            hmac.compare_digest(token.strip().encode(), known.encode()) for known in tokens
        )
        if not valid:
            response = error_response(
                401, "unauthorized", "send Authorization: Bearer <token> with a valid token"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="sipas-bot"'
            return response
    return await handler(request)


async def _json_body(request: web.Request) -> object:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise InvalidInput({"body": f"larger than {MAX_BODY_BYTES} bytes"}) from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput({"body": f"not valid JSON: {exc}"}) from None


async def _post_one(
    services: Services, session: AsyncSession, body: CaseIn
) -> tuple[IntakeResult, dict[str, Any]]:
    result = await case_posted(
        session,
        body,
        services.clock.now(),
        services.policy,
        channels=services.invitation_channels,
    )
    return result, await case_view(session, result.case, services.links)


async def _retrying_races(work: Callable[[], Awaitable[T]]) -> T:
    """Runs `work` again when its transaction lost a unique-key race with a concurrent one."""
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            return await work()
        except IntegrityError:
            if attempt == RACE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def post_case(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = parse_case(await _json_body(request))

    async def post() -> tuple[IntakeResult, dict[str, Any]]:
        async with services.sessions.begin() as session:
            return await _post_one(services, session, body)

    result, view = await _retrying_races(post)
    services.wake_dispatcher()
    outcome = "created" if result.created else "updated" if result.changed else "replayed"
    CASES_POSTED.labels(outcome).inc()
    return web.json_response(view, status=201 if result.created else 200)


async def post_cases_batch(request: web.Request) -> web.Response:
    """Each item is judged alone, in a savepoint; the answer lists one result per item."""
    services = request.app[SERVICES]
    items = await _json_body(request)
    if isinstance(items, dict) and isinstance(items.get("cases"), list):
        items = items["cases"]
    if not isinstance(items, list):
        raise InvalidInput({"body": "must be a JSON list of cases"})
    if len(items) > MAX_BATCH:
        raise InvalidInput({"body": f"at most {MAX_BATCH} cases per batch, got {len(items)}"})
    batch = items
    results, counts = await _retrying_races(lambda: _post_batch_items(services, batch))
    services.wake_dispatcher()
    return web.json_response({"results": results, "summary": counts})


async def _post_batch_items(
    services: Services, items: list[Any]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    results: list[dict[str, Any]] = []
    counts = {"created": 0, "updated": 0, "rejected": 0}
    async with services.sessions.begin() as session:
        for index, item in enumerate(items):
            given = item.get("case_code") if isinstance(item, dict) else None
            code = given if isinstance(given, str) else None  # echoed back only when text
            try:
                body = parse_case(item)
                async with session.begin_nested():
                    result, view = await _post_one(services, session, body)
            except DomainError as exc:
                error = json.loads(domain_error_response(exc).text or "{}")
                results.append(
                    {"index": index, "case_code": code, "status": _status_of(exc), **error}
                )
                counts["rejected"] += 1
                continue
            status = 201 if result.created else 200
            counts["created" if result.created else "updated"] += 1
            results.append({"index": index, "case_code": code, "status": status, "case": view})
    return results, counts


def _status_of(exc: DomainError) -> int:
    return next((code for kind, code in _STATUS_FOR.items() if isinstance(exc, kind)), 400)


def _case_code(request: web.Request) -> str:
    """The path's case code; one intake could never have stored is simply not found."""
    code = request.match_info["case_code"]
    if not storable_text(code):
        raise NotFound(f"no case {shown_code(code)}")
    return code


async def get_case(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    async with services.sessions() as session:
        view = await case_view_by_code(session, _case_code(request), services.links)
    return web.json_response(view)


async def get_case_qr(request: web.Request) -> web.Response:
    """A QR code of the citizen's link, to print on the receipt: the web survey page, or the
    chat deep link SIPAS_QR_TARGET names (the web page while that link cannot be made)."""
    services = request.app[SERVICES]
    code = _case_code(request)
    async with services.sessions() as session:
        case = await case_repo.get_case(session, code)
        if case is None:
            raise NotFound(f"no case {shown_code(code)}")
        token = await case_repo.link_token_for_case(session, case.id)
    links = services.links(token.token) if token else {}
    link = links.get(services.settings.qr_target) or links.get("web")
    if link is None:
        raise NotFound("this case has no citizen link to encode")
    buffer = io.BytesIO()
    segno.make(link, error="m").save(buffer, kind="png", scale=8, border=2)
    return web.Response(
        body=buffer.getvalue(),
        content_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )


async def healthz(request: web.Request) -> web.Response:
    """200 while the database answers (intake works), 503 when not. Each configured chat
    channel is named with its state (`ok`, `starting`, `unreachable`): a channel that is not
    up holds its messages in the outbox but does not make the service unhealthy."""
    services = request.app[SERVICES]
    channels = services.channels.as_dict()
    try:
        await ping(services.engine)
    except Exception as exc:
        if not _database_unreachable(exc):
            raise
        response = web.json_response(
            {"status": "unavailable", "database": "unreachable", **channels}, status=503
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return web.json_response({"status": "ok", "database": "ok", **channels})


async def metrics(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def openapi_document() -> dict[str, Any]:
    text = resources.files("bot").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def get_weekly_report(request: web.Request) -> web.Response:
    """`?week=2026-W47[&unit=CODE]`: docs/contract.md section 6; no week means last week."""
    services = request.app[SERVICES]
    query = request.query
    report = await weekly_report(services, query.get("week") or None, query.get("unit") or None)
    return web.json_response(report.as_json())


def api_routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/cases", post_case),
        web.post("/api/v1/cases:batch", post_cases_batch),
        web.get("/api/v1/cases/{case_code}", get_case, allow_head=False),
        web.get("/api/v1/cases/{case_code}/qr.png", get_case_qr, allow_head=False),
        web.get("/api/v1/reports/weekly", get_weekly_report, allow_head=False),
        web.get("/api/v1/openapi.json", openapi, allow_head=False),
        web.get("/healthz", healthz, allow_head=False),
        web.get("/metrics", metrics, allow_head=False),
    ]


def create_web_app(services: Services) -> web.Application:
    """The aiohttp application: the API, plus routes each channel adds (webhooks, pages)."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[SERVICES] = services
    app.add_routes(api_routes())
    app.add_routes(web_survey_routes(services))
    app.add_routes(services.web_routes)
    return app
