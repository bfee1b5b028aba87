"""The HTTP API of docs/contract.md section 4 (aiohttp): case intake, case view, QR code, health;
the web survey page (bot/http/web_survey.py) and the officials' dashboard (bot/http/dashboard)
are served by the same application.

Every route answers JSON; domain errors, bad JSON and an unreachable database are mapped to
the contract's error shape in one middleware. A 2xx answer is sent only after the commit.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import orjson
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

from bot.app import Services
from bot.digest.report import weekly_report
from bot.http.dashboard import dashboard_routes
from bot.http.keys import SERVICES
from bot.http.web_survey import web_survey_routes
from handlers.case_view import case_view_by_code, case_views, shown_code
from handlers.errors import Conflict, DomainError, InvalidInput, NotFound
from handlers.intake import SURVEYED, Posted, ReferenceIds, cases_posted, without_repeats
from handlers.intake_schema import CaseIn, parse_case, storable_text
from storage.db import ping
from storage.repositories import cases as case_repo
from storage.repositories import outbox

T = TypeVar("T")
log = logging.getLogger(__name__)

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
INTAKE_GROUP = Histogram(
    "sipas_intake_group_cases",
    "Cases taken in one intake transaction (single posts that arrived together, batches)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)

_STATUS_FOR = {InvalidInput: 422, NotFound: 404, Conflict: 409}
# Errors that mean "the database cannot be reached now", not "the request is wrong".
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, OSError, TimeoutError)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    """An answer of JSON, written by orjson: the standard library's encoder took 15 µs a case
    of a batch's answer, a sixth of what the server spent on the whole batch. Text is UTF-8,
    not \\uXXXX escapes; keys that are not text are written as text, as `json.dumps` does."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(
    status: int, code: str, message: str, fields: dict[str, str] | None = None
) -> web.Response:
    # `fields` is always there (empty when no field is to blame): docs/contract.md section 4.
    error = {"code": code, "message": message, "fields": dict(fields or {})}
    return json_response({"error": error}, status=status)


def domain_error_response(exc: DomainError) -> web.Response:
    return json_response(_error_body(exc), status=_status_of(exc))


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
        # orjson reads a batch in a third of the time; what it refuses (a lone surrogate, an
        # integer beyond 64 bits, UTF-16, NaN) goes to the standard library's reader, which
        # takes all of it as before, so each field is still judged (and named) on its own.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput({"body": f"not valid JSON: {exc}"}) from None


# One answer per posted case: what intake made of it and its view, or why it was refused.
Answer = tuple[Posted, dict[str, Any]] | DomainError


async def _post_group(
    services: Services, bodies: list[CaseIn], references: ReferenceIds
) -> tuple[list[Answer], bool]:
    """Takes the cases in one transaction and answers each once it is committed; also says
    whether the transaction queued messages (an apology, a courtesy message, a complaint)."""

    async def post() -> tuple[list[Answer], bool]:
        try:
            answers: list[Answer] = []
            async with services.sessions.begin() as session:
                # A case posted twice in the group is seen by each post as that post left it.
                for run in without_repeats(bodies):
                    outcomes = await cases_posted(
                        session,
                        run,
                        services.clock.now(),
                        services.policy,
                        channels=services.invitation_channels,
                        references=references,
                    )
                    posted = [o for o in outcomes if isinstance(o, Posted)]
                    views = await case_views(
                        session,
                        [(p.case_id, p.case_code, p.unit_code, p.status) for p in posted],
                        services.links,
                        fresh={p.case_id: p.fresh_token for p in posted if p.fresh_token},
                    )
                    answers.extend(
                        o if isinstance(o, DomainError) else (o, views[o.case_id]) for o in outcomes
                    )
        except Exception:
            references.clear()  # ids of rows the rollback took back may be among them
            raise
        return answers, outbox.queued_any(session)

    return await _retrying_races(post)


async def _retrying_races(work: Callable[[], Awaitable[T]]) -> T:
    """Runs `work` again when its transaction lost a unique-key race with a concurrent one (or
    was chosen as a deadlock's victim), and once when its connection turned out dead (the
    server restarted since it was last used, storage/db.py): the pool has dropped it, and the
    next try gets a new one. Running intake again is safe even if the commit went through: a
    case posted twice is a replay."""
    reconnected = False
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            return await work()
        except DBAPIError as exc:
            if _lost_to_another(exc):
                if attempt == RACE_ATTEMPTS:
                    raise
            elif exc.connection_invalidated and not reconnected:
                reconnected = True
            else:
                raise
    raise AssertionError("unreachable")


# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back
# for another's sake and is meant to be run again.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def _lost_to_another(exc: DBAPIError) -> bool:
    """A unique key another transaction took first, or a rollback to let another go on."""
    return isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) in (
        _RETRY_SQLSTATES
    )


class IntakeQueue:
    """Group commit for intake: the posts that arrive while a transaction runs wait for it to
    end and then go together in the next one, so that a busy process pays one transaction
    (and one commit) for many posts instead of one each, and SQLite's single writer is not
    fought over by this process's own requests. Nobody waits for a group to fill: an idle
    queue starts at once. Every answer is given only after the commit that holds its case.

    A group that fails for a reason of its own (not a lost race, which is retried, nor an
    unreachable database, which every request in it is told) is run again one submission at
    a time, so that only the request to blame fails.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.references = ReferenceIds()
        self._waiting: list[tuple[list[CaseIn], asyncio.Future[list[Answer]]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Submissions waiting for the transaction after the one running."""
        return len(self._waiting)

    async def post(self, bodies: list[CaseIn]) -> list[Answer]:
        """The answers for `bodies`, in order, once they are committed (with other posts)."""
        if not bodies:
            return []
        future: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        self._waiting.append((bodies, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            group = [self._waiting.pop(0)]
            size = len(group[0][0])
            while self._waiting and size + len(self._waiting[0][0]) <= MAX_BATCH:
                size += len(self._waiting[0][0])
                group.append(self._waiting.pop(0))
            await self._settle(group)

    async def _settle(self, group: list[tuple[list[CaseIn], asyncio.Future[list[Answer]]]]) -> None:
        bodies = [body for submitted, _future in group for body in submitted]
        INTAKE_GROUP.observe(len(bodies))
        try:
            answers, queued = await _post_group(self.services, bodies, self.references)
        except asyncio.CancelledError:
            for _bodies, future in group:
                future.cancel()
            raise
        except Exception as exc:
            if len(group) > 1 and not _database_unreachable(exc):
                for one in group:
                    await self._settle([one])
                return
            for _bodies, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        if queued:
            # Only then: a wake after every post was a claim after every resolution that
            # found nothing (its invitation is queued later, by the waker, which wakes too).
            self.services.wake_dispatcher()
        # Committed: a survey that became due now is invited now (the sweep is the safety net).
        surveyed = [
            answer[0].case_id
            for answer in answers
            if not isinstance(answer, DomainError)
            and answer[0].changed
            and answer[0].status in SURVEYED
        ]
        if surveyed:
            self.services.wake_invitations(surveyed)
        start = 0
        for submitted, future in group:
            if not future.done():
                future.set_result(answers[start : start + len(submitted)])
            start += len(submitted)


INTAKE = web.AppKey("intake", IntakeQueue)


async def post_case(request: web.Request) -> web.Response:
    body = parse_case(await _json_body(request))
    [answer] = await request.app[INTAKE].post([body])
    if isinstance(answer, DomainError):
        raise answer
    posted, view = answer
    outcome = "created" if posted.created else "updated" if posted.changed else "replayed"
    CASES_POSTED.labels(outcome).inc()
    return json_response(view, status=201 if posted.created else 200)


async def post_cases_batch(request: web.Request) -> web.Response:
    """Each item is judged alone, exactly as a single post; the answer lists one result per
    item. The valid items are taken in one transaction (with any single posts waiting)."""
    items = await _json_body(request)
    if isinstance(items, dict) and isinstance(items.get("cases"), list):
        items = items["cases"]
    if not isinstance(items, list):
        raise InvalidInput({"body": "must be a JSON list of cases"})
    if len(items) > MAX_BATCH:
        raise InvalidInput({"body": f"at most {MAX_BATCH} cases per batch, got {len(items)}"})
    parsed: list[CaseIn | DomainError] = []
    for item in items:
        try:
            parsed.append(parse_case(item))
        except DomainError as exc:
            parsed.append(exc)
    valid = [body for body in parsed if isinstance(body, CaseIn)]
    answers = iter(await request.app[INTAKE].post(valid))
    results: list[dict[str, Any]] = []
    counts = {"created": 0, "updated": 0, "rejected": 0}
    for index, (item, body) in enumerate(zip(items, parsed, strict=True)):
        given = item.get("case_code") if isinstance(item, dict) else None
        code = given if isinstance(given, str) else None  # echoed back only when text
        answer = next(answers) if isinstance(body, CaseIn) else body
        if isinstance(answer, DomainError):
            results.append(
                {"index": index, "case_code": code, "status": _status_of(answer)}
                | _error_body(answer)
            )
            counts["rejected"] += 1
            continue
        posted, view = answer
        counts["created" if posted.created else "updated"] += 1
        status = 201 if posted.created else 200
        results.append({"index": index, "case_code": code, "status": status, "case": view})
    return json_response({"results": results, "summary": counts})


def _error_body(exc: DomainError) -> dict[str, Any]:
    fields = exc.fields if isinstance(exc, InvalidInput) else None
    return {"error": {"code": exc.code, "message": exc.message, "fields": dict(fields or {})}}


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
    return json_response(view)


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
        response = json_response(
            {"status": "unavailable", "database": "unreachable", **channels}, status=503
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return json_response({"status": "ok", "database": "ok", **channels})


async def metrics(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def openapi_document() -> dict[str, Any]:
    text = resources.files("bot.http").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


async def openapi(_request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def get_weekly_report(request: web.Request) -> web.Response:
    """`?week=2026-W47[&unit=CODE]`: docs/contract.md section 6; no week means last week."""
    services = request.app[SERVICES]
    query = request.query
    report = await weekly_report(services, query.get("week") or None, query.get("unit") or None)
    return json_response(report.as_json())


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
    app[INTAKE] = IntakeQueue(services)
    app.add_routes(api_routes())
    app.add_routes(web_survey_routes(services))
    app.add_routes(dashboard_routes(services))
    app.add_routes(services.web_routes)
    return app
