"""Case intake under load: single posts, batches of 1000 and `cases import`, on both databases.

Each figure is taken against a server in its own process (so the client does not share its
event loop): the real aiohttp app (`create_web_app` over `build_services`, migrations applied,
sample units loaded), and, for comparison, a bare aiohttp endpoint that parses the JSON body
and answers JSON. Both are driven by the same aiohttp client with the same concurrency. Run
from the repository root:

    python benchmarks/intake_bench.py [--backend sqlite|postgresql|both] [--singles 4000]
        [--concurrency 32] [--batches 5] [--csv-rows 20000] [--contention-rows 20000]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Single posts: every case is posted `received`, then again `resolved` (which schedules its
survey), then replayed; each phase reports requests/s, the p50/p99 latency and the server's
CPU time per request. Then new cases are posted while another process runs `cases import`
into the same database (`--contention-rows`). Every answer must be 201 or 200, else the run
reports the statuses it got. Batches: `--batches` posts of 1000 new cases, then the same 1000
resolved. Import: `sipas-bot cases import` of a CSV of `--csv-rows` new cases, as a separate
process, timed from start to exit (start-up included), and again less the time of an import
of one row (what any import pays to start). The project's modules are compiled to bytecode
first, as `pip install` and the Docker image have them: a checkout run with
PYTHONDONTWRITEBYTECODE=1 (as on the machines these figures come from) would otherwise compile
every module again at each start, 0.3-0.5 s that no deployment pays. PostgreSQL runs in a
schema made for the run and dropped afterwards.

The machine's other work shows in requests/s; the server's CPU time per request or case
(from /proc) moves much less with it, and says what one core would carry.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import csv
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNITS_YAML = """
units:
  - {code: HN, name: UBND thành phố Hà Nội, head: {name: Nguyễn Văn An, telegram_chat_id: 900}}
  - {code: HN-LB, name: UBND quận Long Biên, parent: HN,
     head: {name: Lê Thị Bình, telegram_chat_id: 901}}
  - {code: HN-BD, name: UBND quận Ba Đình, parent: HN}
  - {code: HN-TT, name: UBND huyện Thanh Trì, parent: HN}
"""
UNITS = ("HN-LB", "HN-BD", "HN-TT")
PROCEDURES = (
    ("1.001193", "Đăng ký khai sinh", "Hộ tịch"),
    ("2.000815", "Chứng thực bản sao từ bản chính", "Chứng thực"),
    ("1.009974", "Cấp giấy phép xây dựng nhà ở riêng lẻ", "Xây dựng"),
    ("1.000894", "Đăng ký kết hôn", "Hộ tịch"),
    ("1.001022", "Trợ cấp thất nghiệp", "Việc làm"),
)


# --- the servers (run in a child process) --------------------------------------------------


async def _serve(kind: str, database_url: str) -> None:
    from aiohttp import web

    if kind == "bare":

        async def echo(request: web.Request) -> web.Response:
            body = await request.json()
            return web.json_response({"case_code": body.get("case_code"), "status": "ok"})

        app = web.Application()
        app.add_routes([web.post("/api/v1/cases", echo)])
    else:
        from bot.app import build_services, prepare_database
        from bot.config import load_settings
        from bot.http.api import create_web_app
        from handlers.units import load_units, parse_units_file

        settings = load_settings(database_url=database_url, api_tokens=TOKEN)
        services = build_services(settings)
        await prepare_database(services)
        async with services.sessions.begin() as session:
            await load_units(session, parse_units_file(UNITS_YAML))
        services.link_builders["telegram"] = lambda token: f"https://t.me/bench_bot?start={token}"
        app = create_web_app(services)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    if kind != "bare":
        from bot.heap import exempt_from_collection

        exempt_from_collection()  # as `serve` does once it has started
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await runner.cleanup()
    if kind != "bare":
        await services.engine.dispose()


class Server:
    def __init__(self, kind: str, database_url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--database-url", database_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the {kind} server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def cpu_seconds(self) -> float:
        """User and system CPU time the server process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# --- bodies --------------------------------------------------------------------------------


def case_body(number: int, run: str, status: str = "received") -> dict[str, Any]:
    code, name, field = PROCEDURES[number % len(PROCEDURES)]
    body: dict[str, Any] = {
        "case_code": f"000.00.12.H26-{run}-{number:07d}",
        "unit_code": UNITS[number % len(UNITS)],
        "procedure": {"code": code, "name": name, "field": field},
        "officer": {"code": f"CB-{number % 40:03d}", "name": f"Cán bộ {number % 40}"},
        "citizen": {
            "name": "Trần Văn Minh",
            # Some citizens come back with a second case.
            "phone": f"09{(number * 7919) % 100_000_000 // 2:08d}",
            "locale": "vi",
        },
        "status": status,
        "received_at": "2026-11-20T08:05:00+07:00",
        "due_at": "2026-11-25T17:00:00+07:00",
    }
    if status == "resolved":
        body["resolved_at"] = "2026-11-24T10:00:00+07:00"
    return body


# --- the client ----------------------------------------------------------------------------


async def drive(
    url: str, bodies: list[Any], concurrency: int, path: str = "/api/v1/cases"
) -> tuple[float, list[float], Counter[int], list[Any]]:
    """Posts every body once, `concurrency` at a time; wall time, latencies, statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    answers: list[Any] = []
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=AUTH) as client:

        async def worker() -> None:
            for body in queue:
                data = json.dumps(body).encode()
                started = time.perf_counter()
                async with client.post(
                    path, data=data, headers={"Content-Type": "application/json"}
                ) as response:
                    payload = await response.read()
                latencies.append(time.perf_counter() - started)
                statuses[response.status] += 1
                if path.endswith(":batch"):
                    answers.append(json.loads(payload))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return wall, latencies, statuses, answers


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] if len(values) > 1 else values[0]


def report_singles(
    label: str, wall: float, latencies: list[float], statuses: Counter[int], cpu: float
) -> float:
    rate = len(latencies) / wall
    bad = {s: n for s, n in statuses.items() if s not in (200, 201)}
    print(
        f"  {label:<28} {rate:8.0f} req/s   p50 {_quantile(latencies, 0.5) * 1000:6.1f} ms"
        f"   p99 {_quantile(latencies, 0.99) * 1000:6.1f} ms"
        f"   server CPU {cpu / len(latencies) * 1e6:5.0f} us/req"
        + (f"   NOT 2xx: {bad}" if bad else "")
    )
    return rate


async def timed(
    server: Server, bodies: list[Any], concurrency: int, path: str = "/api/v1/cases"
) -> tuple[float, list[float], Counter[int], list[Any], float]:
    """`drive`, and the server CPU time it took."""
    before = server.cpu_seconds()
    wall, latencies, statuses, answers = await drive(server.url, bodies, concurrency, path)
    return wall, latencies, statuses, answers, server.cpu_seconds() - before


# --- one backend ---------------------------------------------------------------------------


def write_csv(path: Path, rows: int, run: str) -> None:
    from handlers.case_import import COLUMNS

    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for number in range(rows):
            body = case_body(number, run)
            values = {
                "case_code": body["case_code"],
                "unit_code": body["unit_code"],
                "procedure_code": body["procedure"]["code"],
                "procedure_name": body["procedure"]["name"],
                "procedure_field": body["procedure"]["field"],
                "officer_code": body["officer"]["code"],
                "officer_name": body["officer"]["name"],
                "citizen_name": body["citizen"]["name"],
                "citizen_phone": body["citizen"]["phone"],
                "citizen_locale": "vi",
                "status": "received",
                "received_at": body["received_at"],
                "due_at": body["due_at"],
            }
            writer.writerow([values.get(column, "") for column in COLUMNS])


async def bench_backend(name: str, database_url: str, args: argparse.Namespace) -> None:
    print(f"\n== {name}: {database_url}")
    bare = Server("bare", database_url)
    real = Server("real", database_url)
    try:
        n = args.singles
        run = secrets.token_hex(3)
        received = [case_body(i, run) for i in range(n)]
        resolved = [case_body(i, run, "resolved") for i in range(n)]
        wall, lat, st, _, cpu = await timed(bare, received, args.concurrency)
        bare_rate = report_singles("bare aiohttp JSON", wall, lat, st, cpu)
        rates = []
        for label, bodies in (
            ("POST received (201)", received),
            ("POST resolved (200)", resolved),
            ("POST replay (200)", resolved),
        ):
            wall, lat, st, _, cpu = await timed(real, bodies, args.concurrency)
            rates.append(report_singles(label, wall, lat, st, cpu))
        print(f"  intake / bare: {min(rates) / bare_rate:.1%} (slowest phase)")
        async with aiohttp.ClientSession(real.url) as client, client.get("/metrics") as response:
            metrics = await response.text()
        sums = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("sipas_intake_group_cases_")
        }
        groups = sums.get("sipas_intake_group_cases_count", 0.0)
        if groups:
            mean = sums["sipas_intake_group_cases_sum"] / groups
            print(f"  single posts per transaction: {mean:.1f} on average ({groups:.0f} in all)")

        if args.contention_rows:
            # Another process writes the same database meanwhile: SQLite's one write lock is
            # shared between the two; every post must still be answered 2xx.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "cases.csv"
                write_csv(path, args.contention_rows, f"{run}i")
                importer = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot",
                    "cases",
                    "import",
                    str(path),
                    env={**os.environ, "SIPAS_DATABASE_URL": database_url},
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                during = [case_body(i, f"{run}c") for i in range(n)]
                wall, lat, st, _, cpu = await timed(real, during, args.concurrency)
                report_singles("POST during cases import", wall, lat, st, cpu)
                out, err = await importer.communicate()
                print(
                    f"    the import meanwhile: exit {importer.returncode}, "
                    f"{(out.decode().splitlines() or [err.decode()[-300:]])[0]}"
                )

        batch_phases = (("batch received", "received"), ("batch resolved", "resolved"))
        for label, status in batch_phases if args.batches else ():
            total_cases, total_wall, total_cpu = 0, 0.0, 0.0
            counts: Counter[str] = Counter()
            for b in range(args.batches):
                batch = [case_body(i, f"{run}b{b}", status) for i in range(1000)]
                wall, _, st, answers, cpu = await timed(real, [batch], 1, "/api/v1/cases:batch")
                total_cases += len(batch)
                total_wall += wall
                total_cpu += cpu
                for answer in answers:
                    counts.update({k: v for k, v in answer["summary"].items() if v})
                if set(st) != {200}:
                    print(f"    batch statuses {dict(st)}")
            print(
                f"  {label + ' (x1000)':<28} {total_cases / total_wall:8.0f} cases/s"
                f"   {total_wall / args.batches * 1000:6.0f} ms a batch"
                f"   server CPU {total_cpu / total_cases * 1e6:5.0f} us/case   {dict(counts)}"
            )
    finally:
        real.stop()
        bare.stop()

    if not args.csv_rows:
        return
    # An import of one row first: what any import pays to start (the interpreter, the app's
    # modules, the database's migrations checked), so that the rows' own rate can be told.
    start_up, _cpu, _done = await run_import(database_url, 1)
    wall, cpu, done = await run_import(database_url, args.csv_rows)
    summary = (done.stdout.splitlines() or ["?"])[0]
    print(
        f"  {'cases import (CSV)':<28} {args.csv_rows / wall:8.0f} cases/s"
        f"   {wall:6.1f} s with start-up, CPU {cpu:5.1f} s"
        f"   exit {done.returncode}: {summary}"
    )
    print(
        f"    without the start-up of {start_up:.1f} s (an import of one row): "
        f"{args.csv_rows / max(wall - start_up, 1e-9):.0f} cases/s"
    )
    if done.returncode != 0:
        print(done.stderr[-2000:])


async def run_import(
    database_url: str, rows: int
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """`sipas-bot cases import` of a CSV of `rows` new cases: wall time, CPU time, the run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.csv"
        write_csv(path, rows, secrets.token_hex(3))
        env = {**os.environ, "SIPAS_DATABASE_URL": database_url}
        started = time.perf_counter()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = children.ru_utime + children.ru_stime
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot", "cases", "import", str(path)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, children.ru_utime + children.ru_stime - cpu_before, done


async def with_postgres_schema(base_url: str, work: Callable[[str], Awaitable[None]]) -> None:
    import asyncpg

    schema = f"bench_{secrets.token_hex(4)}"
    dsn = base_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await work(f"{base_url}?search_path={schema}")
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def _backends(choice: str) -> Iterator[str]:
    return iter(("sqlite", "postgresql") if choice == "both" else (choice,))


def compile_project() -> None:
    """Bytecode for the project's own packages, beside them (__pycache__, ignored by git)."""
    for package in ("bot", "handlers", "storage"):
        compileall.compile_dir(ROOT / package, quiet=1)


async def main(args: argparse.Namespace) -> None:
    compile_project()
    print(
        f"intake benchmark: {args.singles} cases x 3 single-post phases, concurrency "
        f"{args.concurrency}; {args.batches} batches of 1000 x 2; CSV of {args.csv_rows} rows; "
        f"{os.cpu_count()} cores"
    )
    for backend in _backends(args.backend):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                await bench_backend("SQLite", f"sqlite+aiosqlite:///{tmp}/bench.db", args)
        else:
            await with_postgres_schema(
                args.postgres_url, lambda url: bench_backend("PostgreSQL", url, args)
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--singles", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--csv-rows", type=int, default=20000)
    parser.add_argument(
        "--contention-rows",
        type=int,
        default=20000,
        help="rows of a `cases import` run by another process during a phase of single posts",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "SIPAS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--serve", choices=("real", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve and os.environ.get("INTAKE_BENCH_PROFILE"):
        import cProfile

        cProfile.run(
            "asyncio.run(_serve(arguments.serve, arguments.database_url))",
            f"{os.environ['INTAKE_BENCH_PROFILE']}.{arguments.serve}",
        )
    elif arguments.serve:
        asyncio.run(_serve(arguments.serve, arguments.database_url))
    else:
        asyncio.run(main(arguments))
