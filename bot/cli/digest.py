"""`sipas-bot digest`: one week's digest of a scope, printed, written to files, or sent."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bot.app import Services
from bot.digest.report import weekly_report
from handlers.digest import Report

FORMATS = ("text", "json", "xlsx", "png", "csv")


def add_digest_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    digest = commands.add_parser(
        "digest",
        help="build a weekly SIPAS digest (text, json, xlsx, png or csv)",
        description=(
            "Builds one ISO week's digest (weeks run Monday to Sunday in SIPAS_TIMEZONE; a "
            "response counts in the week its survey was completed) of a unit and every unit "
            "below it, or of every unit. --format json prints docs/contract.md section 6's JSON."
        ),
    )
    digest.add_argument("--week", metavar="YYYY-Www", help="e.g. 2026-W47 (default: last week)")
    digest.add_argument("--unit", metavar="CODE", help="the scope's unit (default: every unit)")
    digest.add_argument("--format", choices=FORMATS, default="text", dest="format")
    digest.add_argument(
        "--out", type=Path, metavar="DIR", help="write the file(s) into DIR instead of stdout"
    )
    digest.add_argument(
        "--send",
        action="store_true",
        help="also queue the digest for every head and recipient of the scope (once a week each)",
    )


def file_stem(report: Report) -> str:
    scope = report.scope.code if report.scope is not None else "all"
    return f"sipas-digest-{scope}-{report.week.label}"


async def run_digest(services: Services, args: argparse.Namespace) -> list[str]:
    """Builds the digest; returns the lines to print (a JSON or text body, or file paths)."""
    report = await weekly_report(services, args.week, args.unit)
    fmt: str = args.format
    lines: list[str] = []
    if fmt == "json":
        data = json.dumps(report.as_json(), ensure_ascii=False, indent=2).encode()
        extension = "json"
    else:
        from bot.digest.render import render

        data, extension = await render(services, report, fmt)
    if fmt in {"json", "text"} and args.out is None:
        lines.append(data.decode())  # the contract: --format json prints to stdout
    else:
        lines.append(await _write(data, args.out or Path(), f"{file_stem(report)}.{extension}"))
    if args.send:
        from bot.jobs.digests import deliver_week

        outcome = await deliver_week(services, report.week, scope_code=args.unit)
        lines.append(f"queued: {outcome}")
    return lines


async def _write(data: bytes, out: Path, name: str) -> str:
    path = out / name
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, data)
    return str(path)


def print_lines(lines: list[str]) -> None:
    for line in lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
