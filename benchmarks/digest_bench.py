"""The weekly report of a large tree: 1,000,000 responses across 700 units over 8 weeks.

Loads the data fast (sqlite3 `executemany` in one transaction, or PostgreSQL `COPY`), into a
schema built by the real migrations, then builds one week's report for the whole tree (the
`GET /api/v1/reports/weekly` path: `handlers.digest.build_report`, which also counts the week
before for the trend) in a fresh process, and prints its wall time and that process's peak
resident memory. Run from the repository root:

    python benchmarks/digest_bench.py [--responses 1000000] [--units 700]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Without --database-url it uses a temporary SQLite file. On PostgreSQL it works in a schema of
its own, dropped at the end. Each response is a completed `sipas-short` survey (five ratings,
the informal-payment question, a comment one time in five), with a resolved case; beside them
are 30% as many invitations left unanswered, 5% of cases escalated (with events) and 3% late.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handlers.digest import Week
from storage.db import create_engine
from storage.migrate import upgrade

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
WEEKS = 8
LAST_WEEK = Week(2026, 47)
FACTORS = ("access", "procedure", "civil_servant", "result", "feedback_handling")
COMMENTS = (
    "Phải chờ lâu quá",
    "Cán bộ thái độ khó chịu",
    "Hướng dẫn không rõ ràng, phải bổ sung nhiều lần",
    "Rất hài lòng, cảm ơn cán bộ",
    "Lệ phí cao",
    "Nhanh gọn",
)
CHUNK = 20_000  # surveys per insert batch


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class Rows:
    """Generates the rows of every table, chunk by chunk, with ids assigned here."""

    def __init__(self, responses: int, units: int, seed: int = 47) -> None:
        self.rng = random.Random(seed)
        self.responses = responses
        self.units = units
        self.now = utc(LAST_WEEK.end(TZ)) + timedelta(days=1)
        self.weeks = LAST_WEEK.back(WEEKS)
        self.mood = {u: self.rng.uniform(0.55, 0.95) for u in range(1, units + 1)}

    def unit_rows(self) -> list[tuple[Any, ...]]:
        # A province, 30 districts, the rest communes spread over the districts.
        districts = min(30, self.units - 1)
        rows = [(1, "P", "Tỉnh mẫu", None)]
        for n in range(2, districts + 2):
            rows.append((n, f"D{n:03d}", f"Huyện {n}", 1))
        for n in range(districts + 2, self.units + 1):
            rows.append((n, f"C{n:04d}", f"Xã {n}", 2 + (n % districts)))
        return [(*row, self.now, self.now) for row in rows]

    def chunks(self) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
        """Cases, surveys, answers, escalations and events; responses then invitations."""
        rng = self.rng
        invitations = int(self.responses * 0.3)
        total = self.responses + invitations
        case_id = survey_id = answer_id = escalation_id = event_id = 0
        # Chronological, as in service: a survey is created when its case is resolved, so a
        # week's surveys, cases and answers lie together, in id order.
        per_week = total // WEEKS
        offsets = sorted(rng.randrange(7 * 86400) for _ in range(total - per_week * (WEEKS - 1)))
        for start in range(0, total, CHUNK):
            out: dict[str, list[tuple[Any, ...]]] = {
                "cases": [],
                "surveys": [],
                "answers": [],
                "escalations": [],
                "escalation_events": [],
            }
            for index in range(start, min(total, start + CHUNK)):
                position = min(index // per_week, WEEKS - 1)
                # Exactly `responses` of `total` answered, spread evenly over time.
                answered = (index + 1) * self.responses // total > index * self.responses // total
                unit = rng.randint(2, self.units)  # communes and districts serve people
                week = self.weeks[position]
                second = offsets[index - position * per_week]
                moment = utc(week.start(TZ)) + timedelta(seconds=second)
                resolved = moment - timedelta(hours=rng.randint(1, 48))
                due = resolved + timedelta(days=-1 if rng.random() < 0.03 else 2)
                case_id += 1
                out["cases"].append(
                    (
                        case_id,
                        f"B-{case_id:08d}",
                        unit,
                        1,
                        "resolved",
                        resolved - timedelta(days=5),
                        due,
                        resolved,
                        "b",
                        resolved,
                        resolved,
                    )
                )
                survey_id += 1
                out["surveys"].append(
                    (
                        survey_id,
                        f"s{survey_id}",
                        case_id,
                        "sipas-short",
                        "vi",
                        "completed" if answered else "expired",
                        "telegram",
                        0,
                        resolved,
                        resolved,
                        moment if answered else None,
                        moment,
                    )
                )
                if not answered:
                    continue
                mood = self.mood[unit]
                low = False
                for factor in FACTORS:
                    answer_id += 1
                    if factor == "feedback_handling" and rng.random() < 0.4:
                        out["answers"].append(
                            (answer_id, survey_id, factor, None, None, None, True, moment)
                        )
                        continue
                    score = rng.choice((4, 5)) if rng.random() < mood else rng.choice((1, 2, 3))
                    low = low or score <= 2
                    out["answers"].append(
                        (answer_id, survey_id, factor, factor, score, None, False, moment)
                    )
                answer_id += 1
                paid = "yes" if rng.random() < 0.005 else "no"
                out["answers"].append(
                    (answer_id, survey_id, "informal_payment", None, None, paid, False, moment)
                )
                if rng.random() < 0.2:
                    answer_id += 1
                    out["answers"].append(
                        (
                            answer_id,
                            survey_id,
                            "comment",
                            None,
                            None,
                            rng.choice(COMMENTS),
                            False,
                            moment,
                        )
                    )
                if low and rng.random() < 0.12:
                    escalation_id += 1
                    acknowledged = moment + timedelta(hours=rng.uniform(1, 30))
                    resolved_at = acknowledged + timedelta(hours=rng.uniform(2, 90))
                    done = resolved_at < self.now
                    out["escalations"].append(
                        (
                            escalation_id,
                            f"e{escalation_id}",
                            case_id,
                            survey_id,
                            "low_rating",
                            "high",
                            1,
                            unit,
                            unit,
                            "resolved" if done else "acknowledged",
                            "{}",
                            moment,
                            acknowledged,
                            resolved_at if done else None,
                            moment + timedelta(hours=8),
                            moment + timedelta(days=10),
                            rng.choice((1, 4, 5)) if done else None,
                            resolved_at if done else None,
                        )
                    )
                    for kind, at in (("opened", moment), ("sent", moment)):
                        event_id += 1
                        out["escalation_events"].append(
                            (event_id, escalation_id, kind, 1, unit, None, at, "{}")
                        )
            yield out


COLUMNS = {
    "units": ("id", "code", "name", "parent_id", "created_at", "updated_at"),
    "cases": (
        "id",
        "case_code",
        "unit_id",
        "procedure_id",
        "status",
        "received_at",
        "due_at",
        "resolved_at",
        "body_hash",
        "created_at",
        "updated_at",
    ),
    "surveys": (
        "id",
        "ref",
        "case_id",
        "questionnaire",
        "locale",
        "status",
        "channel",
        "position",
        "due_at",
        "invited_at",
        "completed_at",
        "updated_at",
    ),
    "answers": (
        "id",
        "survey_id",
        "question_id",
        "factor",
        "value_int",
        "value_text",
        "skipped",
        "answered_at",
    ),
    "escalations": (
        "id",
        "ref",
        "case_id",
        "survey_id",
        "reason",
        "severity",
        "level",
        "unit_id",
        "origin_unit_id",
        "status",
        "detail",
        "opened_at",
        "acknowledged_at",
        "resolved_at",
        "ack_due_at",
        "resolve_due_at",
        "recovery_rating",
        "recovery_at",
    ),
    "escalation_events": (
        "id",
        "escalation_id",
        "kind",
        "level",
        "unit_id",
        "actor",
        "at",
        "detail",
    ),
}


def _sqlite_value(value: Any) -> Any:
    # As SQLAlchemy's DateTime stores it on SQLite (naive UTC, microseconds); booleans as 0/1.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


def load_sqlite(path: str, rows: Rows) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    with connection:
        connection.execute(
            "INSERT INTO procedures (id, code, name, field) VALUES (1, 'P1', 'Thủ tục', 'x')"
        )
        _sqlite_insert(connection, "units", rows.unit_rows())
        for chunk in rows.chunks():
            for table, values in chunk.items():
                _sqlite_insert(connection, table, values)
    # No ANALYZE: a service's SQLite file has no statistics either.
    connection.close()


def _sqlite_insert(
    connection: sqlite3.Connection, table: str, values: list[tuple[Any, ...]]
) -> None:
    if not values:
        return
    columns = COLUMNS[table]
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    connection.executemany(sql, ([_sqlite_value(v) for v in row] for row in values))


async def load_postgres(dsn: str, schema: str, rows: Rows) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await connection.execute("SET synchronous_commit TO off")
        # No row triggers while loading: the only ones (storage/snapshot_triggers.py) forget
        # stored weeks, and none is stored yet; firing them per copied row only slows the load.
        await connection.execute("SET session_replication_role = replica")
        await connection.execute(
            "INSERT INTO procedures (id, code, name, field) VALUES (1, 'P1', 'Thủ tục', 'x')"
        )
        await connection.copy_records_to_table(
            "units", records=rows.unit_rows(), columns=COLUMNS["units"]
        )
        for chunk in rows.chunks():
            for table, values in chunk.items():
                if values:
                    await connection.copy_records_to_table(
                        table, records=values, columns=COLUMNS[table]
                    )
        # What autovacuum does soon after a bulk load (and what makes index-only scans pay).
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


async def migrate(url: str, schema: str | None) -> None:
    engine = create_engine(url, schema=schema) if schema else create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def report_once(url: str, schema: str | None, minimum: int) -> dict[str, Any]:
    """In this (fresh) process: one week's report of the whole tree, timed."""
    from handlers.digest import build_report
    from storage.db import create_session_factory

    engine = create_engine(url, schema=schema) if schema else create_engine(url)
    sessions = create_session_factory(engine)
    try:
        async with sessions() as session:  # a warm connection, as in the running service
            await session.connection()
        async with sessions() as side:  # the API's second connection, warm too
            await side.connection()
        cpu = _cpu_seconds()
        started = time.perf_counter()
        async with sessions() as session, sessions() as side:
            report = await build_report(session, LAST_WEEK, TZ, minimum, side_session=side)
        body = report.as_json()
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu
    finally:
        await engine.dispose()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": round(seconds, 3),
        "process_cpu_seconds": round(cpu, 3),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "units": len(body["units"]),
        "responses": body["overall"]["responses"],
        "sipas_index": body["overall"]["sipas_index"],
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_report_process(url: str, schema: str | None, minimum: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--report-only", "--database-url", url]
    if schema:
        command += ["--schema", schema]
    command += ["--min-responses", str(minimum)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--units", type=int, default=700)
    parser.add_argument("--database-url")
    parser.add_argument("--runs", type=int, default=3, help="report runs (fresh processes)")
    parser.add_argument("--min-responses", type=int, default=5)
    parser.add_argument(
        "--keep", action="store_true", help="keep the loaded database (SQLite file or schema)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only time the report on --database-url"
    )
    parser.add_argument("--schema", help="with --report-only: the PostgreSQL schema")
    args = parser.parse_args()

    if args.report_only:
        print(json.dumps(await report_once(args.database_url, args.schema, args.min_responses)))
        return

    rows = Rows(args.responses, args.units)
    schema = None
    temporary = None
    if args.database_url and args.database_url.startswith("postgresql"):
        import asyncpg

        url = args.database_url
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        schema = f"bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        backend = "PostgreSQL"
    else:
        temporary = tempfile.mkdtemp(prefix="digest-bench-")
        path = os.path.join(temporary, "bench.db")
        url = f"sqlite+aiosqlite:///{path}"
        backend = "SQLite"
    try:
        await migrate(url, schema)
        started = time.perf_counter()
        if schema:
            await load_postgres(dsn, schema, rows)
        else:
            await asyncio.to_thread(load_sqlite, path, rows)
        loaded = time.perf_counter() - started
        print(
            f"{backend}: loaded {args.responses:,} responses across {args.units} units over "
            f"{WEEKS} weeks in {loaded:.1f} s",
            flush=True,
        )
        results = [_run_report_process(url, schema, args.min_responses) for _ in range(args.runs)]
        for result in results:
            print(f"  report of {LAST_WEEK.label}, whole tree: {json.dumps(result)}", flush=True)
        best = min(r["seconds"] for r in results)
        peak = max(r["peak_rss_mb"] for r in results)
        print(f"{backend}: best {best:.2f} s, peak RSS {peak:.0f} MB (targets: 2 s, 250 MB)")
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
