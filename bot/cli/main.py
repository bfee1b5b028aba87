"""The `sipas-bot` command line (docs/contract.md section 3): the parser, one function a command.

Exit codes: 0 done; 1 the input or the environment is wrong (rejected rows, an unreachable
database), with the reasons printed; 2 a usage or configuration error naming what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from bot.config import Settings, SettingsError, load_settings
from bot.logging_setup import setup_logging
from demo import data as demo_data
from handlers.errors import DomainError, InvalidInput

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
IMPORT_CHUNK_ROWS = 1000
T = TypeVar("T")

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


async def cmd_serve(settings: Settings, _args: argparse.Namespace) -> int:
    from bot.serve import serve

    await serve(settings)
    return EXIT_OK


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from demo.run import run_demo

    await run_demo(settings, serve=not args.no_serve, cases=args.cases)
    return EXIT_OK


async def cmd_db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    from bot.startup import masked_url, opened_services
    from storage.migrate import current_revision

    async with opened_services(settings) as services:  # pings, then migrates
        revision = await current_revision(services.engine)
    print(f"database {masked_url(settings.database_url)} is at revision {revision}")
    return EXIT_OK


async def cmd_units_load(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import load_units_file
    from bot.startup import opened_services

    async with opened_services(settings) as services:
        report = await load_units_file(services, args.file)
    print(f"{args.file}: {report}")
    return EXIT_OK


async def cmd_heads_invite(settings: Settings, args: argparse.Namespace) -> int:
    from bot.cli.heads import heads_invite
    from bot.startup import opened_services

    async with opened_services(settings) as services:
        link = await heads_invite(services, args.unit_code)
    print(link)
    return EXIT_OK


async def cmd_dashboard_link(settings: Settings, args: argparse.Namespace) -> int:
    from bot.cli.dashboard import dashboard_link
    from bot.startup import opened_services

    settings = _demo_database_unless_chosen(settings)
    async with opened_services(settings) as services:
        lines = await dashboard_link(services, args.unit_code)
    print("\n".join(lines))
    return EXIT_OK


def _demo_database_unless_chosen(settings: Settings) -> Settings:
    """The demo's database, when the operator chose none and the default file is not there.

    A newcomer who ran `sipas-bot demo` and then `sipas-bot dashboard link HN` in the same
    folder means the demo's units; opening the default ./sipas.db would create an empty
    database and answer "no unit HN". Said on stderr, so the choice is never silent.
    """
    from demo.run import DEFAULT_DATABASE, DEMO_DATABASE

    chosen = "database_url" in settings.model_fields_set
    if chosen or DEFAULT_DATABASE.exists() or not DEMO_DATABASE.exists():
        return settings
    demo = DEMO_DATABASE.resolve()
    print(
        f"using the demo's database {demo} (SIPAS_DATABASE_URL is not set and there is no "
        f"{DEFAULT_DATABASE}); set SIPAS_DATABASE_URL to choose another",
        file=sys.stderr,
    )
    return settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{demo}"})


async def cmd_cases_import(settings: Settings, args: argparse.Namespace) -> int:
    from bot.heap import exempt_from_collection
    from bot.startup import opened_services
    from handlers.case_import import ImportReport, decode, read_rows, rows_imported
    from handlers.intake import ReferenceIds

    path: Path = args.file
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise InvalidInput({"file": f"cannot read {path}: {exc.strerror}"}) from None
    rows = read_rows(decode(data))
    first = next(rows, None)  # checks the header before the database is touched
    report = ImportReport()
    references = ReferenceIds()
    async with opened_services(settings) as services:
        exempt_from_collection()  # what the start built (bot/heap.py)
        # One transaction per chunk keeps a large file from holding one huge transaction;
        # each row is still judged alone, and a rejected one stores nothing.
        for chunk in _chunks(itertools.chain([first] if first else [], rows)):
            async with services.sessions.begin() as session:
                await rows_imported(
                    session,
                    chunk,
                    services.clock.now(),
                    services.policy,
                    report,
                    channels=services.invitation_channels,
                    references=references,
                )
            services.wake_dispatcher()
    print(f"{path}: {report.summary()}")
    for rejection in report.rejected:
        for line in rejection.lines():
            print(f"  {line}")
    return EXIT_FAILED if report.rejected else EXIT_OK


async def cmd_digest(settings: Settings, args: argparse.Namespace) -> int:
    from bot.cli.digest import print_lines, run_digest
    from bot.startup import opened_services

    async with opened_services(settings) as services:
        lines = await run_digest(services, args)
    print_lines(lines)
    return EXIT_OK


def _chunks(rows: Iterable[T], size: int | None = None) -> Iterator[list[T]]:
    size = size or IMPORT_CHUNK_ROWS
    chunk: list[T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


MAX_DEMO_CASES = 100_000


def case_count(text: str) -> int:
    """`--cases N`: a whole number of sample cases, at least 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, e.g. 300") from None
    if not 1 <= count <= MAX_DEMO_CASES:
        raise argparse.ArgumentTypeError(
            f"{count} is out of range: seed between 1 and {MAX_DEMO_CASES:,} cases"
        )
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipas-bot",
        description=(
            "Feedback on resolved administrative cases for Vietnamese one-stop desks: "
            "SIPAS surveys in chat, escalations to unit heads, apologies, weekly digests. "
            "Configuration comes from SIPAS_* environment variables (see README.md)."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API, the chat channels and the scheduler until SIGINT/SIGTERM",
        description="Applies database migrations, then runs until SIGINT or SIGTERM.",
    )
    serve.set_defaults(run=cmd_serve)

    demo = commands.add_parser(
        "demo",
        help="seed a local database with sample units and cases and run the server",
        description=(
            "Uses SIPAS_DATABASE_URL if set, else ./sipas-demo/sipas.db (recreated on each "
            "run); generates an API token when SIPAS_API_TOKENS is unset."
        ),
    )
    demo.add_argument(
        "--no-serve", action="store_true", help="seed and print the instructions, then exit"
    )
    demo.add_argument(
        "--cases",
        type=case_count,
        default=demo_data.CASES,
        metavar="N",
        help=f"how many sample cases to seed (default {demo_data.CASES})",
    )
    demo.set_defaults(run=cmd_demo)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply database migrations")
    upgrade.set_defaults(run=cmd_db_upgrade)

    units = commands.add_parser("units", help="units of the administration and their heads")
    units_commands = units.add_subparsers(dest="units_command", metavar="COMMAND", required=True)
    load = units_commands.add_parser(
        "load", help="load or update units and digest recipients from a YAML file"
    )
    load.add_argument("file", type=Path, metavar="FILE")
    load.set_defaults(run=cmd_units_load)

    heads = commands.add_parser("heads", help="unit heads who receive escalations")
    heads_commands = heads.add_subparsers(dest="heads_command", metavar="COMMAND", required=True)
    invite = heads_commands.add_parser(
        "invite",
        help="print a one-time deep link a unit head opens to receive that unit's escalations",
        description=(
            "The link opens the bot in Telegram; it works once and for 7 days. Hand it to the "
            "head in person or through an official channel: whoever opens it first receives "
            "the unit's complaints."
        ),
    )
    invite.add_argument("unit_code", metavar="UNIT_CODE")
    invite.set_defaults(run=cmd_heads_invite)

    cases = commands.add_parser("cases", help="cases from the one-stop system")
    cases_commands = cases.add_subparsers(dest="cases_command", metavar="COMMAND", required=True)
    import_ = cases_commands.add_parser(
        "import",
        help="bulk intake from a CSV file, same validation as the API",
        description=(
            "UTF-8 CSV (with or without BOM, ',' or ';' delimited) with a header naming the "
            "columns. Prints created/updated/unchanged/rejected and, for each rejected row, "
            "'line N: column: reason'. Exits 1 when any row was rejected."
        ),
    )
    import_.add_argument("file", type=Path, metavar="FILE.csv")
    import_.set_defaults(run=cmd_cases_import)

    dashboard = commands.add_parser("dashboard", help="the officials' dashboard (web)")
    dashboard_commands = dashboard.add_subparsers(
        dest="dashboard_command", metavar="COMMAND", required=True
    )
    link = dashboard_commands.add_parser(
        "link",
        help="print a one-time sign-in link to the dashboard for that unit's scope",
        description=(
            "The link (under SIPAS_PUBLIC_URL) opens the dashboard for the unit and every unit "
            "below it; it works once and for 15 minutes, and the session it opens lasts at "
            "most 12 hours. Hand it over through an official channel: whoever opens it first "
            "is signed in."
        ),
    )
    link.add_argument("unit_code", metavar="UNIT_CODE")
    link.set_defaults(run=cmd_dashboard_link)

    from bot.cli.digest import add_digest_parser

    add_digest_parser(commands)
    commands.choices["digest"].set_defaults(run=cmd_digest)
    return parser


def _print_error(message: str, stream: TextIO) -> None:
    print(f"sipas-bot: {message}", file=stream)


def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, builds the settings, runs the command; returns the exit code."""
    from bot.startup import StartupError

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        setup_logging(settings.log_level)
        command: Command = args.run
        return asyncio.run(command(settings, args))
    except SettingsError as exc:
        _print_error(str(exc), sys.stderr)
        return EXIT_USAGE
    except InvalidInput as exc:
        _print_error(exc.message, sys.stderr)
        for name, reason in exc.fields.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except (DomainError, StartupError) as exc:
        _print_error(str(exc), sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Ctrl+C before the signal handlers are installed (e.g. during migrations).
        _print_error("interrupted", sys.stderr)
        return 130
