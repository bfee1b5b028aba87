"""What a dashboard page costs on a large tree: 1,000,000 responses across 700 units, 8 weeks.

The data and its loader are digest_bench.py's. In a fresh process per run it times, on the
figures of the real path (`handlers.digest.build_report` and `scope_history` with the stored
weeks of `bot.digest.snapshots`, as the API, the digest and the dashboard read them):

1. cold: last week's report of the whole tree with nothing stored (it counts last week and the
   one before, and stores them), then the eight-week history of the whole tree (it counts and
   stores the six weeks left);
2. warm, each `--repeat` times: the overview's data (the whole tree's report, as JSON), a unit
   page's data (one district's report with its officers, and its eight-week history as
   points), and the whole tree's eight-week history (as points).

It prints best / median / worst of each over every run, the CPU time and peak RSS of the
measuring processes, and the load average. Run from the repository root:

    python benchmarks/dashboard_bench.py [--responses 1000000] [--units 700]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--keep]
    python benchmarks/dashboard_bench.py --report-only --database-url URL [--schema S]

`--report-only` times a database loaded before (by this script or digest_bench.py with
`--keep`; it is brought to the newest schema first). The pages themselves (GET /dashboard)
are timed by `time_page` once they exist (see its docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digest_bench import (
    LAST_WEEK,
    TZ,
    WEEKS,
    Rows,
    load_postgres,
    load_sqlite,
    migrate,
)

from storage.db import create_engine

DISTRICT = "D002"  # a district of digest_bench's tree: about 22 communes below it


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await work()
    return time.perf_counter() - started, result


async def measure(url: str, schema: str | None, minimum: int, repeat: int) -> dict[str, Any]:
    """In this (fresh) process: the cold report and history, then the warm pages' data."""
    from sqlalchemy import func, select, update

    from bot.digest.snapshots import StoredWeeks
    from handlers.clock import FakeClock
    from handlers.digest import build_report, history_points, load_tree, scope_history
    from storage.db import create_session_factory
    from storage.models import Escalation, ReportSnapshot, Survey
    from storage.repositories.reports import begin_reading

    engine = create_engine(url, schema=schema) if schema else create_engine(url)
    sessions = create_session_factory(engine)
    # A day after the last week ended, as digest_bench's data has it.
    clock = FakeClock(LAST_WEEK.end(TZ) + timedelta(days=1))

    async def overview() -> dict[str, Any]:
        async with sessions() as session, sessions() as side:
            report = await build_report(
                session,
                LAST_WEEK,
                TZ,
                minimum,
                side_session=side,
                closed=StoredWeeks(sessions, clock),
            )
        return report.as_json()

    async def unit_page() -> tuple[dict[str, Any], list[Any]]:
        closed = StoredWeeks(sessions, clock)
        async with sessions() as session, sessions() as side:
            report = await build_report(
                session,
                LAST_WEEK,
                TZ,
                minimum,
                DISTRICT,
                with_officers=True,
                side_session=side,
                closed=closed,
            )
        body = report.as_json()
        async with sessions() as session:
            await begin_reading(session)
            tree = await load_tree(session)
            ids = tree.subtree(tree.find(DISTRICT).id)
            history = await scope_history(session, LAST_WEEK, TZ, ids, closed=closed)
        points = history_points(history, ids, minimum)
        # The unit page shows each commune's trend too (as the digest's chart does).
        for unit_id in ids:
            history_points(history, [unit_id], minimum)
        return body, points

    async def tree_history() -> list[Any]:
        async with sessions() as session:
            await begin_reading(session)
            tree = await load_tree(session)
            history = await scope_history(
                session, LAST_WEEK, TZ, None, closed=StoredWeeks(sessions, clock)
            )
        return history_points(history, tree.everything(), minimum)

    try:
        async with sessions.begin() as session:  # cold: nothing stored
            await session.execute(ReportSnapshot.__table__.delete())
        async with sessions() as session, sessions() as side:  # warm connections, as a service
            await begin_reading(session)
            await begin_reading(side)
        cpu = _cpu_seconds()
        cold_report, body = await _timed(overview)
        cold_history, _ = await _timed(tree_history)
        cold_cpu = _cpu_seconds() - cpu
        timings: dict[str, list[float]] = {"overview": [], "unit_page": [], "tree_history": []}
        cpu = _cpu_seconds()
        for _ in range(repeat):
            for name, work in (
                ("overview", overview),
                ("unit_page", unit_page),
                ("tree_history", tree_history),
            ):
                seconds, _ = await _timed(work)  # type: ignore[operator]
                timings[name].append(seconds)
        warm_cpu = (_cpu_seconds() - cpu) / repeat
        # An old escalation acted on (here: written unchanged, which the triggers cannot tell
        # from a change): last week's complaints' part is deleted and counted again.
        async with sessions.begin() as session:
            await session.execute(
                update(Escalation)
                .where(Escalation.id == select(func.min(Escalation.id)).scalar_subquery())
                .values(level=Escalation.level)
            )
        after_escalation, _ = await _timed(overview)
        # A response written into last week (a backdated import): its responses' part too.
        async with sessions.begin() as session:
            await session.execute(
                update(Survey)
                .where(
                    Survey.id
                    == select(func.max(Survey.id))
                    .where(Survey.completed_at < LAST_WEEK.end(TZ))
                    .scalar_subquery()
                )
                .values(completed_at=Survey.completed_at)
            )
        after_response, _ = await _timed(overview)
        pages = await time_pages(url, schema, clock, minimum, repeat)
    finally:
        await engine.dispose()
    return {
        "cold_report_seconds": round(cold_report, 3),
        "cold_history_seconds": round(cold_history, 3),
        "cold_cpu_seconds": round(cold_cpu, 3),
        "warm_seconds": {name: [round(s, 4) for s in runs] for name, runs in timings.items()},
        "warm_cpu_seconds_per_round": round(warm_cpu, 3),
        "overview_after_old_escalation_seconds": round(after_escalation, 3),
        "overview_after_backdated_response_seconds": round(after_response, 3),
        "pages": pages,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "units": len(body["units"]),
        "responses": body["overall"]["responses"],
        "sipas_index": body["overall"]["sipas_index"],
    }


async def time_page(
    get: Callable[[str], Awaitable[Any]], path: str = "/dashboard", *, runs: int = 20
) -> dict[str, float]:
    """Times a dashboard page over HTTP, for the pages once they land.

    `get` is the caller's signed-in GET: e.g. with pytest-aiohttp's client and the access
    helper's `tests/dashboard_support.py` `sign_in` (which sets the session cookie),
    `time_page(client.get, "/dashboard?week=2026-W47")`, or with an `aiohttp.ClientSession`
    holding the cookie, `time_page(lambda p: session.get(base_url + p))`. The first request
    (which may count and store the week) is reported apart from the warm ones.
    """

    async def once() -> float:
        started = time.perf_counter()
        response = await get(path)
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
        return time.perf_counter() - started

    first = await once()
    warm = sorted([await once() for _ in range(runs)])
    return {
        "first": round(first, 4),
        "best": round(warm[0], 4),
        "median": round(statistics.median(warm), 4),
        "worst": round(warm[-1], 4),
    }


async def time_pages(
    url: str, schema: str | None, clock: Any, minimum: int, repeat: int
) -> dict[str, dict[str, float]]:
    """The real pages over HTTP: the service's aiohttp app on a local port, an official of
    the whole tree signed in through a one-time link, each page timed to its last byte."""
    from aiohttp import CookieJar
    from aiohttp.test_utils import TestClient, TestServer

    from bot.app import build_services
    from bot.config import load_settings
    from bot.http.api import create_web_app
    from handlers.dashboard_access import CLI, link_issued

    database_url = url
    if schema and "search_path" not in url:
        database_url = f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    settings = load_settings(
        database_url=database_url,
        api_tokens=["bench-token"],
        public_url="http://127.0.0.1",
        digest_min_responses=minimum,
        timezone=TZ.key,
    )
    services = build_services(settings, clock=clock)
    week = LAST_WEEK.label
    results: dict[str, dict[str, float]] = {}
    try:
        async with TestClient(
            TestServer(create_web_app(services)), cookie_jar=CookieJar(unsafe=True)
        ) as client:
            async with services.sessions.begin() as session:
                issued = await link_issued(session, "P", clock.now(), actor=CLI)
            response = await client.get(f"/dashboard/login/{issued.token}", allow_redirects=False)
            if response.status != 303:
                raise RuntimeError(f"sign-in answered {response.status}")
            for name, path in (
                ("overview", f"/dashboard?week={week}"),
                ("overview_sorted", f"/dashboard?week={week}&sort=index&dir=asc"),
                ("unit_page", f"/dashboard/units/{DISTRICT}?week={week}"),
                ("chart", f"/dashboard/units/{DISTRICT}/chart.png?week={week}"),
            ):
                results[name] = await time_page(client.get, path, runs=repeat)
    finally:
        await services.engine.dispose()
    return results


def _run_measure(url: str, schema: str | None, minimum: int, repeat: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", "--database-url", url]
    if schema:
        command += ["--schema", schema]
    command += ["--min-responses", str(minimum), "--repeat", str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"{1000 * ordered[0]:.0f} / {1000 * statistics.median(ordered):.0f} / "
        f"{1000 * ordered[-1]:.0f} ms"
    )


def summarise(backend: str, results: list[Mapping[str, Any]]) -> None:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{backend}: {len(results)} fresh processes; load average now {load}")
    cold = [r["cold_report_seconds"] for r in results]
    history = [r["cold_history_seconds"] for r in results]
    print(f"  cold report of {LAST_WEEK.label} (counts and stores 3 parts): {_spread(cold)}")
    print(f"  cold 8-week history of the tree (counts and stores 6 weeks): {_spread(history)}")
    for name, label in (
        ("overview", "warm overview data (whole tree's report as JSON)"),
        ("unit_page", f"warm unit page data ({DISTRICT}: report, officers, 8-week history)"),
        ("tree_history", "warm 8-week history of the whole tree"),
    ):
        runs = [s for r in results for s in r["warm_seconds"][name]]
        print(f"  {label}: best / median / worst {_spread(runs)}")
    for key, label in (
        ("overview_after_old_escalation_seconds", "overview after an old escalation changed"),
        ("overview_after_backdated_response_seconds", "overview after a backdated response"),
    ):
        print(f"  {label} (recounts that part): {_spread([r[key] for r in results])}")
    for name, label in (
        ("overview", f"GET /dashboard?week={LAST_WEEK.label} ({results[0]['units']} units)"),
        ("overview_sorted", "the same, sorted by index"),
        ("unit_page", f"GET /dashboard/units/{DISTRICT}"),
        ("chart", f"GET /dashboard/units/{DISTRICT}/chart.png"),
    ):
        firsts = [r["pages"][name]["first"] for r in results]
        medians = [r["pages"][name]["median"] for r in results]
        worst = [r["pages"][name]["worst"] for r in results]
        best = [r["pages"][name]["best"] for r in results]
        print(
            f"  page {label}: first {_spread(firsts)}; warm best {1000 * min(best):.0f} / "
            f"median {1000 * statistics.median(medians):.0f} / worst {1000 * max(worst):.0f} ms"
        )
    cpu = [r["warm_cpu_seconds_per_round"] for r in results]
    print(f"  warm CPU per round of the three (this process): {min(cpu):.3f}-{max(cpu):.3f} s")
    print(f"  peak RSS: {max(r['peak_rss_mb'] for r in results):.0f} MB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--units", type=int, default=700)
    parser.add_argument("--database-url")
    parser.add_argument("--schema", help="with --report-only: the PostgreSQL schema")
    parser.add_argument("--runs", type=int, default=3, help="fresh measuring processes")
    parser.add_argument("--repeat", type=int, default=5, help="warm rounds per process")
    parser.add_argument("--min-responses", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the loaded database")
    parser.add_argument("--report-only", action="store_true", help="only measure on --database-url")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        result = await measure(args.database_url, args.schema, args.min_responses, args.repeat)
        print(json.dumps(result))
        return
    backend = "PostgreSQL" if (args.database_url or "").startswith("postgresql") else "SQLite"
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    if args.report_only:
        await migrate(args.database_url, args.schema)  # to the newest schema (the snapshots)
        results = [
            _run_measure(args.database_url, args.schema, args.min_responses, args.repeat)
            for _ in range(args.runs)
        ]
        for result in results:
            print(f"  {json.dumps(result)}", flush=True)
        summarise(backend, results)
        return

    rows = Rows(args.responses, args.units)
    schema = None
    temporary = None
    if backend == "PostgreSQL":
        import asyncpg  # type: ignore[import-untyped]

        url = args.database_url
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        schema = f"bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    else:
        temporary = tempfile.mkdtemp(prefix="dashboard-bench-")
        path = os.path.join(temporary, "bench.db")
        url = f"sqlite+aiosqlite:///{path}"
    try:
        await migrate(url, schema)
        started = time.perf_counter()
        if schema:
            await load_postgres(dsn, schema, rows)
        else:
            await asyncio.to_thread(load_sqlite, path, rows)
        print(
            f"{backend}: loaded {args.responses:,} responses across {args.units} units over "
            f"{WEEKS} weeks in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        results = [
            _run_measure(url, schema, args.min_responses, args.repeat) for _ in range(args.runs)
        ]
        for result in results:
            print(f"  {json.dumps(result)}", flush=True)
        summarise(backend, results)
    finally:
        if args.keep:
            print(f"kept: --database-url {url}" + (f" --schema {schema}" if schema else ""))
        if schema:
            if not args.keep:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()
        if temporary and not args.keep:
            for name in os.listdir(temporary):
                os.unlink(os.path.join(temporary, name))
            os.rmdir(temporary)


if __name__ == "__main__":
    asyncio.run(main())
